"""The CPU kernels' two paths side by side: the AVX-512 kernels (packed Gram products, pair
kernels) against the portable paths that CPUs without AVX-512 run (FPGM_EXT_CPU_AVX512=0:
BLAS Gram products, loops compiled per instruction set), and both against torch.cdist, on
shapes the issue's report does not cover: few dimensions (depthwise 3 x 3), the distance
matrix, float64 (the pruner's scores).

    python -m bench.cpu_paths

Timing as bench/report.py (`interleaved`: the methods of a case in turn, medians), so every
figure is a ratio measured in one run. Needs a CPU with AVX-512 for the two paths to differ.
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # python bench/cpu_paths.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import fpgm_ext
from bench import baselines, shapes
from bench.report import interleaved, ms
from fpgm_ext.testing import avx512_kernels


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


def main() -> int:
    backend = fpgm_ext.backend_info()["backend"]
    if backend != "compiled":
        print(f"backend {backend!r}: the compiled kernels are not loaded, nothing to compare")
        return 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| case | AVX-512 kernels | portable path | cdist | portable / AVX-512 | cdist / AVX-512 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, ours, base in cases():
        t = interleaved({"avx512": on_path(True, ours), "portable": on_path(False, ours),
                         "cdist": base}, rounds=5, block_s=0.05)
        a, p, c = t["avx512"].seconds, t["portable"].seconds, t["cdist"].seconds
        print(f"| {name} | {ms(a)} | {ms(p)} | {ms(c)} | {p / a:.2f}x | {c / a:.2f}x |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
