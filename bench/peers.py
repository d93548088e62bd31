"""fpgm_ext.prune beside Torch-Pruning on torchvision models, in one process: the time to
prune, how each method's picks agree with the official float64 FPGM rule, and the FLOPs,
parameters and CPU latency of the pruned models.

    python -m bench.peers                   # print the tables (about 2 minutes on 2 idle cores)
    python -m bench.peers --write           # ...and replace the peers section of bench/RESULTS.md
    python -m bench.peers --quick           # one model, one round: a smoke test
    python -m bench.peers --models resnet18,densenet121 --rounds 3 --input-size 64

Methods, each at rate 0.4 on a model built with a fixed seed (weights=None) and eval():
``fpgm_ext.prune(model, x, rate_dist=0.4)`` (default settings, but ``inplace=True`` on its
copy), and ``tp.pruner.MetaPruner(model, x, importance=..., pruning_ratio=0.4,
ignored_layers=[final classifier]).step()`` with Torch-Pruning's ``FPGMImportance()`` and
with fpgm_ext's (fpgm_ext.integrations.torch_pruning). Needs torchvision and torch-pruning.
"""
from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

if __package__ in (None, ""):  # python bench/peers.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
from torch import nn

import fpgm_ext
from bench.harness import (RESULTS, generated_note, machine_lines, ms, now_utc, ratio,
                           section_markers, write_results)
from fpgm_ext.pruning.flops import measure

BEGIN, END = section_markers("peers")
MODELS = ("resnet18", "resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0", "regnet_y_400mf")
RATE = 0.4
OURS, TP_FPGM, TP_OURS = "fpgm_ext.prune", "TP + TP's FPGMImportance", "TP + fpgm_ext's FPGMImportance"
METHODS = (OURS, TP_FPGM, TP_OURS)
ORACLE = Path(__file__).resolve().parent.parent / "tests" / "oracle.py"


def first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"fails: {type(e).__name__}: {lines[0]}" if lines else f"fails: {type(e).__name__}"


@functools.lru_cache(maxsize=None)
def oracle():
    """tests/oracle.py (scipy cdist in float64), loaded by path."""
    spec = importlib.util.spec_from_file_location("fpgm_oracle", ORACLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the methods
def ours(model: nn.Module, x: torch.Tensor):
    return fpgm_ext.prune(model, x, rate_dist=RATE, inplace=True)


def ours_picks(report) -> Dict[str, List[int]]:
    """conv name -> the output channels fpgm_ext.prune removed (from its plan)."""
    return {name: sorted(set(range(e["out_size"])) - set(e["out"]))
            for name, e in report.plan.modules.items() if e["type"] == "Conv2d" and "out" in e}


def tp_prune(importance: Callable, model: nn.Module, x: torch.Tensor,
             picks: Optional[Dict[str, List[int]]] = None) -> nn.Module:
    """Torch-Pruning's MetaPruner, one step, in place. With ``picks`` (a dict), the step runs
    group by group (interactive) and records the output channels removed from each conv."""
    import torch_pruning as tp

    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, x, importance=importance(), pruning_ratio=RATE,
                                  ignored_layers=[classifier])
    if picks is None:
        pruner.step()
        return model
    out_fns = (tp.pruner.function.prune_conv_out_channels,
               tp.pruner.function.prune_depthwise_conv_out_channels)
    names = {m: n for n, m in model.named_modules()}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            if dep.handler in out_fns and isinstance(dep.target.module, nn.Conv2d):
                picks[names[dep.target.module]] = sorted(int(i) for i in idxs)
        group.prune()
    return model


def tp_methods():
    import torch_pruning as tp

    from fpgm_ext.integrations.torch_pruning import FPGMImportance
    return {TP_FPGM: tp.importance.FPGMImportance, TP_OURS: FPGMImportance}


