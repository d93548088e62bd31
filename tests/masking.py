"""The masked original of a pruned model, found without its plan: each pruned layer's
weights are mapped back to the original's by value, which tells the channels kept; then
the original with the removed filters (and their biases and norm parameters) zeroed and
the removed input channels zeroed at every conv and linear layer. A correct pruning
computes what this model computes; nothing here reads the plan or the pruner's analysis,
so a wrong plan cannot hide behind a masked model built from the same plan.

Needs weights whose values tell filters apart (random initialisation; tests/test_prune.py's
``randomize`` for the norm layers). Raises AssertionError when a pruned tensor is not a
sub-block of the original's.
"""
from __future__ import annotations

import copy
from typing import Dict, Tuple

import torch
from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.PReLU)


def _match(rows: torch.Tensor, pool: torch.Tensor, what: str) -> torch.Tensor:
    """Indices i (increasing) with pool[i] == rows[k] for each row k (rows and pool 2-D)."""
    if rows.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long)
    first = (pool[:, 0][None, :] == rows[:, 0][:, None])          # candidates by a first value
    idx = []
    for k in range(rows.shape[0]):
        hits = [int(i) for i in first[k].nonzero().flatten() if torch.equal(pool[i], rows[k])]
        assert hits, f"{what}: pruned row {k} is not a row of the original"
        later = [i for i in hits if not idx or i > idx[-1]]
        assert later, f"{what}: the kept rows are not in order"
        idx.append(later[0])
    return torch.tensor(idx, dtype=torch.long)


def _columns(row: torch.Tensor, full: torch.Tensor, what: str) -> torch.Tensor:
    """The increasing indices c_j with full[c_j] == row[j] (row [I', k], full [I, k]): the
    input channels kept, read off one pruned filter and the original filter it came from."""
    out, start = [], 0
    for j in range(row.shape[0]):
        c = start
        while c < full.shape[0] and not torch.equal(full[c], row[j]):
            c += 1
        assert c < full.shape[0], f"{what}: an input column of a pruned filter is not in the original"
        out.append(c)
        start = c + 1
    return torch.tensor(out, dtype=torch.long)


def kept_channels(original: nn.Module, pruned: nn.Module, conv_types: tuple = ()
                  ) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """name -> (kept outputs, kept inputs) of every conv / linear layer (``conv_types``:
    other classes whose ``weight`` is ``[out, in / groups, ...]``), and name -> (kept
    channels, same) of every norm layer, by value."""
    before = dict(original.named_modules())
    kept = {}
    with torch.no_grad():
        for name, p in pruned.named_modules():
            o = before.get(name)
            if isinstance(p, (nn.Linear, *_CONV, *conv_types)) and type(o) is type(p):
                w, w0 = p.weight.detach(), o.weight.detach()
                groups = getattr(o, "groups", 1)
                if groups == 1:
                    flat, flat0 = w.reshape(w.shape[0], w.shape[1], -1), w0.reshape(w0.shape[0], w0.shape[1], -1)
                    # the original filter of pruned filter 0: the one holding its first value
                    where = (flat0[:, :, 0] == flat[0, 0, 0]).nonzero()
                    found = None
                    for r, _ in where.tolist():
                        try:
                            found = (r, _columns(flat[0], flat0[r], name))
                            break
                        except AssertionError:
                            continue
                    assert found is not None, f"{name}: no original filter matches pruned filter 0"
                    inn = found[1]
                    out = _match(flat.reshape(w.shape[0], -1), flat0[:, inn].reshape(w0.shape[0], -1), name)
                elif p.groups == groups and w.shape[1] < w0.shape[1]:
                    # grouped, the same local input channels kept in every conv group
                    flat, flat0 = w.reshape(w.shape[0], w.shape[1], -1), w0.reshape(w0.shape[0], w0.shape[1], -1)
                    found = None
                    for r, _ in (flat0[:, :, 0] == flat[0, 0, 0]).nonzero().tolist():
                        try:
                            found = _columns(flat[0], flat0[r], name)
                            break
                        except AssertionError:
                            continue
                    assert found is not None, f"{name}: no original filter matches pruned filter 0"
                    out = _match(flat.reshape(w.shape[0], -1), flat0[:, found].reshape(w0.shape[0], -1), name)
                    inn = (torch.arange(groups)[:, None] * w0.shape[1] + found).reshape(-1)
                else:   # grouped: whole conv groups went; each pruned filter is a whole one
                    out = _match(w.reshape(w.shape[0], -1), w0.reshape(w0.shape[0], -1), name)
                    per_out, per_in = w0.shape[0] // groups, w0.shape[1]
                    groups_kept = torch.unique(out // per_out)
                    inn = (groups_kept[:, None] * per_in + torch.arange(per_in)).reshape(-1)
                kept[name] = (out, inn)
            elif isinstance(p, _NORM) and type(o) is type(p):
                t, t0 = (p.weight, o.weight) if getattr(p, "weight", None) is not None else \
                    (getattr(p, "running_mean", None), getattr(o, "running_mean", None))
                if t is None or t0 is None or t.shape == t0.shape or \
                        torch.unique(t0.detach()).numel() != t0.numel():
                    continue   # unpruned, or values that do not tell channels apart: its
                    # removed channels still reach only inputs zeroed at their consumers
                idx = _match(t.detach().reshape(-1, 1), t0.detach().reshape(-1, 1), name)
                kept[name] = (idx, idx)
    return kept


def masked_original(original: nn.Module, pruned: nn.Module, conv_types: tuple = ()) -> nn.Module:
    """A copy of ``original`` with what ``pruned`` removed zeroed (see the module doc)."""
    kept = kept_channels(original, pruned, conv_types)
    masked = copy.deepcopy(original)
    modules = dict(masked.named_modules())
    with torch.no_grad():
        for name, (out, inn) in kept.items():
            m = modules[name]
            n_out = m.weight.shape[0] if getattr(m, "weight", None) is not None else m.running_mean.shape[0]
            drop = torch.ones(n_out, dtype=torch.bool)
            drop[out] = False
            for attr in ("weight", "bias"):
                t = getattr(m, attr, None)
                if isinstance(t, torch.Tensor) and t.shape[:1] == (n_out,):
                    t[drop] = 0
            if isinstance(m, (nn.Linear, *_CONV, *conv_types)) and getattr(m, "groups", 1) == 1:
                drop_in = torch.ones(m.weight.shape[1], dtype=torch.bool)
                drop_in[inn] = False
                m.weight[:, drop_in] = 0
            elif isinstance(m, (*_CONV, *conv_types)):   # grouped: the local input channels no group keeps
                drop_in = torch.ones(m.weight.shape[1], dtype=torch.bool)
                drop_in[inn % m.weight.shape[1]] = False
                m.weight[:, drop_in] = 0
    return masked


def assert_exact_by_value(original: nn.Module, pruned: nn.Module, x, rtol=1e-4, conv_types: tuple = ()):
    """The pruned model computes what the original with the removed channels masked by
    value computes (``masked_original``), and that masking changed something."""
    with torch.no_grad():
        ref = masked_original(original, pruned, conv_types).eval()(x)
        out = pruned.eval()(x)
        orig = original.eval()(x)
    scale = float(ref.abs().max())
    assert scale > 0
    torch.testing.assert_close(out, ref, rtol=rtol, atol=1e-5 * scale)
    assert float((orig - ref).abs().max()) > 1e-3 * scale, "nothing was pruned"
