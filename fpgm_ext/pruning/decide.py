"""The plan of an analysed model: why each group is left alone (the analysis's reasons,
approximate normalisations worded once, groups refused by a check, ``ignore``, residual
streams), the selection of the others, and the plan built from it."""
from __future__ import annotations

from typing import Dict, List, Optional

from torch import nn

from .config import Settings
from .graph.model import APPROXIMATE
from .plan import Plan, build_plan
from .select import Choice, select


def decide(model: nn.Module, analysis, settings: Settings, cache: Optional[Dict[int, Choice]] = None,
           refused: Optional[Dict[int, str]] = None) -> Plan:
    """The plan of ``model`` (already analysed): frozen groups, selection, plan.
    ``refused``: groups a check left alone, with why; ``cache``: see ``select``."""
    frozen = {g.id: list(g.reasons) for g in analysis.groups}
    approx = _approximate(analysis, frozen, settings.approximate)
    for gid, why in (refused or {}).items():
        frozen[gid].append(why)
    _left_alone_by_settings(analysis, frozen, settings)
    kept = _select_equal_counts(analysis, frozen, settings, cache)
    return build_plan(analysis, frozen, kept, settings.meta(model, analysis.tracer),
                      {g: r for g, r in approx.items() if g in kept})


def _approximate(analysis, frozen: Dict[int, List[str]], approximate: bool) -> Dict[int, str]:
    """The groups under normalisations over all their channels (reasons marked
    ``APPROXIMATE``), worded once: pruned approximately where ``approximate``, else left
    alone with the wording. Returns group -> why its pruning is approximate."""
    approx: Dict[int, str] = {}
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
    return approx


def _select_equal_counts(analysis, frozen: Dict[int, List[str]], settings: Settings, cache):
    """``select``, where the pieces of a chunk the model's code keeps (export graphs:
    ``Analysis.equal_counts``) lose equal numbers of channels: a piece left alone leaves
    the others alone, and where the selection gives them different counts, they are all
    left alone and the others selected again."""
    if not analysis.equal_counts:
        return select(analysis, frozen, settings, cache)
    _spread_left_alone(analysis, frozen)
    kept = select(analysis, frozen, settings, cache)
    unequal = [tie for tie in analysis.equal_counts
               if len({_kept_count(analysis, kept, s) for s in tie.spaces}) > 1]
    if not unequal:
        return kept
    for tie in unequal:
        for s in tie.spaces:
            frozen[analysis.group_of[s]].append(_why(tie))
    _spread_left_alone(analysis, frozen)
    return select(analysis, frozen, settings, cache)


def _why(tie) -> str:
    return f"a chunk at node {tie.node}, which the model's code keeps: its pieces must keep equal channel counts"


def _kept_count(analysis, kept, space: int) -> int:
    g = analysis.groups[analysis.group_of[space]]
    size = analysis.spaces[space].size
    return len(kept[g.id]) * (size // g.units) if g.id in kept else size


def _spread_left_alone(analysis, frozen) -> None:
    """A chunk's pieces all left alone where one is (until no more are)."""
    again = True
    while again:
        again = False
        for tie in analysis.equal_counts:
            gids = [analysis.group_of[s] for s in tie.spaces]
            if any(frozen[gid] for gid in gids) and not all(_why(tie) in frozen[gid] for gid in gids):
                for gid in gids:
                    if _why(tie) not in frozen[gid]:
                        frozen[gid].append(_why(tie))
                        again = True


def _left_alone_by_settings(analysis, frozen: Dict[int, List[str]], settings: Settings) -> None:
    for g in analysis.groups:
        members = analysis.members(g) if settings.ignore else ()
        for n in settings.ignore:
            hit = [m for m in members if m == n or m.startswith(n + ".")]
            if hit:
                frozen[g.id].append(f"left alone: {hit[0]} is in ignore")
        if g.residual and not settings.prune_residual:
            frozen[g.id].append("residual stream (prune_residual=False)")
