"""fpgm_ext.prune with default settings on a broad sample of timm models (and, where
ultralytics is installed, Ultralytics' YOLOv8n / YOLO11n detect, segment, pose and OBB
models, never run before pruning, 256 x 256 inputs, each output compared but the heads' "feats", which may lose channels): how much each
model loses (measured parameters and FLOPs, after / before), whether the pruned model is
exact, how long pruning takes, and which channel groups were left alone, and why.

    python -m bench.zoo_report                 # print the table (a minute or two on 2 cores)
    python -m bench.zoo_report --write         # ...and replace the zoo section of bench/RESULTS.md
    python -m bench.zoo_report --models resnet50,vit_tiny_patch16_224 --rate 0.4

Models: timm (pretrained=False, nothing downloaded), BatchNorm statistics and affine made
non-trivial and zero-initialised classifier heads re-drawn (tests/test_prune.py's
``randomize``), 96 x 96 inputs (224 for the ViT / Mixer / Swin family, whose patch grids are
fixed). Exactness: the largest difference between the pruned model's output and the
original's with the removed channels masked (tests/masking.py's ``masked_original``: the
channels kept are read off the pruned weights by value, independently of the plan; the
removed filters, their norm parameters and the removed inputs of every layer zeroed), over
the largest output. The ideal
reduction of a uniform rate r is 1 - (1 - r)^2 (every conv loses r of its filters and of
its input channels). Where a LayerNorm or GroupNorm(1, C) over all of a group's channels
left it alone, the model is pruned again with ``approximate=True``: the parameters removed
then, and the largest ``output_difference`` of its approximate groups (that group alone
pruned against the original with its channels zeroed, over the largest output).
"""
from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional, Sequence

if __package__ in (None, ""):  # python bench/zoo_report.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import fpgm_ext
from fpgm_ext.pruning.families import outputs_for
from bench.harness import generated_note, machine_lines, now_utc, section_markers, write_results

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = section_markers("zoo")
MODELS = [
    "resnet50", "resnext50_32x4d", "seresnet50", "resnet26d", "skresnet18", "resnest14d",
    "res2net50_26w_4s", "efficientnet_b0", "efficientnet_lite0", "tf_efficientnet_b0",
    "mobilenetv2_100", "mobilenetv3_small_100", "mnasnet_100", "fbnetc_100", "spnasnet_100",
    "semnasnet_100", "hardcorenas_a", "tinynet_a", "lcnet_050", "ghostnet_100", "mixnet_s",
    "rexnet_100", "regnetx_002", "regnety_004", "cspdarknet53", "cspresnext50", "densenet121",
    "dpn68", "dla34", "vovnet39a", "repvgg_a0", "hrnet_w18_small", "inception_v3", "xception41",
    "selecsls42b", "tf_mixnet_s", "inception_resnet_v2", "lambda_resnet26t", "mambaout_femto",
    "convnext_atto", "edgenext_xx_small", "poolformer_s12", "nf_resnet26",
    "resnet50_gn", "resnetv2_50x1_bit",
    "vit_tiny_patch16_224", "mixer_b16_224", "swin_tiny_patch4_window7_224",
]
LARGE_INPUT = ("vit_", "mixer_", "swin_", "deit_")
# Ultralytics' families, built from their yaml (no weights; YOLO_OFFLINE), 256 x 256 inputs;
# rows only where ultralytics is installed (pip install fpgm_ext[yolo])
ULTRALYTICS = [f"{v}{task}.yaml" for v in ("yolov8n", "yolo11n") for task in ("", "-seg", "-pose", "-obb")]


def _test_helpers():
    spec = importlib.util.spec_from_file_location("fpgm_test_prune", ROOT / "tests" / "test_prune.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "tests"))
    spec.loader.exec_module(module)
    import masking   # tests/masking.py (tests/ is on the path now)

    return module.randomize, masking.masked_original


def _build(name: str, randomize):
    """(model, input): a timm model, or an Ultralytics one from its yaml."""
    torch.manual_seed(0)  # timm and Ultralytics draw the initial weights from the global generator
    if name.endswith(".yaml"):
        import os

        os.environ.setdefault("YOLO_OFFLINE", "1")
        from ultralytics import YOLO

        return randomize(YOLO(name).model.eval()), torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    import timm

    model = randomize(timm.create_model(name, pretrained=False, num_classes=10))
    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear) and not head.weight.any():
        torch.nn.init.normal_(head.weight, std=0.1, generator=torch.Generator().manual_seed(1))
    size = 224 if name.startswith(LARGE_INPUT) else 96
    return model, torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))


def _compared(model, out) -> list:
    """The output tensors compared by value: all, but those the model's family lets lose
    channels (fpgm_ext/pruning/families.py: Ultralytics' "feats")."""
    return [t for t in outputs_for(model).kept(out) if isinstance(t, torch.Tensor)]