# ----------------------------------------------------------------------------- timing
def rotating(calls: Dict[str, Callable[[], Callable[[], object]]], rounds: int) -> Dict[str, float]:
    """Median seconds of each method, the methods in turn round by round, the order rotating
    each round. ``calls[name]()`` prepares one run (a fresh model copy: not timed) and returns
    the call to time."""
    samples: Dict[str, List[float]] = {k: [] for k in calls}
    names = list(calls)
    for r in range(rounds):
        for k in names[r % len(names):] + names[: r % len(names)]:
            run = calls[k]()
            start = time.perf_counter()
            run()
            samples[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


# ----------------------------------------------------------------------------- agreement
def sole_producers(model: nn.Module, report) -> List[str]:
    """Convs that are the only producer of their channel group in fpgm_ext's analysis (one
    unit per channel): their picks depend on their own weight alone in every method that
    scores the paper's way. Residual streams and depthwise chains have several producers."""
    return [g["producers"][0] for g in report.plan.groups
            if len(g["producers"]) == 1 and g["units"] == g["channels"][0]
            and isinstance(model.get_submodule(g["producers"][0]), nn.Conv2d)]


def agreement(model: nn.Module, layers: Sequence[str], picks: Dict[str, List[int]], order) -> str:
    """Each compared layer's pruned set against the official rule's ``k`` smallest float64
    sums of Euclidean distances, ``k`` the number that method removed from that layer."""
    compared = exact = 0
    overlap = []
    for name in layers:
        chosen = set(picks.get(name, ()))
        if not chosen:
            continue
        if name not in order:
            order[name] = np.argsort(oracle().scores(model.get_submodule(name).weight, "l2"), kind="stable")
        official = set(order[name][: len(chosen)].tolist())
        compared += 1
        exact += chosen == official
        overlap.append(len(chosen & official) / len(chosen))
    if not compared:
        return "no layer compared"
    return f"{exact}/{compared} exact, overlap {100 * statistics.mean(overlap):.1f} %"


def float64_agreement(model: nn.Module, x: torch.Tensor, report) -> str:
    """Every group fpgm_ext.prune pruned (residual streams and multi-producer groups
    included) against the same selection on float64 scores: the model converted to float64
    is scored in float64 throughout, nothing certified."""
    ref = fpgm_ext.prune(copy.deepcopy(model).double(), x.double(), rate_dist=RATE, measure=False,
                         inplace=True).report.plan
    want = {tuple(g["producers"]): g["kept"] for g in ref.groups if g["kept"] is not None}
    got = {tuple(g["producers"]): g["kept"] for g in report.plan.groups if g["kept"] is not None}
    same = sum(got.get(k) == v for k, v in want.items())
    return f"{same}/{len(want)} groups" + ("" if got.keys() == want.keys() else " (different groups pruned)")


# ----------------------------------------------------------------------------- one model
def run_model(name: str, x: torch.Tensor, rounds: int, threads: Sequence[int]) -> dict:
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    tps = tp_methods()
    pruned: Dict[str, nn.Module] = {}
    failed: Dict[str, str] = {}
    picks: Dict[str, Dict[str, List[int]]] = {}
    # one untimed run of each method (also the warm-up): picks and the pruned model
    pruned[OURS], report = ours(copy.deepcopy(model), x)
    picks[OURS] = ours_picks(report)
    for k, imp in tps.items():
        picks[k] = {}
        try:
            pruned[k] = tp_prune(imp, copy.deepcopy(model), x, picks[k]).eval()
            pruned[k](x)
        except Exception as e:  # noqa: BLE001 - a peer that fails is a result
            failed[k] = first_line(e)
            pruned.pop(k, None)
    layers = sole_producers(model, report)
    groups64 = float64_agreement(model, x, report)
    order: Dict[str, np.ndarray] = {}
    agree = {k: agreement(model, layers, picks[k], order) for k in METHODS if k not in failed}
    sizes = {k: measure(m, (x,)) for k, m in {"unpruned": model, **pruned}.items()}

    def ours_call(measured):
        def prepare():
            m = copy.deepcopy(model)
            return lambda: measured.append(ours(m, x).report.timings["measure"])
        return prepare

    def tp_call(imp):
        def prepare():
            m = copy.deepcopy(model)
            return lambda: tp_prune(imp, m, x)
        return prepare

    prune_t, measure_t, latency = {}, {}, {}
    nets = {"unpruned": model, **pruned}
    for n in threads:
        torch.set_num_threads(n)
        measured: List[float] = []
        calls = {OURS: ours_call(measured), **{k: tp_call(v) for k, v in tps.items() if k not in failed}}
        prune_t[n] = rotating(calls, rounds)
        measure_t[n] = statistics.median(measured)
        with torch.inference_mode():
            for m in nets.values():
                m(x)  # warm-up at this thread count
            latency[n] = rotating({k: (lambda m=m: lambda: m(x)) for k, m in nets.items()}, max(rounds, 3))
    return dict(name=name, prune=prune_t, measure=measure_t, failed=failed, agree=agree,
                layers=len(layers), sizes=sizes, latency=latency, groups64=groups64)


# ----------------------------------------------------------------------------- tables
def tables(results: List[dict], threads: Sequence[int]) -> List[str]:
    out = ["### Time to prune (median, end to end including graph tracing)", "",
           f"| model | threads | {OURS} | of which its FLOPs measurement | {TP_FPGM} | {TP_OURS} "
           "| TP's FPGM / fpgm_ext | TP + fpgm_ext / fpgm_ext |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        for n in threads:
            t = r["prune"][n]
            cells = [r["failed"].get(k) or ms(t[k]) for k in (TP_FPGM, TP_OURS)]
            ratios = ["-" if k in r["failed"] else ratio(t[k], t[OURS]) for k in (TP_FPGM, TP_OURS)]
            out.append(f"| {r['name']} | {n} | {ms(t[OURS])} | {ms(r['measure'][n])} | "
                       + " | ".join(cells + ratios) + " |")
    out += ["", "### Agreement with the official float64 rule (sole-producer convs)", "",
            f"| model | sole-producer convs | {OURS} | {TP_FPGM} | {TP_OURS} | {OURS}: every group as float64 scores pick |",
            "| --- | ---: | --- | --- | --- | --- |"]
    for r in results:
        cells = [r["failed"].get(k) or r["agree"][k] for k in METHODS]
        out.append(f"| {r['name']} | {r['layers']} | " + " | ".join(cells + [r["groups64"]]) + " |")
    lat = " | ".join(f"latency, {n} thread{'s' if n > 1 else ''}" for n in threads)
    out += ["", "### After pruning: FLOPs, parameters, CPU latency (batch 1, median)", "",
            f"| model | method | FLOPs | params | FLOPs reduction | params reduction | {lat} |",
            "| --- | --- | ---: | ---: | ---: | ---: |" + " ---: |" * len(threads)]
    for r in results:
        base = r["sizes"]["unpruned"]
        for k in ("unpruned",) + METHODS:
            if k in r["failed"]:
                out.append(f"| {r['name']} | {k} | {r['failed'][k]} | - | - | - |" + " - |" * len(threads))
                continue
            s = r["sizes"][k]
            out.append(f"| {r['name']} | {k} | {s.flops / 1e9:.3f} G | {s.params / 1e6:.2f} M | "
                       f"{100 * (1 - s.flops / base.flops):.1f} % | {100 * (1 - s.params / base.params):.1f} % | "
                       + " | ".join(ms(r["latency"][n][k]) for n in threads) + " |")
    return out


def section(date: str, body: List[str], rounds: int, threads: Sequence[int], size: int) -> str:
    import torchvision

    note = f"each model timed at {' and at '.join(map(str, threads))} (torch.set_num_threads)"
    return "\n".join([
        BEGIN, "## Peers: fpgm_ext.prune and Torch-Pruning on torchvision models", "",
        generated_note("python -m bench.peers --write", date), "",
        *machine_lines(note),
        f"- torchvision {torchvision.__version__}, torch-pruning {version('torch-pruning')}", "",
        f"One process. Models from torchvision (weights=None, seed 0, eval), input 1x3x{size}x{size}, "
        f"rate {RATE}: `fpgm_ext.prune(model, x, rate_dist={RATE}, inplace=True)` (otherwise default: "
        "residual streams pruned, FLOPs measured into its report), and Torch-Pruning's "
        f"`MetaPruner(model, x, importance, pruning_ratio={RATE}, ignored_layers=[final classifier])."
        "step()` with its own `FPGMImportance()` and with fpgm_ext's. Every timed run prunes a "
        "fresh deep copy of the same model, made outside the timed region, in place; the time "
        "is end to end (graph tracing, scoring, surgery). The methods of a model run in turn, "
        f"the order rotating each round, {rounds} round{'s' if rounds > 1 else ''}; times are medians, ratios are "
        "Torch-Pruning's time over fpgm_ext.prune's. A method that raises is recorded with "
        "the first line of its error.", "",
        "Agreement: the convs that are the only producer of their channels in fpgm_ext's "
        "analysis (not residual streams, depthwise chains or other groups of several "
        "producers, whose scores each method combines in its own way). For each such conv "
        "that a method pruned, its set of removed output channels is compared with the "
        "official rule (tests/oracle.py: the k filters with the smallest float64 sum of "
        "Euclidean distances to all the layer's filters, scipy cdist) at the k that method "
        "removed there; Torch-Pruning keeps int(N * (1 - ratio)) channels, fpgm_ext removes "
        "int(N * rate), so k can differ by one. Its picks are recorded in an untimed "
        "interactive step. Overlap: the mean of |picked ∩ official| / k. The last column "
        "compares every group fpgm_ext.prune pruned (residual streams, depthwise chains "
        "included) with the channels the same selection keeps on float64 scores (the model "
        "converted to float64: scored in float64 throughout); fpgm_ext.prune scores float32 "
        "and certifies the choice (fpgm_ext/certified.py).", "",
        "After pruning: FLOPs and parameters measured with fpgm_ext.pruning.flops.measure "
        "(FlopCounterMode, 2 FLOPs per multiply-add) for every model; latency is the median "
        f"batch-1 forward pass under inference_mode ({max(rounds, 3)} passes each after a "
        "warm-up), the unpruned and pruned models in turn as above.", "",
        *body, END])


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="fpgm_ext.prune beside Torch-Pruning: time to prune, "
                                 "agreement with the official rule, FLOPs, params and latency.")
    ap.add_argument("--write", action="store_true", help=f"update the peers section of {RESULTS}")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per model (default 5)")
    ap.add_argument("--models", default=",".join(MODELS), help="comma list of torchvision models")
    ap.add_argument("--quick", action="store_true", help="one model, one round (a smoke test)")
    ap.add_argument("--input-size", type=int, default=224, help="input height and width (default 224)")
    args = ap.parse_args(argv)
    try:
        import torch_pruning  # noqa: F401
        import torchvision  # noqa: F401
    except ImportError as e:
        print(f"bench/peers.py needs torchvision and torch-pruning: {e}")
        return 1
    models = [m for m in args.models.split(",") if m][: 1 if args.quick else None]
    rounds = 1 if args.quick else args.rounds
    default = torch.get_num_threads()
    threads = sorted({1, default})
    x = torch.randn(1, 3, args.input_size, args.input_size, generator=torch.Generator().manual_seed(0))
    date = now_utc()
    results = []
    try:
        for name in models:
            print(f"{name} ...", flush=True)
            results.append(run_model(name, x, rounds, threads))
    finally:
        torch.set_num_threads(default)
    body = tables(results, threads)
    print("\n".join(body))
    if args.write:
        write_results(section(date, body, rounds, threads, args.input_size), BEGIN, END)
        print(f"updated the peers section of {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
