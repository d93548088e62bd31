"""What the pruner's safety checks cost, side by side in one process, as ratios:

- the fx check of channel counts read at run time (``graph/sizes.py``): default ``prune()``
  of torchvision ResNet-50 and MobileNetV2 with the check, against the same with it
  switched off (interleaved rounds);
- the run of an export plan on the model's own code (``checks.check_plan``): its share
  of a ``prune(trace="export")`` of timm's tf_efficientnet_b0 and mixnet_s, from the
  report's own timings (median over the rounds).

    python -m bench.analysis_costs              # 1 thread (time alone: nothing else busy)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path

if __package__ in (None, ""):  # python bench/analysis_costs.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import fpgm_ext
import fpgm_ext.pruning.graph as graph
from bench.harness import interleaved, machine_lines, ms, ratio


def size_check(rounds: int):
    import torchvision

    check = graph.check_size_reads
    rows = []
    for name in ("resnet50", "mobilenet_v2"):
        model = getattr(torchvision.models, name)().eval()
        x = torch.randn(1, 3, 224, 224)

        def prune(on: bool):
            graph.check_size_reads = check if on else (lambda A, g: None)
            try:
                fpgm_ext.prune(model, x, rate_dist=0.4)
            finally:
                graph.check_size_reads = check

        t = interleaved({"with": lambda: prune(True), "without": lambda: prune(False)}, rounds, 0.5,
                        slow_runs=rounds)
        rows.append(f"| {name} | {ms(t['with'].seconds)} | {ms(t['without'].seconds)} | "
                    f"{ratio(t['with'].seconds, t['without'].seconds)} |")
    return ["| model | prune() with the size check | without | with / without |",
            "| --- | ---: | ---: | ---: |"] + rows


def eager_check(rounds: int):
    import timm

    rows = []
    for name in ("tf_efficientnet_b0", "mixnet_s"):
        model = timm.create_model(name, pretrained=False, num_classes=10).eval()
        x = torch.randn(1, 3, 96, 96)
        shares, totals = [], []
        for _ in range(rounds + 1):
            t = fpgm_ext.prune(model, x, rate_dist=0.3, trace="export").report.timings
            shares.append(t["eager check"] / t["total"])
            totals.append(t["total"])
        shares, totals = shares[1:], totals[1:]   # the first: export's warm-up
        rows.append(f"| {name} | {ms(statistics.median(totals))} | {100 * statistics.median(shares):.1f} % |")
    return ["| model (trace='export', 96 x 96) | prune() | share of the check on the model's code |",
            "| --- | ---: | ---: |"] + rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    lines = machine_lines() + [""] + size_check(args.rounds) + [""] + eager_check(args.rounds)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
