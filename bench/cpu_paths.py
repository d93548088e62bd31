"""The CPU kernels' two paths side by side: the AVX-512 kernels (packed Gram products, pair
kernels) against the portable paths that CPUs without AVX-512 run (FPGM_EXT_CPU_AVX512=0:
BLAS Gram products, loops compiled per instruction set), and both against torch.cdist, on
shapes the issue's report does not cover: few dimensions (depthwise 3 x 3), the distance
matrix, float64 (the pruner's scores).

    python -m bench.cpu_paths            # print the table
    python -m bench.cpu_paths --write    # ...and replace the cpu-paths section of bench/RESULTS.md

Timing: bench/harness.py's `interleaved` (the methods of a case in turn, medians), as in
bench/report.py, so every figure is a ratio measured in one run. Needs a CPU with AVX-512
for the two paths to differ.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence

if __package__ in (None, ""):  # python bench/cpu_paths.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import fpgm_ext
from bench import baselines, shapes
from bench.harness import (RESULTS, generated_note, interleaved, machine_lines, ms, now_utc, ratio,
                           section_markers, timing_parser, write_results)
from fpgm_ext.testing import avx512_kernels

BEGIN, END = section_markers("cpu-paths")
HEAD = ["| case | AVX-512 kernels | portable path | cdist | portable / AVX-512 | cdist / AVX-512 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |"]


def on_path(avx512: bool, fn):
    def run():
        with avx512_kernels(avx512):
            return fn()
    return run


def cases():
    """(name, ours(), cdist baseline())."""
    g = torch.Generator().manual_seed(0)
    for n, d in ((1000, 3), (1280, 9), (3000, 9)):
        f = torch.randn(n, d, generator=g)
        for metric in ("l2", "l1"):
            yield (f"scores {metric} {n}x{d}", lambda f=f, m=metric: fpgm_ext.distance_scores(f, m),
                   lambda f=f, m=metric: baselines.torch_cdist(f, m))
    for n, d in ((512, 4608), (2048, 512)):
        f = torch.randn(n, d, generator=g)
        yield (f"scores l1 {n}x{d}", lambda f=f: fpgm_ext.distance_scores(f, "l1"),
               lambda f=f: baselines.torch_cdist(f, "l1"))
        yield (f"matrix l2 {n}x{d}", lambda f=f: fpgm_ext.distance_matrix(f),
               lambda f=f: torch.cdist(f, f))
    f = torch.randn(512, 4608, generator=g, dtype=torch.float64)
    yield ("scores l2 512x4608 float64", lambda: fpgm_ext.distance_scores(f),
           lambda: baselines.torch_cdist(f, "l2"))
    ws = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes.resnet50_convs()]
    yield ("multi l2 ResNet-50 float64", lambda: fpgm_ext.distance_scores_multi(ws),
           lambda: baselines.cdist_per_layer(ws))


def section(date: str, table: List[str], rounds: int, block_s: float) -> str:
    return "\n".join([
        BEGIN,
        "## CPU kernels: the AVX-512 and the portable paths",
        "",
        generated_note("python -m bench.cpu_paths --write", date),
        "",
        *machine_lines(),
        "",
        "One process: each case's AVX-512 kernels, its portable path (FPGM_EXT_CPU_AVX512=0, "
        "what CPUs without AVX-512 run) and torch.cdist interleaved round by round "
        f"({rounds} rounds of blocks of about {block_s * 1e3:.0f} ms, bench/harness.py), "
        "each time the median; ratios are times over the AVX-512 kernels' time.",
        "",
        *table,
        END,
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = timing_parser("fpgm_ext CPU kernels: the AVX-512 kernels, the portable paths and "
                       "torch.cdist, timed in one process.", "cpu-paths", rounds=5)
    args = ap.parse_args(argv)
    backend = fpgm_ext.backend_info()["backend"]
    if backend != "compiled":
        print(f"backend {backend!r}: the compiled kernels are not loaded, nothing to compare")
        return 1
    date = now_utc()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    table = list(HEAD)
    print("\n".join(HEAD))
    for name, ours, base in cases():
        t = interleaved({"avx512": on_path(True, ours), "portable": on_path(False, ours),
                         "cdist": base}, rounds=args.rounds, block_s=args.block)
        a, p, c = t["avx512"].seconds, t["portable"].seconds, t["cdist"].seconds
        table.append(f"| {name} | {ms(a)} | {ms(p)} | {ms(c)} | {ratio(p, a)} | {ratio(c, a)} |")
        print(table[-1], flush=True)
    if args.write:
        write_results(section(date, table, args.rounds, args.block), BEGIN, END)
        print(f"updated the cpu-paths section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
