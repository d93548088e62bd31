"""The units each pruned group keeps: the official two-stage selection
(``fpgm_ext.selection``; docs/design.md, the algorithm and the official selection) over a
group's units, with every group's distance scores from one ``distance_scores_multi`` call,
certified against the float64 rule (``fpgm_ext.certified``), and the constraints of
parameter-free ``PadShortcut``s between groups."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional

import torch

from ..certified import CandidateScores
from ..selection import counts, norm_stage, prune_order, split
from .config import Settings
from .layers import handler_for


@dataclass(frozen=True)
class Choice:
    """How a group is to be pruned: the units it keeps (a multiple of ``multiple``), its
    norm stage (``by_norm``, the ``n_norm`` first of which go; the ``candidates``) and its
    candidates' distance scores, of which ``n_dist`` go (None: none do)."""
    keep: int
    multiple: int
    by_norm: torch.Tensor
    n_norm: int
    candidates: torch.Tensor
    n_dist: int
    scores: Optional[CandidateScores] = None


@dataclass(frozen=True)
class Link:
    """A PadShortcut between two spaces: its output channel ``dst[k]`` receives input
    channel ``src[k]``."""
    space_in: int
    space_out: int
    src: torch.Tensor
    dst: torch.Tensor


def select(analysis, frozen: Dict[int, List[str]], settings: Settings,
           cache: Optional[Dict[int, Choice]] = None) -> Dict[int, torch.Tensor]:
    """Kept units per pruned group. Each group gets an order of preference: the
    ``n_norm`` smallest-norm units (by norm), then the candidates by their summed distance
    score; the first ``N - keep`` units of that order are pruned. Groups with a reason in
    ``frozen`` are left alone (and a group no conv or linear produces gets one).

    ``cache`` (for repeated selections of one model at several ``rate_dist`` and a fixed
    ``rate_norm``: the target search) keeps each group's norm stage and summed scores,
    which do not depend on ``rate_dist``: every group is scored once."""
    choices = _choices(analysis, frozen, settings, cache)
    links = _links(analysis)
    upstream = _upstream(analysis, links, choices, frozen)
    return _decide_in_order(analysis, links, choices, upstream, frozen)


