"""``prune``: FPGM physical pruning of a whole model, as the flow it is: trace and
analyse (tracer.py, graph/), measure (flops.py), decide the plan (decide.py: select.py's
selection, plan/build.py), check it on the model's code where the tracer needs it
(checks.py), the surgery (plan/surgery.py), measure again, report. ``make_plan``: the
plan alone.

Channel dependencies come from the graph (``torch.fx``, else ``torch.export`` with
``example_inputs``; see ``fpgm_ext.pruning.graph``): the channels that must be removed
together form a *group* (a conv and its BatchNorm and consumers; all producers of a
residual stream; a depthwise or grouped conv with its input, in whole conv groups).
Patterns the analysis does not understand are left unpruned and named in the report.

Scores for a group: each member's FPGM score over its own filters, summed over the
members. A member is a conv or linear layer whose output channels the group holds;
its "filter" for a unit is its filter rows for that unit (one row per channel; for a
grouped conv, a unit is one conv group and its rows are concatenated). Selection is the
official two-stage one (docs/design.md, algorithm and official selection; as
``fpgm_ext.select``, the same code in ``fpgm_ext.selection``), over the group's
N units with its floor counts: ``int(N * (1 - rate_norm))`` units of smallest norm (the
sum over members of the L2 norm of their unit's rows), then ``int(N * rate_dist)`` of
the remaining candidates with the smallest summed score, distances taken among the
candidates only; the float64 rule's choice (float32 scores certified against it,
fpgm_ext.certified), ties to the lower index. A group of one member is
pruned exactly as ``fpgm_ext.select(weight, rate_dist, rate_norm)`` (unless
``min_channels``, ``round_to`` or a ``PadShortcut`` constraint below keeps more).

The scores of the whole model are computed in one ``distance_scores_multi`` call and all
the weight surgery is one ``gather_channels`` call (``ops``: an object with those two
functions, default the ``torch.ops.fpgm`` operators; ``fpgm_ext.reference`` is the
pure-PyTorch one).

Residual streams: a stream's group holds every producer of the stream (the stem, each
block's last conv and BN, projection shortcuts), scored together and pruned at the same
indices. With the parameter-free ``PadShortcut`` the streams before and after a stage
change are separate groups; a channel of the later stream that the shortcut feeds is
pruned only with its source channel (its zero-padded channels freely), the next unit in
the selection order taken instead where needed, so the pruned model still equals the
original with its pruned filters zeroed.
"""
from __future__ import annotations

import contextlib
import time
from typing import Dict, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from .._checks import check_prune_args
from . import flops as _flops
from . import graph as _graph
from . import target as _target
from .checks import CHECKED_TRACERS, eager_checked, measure_approximation
from .config import Settings
from .decide import decide
from .layers import handler_for
from .families import outputs_for
from .plan import Plan, apply_fitting, apply_plan
from .report import LayerStat, PruneReport
from .tracer import analyse_model
from .twin import twin_refused


class PruneResult(NamedTuple):
    model: nn.Module
    report: PruneReport


def make_plan(model: nn.Module, example_inputs: Union[torch.Tensor, Sequence, None] = None,
              rate_dist: float = 0.4, rate_norm: float = 1.0, metric: str = "l2", *,
              ignore: Union[str, Sequence[str]] = (), prune_residual: bool = True,
              min_channels: int = 1, round_to: int = 1, trace: str = "auto", ops=None,
              analysis: Optional[_graph.Analysis] = None, outputs=None) -> Plan:
    """The plan ``prune`` would apply to ``model``, decided on its current weights, without
    the surgery (arguments as ``prune``). ``analysis``: the result of
    ``fpgm_ext.pruning.analyse(model, example_inputs, trace)``, to skip the trace when the
    same model is planned again and again (``SoftFPGM`` plans every epoch).
    ``zero_pruned(model, plan)`` gives the masked model, ``apply_plan(model, plan)`` the
    physically pruned one; the two compute the same outputs."""
    example_inputs, ignore = check_prune_args(model, example_inputs, rate_dist, rate_norm, metric, ignore,
                                              min_channels, round_to, trace)
    settings = Settings(rate_dist, rate_norm, metric, ignore, prune_residual, min_channels, round_to, False, ops)
    if analysis is None:
        analysis, _ = analyse_model(model, example_inputs, trace, outputs=outputs_for(model, outputs), rate=rate_dist)
    plan = decide(model, analysis, settings)
    return _checked(model, analysis, plan, settings, example_inputs)[0]


