"""``prune``: FPGM physical pruning of a whole model."""
from __future__ import annotations

import copy
import math
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._checks import check_prune_args
from ..ops import distance_scores_multi as _distance_scores_multi
from ..certified import CandidateScores
from ..selection import counts, norm_stage, prune_order, split
from . import graph as _graph
from .graph.model import APPROXIMATE
from .graph.sizes import EAGER_REASONS
from . import flops as _flops
from . import target as _target
from .layers import handler_for
from .plan import Plan, apply_fitting as _apply, apply_plan, architecture, build_plan as _build_plan, zero_pruned
from .report import LayerStat, PruneReport


class PruneResult(NamedTuple):
    model: nn.Module
    report: PruneReport


def _score_rows(use, space, units: int) -> torch.Tensor:
    """The filters of one of a producer's spaces (rows ``space.offset`` on), one row per
    unit (a unit of several channels, for grouped convolutions, is the concatenation of
    its filters), in the weight's dtype (a view where the layout allows): the scores are
    certified against the float64 rule (fpgm_ext.certified), not computed in float64."""
    w = use.module.weight.detach()
    if space.offset or space.size != w.shape[0]:
        w = w[space.offset:space.offset + space.size]
    return w.reshape(units, -1)


def _scores_multi(rows: List[torch.Tensor], metric: str, distance_scores_multi) -> List[torch.Tensor]:
    """``distance_scores_multi`` over layers of any dtypes and devices: one call per kind."""
    kinds: Dict[Any, List[int]] = {}
    for k, r in enumerate(rows):
        kinds.setdefault((r.dtype, r.device), []).append(k)
    out: List[Any] = [None] * len(rows)
    for ks in kinds.values():
        for k, s in zip(ks, distance_scores_multi([rows[k] for k in ks], metric)):
            out[k] = s
    return out


