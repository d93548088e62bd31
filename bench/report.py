"""The CPU benchmark report: every target of the performance issue measured once, as
ratios against the baselines in the same process on the same inputs, plus a time-vs-N plot.

    python -m bench.report            # print the table, write bench/scaling.png
    python -m bench.report --write    # ...and replace the cpu-bench section of bench/RESULTS.md

This module holds the report's cases, targets, table and section text. The timing
(bench/harness.py ``interleaved``: torch.utils.benchmark.Timer at torch's thread count, the
methods of one case interleaved round by round, median per method), the machine lines and
the RESULTS.md writer are the harness's; the plot is bench/scaling.py's. Slow baselines
(a call of 0.25 s or more) run a few calls only (``--slow-runs``, ``--target-runs`` for
those that decide a target, ``--loop-runs`` for the per-filter loops).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if __package__ in (None, ""):  # python bench/report.py
    sys.path.insert(0, str(ROOT))
# numpy's OpenBLAS threads spin for a while after each call and would slow whichever
# method is timed next; the numpy and scipy baselines here are single-threaded loops.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import torch  # noqa: E402

import fpgm_ext  # noqa: E402
from bench import baselines as B  # noqa: E402
from bench import shapes as S  # noqa: E402
from bench.harness import (RESULTS, Timing, cpu_model, generated_note, interleaved,  # noqa: E402
                           machine_lines, ms, now_utc, ratio, runs_note, section_markers,
                           timing_parser, write_results)
from bench.scaling import PLOT, plot_scaling  # noqa: E402

BEGIN, END = section_markers("cpu-bench")
THREADS_NOTE = "scipy and the numpy loop use one"

# (metric, N, D) -> the minimum speed-up over the torch baseline of that metric
SCORE_TARGETS = {("l2", 512, 4608): 2.0, ("l2", 2048, 512): 1.7,
                 ("l1", 512, 4608): 10.0, ("l1", 2048, 512): 10.0,
                 ("cos", 512, 4608): 2.0, ("cos", 2048, 512): 1.7}
MULTI_TARGETS = {"ResNet-56": 3.0, "ResNet-50": 1.5}
GATHER_TARGET = 1.0
MEMORY_LIMIT_MB = 64

BASELINE_NAMES = {
    "torch_l2": "torch.cdist(F, F).sum(1)",
    "torch_l1": "torch.cdist(F, F, p=1).sum(1)",
    "torch_cos": "normalise rows, (1 - Fn @ Fn.T).sum(1)",
    "scipy": "scipy cdist float64 (official FPGM code)",
    "nni": "per-filter loop, torch (NNI)",
    "paddle": "per-filter loop, numpy (PaddleSlim)",
}


# ----------------------------------------------------------------------------- table
@dataclass
class Row:
    case: str
    ours: str
    baseline: str
    base: str
    ratio: str
    target: str
    result: str


def speedup_row(case: str, ours: Timing, name: str, base: Timing,
                target: Optional[float], note: str = "") -> Row:
    if target is None:
        result = "info"
    else:
        result = "PASS" if base.seconds / ours.seconds >= target else "FAIL"
    return Row(case, ms(ours.seconds), BASELINE_NAMES.get(name, name) + note,
               ms(base.seconds) + runs_note(base), ratio(base.seconds, ours.seconds),
               f">= {target:g}x" if target is not None else "", result)


def render(rows: Sequence[Row]) -> str:
    head = ["case", "ours", "baseline", "baseline time", "ours faster by", "target", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([r.case, r.ours, r.baseline, r.base, r.ratio, r.target,
                                        r.result]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- cases
def filters(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def score_cases(rows: List[Row], args) -> None:
    for n, d in S.SCORE_SHAPES:
        f = filters(n, d)
        fn = f.numpy()
        shape = f"N={n} D={d}"
        # l2: the targets, the work floor and every baseline
        t = interleaved({
            "ours": lambda: fpgm_ext.distance_scores(f, "l2"),
            "gram": lambda: B.gram(f),
            "torch_l2": lambda: B.torch_cdist(f, "l2"),
            "scipy": lambda: B.scipy_official(f, "l2"),
            "nni": lambda: B.nni_loop(f, "l2"),
            "paddle": lambda: B.paddleslim_loop(fn, "l2"),
        }, args.rounds, args.block, slow_runs=args.slow_runs,
            runs={"torch_l2": args.target_runs, "nni": args.loop_runs, "paddle": args.loop_runs})
        case = f"l2 scores {shape}"
        rows.append(speedup_row(case, t["ours"], "torch_l2", t["torch_l2"], SCORE_TARGETS[("l2", n, d)]))
        for k in ("scipy", "nni", "paddle"):
            rows.append(speedup_row(case, t["ours"], k, t[k], None))
        rate = 2 * n * n * d / t["gram"].seconds
        floor = n * n * d / rate  # N^2 D FLOP: the symmetric half of the Gram product
        rows.append(Row(case, ms(t["ours"].seconds),
                        f"work floor: N^2 D FLOP at the F @ F.T rate ({rate / 1e9:.0f} GFLOP/s)",
                        ms(floor), f"ours = {ratio(t['ours'].seconds, floor)} floor", "", "info"))
        # l1 and cos
        for metric in ("l1", "cos"):
            t = interleaved({
                "ours": lambda: fpgm_ext.distance_scores(f, metric),
                f"torch_{metric}": lambda: B.torch_baseline(f, metric),
                "scipy": lambda: B.scipy_official(f, metric),
            }, args.rounds, args.block, slow_runs=args.slow_runs, runs={f"torch_{metric}": args.target_runs})
            case = f"{metric} scores {shape}"
            rows.append(speedup_row(case, t["ours"], f"torch_{metric}", t[f"torch_{metric}"],
                                    SCORE_TARGETS[(metric, n, d)]))
            rows.append(speedup_row(case, t["ours"], "scipy", t["scipy"], None))


def multi_cases(rows: List[Row], args) -> None:
    for model, layers in (("ResNet-56", S.resnet56_convs()), ("ResNet-50", S.resnet50_convs())):
        g = torch.Generator().manual_seed(0)
        ws = [torch.randn(s, generator=g) for s in layers]
        methods = {
            "ours": lambda: fpgm_ext.distance_scores_multi(ws),
            "torch_l2": lambda: B.cdist_per_layer(ws),
            "scipy": lambda: [B.scipy_official(B.flatten(w)) for w in ws],
        }
        if model == "ResNet-56":  # over ResNet-50 the loop takes minutes (about 150 s on 2 cores)
            methods["nni"] = lambda: [B.nni_loop(w) for w in ws]
        t = interleaved(methods, args.rounds, args.block, runs={"torch_l2": args.target_runs},
                        slow_runs=1 if model == "ResNet-50" else args.slow_runs)
        case = f"distance_scores_multi, {model} ({len(ws)} convs)"
        rows.append(speedup_row(case, t["ours"], "torch_l2", t["torch_l2"], MULTI_TARGETS[model],
                                note=", a loop over layers"))
        rows.append(speedup_row(case, t["ours"], "scipy", t["scipy"], None, note=", layer by layer"))
        if "nni" in t:
            rows.append(speedup_row(case, t["ours"], "nni", t["nni"], None, note=", layer by layer"))
        else:
            rows.append(Row(case, ms(t["ours"].seconds), BASELINE_NAMES["nni"] + ", layer by layer",
                            "not run (minutes per call)", "", "", "skipped"))


def gather_case(rows: List[Row], args) -> None:
    tensors, dims, indices = S.make_prune_inputs()
    t = interleaved({
        "ours": lambda: fpgm_ext.gather_channels(tensors, dims, indices),
        "loop": lambda: B.index_select_loop(tensors, dims, indices),
    }, args.rounds, args.block)
    rows.append(speedup_row(f"gather_channels, ResNet-50 prune plan ({len(tensors)} tensors, 60% kept)",
                            t["ours"], "loop of index_select", t["loop"], GATHER_TARGET))


def memory_case(rows: List[Row]) -> None:
    spec = importlib.util.spec_from_file_location("fpgm_test_memory", ROOT / "tests" / "test_memory.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    ours, cdist = probe.peak_extra("ours"), probe.peak_extra("cdist")
    mb = 1 << 20
    n, d = probe.N, probe.D
    ok = ours["extra_bytes"] < MEMORY_LIMIT_MB * mb and ours["rel_err"] < 1e-5
    rows.append(Row(f"peak extra memory, l2 scores N={n} D={d} (child process, VmHWM)",
                    f"{ours['extra_bytes'] / mb:.0f} MB", "torch.cdist(F, F).sum(1)",
                    f"{cdist['extra_bytes'] / mb:.0f} MB", f"{cdist['extra_bytes'] / ours['extra_bytes']:.0f}x less",
                    f"< {MEMORY_LIMIT_MB} MB", "PASS" if ok else "FAIL"))


# ----------------------------------------------------------------------------- output
def section(date: str, table: str, timings: Dict[str, float], args) -> str:
    parts = [
        BEGIN,
        "## CPU benchmarks",
        "",
        generated_note("python -m bench.report --write", date),
        "",
        *machine_lines(THREADS_NOTE),
        "",
        "Float32, the same inputs for every method of a case, timed with "
        "`torch.utils.benchmark.Timer` at torch's thread count (a call of 0.25 s or more: "
        "`time.perf_counter`, one call at a time, no warm-up); the methods of a case are "
        f"interleaved round by round ({args.rounds} rounds of blocks of about {args.block * 1e3:.0f} ms) "
        "and each time is the median. A baseline whose single call takes 0.25 s or more runs "
        f"fewer calls, marked \"(n runs)\": {args.target_runs} when it decides a target, "
        f"{args.loop_runs} for the per-filter loops, 1 for scipy over ResNet-50, {args.slow_runs} "
        "otherwise. "
        "Ratios are baseline time / our time, measured in one run; wall-clock times on a shared "
        "machine move between runs, the ratios much less, except against torch.cdist's l2 "
        "mode, whose time relative to F @ F.T on the same shape varies between processes: "
        "an l2 ratio against cdist can move from one run to the next, while the work-floor "
        "row (ours against F @ F.T, timed in the same rounds) is the steadier measure of ours. "
        "The work floor of l2 is N^2 D FLOP "
        "(the symmetric half of the Gram product) at the rate F @ F.T reaches on the same "
        "shape. Memory: a fresh child process's resident high-water mark (VmHWM) over its "
        "resident set before the call (tests/test_memory.py).",
        "",
        table,
        "",
        f"Time vs N at D = {S.SCALING_D} (scipy up to N = {args.scipy_max_n}, the per-filter loops "
        f"up to N = {args.loop_max_n}, being slow):",
        "",
        f"![l2 scores: time vs N, D = {S.SCALING_D}]({PLOT.name})",
        "",
        "Report run time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".",
        END,
    ]
    return "\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = timing_parser("fpgm_ext CPU benchmarks: ratios against the baselines, a table of "
                      "targets and a time-vs-N plot.", "cpu-bench", rounds=7)
    p.add_argument("--slow-runs", type=int, default=2, help="calls of a slow baseline (default 2)")
    p.add_argument("--target-runs", type=int, default=5,
                   help="calls of a slow baseline that decides a target (default 5)")
    p.add_argument("--loop-runs", type=int, default=1, help="calls of a per-filter loop (default 1)")
    p.add_argument("--scipy-max-n", type=int, default=2048, help="largest N of scipy in the plot")
    p.add_argument("--loop-max-n", type=int, default=512, help="largest N of the loops in the plot")
    p.add_argument("--plot", type=Path, default=PLOT, help=f"where the PNG goes (default {PLOT})")
    args = p.parse_args(argv)

    date = now_utc()
    machine = f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"fpgm_ext CPU benchmarks, {date}\n" + "\n".join(machine_lines(THREADS_NOTE)) + "\n",
          flush=True)
    rows: List[Row] = []
    timings: Dict[str, float] = {}
    for name, run in (("scores", lambda: score_cases(rows, args)),
                      ("multi", lambda: multi_cases(rows, args)),
                      ("gather", lambda: gather_case(rows, args)),
                      ("memory", lambda: memory_case(rows))):
        start = time.perf_counter()
        run()
        timings[name] = time.perf_counter() - start
        print(f"[{name}: {timings[name]:.0f} s]", flush=True)
    start = time.perf_counter()
    if not plot_scaling(args.plot, machine, args.rounds, args.block, args.scipy_max_n, args.loop_max_n):
        print("[scaling plot: skipped, matplotlib is not installed (pip install matplotlib, "
              "or the package's [bench] extra)]\n", flush=True)
    else:
        timings["scaling plot"] = time.perf_counter() - start
        print(f"[scaling plot: {timings['scaling plot']:.0f} s] wrote {args.plot}\n", flush=True)

    table = render(rows)
    print(table)
    failed = [r for r in rows if r.result == "FAIL"]
    print(f"\n{sum(r.result == 'PASS' for r in rows)} targets met, {len(failed)} missed; "
          f"run time {sum(timings.values()):.0f} s")
    if args.write:
        write_results(section(date, table, timings, args), BEGIN, END)
        print(f"updated the cpu-bench section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