def run_model(name: str, rate: float, randomize, masked_original) -> dict:
    model, x = _build(name, randomize)
    start = time.perf_counter()
    pruned, report = fpgm_ext.prune(model, x, rate_dist=rate)
    seconds = time.perf_counter() - start
    with torch.no_grad():   # (several outputs: the largest difference over the largest output)
        ref = _compared(model, masked_original(model, pruned).eval()(x))
        out = _compared(model, pruned.eval()(x))
    scale = max(float(t.abs().max()) for t in ref)
    error = max(float((a - b).abs().max()) for a, b in zip(out, ref)) / max(scale, 1e-30)
    alone = report.left_alone
    reasons = list(dict.fromkeys(g["left_alone"].split(";")[0] for g in alone))
    approx = None   # with approximate=True, where a norm over all channels left a group alone
    if any("approximate=True prunes it" in g["left_alone"] for g in alone):
        loose = fpgm_ext.prune(model, x, rate_dist=rate, approximate=True).report
        approx = (loose.params_reduction, max(g["output_difference"] for g in loose.approximate)
                  if loose.approximate else 0.0)
    return {"model": name, "tracer": report.tracer, "params": report.params_reduction,
            "flops": report.flops_reduction, "error": error, "seconds": seconds,
            "pruned": sum(g["kept"] is not None for g in report.groups), "groups": len(report.groups),
            "alone": len(alone), "reasons": reasons, "approx": approx}


def table(rows: List[dict], rate: float) -> List[str]:
    ideal = 1 - (1 - rate) ** 2
    lines = ["| model | tracer | params removed | of the ideal | FLOPs removed | exactness error "
             "| time to prune | groups pruned / left alone | first reasons left alone "
             "| approximate=True: params removed, largest output difference |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | - | - | - | - | - | - | - | fails: {r['failed']} | - |")
            continue
        why = "; ".join(r["reasons"][:2])[:160].replace("|", "/")
        approx = "-" if r["approx"] is None else f"{100 * r['approx'][0]:.1f} %, {r['approx'][1]:.1e}"
        lines.append(f"| {r['model']} | {r['tracer']} | {100 * r['params']:.1f} % | "
                     f"{r['params'] / ideal:.2f} | {100 * r['flops']:.1f} % | {r['error']:.1e} | "
                     f"{1e3 * r['seconds']:.0f} ms | {r['pruned']} / {r['alone']} | {why} | {approx} |")
    return lines


def _has_ultralytics() -> bool:
    return importlib.util.find_spec("ultralytics") is not None


def _summary(rows: List[dict], rate: float) -> str:
    done = [r for r in rows if "failed" not in r]
    ideal = 1 - (1 - rate) ** 2
    mean = statistics.mean(r["params"] for r in done) if done else 0.0
    worst = max((r["error"] for r in done), default=0.0)
    loose = statistics.mean(r["approx"][0] if r["approx"] else r["params"] for r in done) if done else 0.0
    return (f"{len(done)} of {len(rows)} models ran; parameters removed {100 * mean:.1f} % on "
            f"average, {mean / ideal:.2f} of the ideal {100 * ideal:.0f} % at rate_dist {rate}; "
            f"largest exactness error {worst:.1e}. With approximate=True where a norm over all "
            f"channels left a group alone ({sum(r['approx'] is not None for r in done)} models): "
            f"{100 * loose:.1f} % on average, {loose / ideal:.2f} of the ideal.")


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="fpgm_ext.prune on a sample of timm models")
    p.add_argument("--models", help="comma-separated timm model names (default: the sample)")
    p.add_argument("--rate", type=float, default=0.3, help="rate_dist (default 0.3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--write", action="store_true", help="update the zoo section of bench/RESULTS.md")
    args = p.parse_args(argv)
    import timm  # noqa: F401  (fail early, with the name, when it is missing)

    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    randomize, masked_original = _test_helpers()
    names = args.models.split(",") if args.models else MODELS + (ULTRALYTICS if _has_ultralytics() else [])
    rows = []
    for name in names:
        try:
            rows.append(run_model(name, args.rate, randomize, masked_original))
        except Exception as exc:  # a model that cannot be built or pruned: said, not hidden
            rows.append({"model": name, "failed": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"})
        print(table(rows[-1:], args.rate)[-1], flush=True)
    timm_rows = [r for r in rows if not r["model"].endswith(".yaml")]
    yolo_rows = [r for r in rows if r["model"].endswith(".yaml")]
    summary = _summary(timm_rows, args.rate)
    if yolo_rows:
        summary += "\n\nUltralytics (never run before pruning, torch.export): " + _summary(yolo_rows, args.rate)
    print("\n" + summary)
    if args.write:
        text = "\n".join([BEGIN, "## Pruning a timm zoo with default settings", "",
                          generated_note("python -m bench.zoo_report --write", now_utc()), "",
                          *machine_lines(), "", (__doc__ or "").split("\n\n", 2)[2].strip(), "",
                          summary, "", *table(rows, args.rate), END])
        write_results(text, BEGIN, END)
        print("updated the zoo section of bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