def prune(model: nn.Module, example_inputs: Union[torch.Tensor, Sequence, None] = None,
          rate_dist: float = 0.4, rate_norm: float = 1.0, metric: str = "l2", *,
          ignore: Union[str, Sequence[str]] = (), prune_residual: bool = True,
          min_channels: int = 1, round_to: int = 1, inplace: bool = False,
          trace: str = "auto", measure: bool = True, ops=None, approximate: bool = False,
          target_flops: Optional[float] = None, target_params: Optional[float] = None,
          outputs=None) -> PruneResult:
    """FPGM filter pruning of a whole model: returns ``(pruned_model, report)``, the pruned
    model physically smaller (a new module; ``model`` is untouched unless ``inplace=True``).
    ``report.plan`` is the pruning plan: ``report.plan.save("plan.json")``, then
    ``fpgm_ext.apply_plan(fresh_model, "plan.json")`` rebuilds the pruned architecture.

    How groups are found and scored, and which calls do the work: this module's docstring.

    Args:
        example_inputs: a tensor or tuple of positional inputs. Needed for the measured
            FLOPs, for torch.export when fx cannot trace the model, and to know shapes
            (a ``Linear`` is pruned only on a known ``[N, features]`` input).
        rate_dist, rate_norm, metric: as ``fpgm_ext.select``; rate_dist in [0, 1),
            rate_norm in (0, 1]; "FPGM-only 40 %" is ``rate_dist=0.4, rate_norm=1``.
        ignore: module names (or prefixes: a container names all its submodules) to leave
            alone: every group the module belongs to keeps all its channels, so the module
            keeps its shape on both sides.
        prune_residual: prune residual streams too (default, as the paper prunes every conv
            layer; the module docstring says how a stream's producers are pruned together).
        min_channels: at least this many channels kept in every layer.
        round_to: kept channel counts rounded up to a multiple of this (e.g. 8), where the
            layer has that many channels to keep.
        inplace: prune ``model`` itself instead of a copy. (A model whose code splits
            channels with constant sizes comes back as a ``PrunedGraph`` (plan/rewrite.py) with
            the new sizes; with ``inplace=True`` its submodules are ``model``'s own, pruned,
            and ``model``'s own forward no longer fits them: use the returned module.)
        trace: "auto", "fx" or "export". "auto": torch.fx, else torch.export; where fx
            traces but leaves a quarter or more of the channels alone for ops it does not
            know, torch.export's analysis too (about a second more), and the one that
            prunes more (``report.tracer``, ``report.tracer_note``).
        measure: measure FLOPs and parameters with FlopCounterMode (needs example_inputs).
        approximate: also prune channels under a LayerNorm or GroupNorm(1, C) over all of
            them (their statistics change: the pruned model is then not the masked
            original); each such group is in ``report.approximate`` with its measured
            ``output_difference`` (that group alone pruned, against the original with its
            channels zeroed, on ``example_inputs``, over the largest output).
        target_flops, target_params: instead of ``rate_dist``, the fraction of the FLOPs
            or of the parameters to remove, e.g. 0.5: the uniform ``rate_dist`` whose
            reduction is nearest the target (target.py); ``report.target`` says which.
        outputs: a function picking the outputs the pruned model must give by value (e.g.
            ``lambda out: out[0]``), the others may lose channels; default: outputs.py.
    """
    clock = _Clock()
    example_inputs, ignore = check_prune_args(model, example_inputs, rate_dist, rate_norm, metric, ignore,
                                              min_channels, round_to, trace)
    goal = _target.check_target(target_flops, target_params)
    if goal is not None and goal[0] == "flops" and (example_inputs is None or not measure):
        raise ValueError("fpgm_ext.prune: target_flops needs example_inputs and measure=True")
    settings = Settings(rate_dist, rate_norm, metric, ignore, prune_residual, min_channels, round_to,
                        approximate, ops)
    recorder = _flops.FlopRecorder() if (do_measure := measure and example_inputs is not None) else None
    with clock("trace and analyse"):
        analysis, note = analyse_model(model, example_inputs, trace, recorder, outputs_for(model, outputs), rate_dist)
    layers_before, params_before = _layers(model), _params(model)
    with clock("measure"):
        before, sizes = _measure_before(model, example_inputs, recorder) if do_measure else (None, None)
    with clock("score and select"):
        plan, target = _plan(model, analysis, settings, goal, example_inputs, before, sizes, params_before)
    with clock("eager check", keep=analysis.tracer in CHECKED_TRACERS):
        plan, refused = _checked(model, analysis, plan, settings, example_inputs)
    if example_inputs is not None and any(g.get("approximate") for g in plan.groups):
        with clock("approximation"):
            plan = _approximation_measured(model, analysis, plan, settings, example_inputs, refused)
    with clock("surgery"):
        pruned = apply_fitting(model, plan, inplace, ops)   # made from this model: no fit check
    with clock("measure"):
        after = _measure_after(pruned, example_inputs, before, sizes) if do_measure else None
    report = PruneReport(
        plan=plan, tracer=analysis.tracer, tracer_note=note, outputs_note=analysis.outputs.note,
        flops_before=before.flops if before else None, flops_after=after.flops if after else None,
        params_before=params_before, params_after=_params(pruned),
        layers=_layer_stats(layers_before, _layers(pruned), before, after),
        unsupported=list(dict.fromkeys(analysis.unsupported)), timings=clock.total(), target=target)
    return PruneResult(pruned, report)