def _unit_counts(analysis, g, settings: Settings):
    """(units kept, the multiple they come in, n_norm, n_dist) of group ``g``."""
    units = g.units
    unit_sizes = [analysis.spaces[s].size // units for s in g.spaces]
    k_min = min(units, max(math.ceil(settings.min_channels / b) for b in unit_sizes))
    multiple = 1
    for b in unit_sizes:
        step = settings.round_to // math.gcd(settings.round_to, b)
        multiple = multiple * step // math.gcd(multiple, step)
    n_norm, n_dist = counts(units, settings.rate_dist, settings.rate_norm)
    keep = max(units - n_norm - n_dist, k_min, 1)
    return min(units, -(-keep // multiple) * multiple), multiple, n_norm, n_dist


def _score_rows(use, space, units: int) -> torch.Tensor:
    """The filters of one of a producer's spaces (rows ``space.offset`` on), one row per
    unit (a unit of several channels, for grouped convolutions, is the concatenation of
    its filters), in the weight's dtype (a view where the layout allows): the scores are
    certified against the float64 rule (fpgm_ext.certified), not computed in float64."""
    w = handler_for(use.module).filters(use.module).detach()
    if space.offset or space.size != w.shape[0]:
        w = w[space.offset:space.offset + space.size]
    return w.reshape(units, -1)


def _norm_stage(producers, rows, n_norm: int):
    """(by_norm, candidates) of a group from its producers' rows: the norm stage ranks
    float64 norms; without one the norms only find NaN and Inf."""
    norm_dtype = torch.float64 if n_norm > 0 else None
    row_norms = [torch.linalg.vector_norm(r, dim=1, dtype=norm_dtype) for r in rows]
    for (u, _), r, n in zip(producers, rows, row_norms):
        # NaN or Inf in a row makes its norm NaN or Inf; only then is every element
        # looked at (a finite row whose norm overflows is not an error).
        if not torch.isfinite(n).all() and not torch.isfinite(r).all():
            raise ValueError(f"fpgm_ext.prune: the weight of {u.name} contains NaN or Inf; "
                             "FPGM scores would be meaningless")
    return norm_stage(sum(row_norms), n_norm)


@dataclass(frozen=True)
class _Queued:
    """A group's rows in the one scoring call: ``count`` layers from ``first`` on."""
    first: int
    count: int


def _choices(analysis, frozen, settings: Settings, cache) -> Dict[int, Choice]:
    """Every group to prune, scored: the rows of all of them in one multi-layer call."""
    pending: Dict[int, Choice] = {}
    queued: Dict[int, _Queued] = {}
    queue: List[torch.Tensor] = []
    for g in analysis.groups:
        if frozen[g.id]:
            continue
        producers = analysis.producer_spaces(g)
        if not producers:
            frozen[g.id].append("no conv or linear produces these channels")
            continue
        keep, multiple, n_norm, n_dist = _unit_counts(analysis, g, settings)
        if keep == g.units:
            continue
        known = cache.get(g.id) if cache is not None else None
        if known is not None and (known.scores is not None or n_dist == 0):
            pending[g.id] = replace(known, keep=keep, multiple=multiple, n_norm=n_norm, n_dist=n_dist)
            continue
        rows = [_score_rows(u, space, g.units) for u, space in producers]
        by_norm, candidates = _norm_stage(producers, rows, n_norm)
        queued[g.id] = _Queued(len(queue), len(rows))
        if n_dist > 0:   # no norm stage: every row is a candidate, in order (no copy)
            queue += rows if n_norm == 0 else [r[candidates] for r in rows]
        pending[g.id] = Choice(keep, multiple, by_norm, n_norm, candidates, n_dist)
    scores = _scores_multi(queue, settings) if queue else []
    for gid, q in queued.items():   # each group's scores summed over its producers
        if pending[gid].n_dist > 0:   # certified against the float64 rule at each cut
            total = sum(scores[q.first + k].to(torch.float64) for k in range(q.count))
            pending[gid] = replace(pending[gid], scores=CandidateScores(
                queue[q.first:q.first + q.count], total, settings.metric,
                lambda rows: _scores_multi(rows, settings)))
    if cache is not None:
        cache.update(pending)
    return pending


def _scores_multi(rows: List[torch.Tensor], settings: Settings) -> List[torch.Tensor]:
    """``distance_scores_multi`` over layers of any dtypes and devices: one call per kind."""
    kinds: Dict[Any, List[int]] = {}
    for k, r in enumerate(rows):
        kinds.setdefault((r.dtype, r.device), []).append(k)
    out: List[Any] = [None] * len(rows)
    for ks in kinds.values():
        for k, s in zip(ks, settings.distance_scores_multi([rows[k] for k in ks], settings.metric)):
            out[k] = s
    return out


def _links(analysis) -> List[Link]:
    return [Link(u.in_segs[0].space, u.out_spaces[0], u.module.src.cpu(), u.module.dst.cpu())
            for u in analysis.uses.values() if u.kind == "shortcut" and u.in_segs and len(u.out_spaces) == 1]


def _upstream(analysis, links: List[Link], choices: Dict[int, Choice], frozen) -> Dict[int, set]:
    """group -> the pruned groups that feed it through a PadShortcut (decided first); a
    shortcut that maps a group onto itself leaves it alone."""
    upstream: Dict[int, set] = {gid: set() for gid in choices}
    for link in links:
        g_in, g_out = analysis.group_of[link.space_in], analysis.group_of[link.space_out]
        if g_out in choices:
            if g_in == g_out:
                frozen[g_out].append("a PadShortcut maps this group's channels onto themselves")
                del choices[g_out]
                upstream.pop(g_out)
            elif g_in in choices:
                upstream[g_out].add(g_in)
    return upstream


def _decide_in_order(analysis, links, choices, upstream, frozen) -> Dict[int, torch.Tensor]:
    """The kept units of each group, upstream groups first: a unit that a PadShortcut
    feeds from a kept channel may not be pruned (the shortcut would carry a live value
    into a removed channel); it is passed over for the next one in the order."""
    kept: Dict[int, torch.Tensor] = {}
    while choices:
        ready = [gid for gid in choices if not (upstream[gid] & choices.keys())]
        if not ready:   # a cycle of shortcuts: leave those groups alone
            for gid in choices:
                frozen[gid].append("PadShortcuts link this group to itself through other groups")
            break
        for gid in ready:
            pruned = _pruned_units(analysis, links, gid, choices.pop(gid), kept)
            if pruned is not None:
                kept[gid] = pruned
    return kept


def _pruned_units(analysis, links, gid: int, c: Choice, kept) -> Optional[torch.Tensor]:
    """The kept units of one group (None: it loses none)."""
    g = analysis.groups[gid]
    linked = any(analysis.group_of[link.space_out] == gid for link in links)
    scores = None
    if c.n_dist > 0:   # a PadShortcut may pass units over: then the whole order counts
        scores = c.scores.all_exact() if linked else c.scores.for_cut(g.units - c.keep - c.n_norm)
    order = prune_order(c.by_norm, c.n_norm, c.candidates, scores).cpu()
    allowed = _allowed(analysis, links, gid, kept)
    order = order[allowed[order]]
    n_prune = g.units - c.keep
    if len(order) < n_prune:   # fewer units may go: keep a multiple of round_to
        n_prune = g.units - min(g.units, -(-(g.units - len(order)) // c.multiple) * c.multiple)
    return split(g.units, order[:n_prune]).keep if n_prune > 0 else None


def _allowed(analysis, links, gid: int, kept) -> torch.Tensor:
    """bool [units] of group ``gid``: False where a PadShortcut feeds a unit from an
    input channel that stays."""
    spaces = analysis.spaces
    g = analysis.groups[gid]
    allowed = torch.ones(g.units, dtype=torch.bool)
    for link in links:
        if analysis.group_of[link.space_out] != gid:
            continue
        g_in = analysis.groups[analysis.group_of[link.space_in]]
        pruned_in = torch.ones(spaces[link.space_in].size, dtype=torch.bool)
        b_in = spaces[link.space_in].size // g_in.units
        kept_in = kept.get(g_in.id)
        if kept_in is None:
            pruned_in[:] = False
        else:
            pruned_in[(kept_in[:, None] * b_in + torch.arange(b_in)).reshape(-1)] = False
        live = ~pruned_in[link.src]
        allowed[link.dst[live] // (spaces[link.space_out].size // g.units)] = False
    return allowed
