"""Plans checked on the model's own code: a set of pruned groups applied to a copy and
run on the example inputs against the original with their channels zeroed
(``against_masked``). Used to measure approximate groups (``measure_approximation``) and
to check plans from torch.export's analysis, whose graph holds every size as a constant
while the model's code may read one at run time (``eager_checked``; large models of a known family on a small twin, twin.py)."""
from __future__ import annotations

import copy
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .graph.tracing import _ModeGuard
from .outputs import Outputs
from .plan import Plan, apply_fitting, build_plan, zero_pruned

EAGER_RTOL = 1e-3   # a wrong pruning differs by O(1); exact ones by float rounding (~1e-6)
EXACT_RTOL_FLOAT64 = 1e-9   # in float64, exact ones differ by ~1e-13
# The analyses whose plans are checked on the model's code: torch.export's graph holds
# sizes as constants; the module structure (structure.py) does not see the code at all.
CHECKED_TRACERS = ("export", "structure")

def _tensors(out, outputs: Outputs) -> List[torch.Tensor]:
    """The output tensors the pruned model must give by value (../outputs.py)."""
    return [t for t in outputs.kept(out) if isinstance(t, torch.Tensor)]


def _pair(model, analysis, kept, meta, ops) -> Tuple[nn.Module, nn.Module]:
    """(the model with the groups ``kept`` names pruned, and only those; the original with
    their channels zeroed): two copies, the model untouched."""
    alone = build_plan(analysis, {h.id: [] for h in analysis.groups}, kept, meta)
    return apply_fitting(model, alone, False, ops), zero_pruned(copy.deepcopy(model), alone)


def against_masked(model, analysis, kept, meta, example_inputs, ops) -> Tuple[Optional[float], str]:
    """The model with the groups ``kept`` names pruned (and only those) against the
    original with their channels zeroed (what an exact pruning computes), on
    ``example_inputs``: (the largest difference over the largest output, "") where the
    outputs keep their shapes, else (None, why)."""
    try:
        pruned, masked = _pair(model, analysis, kept, meta, ops)
        with _ModeGuard(model), _ModeGuard(pruned), _ModeGuard(masked):
            got = _tensors(pruned(*example_inputs), analysis.outputs)
            want = _tensors(masked(*example_inputs), analysis.outputs)
    except Exception as exc:   # noqa: BLE001 - the model's code holds a size: said, not raised
        return None, f"the model fails on the example inputs ({type(exc).__name__}: {_first(exc)})"
    if len(got) != len(want) or any(a.shape != b.shape for a, b in zip(got, want)):
        return None, "the model's outputs change shape"
    scale = max((float(w.abs().max()) for w in want if w.numel()), default=0.0)
    diff = max((float((a.float() - b.float()).abs().max()) for a, b in zip(got, want) if a.numel()),
               default=0.0)
    return (diff / scale if scale > 0 else diff), ""


def _not_exact(model, analysis, kept, meta, example_inputs, ops) -> Optional[str]:
    """Why pruning the groups ``kept`` is not exact on the model's code, or None: the pruned
    model against the masked original, each output against its own scale, in float64
    where the model runs in it (an exact pruning agrees to rounding, ~1e-13; a channel
    count the code reads, however small its effect, does not), else in its dtype. The two
    copies are converted in place (float64, then back where float64 fails: exact)."""
    try:
        pair = _pair(model, analysis, kept, meta, ops)
    except Exception as exc:   # noqa: BLE001 - said, not raised
        return f"the model fails on the example inputs ({type(exc).__name__}: {_first(exc)})"
    dtypes = {p.dtype for m in pair for p in m.parameters() if p.is_floating_point()}
    native = dtypes.pop() if len(dtypes) == 1 else None
    for m in pair:
        _no_dropout(m)
    for dtype, tolerance in ((torch.float64, EXACT_RTOL_FLOAT64), (native, EAGER_RTOL)):
        try:
            runs = [_outputs(model, *pair, example_inputs, dtype, training, analysis.outputs)
                    for training in (False, True)]
        except Exception as exc:   # noqa: BLE001 - the model's code holds a size (or no float64)
            if dtype is not torch.float64:
                return f"the model fails on the example inputs ({type(exc).__name__}: {_first(exc)})"
            continue
        for (got, want), mode in zip(runs, ("", " in training mode")):
            if len(got) != len(want) or any(a.shape != b.shape for a, b in zip(got, want)):
                return f"the model's outputs change shape{mode}"
            diff = max((float((a.double() - b.double()).abs().max()) / max(float(b.double().abs().max()), 1e-30)
                        for a, b in zip(got, want) if a.numel()), default=0.0)
            if not diff <= tolerance:   # (NaN too: an output the pruning broke)
                return f"pruned, it differs from the masked original{mode} by {diff:.1e}"
        return None
    return None