def _select(analysis, frozen: Dict[int, List[str]], rate_dist, rate_norm, metric, min_channels,
            round_to, distance_scores_multi, cache: Optional[Dict[int, Any]] = None
            ) -> Dict[int, torch.Tensor]:
    """Kept units per pruned group: the official two-stage selection (fpgm_ext.selection;
    docs/design.md, algorithm and official selection) over units, with all groups' distance
    scores in one distance_scores_multi call.

    Each group gets an order of preference: the ``n_norm`` smallest-norm units (by norm),
    then the candidates by their summed distance score; the first ``N - keep`` units of
    that order are pruned. A stream fed through a ``PadShortcut`` is constrained: its
    channel ``dst`` that receives input channel ``src`` may be pruned only if ``src`` is
    pruned too (else the shortcut would carry a live value into a removed channel); its
    zero-padded channels are free. A unit that may not be pruned is passed over for the
    next one in the order, so the groups are decided upstream first.

    ``cache`` (a dict, for repeated selections of one model at several ``rate_dist`` and a
    fixed ``rate_norm``: the target search) keeps each group's norm stage and summed
    scores, which do not depend on ``rate_dist``: every group is scored once."""
    pending = {}
    queue = []
    for g in analysis.groups:
        if frozen[g.id]:
            continue
        units = g.units
        producers = analysis.producer_spaces(g)
        if not producers:
            frozen[g.id].append("no conv or linear produces these channels")
            continue
        unit_sizes = [analysis.spaces[s].size // units for s in g.spaces]
        k_min = min(units, max(math.ceil(min_channels / b) for b in unit_sizes))
        multiple = 1
        for b in unit_sizes:
            step = round_to // math.gcd(round_to, b)
            multiple = multiple * step // math.gcd(multiple, step)
        n_norm, n_dist = counts(units, rate_dist, rate_norm)
        keep = max(units - n_norm - n_dist, k_min, 1)
        keep = min(units, -(-keep // multiple) * multiple)
        if keep == units:
            continue
        known = cache.get(g.id) if cache is not None else None
        if known is not None and (known[2] is not None or n_dist == 0):
            by_norm, candidates, total = known
            pending[g.id] = (keep, multiple, by_norm, n_norm, candidates, n_dist, total)
            continue
        rows = [_score_rows(u, space, units) for u, space in producers]
        # the norm stage ranks float64 norms; without one they only find NaN and Inf
        norm_dtype = torch.float64 if n_norm > 0 else None
        row_norms = [torch.linalg.vector_norm(r, dim=1, dtype=norm_dtype) for r in rows]
        for (u, _), r, n in zip(producers, rows, row_norms):
            # NaN or Inf in a row makes its norm NaN or Inf; only then is every element
            # looked at (a finite row whose norm overflows is not an error).
            if not torch.isfinite(n).all() and not torch.isfinite(r).all():
                raise ValueError(f"fpgm_ext.prune: the weight of {u.name} contains NaN or Inf; "
                                 "FPGM scores would be meaningless")
        norms = sum(row_norms)
        by_norm, candidates = norm_stage(norms, n_norm)
        first = len(queue)
        if n_dist > 0:   # no norm stage: every row is a candidate, in order (no copy)
            queue += rows if n_norm == 0 else [r[candidates] for r in rows]
        pending[g.id] = (keep, multiple, by_norm, n_norm, candidates, n_dist, (first, len(rows)))
    scores = _scores_multi(queue, metric, distance_scores_multi) if queue else []
    for gid, entry in pending.items():   # each group's scores summed over its producers
        total = entry[-1]
        if isinstance(total, tuple):
            first, count = total
            total = None
            if entry[5] > 0:   # certified against the float64 rule at each cut (for_cut)
                total = CandidateScores(queue[first:first + count],
                                        sum(scores[first + k].to(torch.float64) for k in range(count)),
                                        metric, lambda rows: _scores_multi(rows, metric, distance_scores_multi))
            pending[gid] = entry[:-1] + (total,)
        if cache is not None:
            cache[gid] = (entry[2], entry[4], total)

    # PadShortcut constraints: (input space, output space, src, dst)
    links = [(u.in_segs[0].space, u.out_spaces[0], u.module.src.cpu(), u.module.dst.cpu())
             for u in analysis.uses.values() if u.kind == "shortcut" and u.in_segs and len(u.out_spaces) == 1]
    upstream = {gid: set() for gid in pending}
    for s_in, s_out, _, _ in links:
        g_in, g_out = analysis.group_of[s_in], analysis.group_of[s_out]
        if g_out in pending:
            if g_in == g_out:
                frozen[g_out].append("a PadShortcut maps this group's channels onto themselves")
                del pending[g_out]
                upstream.pop(g_out)
            elif g_in in pending:
                upstream[g_out].add(g_in)

    kept: Dict[int, torch.Tensor] = {}
    spaces = analysis.spaces
    while pending:
        ready = [gid for gid in pending if not (upstream[gid] & pending.keys())]
        if not ready:   # a cycle of shortcuts: leave those groups alone
            for gid in pending:
                frozen[gid].append("PadShortcuts link this group to itself through other groups")
            break
        for gid in ready:
            g = analysis.groups[gid]
            keep, multiple, by_norm, n_norm, candidates, n_dist, total = pending.pop(gid)
            linked = any(analysis.group_of[s_out] == gid for _, s_out, _, _ in links)
            scores = None
            if n_dist > 0:   # a PadShortcut may pass units over: then the whole order counts
                scores = total.all_exact() if linked else total.for_cut(g.units - keep - n_norm)
            order = prune_order(by_norm, n_norm, candidates, scores).cpu()
            allowed = torch.ones(g.units, dtype=torch.bool)
            for s_in, s_out, src, dst in links:
                if analysis.group_of[s_out] != gid:
                    continue
                g_in = analysis.groups[analysis.group_of[s_in]]
                pruned_in = torch.ones(spaces[s_in].size, dtype=torch.bool)
                b_in = spaces[s_in].size // g_in.units
                kept_in = kept.get(g_in.id)
                if kept_in is None:
                    pruned_in[:] = False
                else:
                    pruned_in[(kept_in[:, None] * b_in + torch.arange(b_in)).reshape(-1)] = False
                live = ~pruned_in[src]
                allowed[dst[live] // (spaces[s_out].size // g.units)] = False
            order = order[allowed[order]]
            n_prune = g.units - keep
            if len(order) < n_prune:   # fewer units may go: keep a multiple of round_to
                n_prune = g.units - min(g.units, -(-(g.units - len(order)) // multiple) * multiple)
            if n_prune > 0:
                kept[gid] = split(g.units, order[:n_prune]).keep
    return kept


def _tensors(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _against_masked(model, analysis, kept, meta, example_inputs, ops) -> Tuple[Optional[float], str]:
    """The model with the groups ``kept`` names pruned (and only those) against the
    original with their channels zeroed (what an exact pruning computes), on
    ``example_inputs``: (the largest difference over the largest output, "") where the
    outputs keep their shapes, else (None, why)."""
    from .graph.tracing import _ModeGuard

    alone = _build_plan(analysis, {h.id: [] for h in analysis.groups}, kept, meta)
    try:
        pruned = _apply(model, alone, False, ops)
        masked = zero_pruned(copy.deepcopy(model), alone)   # (a full copy: zeroed in place)
        with _ModeGuard(model), _ModeGuard(pruned), _ModeGuard(masked):
            got, want = _tensors(pruned(*example_inputs)), _tensors(masked(*example_inputs))
    except Exception as exc:   # noqa: BLE001 - the model's code holds a size: said, not raised
        first = next((line for line in str(exc).splitlines() if line.strip()), "")[:160]
        return None, f"the model fails on the example inputs ({type(exc).__name__}: {first})"
    if len(got) != len(want) or any(a.shape != b.shape for a, b in zip(got, want)):
        return None, "the model's outputs change shape"
    scale = max((float(w.abs().max()) for w in want if w.numel()), default=0.0)
    diff = max((float((a.float() - b.float()).abs().max()) for a, b in zip(got, want) if a.numel()),
               default=0.0)
    return (diff / scale if scale > 0 else diff), ""


def _measure_approximation(model, analysis, plan, example_inputs, ops) -> Dict[int, str]:
    """For each group pruned approximately (``approximate=True``): ``_against_masked`` of
    that group alone, into the plan's group entry as ``output_difference``. Returns the
    groups whose pruning the model's own code does not take (a size it holds), with why."""
    failed: Dict[int, str] = {}
    for g in plan.groups:
        if g.get("approximate") and g["kept"] is not None:
            diff, why = _against_masked(model, analysis, {g["id"]: torch.tensor(g["kept"])}, plan.meta,
                                        example_inputs, ops)
            if diff is None:
                failed[g["id"]] = f"pruned approximately, {why}: its code holds a size of these channels"
            else:
                g["output_difference"] = diff
    return failed


def _check_eager(model, analysis, plan, example_inputs, ops) -> Dict[int, str]:
    """torch.export's graph holds every size as a constant, and the plan is carried out on
    the model's own (eager) code, which may read a size at run time where the graph shows
    a constant (graph/sizes.py): ``_against_masked`` of the exactly pruned groups; where
    they differ (or the model fails), of each group alone, and the groups whose pruning
    the code does not take are returned, with why. One pruned copy and two forwards when
    it holds."""
    exact = {g["id"]: torch.tensor(g["kept"]) for g in plan.groups
             if g["kept"] is not None and not g.get("approximate")}

    def fails(kept) -> Optional[str]:
        diff, why = _against_masked(model, analysis, kept, plan.meta, example_inputs, ops)
        if diff is None:
            return why
        return None if diff <= EAGER_RTOL else f"pruned, it differs from the masked original by {diff:.1e}"

    if not exact or fails(exact) is None:
        return {}
    failed = {}
    for gid, kept in exact.items():
        why = fails({gid: kept})
        if why is not None:
            failed[gid] = f"traced by torch.export, whose graph holds sizes as constants: {why} " \
                          f"(the model's code reads a size of these channels)"
    return failed or {gid: "traced by torch.export: the pruned groups together do not give the masked "
                           "original on the example inputs" for gid in exact}


def _eager_checked(model, analysis, plan, example_inputs, ops, decide) -> Tuple[Plan, Dict[int, str]]:
    """A plan from torch.export's analysis, checked on the model's code (``_check_eager``):
    made again by ``decide(refused)`` without the groups it does not take."""
    if analysis.tracer != "export" or example_inputs is None:
        return plan, {}
    refused = _check_eager(model, analysis, plan, example_inputs, ops)
    return (decide(refused) if refused else plan), refused


EAGER_RTOL = 1e-3   # a wrong pruning differs by O(1); exact ones by float rounding (~1e-6)


def _channels(analysis, keep=lambda g: True) -> int:
    """Output channels of the conv and linear layers in the groups ``keep`` accepts."""
    spaces = analysis.spaces
    return sum(spaces[s].size or 0 for g in analysis.groups if keep(g)
               for s in g.spaces if spaces[s].kind in ("conv", "linear"))


def _prunable(analysis) -> int:
    return _channels(analysis, lambda g: not g.reasons)


def _analyse(model, example_inputs, trace: str, flops=None):
    """(analysis, why this tracer). ``trace="auto"``: torch.fx's analysis; where fx leaves
    at least a quarter of the conv and linear channels alone for ops it does not know (and
    example inputs allow it), torch.export's too, and whichever leaves more channels
    prunable (fx on a tie). torch.export costs seconds (more on its first call in a
    process); models fx (nearly) fully understands, most CNNs, pay for one trace only."""
    analysis = _graph.analyse(model, example_inputs, trace, flops=flops)
    if trace != "auto" or analysis.tracer != "fx" or not analysis.unsupported or example_inputs is None:
        return analysis, ""
    blocked = _channels(analysis, lambda g: any("unsupported op" in r for r in g.reasons))
    if 4 * blocked < _channels(analysis):
        return analysis, ""
    try:
        other = _graph.analyse(model, example_inputs, "export")
    except _graph.TraceFailure:
        return analysis, "torch.export could not trace it either"
    _carry_eager_reasons(analysis, other)
    ours, theirs = _prunable(analysis), _prunable(other)
    if theirs > ours:
        return other, (f"trace='auto' kept torch.export's analysis: {theirs} prunable channels "
                       f"against torch.fx's {ours}")
    return analysis, f"trace='auto' kept torch.fx's analysis ({ours} prunable channels, torch.export {theirs})"


def _carry_eager_reasons(fx, export) -> None:
    """The layers whose output channels torch.fx left alone for what only the eager code
    shows (a channel count read at run time or spelled as a constant: graph/sizes.py) stay
    alone in torch.export's analysis, whose graph holds every size as a constant."""
    for name, use in fx.uses.items():
        if use.kind not in ("conv", "linear") or name not in export.uses:
            continue
        why = next((r for s in use.out_spaces for r in fx.groups[fx.group_of[s]].reasons
                    if any(e in r for e in EAGER_REASONS)), None)
        if why is None:
            continue
        for s in export.uses[name].out_spaces:
            reasons = export.groups[export.group_of[s]].reasons
            if f"torch.fx: {why}" not in reasons:
                reasons.append(f"torch.fx: {why}")


def _decide(model, analysis, rate_dist, rate_norm, metric, ignore, prune_residual, min_channels,
            round_to, ops, cache: Optional[Dict[int, Any]] = None, approximate: bool = False,
            refused: Optional[Dict[int, str]] = None) -> Plan:
    """The plan of ``model`` (already analysed): frozen groups, selection, plan."""
    distance_scores_multi = _distance_scores_multi if ops is None else ops.distance_scores_multi
    frozen = {g.id: list(g.reasons) for g in analysis.groups}
    approx: Dict[int, str] = {}   # group -> why its pruning is approximate
    for g in analysis.groups:
        norms = [r[len(APPROXIMATE):].strip() for r in frozen[g.id] if r.startswith(APPROXIMATE)]
        if not norms:
            continue
        why = (f"{len(norms)} normalisation{'s' if len(norms) > 1 else ''} over all its channels "
               f"({', '.join(norms[:3])}{', ...' if len(norms) > 3 else ''}): pruning changes "
               f"{'their' if len(norms) > 1 else 'its'} statistics")
        frozen[g.id] = [r for r in frozen[g.id] if not r.startswith(APPROXIMATE)]
        if approximate:
            approx[g.id] = why
        else:   # (said only where nothing else keeps the group whole)
            frozen[g.id].append(why if frozen[g.id] else f"{why} (approximate=True prunes it)")
    for gid, why in (refused or {}).items():
        frozen[gid].append(why)
    for g in analysis.groups:
        members = analysis.members(g) if ignore else ()
        for n in ignore:
            hit = [m for m in members if m == n or m.startswith(n + ".")]
            if hit:
                frozen[g.id].append(f"left alone: {hit[0]} is in ignore")
        if g.residual and not prune_residual:
            frozen[g.id].append("residual stream (prune_residual=False)")
    kept = _select(analysis, frozen, rate_dist, rate_norm, metric, min_channels, round_to,
                   distance_scores_multi, cache)
    meta = {"model": type(model).__name__, "rate_dist": rate_dist, "rate_norm": rate_norm,
            "metric": metric, "prune_residual": prune_residual, "min_channels": min_channels,
            "round_to": round_to, "ignore": ignore, "tracer": analysis.tracer,
            "torch": torch.__version__, "architecture": architecture(model)}
    if approximate:
        meta["approximate"] = True
    return _build_plan(analysis, frozen, kept, meta, {g: r for g, r in approx.items() if g in kept})


def make_plan(model: nn.Module, example_inputs: Union[torch.Tensor, Sequence, None] = None,
              rate_dist: float = 0.4, rate_norm: float = 1.0, metric: str = "l2", *,
              ignore: Union[str, Sequence[str]] = (), prune_residual: bool = True,
              min_channels: int = 1, round_to: int = 1, trace: str = "auto", ops=None,
              analysis: Optional[_graph.Analysis] = None) -> Plan:
    """The plan ``prune`` would apply to ``model``, decided on its current weights, without
    the surgery (arguments as ``prune``). ``analysis``: the result of
    ``fpgm_ext.pruning.analyse(model, example_inputs, trace)``, to skip the trace when the
    same model is planned again and again (``SoftFPGM`` plans every epoch).
    ``zero_pruned(model, plan)`` gives the masked model, ``apply_plan(model, plan)`` the
    physically pruned one; the two compute the same outputs."""
    example_inputs, ignore = check_prune_args(model, example_inputs, rate_dist, rate_norm, metric, ignore,
                                              min_channels, round_to, trace)
    if analysis is None:
        analysis, _ = _analyse(model, example_inputs, trace)
    plan = _decide(model, analysis, rate_dist, rate_norm, metric, ignore, prune_residual, min_channels,
                   round_to, ops)
    return _eager_checked(model, analysis, plan, example_inputs, ops, lambda why: _decide(
        model, analysis, rate_dist, rate_norm, metric, ignore, prune_residual, min_channels, round_to, ops,
        refused=why))[0]


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


def prune(model: nn.Module, example_inputs: Union[torch.Tensor, Sequence, None] = None,
          rate_dist: float = 0.4, rate_norm: float = 1.0, metric: str = "l2", *,
          ignore: Union[str, Sequence[str]] = (), prune_residual: bool = True,
          min_channels: int = 1, round_to: int = 1, inplace: bool = False,
          trace: str = "auto", measure: bool = True, ops=None, approximate: bool = False,
          target_flops: Optional[float] = None, target_params: Optional[float] = None) -> PruneResult:
    """FPGM filter pruning of a whole model: returns ``(pruned_model, report)``, the pruned
    model physically smaller (a new module; ``model`` is untouched unless ``inplace=True``).
    ``report.plan`` is the pruning plan: ``report.plan.save("plan.json")``, then
    ``fpgm_ext.apply_plan(fresh_model, "plan.json")`` rebuilds the pruned architecture.

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
            layer). A stream's group holds every producer of the stream (the stem, each
            block's last conv and BN, projection shortcuts), scored together and pruned at
            the same indices. With the parameter-free ``PadShortcut`` the streams before and
            after a stage change are separate groups; a channel of the later stream that the
            shortcut feeds is pruned only with its source channel (its zero-padded channels
            freely), the next unit in the selection order taken instead where needed, so
            the pruned model still equals the original with its pruned filters zeroed.
        min_channels: at least this many channels kept in every layer.
        round_to: kept channel counts rounded up to a multiple of this (e.g. 8), where the
            layer has that many channels to keep.
        inplace: prune ``model`` itself instead of a copy. (A model whose code splits
            channels with constant sizes comes back as a ``PrunedGraph`` (plan.py) with
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
            (measured as above) or of the parameters to remove, e.g. 0.5: the uniform
            ``rate_dist`` (every group at one rate, the paper's semantics) whose reduction
            is nearest the target, within 1 % where reachable; ``report.target`` says
            what was reached and at which rate (``report.plan.meta["rate_dist"]`` too).
            Scores are computed once for all the rates tried.
    """
    t_start = time.perf_counter()
    example_inputs, ignore = check_prune_args(model, example_inputs, rate_dist, rate_norm, metric, ignore,
                                              min_channels, round_to, trace)
    goal = _target.check_target(target_flops, target_params)
    if goal is not None and goal[0] == "flops" and (example_inputs is None or not measure):
        raise ValueError("fpgm_ext.prune: target_flops needs example_inputs and measure=True")
    timings = {}
    do_measure = measure and example_inputs is not None
    recorder = _flops.FlopRecorder() if do_measure else None
    t = time.perf_counter()
    analysis, tracer_note = _analyse(model, example_inputs, trace, flops=recorder)
    timings["trace and analyse"] = time.perf_counter() - t

    layers_before = _layers(model)
    params_before = sum(p.numel() for p in model.parameters())
    # FLOPs: counted during the analysis's forward and derived for the pruned model where
    # all of them are in conv and linear layers (flops.py); else two real passes.
    t = time.perf_counter()
    before = recorder.measurement(model) if do_measure else None
    sizes = _flops.weight_sizes(model) if before is not None else None
    if do_measure and before is None:
        before = _flops.measure(model, example_inputs)
    timings["measure"] = time.perf_counter() - t

    t = time.perf_counter()
    target = None
    if goal is None:
        plan = _decide(model, analysis, rate_dist, rate_norm, metric, ignore, prune_residual,
                       min_channels, round_to, ops, approximate=approximate)
    else:
        cache: Dict[int, Any] = {}

        def plan_at(rate):
            return _decide(model, analysis, rate, rate_norm, metric, ignore, prune_residual,
                           min_channels, round_to, ops, cache, approximate)

        def reduction(plan):
            if goal[0] == "params":
                return 1.0 - _target.planned_params(model, plan, params_before) / params_before
            flops_after = _target.planned_flops(before, sizes, model, plan) if sizes is not None else None
            if flops_after is not None:
                return 1.0 - flops_after / before.flops
            pruned_copy = apply_plan(model, plan, ops=ops)   # FLOPs outside conv/linear layers
            return 1.0 - _flops.measure(pruned_copy, example_inputs).flops / before.flops

        plan, target = _target.search(plan_at, reduction, *goal)
    timings["score and select"] = time.perf_counter() - t
    t = time.perf_counter()
    plan, refused = _eager_checked(model, analysis, plan, example_inputs, ops, lambda why: _decide(
        model, analysis, plan.meta["rate_dist"], rate_norm, metric, ignore, prune_residual, min_channels,
        round_to, ops, approximate=approximate, refused=why))
    if analysis.tracer == "export":
        timings["eager check"] = time.perf_counter() - t
    t = time.perf_counter()
    if example_inputs is not None and any(g.get("approximate") for g in plan.groups):
        t = time.perf_counter()
        failed = _measure_approximation(model, analysis, plan, example_inputs, ops)
        if failed:   # left alone, named; the others measured again in the plan without them
            plan = _decide(model, analysis, plan.meta["rate_dist"], rate_norm, metric, ignore,
                           prune_residual, min_channels, round_to, ops, approximate=True,
                           refused={**refused, **failed})
            _measure_approximation(model, analysis, plan, example_inputs, ops)
        timings["approximation"] = time.perf_counter() - t
        t = time.perf_counter()
    pruned = _apply(model, plan, inplace, ops)   # the plan was made from this model: no fit check
    timings["surgery"] = time.perf_counter() - t
    t = time.perf_counter()
    after = None
    if do_measure:
        after = _flops.derive_pruned(before, sizes, pruned) if sizes is not None else None
        if after is None:
            after = _flops.measure(pruned, example_inputs)
    timings["measure"] += time.perf_counter() - t
    layers_after = _layers(pruned)
    layers = []
    for name, (kind, i, o, p) in layers_before.items():
        _, i2, o2, p2 = layers_after[name]
        layers.append(LayerStat(name, kind, f"{i} -> {o}", f"{i2} -> {o2}",
                                before.layer_flops.get(name) if before else None,
                                after.layer_flops.get(name) if after else None, p, p2))
    timings["total"] = time.perf_counter() - t_start
    report = PruneReport(
        plan=plan, tracer=analysis.tracer, tracer_note=tracer_note,
        flops_before=before.flops if before else None, flops_after=after.flops if after else None,
        params_before=params_before, params_after=sum(p.numel() for p in pruned.parameters()),
        layers=layers, unsupported=list(dict.fromkeys(analysis.unsupported)), timings=timings,
        target=target)
    return PruneResult(pruned, report)