def _checked(model, analysis, plan, settings: Settings, example_inputs):
    """(the plan, the groups refused): ``checks.eager_checked`` at the plan's rate, on a
    small twin for a large model of a family that builds one (twin.py)."""
    settings = settings.at_rate(plan.meta["rate_dist"])
    return eager_checked(model, analysis, plan, example_inputs, settings.ops,
                         lambda why: decide(model, analysis, settings, refused=why),
                         lambda: twin_refused(model, analysis, plan, settings, example_inputs))


class _Clock:
    """The report's timings: seconds per step (a step timed twice adds up), and the total."""

    def __init__(self):
        self.start = time.perf_counter()
        self.steps: Dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, step: str, keep: bool = True):
        t = time.perf_counter()
        yield
        if keep:
            self.steps[step] = self.steps.get(step, 0.0) + time.perf_counter() - t

    def total(self) -> Dict[str, float]:
        return {**self.steps, "total": time.perf_counter() - self.start}


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _layers(model) -> Dict[str, tuple]:
    """name -> (type, in channels, out channels, own parameters) of the layers that make
    channels (conv, linear, shortcut)."""
    info = {}
    for name, m in model.named_modules():
        handler = handler_for(m)
        ch = handler.channels(m) if handler is not None else None
        if ch is not None:
            info[name] = (type(m).__name__, ch.inputs, ch.outputs, sum(p.numel() for p in m.parameters(recurse=False)))
    return info


def _layer_stats(layers_before, layers_after, before, after):
    stats = []
    for name, (kind, i, o, p) in layers_before.items():
        _, i2, o2, p2 = layers_after[name]
        stats.append(LayerStat(name, kind, f"{i} -> {o}", f"{i2} -> {o2}",
                               before.layer_flops.get(name) if before else None,
                               after.layer_flops.get(name) if after else None, p, p2))
    return stats


def _measure_before(model, example_inputs, recorder):
    """(FLOPs and parameters before pruning, the conv and linear weights' sizes): counted
    during the analysis's forward where every FLOP is in such a layer (then derived after
    the surgery from the sizes); else a real pass (and no sizes)."""
    before = recorder.measurement(model)
    if before is not None:
        return before, _flops.weight_sizes(model)
    return _flops.measure(model, example_inputs), None


def _measure_after(pruned, example_inputs, before, sizes):
    after = _flops.derive_pruned(before, sizes, pruned) if sizes is not None else None
    return after if after is not None else _flops.measure(pruned, example_inputs)


def _plan(model, analysis, settings: Settings, goal, example_inputs, before, sizes, params_before):
    """(the plan, the target reached or None): at ``settings.rate_dist``, or at the
    uniform rate whose reduction meets ``goal`` (target.py), the scores computed once."""
    if goal is None:
        return decide(model, analysis, settings), None
    cache: Dict[int, object] = {}

    def reduction(plan):
        if goal[0] == "params":
            return 1.0 - _target.planned_params(model, plan, params_before) / params_before
        flops_after = _target.planned_flops(before, sizes, model, plan) if sizes is not None else None
        if flops_after is not None:
            return 1.0 - flops_after / before.flops
        pruned_copy = apply_plan(model, plan, ops=settings.ops)   # FLOPs outside conv/linear layers
        return 1.0 - _flops.measure(pruned_copy, example_inputs).flops / before.flops

    return _target.search(lambda rate: decide(model, analysis, settings.at_rate(rate), cache), reduction, *goal)


def _approximation_measured(model, analysis, plan, settings, example_inputs, refused) -> Plan:
    """Each approximate group's output difference measured into the plan; those whose
    pruning the model's own code does not take are left alone, named, and the others
    measured again in the plan made without them."""
    failed = measure_approximation(model, analysis, plan, example_inputs, settings.ops)
    if not failed:
        return plan
    plan = decide(model, analysis, settings.at_rate(plan.meta["rate_dist"]), refused={**refused, **failed})
    measure_approximation(model, analysis, plan, example_inputs, settings.ops)
    return plan
