"""Two checkouts of fpgm_ext timed against each other: the time of ``prune()`` (its own
report's timings, per step) on the same models, each checkout in its own Python process
(one package name per process), the processes alternating round by round so that a slow
spell of the machine hits both. For a restructuring that must cost nothing (issue 19).

    python -m bench.versions_ab --before /tmp/base --after . [--rounds 5] [--threads 1]

Each checkout must hold a built extension (copy fpgm_ext/_C*.so into an older worktree).
Prints, per model, the median total of each and after / before, and the per-step medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

MODELS = ["torchvision:resnet50", "torchvision:mobilenet_v2", "timm:efficientnet_b0", "timm:densenet121",
          "timm:vit_tiny_patch16_224", "timm:cspresnet50"]

# One round in a checkout: each model pruned once to warm up, then three times, the medians of
# the report's timings printed as one JSON line (a single prune catches the garbage
# collector's pauses, which land on either side).
_CHILD = r"""
import json, sys, warnings, torch
warnings.filterwarnings("ignore")
torch.set_num_threads(int(sys.argv[1]))
import fpgm_ext
def build(spec):
    lib, name = spec.split(":")
    if lib == "torchvision":
        import torchvision
        return getattr(torchvision.models, name)().eval(), 224
    import timm
    return timm.create_model(name, pretrained=False).eval(), 224 if "vit" in name else 160
import statistics
out = {}
for spec in sys.argv[2:]:
    model, size = build(spec)
    x = torch.randn(1, 3, size, size)
    fpgm_ext.prune(model, x, rate_dist=0.3)
    runs = [fpgm_ext.prune(model, x, rate_dist=0.3).report.timings for _ in range(3)]
    out[spec] = {step: statistics.median(r[step] for r in runs) for step in runs[0]}
print(json.dumps(out))
"""


def one_round(checkout: Path, threads: int, models: List[str]) -> Dict[str, Dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    done = subprocess.run([sys.executable, "-c", _CHILD, str(threads), *models], cwd=checkout, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--models", default=",".join(MODELS))
    args = p.parse_args(argv)
    models = args.models.split(",")
    runs: Dict[str, List[Dict]] = {"before": [], "after": []}
    for r in range(args.rounds):
        order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
        for side in order:
            runs[side].append(one_round(getattr(args, side).resolve(), args.threads, models))
    print(f"prune() at rate_dist 0.3, {args.threads} thread(s), median of {args.rounds} alternating rounds")
    print("| model | before | after | after / before | steps after / before |")
    print("| --- | ---: | ---: | ---: | --- |")
    for spec in models:
        med = {side: {step: statistics.median(r[spec][step] for r in runs[side]) for step in runs[side][0][spec]}
               for side in runs}
        steps = ", ".join(f"{s} {med['after'][s] / med['before'][s]:.2f}" for s in med["before"]
                          if s != "total" and s in med["after"] and med["before"][s] > 0.005)
        print(f"| {spec} | {1000 * med['before']['total']:.0f} ms | {1000 * med['after']['total']:.0f} ms | "
              f"{med['after']['total'] / med['before']['total']:.2f} | {steps} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