def _outputs(model, pruned, masked, example_inputs, dtype, training: bool, outputs: Outputs):
    """(pruned's outputs, masked's) on the example inputs, in eval or in training mode
    (torch.export saw eval mode only: code on a branch of ``self.training`` shows here;
    the random draws of both forwards start from one seed), both copies (and the floating
    inputs) converted to ``dtype`` where one is given."""
    inputs = list(example_inputs)
    if dtype is not None:
        pruned.to(dtype), masked.to(dtype)
        inputs = [x.to(dtype) if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs]
    outs = []
    with _ModeGuard(model), torch.random.fork_rng(devices=[]):
        for m in (pruned, masked):
            m.train(training)
            torch.manual_seed(0)
            with torch.no_grad():
                outs.append(_tensors(m(*inputs), outputs))
    return outs[0], outs[1]


def _no_dropout(model) -> None:
    """Dropout's draws differ between a pruned tensor and its masked original (fewer
    elements), whatever the seed: the copies' dropout modules (and drop-path rates) are set
    to drop nothing, so that training mode shows the model's other code, not the draws."""
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0
        for name, value in list(vars(m).items()):   # drop_prob, attention_dropout (HF), ...
            if isinstance(value, float) and ("drop" in name):
                setattr(m, name, 0.0)


def _first(exc) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), "")[:160]


def measure_approximation(model, analysis, plan, example_inputs, ops) -> Dict[int, str]:
    """For each group pruned approximately (``approximate=True``): ``against_masked`` of
    that group alone, into the plan's group entry as ``output_difference``. Returns the
    groups whose pruning the model's own code does not take (a size it holds), with why."""
    failed: Dict[int, str] = {}
    for g in plan.groups:
        if g.get("approximate") and g["kept"] is not None:
            diff, why = against_masked(model, analysis, {g["id"]: torch.tensor(g["kept"])}, plan.meta,
                                        example_inputs, ops)
            if diff is None:
                failed[g["id"]] = f"pruned approximately, {why}: its code holds a size of these channels"
            else:
                g["output_difference"] = diff
    return failed


def check_plan(model, analysis, plan, example_inputs, ops) -> Dict[int, str]:
    """torch.export's graph holds every size as a constant, and the plan is carried out on
    the model's own (eager) code, which may read a size at run time where the graph shows
    a constant (graph/sizes.py): ``against_masked`` of the exactly pruned groups; where
    they differ (or the model fails), of each group alone, and the groups whose pruning
    the code does not take are returned, with why. One pruned copy and two forwards when
    it holds."""
    exact = {g["id"]: torch.tensor(g["kept"]) for g in plan.groups
             if g["kept"] is not None and not g.get("approximate")}

    def fails(kept) -> Optional[str]:
        return _not_exact(model, analysis, kept, plan.meta, example_inputs, ops)

    if not exact or fails(exact) is None:
        return {}
    failed = {}
    source = _SOURCES[analysis.tracer]
    for gid, kept in exact.items():
        why = fails({gid: kept})
        if why is not None:
            failed[gid] = f"{source}: {why} (the model's code reads a size of these channels)"
    return failed or {gid: f"{source}: the pruned groups together do not give the masked original on the "
                           "example inputs" for gid in exact}


# What the analysis of each checked tracer could not see, for the reasons of refused groups.
_SOURCES = {"export": "traced by torch.export, whose graph holds sizes as constants",
            "structure": "analysed from the module structure, which does not read the model's code"}


def eager_checked(model, analysis, plan, example_inputs, ops, decide, on_twin=None) -> Tuple[Plan, Dict[int, str]]:
    """A plan from torch.export's analysis (or the module structure), checked on the
    model's code (``check_plan``; on a small twin where ``on_twin()`` gives its refusals
    rather than None: twin.py): made again by ``decide(refused)`` without the groups it
    does not take."""
    if analysis.tracer not in CHECKED_TRACERS or example_inputs is None:
        return plan, {}
    refused = on_twin() if on_twin is not None else None
    if refused is None:
        refused = check_plan(model, analysis, plan, example_inputs, ops)
    return (decide(refused) if refused else plan), refused

