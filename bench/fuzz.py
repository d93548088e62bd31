"""fpgm_ext.prune on seeded random architectures (tests/random_arch.py), each judged by
value against the original with the removed channels masked (tests/masking.py): how many
are exact, left alone, wrong or crash, per tracer, and why groups are left alone.

    python -m bench.fuzz --n 2000                       # print the table
    python -m bench.fuzz --n 300 --write                # ...and replace the fuzz section of bench/RESULTS.md
    python -m bench.fuzz --n 500 --seed0 10000 --trace fx --rate 0.6

Models: a stem conv and 3 to 7 blocks of the kinds of tests/random_arch.py (conv chains,
residuals, splits and concatenations, depthwise and grouped convs, squeeze-excitation,
gates, GroupNorm, channels-last and token MLPs, tokens put back as images, attention
heads, radix groups, layer scales (viewed or indexed with None), squeeze-excitation
through Linear layers, pooling, two-input merges, unusual spellings, and ops that mix
channels, which the analysis must refuse), 4 to 24 channels, 8x8 or 12x12 inputs, one or
two outputs; pruned at rate_dist 0.3 (--rate). EXACT: something pruned and every output within 1e-4 of its
largest value of the masked original's, in eval and in training mode; LEFT_ALONE:
nothing pruned; WRONG: a larger difference, or the pruned model fails or does not fit
the original; CRASH: prune raised. Reasons: each group's reasons for being left alone,
node and module names taken out, counted once per model and tracer.
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

if __package__ in (None, ""):  # python bench/fuzz.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.harness import generated_note, machine_lines, now_utc, section_markers, write_results

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = section_markers("fuzz")
TOP_REASONS = 10


def _random_arch():
    """tests/random_arch.py (tests/ put on the path: it imports its neighbours by name)."""
    if str(ROOT / "tests") not in sys.path:
        sys.path.insert(0, str(ROOT / "tests"))
    import random_arch

    return random_arch


def run(seeds: Sequence[int], traces: Sequence[str], rate: float, progress: bool = True
        ) -> Tuple[List, List[str]]:
    """An Outcome per seed and tracer, and the seeds whose model could not be built or run
    (a bug of the generator, not of the pruner: named apart)."""
    ra = _random_arch()
    outcomes, broken = [], []
    for seed in seeds:
        for trace in traces:
            try:
                o = ra.check_model(seed, trace, rate)
            except Exception as exc:  # noqa: BLE001 - one bad model does not stop the run
                broken.append(f"- seed {seed}, {trace}: {type(exc).__name__}: {str(exc)[:200]}")
                continue
            outcomes.append(o)
            if progress and not o.ok:
                print(f"  seed {seed} {trace}: {o.status.name}: {o.detail[:200]}", flush=True)
    return outcomes, broken


def counts_table(outcomes: List, traces: Sequence[str]) -> List[str]:
    ra = _random_arch()
    lines = ["| tracer | models | EXACT | LEFT_ALONE | WRONG | CRASH | params removed (mean) "
             "| largest error of the exact |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for trace in traces:
        mine = [o for o in outcomes if o.trace == trace]
        n = Counter(o.status for o in mine)
        exact = [o for o in mine if o.status is ra.Status.EXACT]
        mean = statistics.mean(o.params_removed for o in mine) if mine else 0.0
        worst = max(exact, key=lambda o: o.error, default=None)
        lines.append(f"| {trace} | {len(mine)} | " + " | ".join(str(n[s]) for s in ra.Status)
                     + f" | {100 * mean:.1f} % | "
                     + (f"{worst.error:.1e} (seed {worst.seed}) |" if worst else "- |"))
    return lines


def reasons_table(outcomes: List, top: int = TOP_REASONS) -> List[str]:
    ra = _random_arch()
    seen: Counter = Counter()
    for o in outcomes:   # once per model and tracer
        seen.update({ra.normalise_reason(r) for r in o.left_alone})
    lines = ["| models (x tracers) | reason a group is left alone |", "| ---: | --- |"]
    for reason, n in seen.most_common(top):
        lines.append(f"| {n} | {reason[:200].replace('|', '/')} |")
    return lines


def failures(outcomes: List, broken: List[str]) -> List[str]:
    """The WRONG and CRASH models, grouped by what went wrong (numbers taken out), each
    group with its largest error, its seeds and their tracers."""
    groups: Dict[Tuple[str, str], List] = {}
    for o in outcomes:
        if not o.ok:
            what = re.sub(r"\d+(\.\d+)?(e[-+]\d+)?", "N", o.detail[:240]).replace("|", "/")
            groups.setdefault((o.status.name, what), []).append(o)
    lines = []
    for (status, what), bad in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        seeds: Dict[int, List[str]] = {}
        for o in bad:
            seeds.setdefault(o.seed, []).append(o.trace)
        errors = [o.error for o in bad if o.error == o.error]   # (NaN where none was measured)
        largest = f" (largest {max(errors):.1e})" if errors else ""
        lines.append(f"- {status}, {len(bad)} model{'s' * (len(bad) > 1)}: {what}{largest}. Seeds: "
                     + ", ".join(f"{seed} ({', '.join(traces)})" for seed, traces in sorted(seeds.items())))
    lines = lines or ["No model was WRONG or CRASHed."]
    if broken:
        lines += ["", "Models the generator failed to build or run (not judged):", "", *broken]
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="fpgm_ext.prune on seeded random architectures")
    p.add_argument("--n", type=int, default=2000, help="models (seeds) to run (default 2000)")
    p.add_argument("--seed0", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--trace", default="fx,export", help="tracers, comma-separated (default fx,export)")
    p.add_argument("--rate", type=float, default=0.3, help="rate_dist (default 0.3)")
    p.add_argument("--write", action="store_true", help="update the fuzz section of bench/RESULTS.md")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    traces = args.trace.split(",")
    seeds = range(args.seed0, args.seed0 + args.n)
    start = time.perf_counter()
    outcomes, broken = run(seeds, traces, args.rate)
    seconds = time.perf_counter() - start
    summary = (f"{args.n} models (seeds {seeds.start} to {seeds.stop - 1}, {len(_random_arch().KINDS)} "
               f"block kinds) x {len(traces)} tracers at rate_dist {args.rate}, in {seconds:.0f} s.")
    body = [summary, "", *counts_table(outcomes, traces), "",
            f"The {TOP_REASONS} most common reasons for leaving a group alone:", "",
            *reasons_table(outcomes), "", "WRONG and CRASH models:", "", *failures(outcomes, broken)]
    print("\n" + "\n".join(body))
    if args.write:
        command = "python -m bench.fuzz " + " ".join(argv if argv is not None else sys.argv[1:])
        text = "\n".join([BEGIN, "## Fuzzing fpgm_ext.prune with random architectures", "",
                          generated_note(command.strip(), now_utc()), "", *machine_lines(), "",
                          (__doc__ or "").split("\n\n", 2)[2].strip(), "", *body, END])
        write_results(text, BEGIN, END)
        print("updated the fuzz section of bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
