"""fpgm_ext.prune against the paper's figures: measured FLOPs reductions, the real CPU
latency of a pruned ResNet-50, and the time to prune it with this package's ops and with
the pure-PyTorch ones. Prints markdown; ``--write`` also puts it in bench/RESULTS.md
(between its prune-report markers, the rest of the file left alone).

    python -m bench.prune_report --write    # about 1-3 minutes on 2 idle CPU cores
    python -m bench.prune_report --quick    # fewer timing repeats

FLOPs are measured with torch.utils.flop_counter.FlopCounterMode on a forward pass
(convolutions and matrix products, 2 FLOPs per multiply-add), not from a formula; the
paper's figures come from its formula over the conv layers. Untrained weights: the
selection does not change what a FLOPs count or a latency measures.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import fpgm_ext
import fpgm_ext.reference

ROOT = Path(__file__).resolve().parent.parent

PAPER_CIFAR = {56: 52.6, 110: 52.3}                 # FLOPs reduction, FPGM-only 40 %
PAPER_R50 = {0.3: 42.2, 0.4: 53.5}                  # FLOPs reduction, FPGM-only
PAPER_R50_GPU = "134.6 -> 83.2 ms (38.2 % faster), GTX1080, batch 64, 40 %"


def pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def flops_rows():
    rows = []
    x = torch.randn(1, 3, 32, 32)
    for depth in (56, 110):
        model = fpgm_ext.models.cifar_resnet(depth)
        for residual in (True, False):
            _, r = fpgm_ext.prune(model, x, rate_dist=0.4, prune_residual=residual)
            rows.append((f"ResNet-{depth} (CIFAR, 32x32)", "40 %", residual, r, f"{PAPER_CIFAR[depth]} %"))
    return rows


def resnet50_rows(repeats):
    import torchvision

    x = torch.randn(1, 3, 224, 224)
    model = torchvision.models.resnet50(weights=None).eval()
    rows, pruned_models = [], {}
    for rate in (0.3, 0.4):
        for residual in (False, True):
            pruned, r = fpgm_ext.prune(model, x, rate_dist=rate, prune_residual=residual)
            rows.append(("ResNet-50 (torchvision, 224x224)", f"{int(rate * 100)} %", residual, r,
                         f"{PAPER_R50[rate]} %"))
            pruned_models[(rate, residual)] = pruned.eval()
    return model, rows, pruned_models


def latency_table(model, pruned_models, repeats):
    """Median wall time of a forward pass, original and pruned interleaved in one run."""
    out = []
    for batch, reps in ((1, repeats), (16, max(3, repeats // 3))):
        x = torch.randn(batch, 3, 224, 224)
        candidates = {"original": model, **{k: m for k, m in pruned_models.items()}}
        times = {k: [] for k in candidates}
        with torch.inference_mode():
            for m in candidates.values():
                m(x)   # warm-up
            for _ in range(reps):
                for k, m in candidates.items():
                    t = time.perf_counter()
                    m(x)
                    times[k].append(time.perf_counter() - t)
        base = statistics.median(times["original"])
        for k, ts in times.items():
            if k == "original":
                continue
            med = statistics.median(ts)
            out.append((batch, k, base, med))
    return out


def prune_timing(repeats):
    """prune() end to end on ResNet-50 (trace, shapes, scores, selection, surgery; no FLOPs
    measurement), fpgm_ext's ops against fpgm_ext.reference's, interleaved."""
    import torchvision

    x = torch.randn(1, 3, 224, 224)
    model = torchvision.models.resnet50(weights=None).eval()
    runs = {"fpgm_ext ops": None, "pure PyTorch (fpgm_ext.reference)": fpgm_ext.reference}
    total = {k: [] for k in runs}
    parts = {k: [] for k in runs}
    plans = {}
    for ops in runs.values():     # warm-up
        fpgm_ext.prune(model, x, rate_dist=0.4, measure=False, ops=ops)
    for _ in range(repeats):
        for k, ops in runs.items():
            t = time.perf_counter()
            _, r = fpgm_ext.prune(model, x, rate_dist=0.4, measure=False, ops=ops)
            total[k].append(time.perf_counter() - t)
            parts[k].append(r.timings)
            plans[k] = r.plan.modules
    same = plans["fpgm_ext ops"] == plans["pure PyTorch (fpgm_ext.reference)"]
    return total, parts, same


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer timing repeats")
    ap.add_argument("--write", action="store_true", help="update the prune-report section of bench/RESULTS.md")
    args = ap.parse_args(argv)
    if not args.write:
        return report(args)
    buf = io.StringIO()

    class Tee(io.TextIOBase):   # print as it goes, and keep a copy for RESULTS.md
        def write(self, text):
            sys.__stdout__.write(text)
            sys.__stdout__.flush()
            return buf.write(text)

    with contextlib.redirect_stdout(Tee()):
        report(args)
    sys.path.insert(0, str(ROOT))  # python bench/prune_report.py
    from bench.harness import RESULTS, generated_note, now_utc, section_markers, write_results

    begin, end = section_markers("prune-report")
    text = buf.getvalue().strip()
    head, _, rest = text.partition("\n")
    note = generated_note("python -m bench.prune_report --write", now_utc())
    write_results(f"{begin}\n{head}\n\n{note}\n{rest}\n{end}", begin, end, RESULTS)
    print(f"updated the prune-report section of {RESULTS}")


def report(args):
    repeats = 5 if args.quick else 15
    try:
        import torchvision
    except ImportError:
        sys.exit("bench/prune_report.py needs torchvision (pip install torchvision==0.29.1)")
    del torchvision

    info = fpgm_ext.backend_info()
    print("## fpgm_ext.prune: FLOPs, latency, time to prune\n")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
          f"{platform.processor() or platform.machine()}, fpgm_ext backend: {info['backend']}; "
          "FLOPs measured with FlopCounterMode (conv + matmul, 2 FLOPs per MAC).\n")

    print("### FLOPs reduction, FPGM-only (rate_dist, rate_norm=1), measured vs the paper's formula\n")
    print("| model | rate | residual streams pruned | FLOPs before | FLOPs after | FLOPs reduction (measured) "
          "| paper | params reduction |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    rows = flops_rows()
    model, r50_rows, pruned_models = resnet50_rows(repeats)
    for name, rate, residual, r, paper in rows + r50_rows:
        print(f"| {name} | {rate} | {'yes' if residual else 'no'} | {r.flops_before / 1e6:,.1f} M | "
              f"{r.flops_after / 1e6:,.1f} M | **{pct(r.flops_reduction)}** | {paper} | {pct(r.params_reduction)} |")

    print("\n### ResNet-50 real CPU latency, pruned vs original (median, interleaved, same run)\n")
    print("| batch | rate | residual streams pruned | original | pruned | pruned / original | faster | "
          "paper (GPU) |")
    print("| ---: | --- | --- | ---: | ---: | ---: | ---: | --- |")
    for batch, (rate, residual), base, med in latency_table(model, pruned_models, repeats):
        paper = PAPER_R50_GPU if rate == 0.4 else "-"
        print(f"| {batch} | {int(rate * 100)} % | {'yes' if residual else 'no'} | {base * 1e3:.1f} ms | "
              f"{med * 1e3:.1f} ms | {med / base:.3f} | {pct(1 - med / base)} | {paper} |")

    total, parts, same = prune_timing(max(3, repeats // 3))
    print("\n### Time to prune ResNet-50 end to end (FPGM-only 40 %, residual streams pruned, "
          "1x3x224x224 example input, no FLOPs measurement; median)\n")
    keys = list(parts["fpgm_ext ops"][0].keys())
    print("| ops | total | " + " | ".join(k for k in keys if k not in ("total", "measure")) + " |")
    print("| --- | ---: | " + " | ".join("---:" for k in keys if k not in ("total", "measure")) + " |")
    for k in total:
        cells = [f"{statistics.median(p[key] for p in parts[k]) * 1e3:.0f} ms"
                 for key in keys if key not in ("total", "measure")]
        print(f"| {k} | {statistics.median(total[k]) * 1e3:.0f} ms | " + " | ".join(cells) + " |")
    a = statistics.median(total["fpgm_ext ops"])
    b = statistics.median(total["pure PyTorch (fpgm_ext.reference)"])
    sa = statistics.median(p["score and select"] for p in parts["fpgm_ext ops"])
    sb = statistics.median(p["score and select"] for p in parts["pure PyTorch (fpgm_ext.reference)"])
    print(f"\nRatio pure PyTorch / fpgm_ext: end to end {b / a:.2f}x, scoring and selection {sb / sa:.2f}x. "
          f"Same plan from both: {'yes' if same else 'NO'}.")


if __name__ == "__main__":
    main()
