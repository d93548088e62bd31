"""Split attention (fx graphs): channels laid out as R radix groups of C channels, as
SK-Net's selective kernel and ResNeSt's split attention spell them::

    x = torch.stack([path(x) for path in self.paths], dim=1)        # [B, R, C, H, W]
    a = self.fc_select(...).view(B, R, C // ..., 1, 1).softmax(1)     # per channel, over R
    x = (x * a).sum(1)                                               # [B, C, H, W]

    x = conv(x).reshape(B, R, -1, H, W); s = x.sum(1)  ...  (ResNeSt: the attention
    a = fc2(...).view(B, 1, R, -1).transpose(1, 2).softmax(1).reshape(B, -1) ... ,
    a view back to [B, R, C, 1, 1] before the product)

Channel c of every radix group is one unit: the R groups' spaces (a stack's inputs, or a
producer's output cut at multiples of C) are joined channel for channel, as a residual
addition joins its operands. The sizes in these reshapes are read at run time (``-1``,
``x.shape[1] // R``), so the pruned model needs no rewrite; a constant channel count
leaves the channels alone. Exact by the zeroing criterion: a zeroed channel of the paths
stays zero through the product with the softmax (which is not zero) and the sum.

A value laid out this way carries ``Val.radix``: each dimension's role ('r' the radix
groups, 'c' the channels, '1' a dimension of size 1, '' another) and R; its ``segs`` are
the R groups' segs, in order, the same number for each. It may pass a stack's making,
a softmax over 'r', a product with another such value, transposes that keep 'r' before
'c' at the end, the sum over 'r' (back to channels at dim 1) and the reshape that merges
'r' and 'c' back into one channel dimension; anything else leaves it alone, by name.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import math
from dataclasses import replace
from typing import List, Optional

from .nodes import op_name, reshape_like, shape_entries
from .sizes import reads_own_size
from .model import NOT_TENSOR, Radix, Seg, Val


if TYPE_CHECKING:   # (annotations only: the analyzer imports no visitor)
    from .analyzer import Analyzer


def visit(A: Analyzer, node, args, kwargs, module=None):
    """The output of ``node`` where a radix layout is involved, else None (and for modules)."""
    if A.tracer != "fx" or module is not None:
        return None
    name = op_name(node)
    vals = [v for v in list(args) + list(kwargs.values()) if isinstance(v, Val) and v.tensor]
    if name == "stack" and node.op == "call_function":
        return _stack(A, node, args, kwargs)
    if not any(v.radix is not None for v in vals):
        if reshape_like(node) and args and isinstance(args[0], Val) and args[0].tensor \
                and not args[0].last and args[0].heads is None:
            return _split(A, node, args[0])
        return None
    if name == "getattr" or (node.op == "call_method" and name in ("size", "dim")):
        return NOT_TENSOR   # a shape query
    x = args[0] if args and isinstance(args[0], Val) else None
    if name == "mul" and len(vals) == 2 and all(v.radix is not None for v in vals):
        return _product(A, node, vals[0], vals[1])
    if x is None or x.radix is None or len(vals) != 1:
        return A.unknown(node, f"{name} on radix groups", (args, kwargs))
    roles = x.radix.roles
    rest = list(args[1:])
    dim = rest[0] if rest else kwargs.get("dim")
    if name == "softmax" and isinstance(dim, int) and roles[dim % len(roles)] == "r":
        _join(A, x)
        return replace(x, segs=tuple(Seg(s.space, False, f"{node.name} (softmax)") for s in x.segs))
    if name == "sum" and isinstance(dim, int) and roles[dim % len(roles)] == "r" \
            and not kwargs.get("keepdim", False) and len(rest) <= 1:
        return _sum(A, node, x, dim % len(roles))
    if name in ("transpose", "swapaxes") and len(rest) == 2 and all(isinstance(d, int) for d in rest):
        a, b = (d % len(roles) for d in rest)
        new = list(roles)
        new[a], new[b] = new[b], new[a]
        return replace(x, radix=replace(x.radix, roles=tuple(new)))
    if name == "contiguous":
        return x
    if reshape_like(node) or name == "flatten":
        merged = _merge(A, node, x)
        if merged is not None:
            return merged
    return A.unknown(node, f"{name} on radix groups", (args, kwargs))


def _found(A: Analyzer, segs) -> None:
    A.radix.found.update(A.spaces[s.space].producer for s in segs)


def _items(x: Val) -> List[tuple]:
    k = len(x.segs) // x.radix.groups
    return [x.segs[i * k:(i + 1) * k] for i in range(x.radix.groups)]


def _join(A: Analyzer, x: Val) -> None:
    """The R groups lose the same channels: their spaces joined, seg by seg."""
    items = _items(x)
    for item in items[1:]:
        for a, b in zip(items[0], item):
            A.union(a.space, b.space)


def _stack(A: Analyzer, node, args, kwargs) -> Optional[Val]:
    items = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(items, (list, tuple)) or not any(isinstance(v, Val) and v.tensor for v in items):
        return None
    ok = dim == 1 and len(items) > 1 and all(
        isinstance(v, Val) and v.tensor and v.factor == 1 and not v.last and v.heads is None
        and v.radix is None and v.rank is not None and A.compatible(items[0].segs, v.segs) for v in items)
    if not ok:
        return A.unknown(node, "stack", (args, kwargs))
    rank = items[0].rank + 1
    roles = ("", "r", "c") + ("",) * (rank - 3)
    _found(A, [s for v in items for s in v.segs])
    return Val(tuple(s for v in items for s in v.segs), 1, rank, radix=Radix(roles, len(items)))


def _split(A: Analyzer, node, x: Val) -> Optional[Val]:
    """[B, R * C, ...] reshaped into [B, (1,) R, (1,) C, ...]: the channels of dim 1 as
    R radix groups (cut at multiples of C at the next pass), C read at run time."""
    before, after = A.shapes.get(node.args[0].name), A.shapes.get(node.name)
    if x.factor != 1 or not isinstance(before, tuple) or not isinstance(after, tuple) or len(before) < 2 \
            or not all(isinstance(s, int) for s in before + after) or A.size(x) != before[1]:
        return None
    if after[:1] != before[:1]:
        return None
    if all(s == 1 for s in before[2:]) and math.prod(after[1:]) == before[1]:
        k = len(after) - 1                 # [B, R*C, 1, 1] -> [B, 1, R, C]: all dims after B
    else:
        k = len(after) - len(before) + 1   # dims that dim 1 became, the spatial ones kept
        if k < 2 or after[1 + k:] != before[2:] or math.prod(after[1:1 + k]) != before[1]:
            return None
    sizes = after[1:1 + k]
    big = [i for i, s in enumerate(sizes) if s != 1]
    if len(big) != 2 or sizes[big[0]] < 2:
        return None
    r, c = sizes[big[0]], sizes[big[1]]
    entries = shape_entries(node)
    if len(entries) != len(after):
        return None
    value = entries[1 + big[1]][1]
    if not reads_own_size(A, node, value, x):
        return A.unknown(node, "radix groups of a channel count not read from the tensor itself", x)
    ends = A.bounds(x.segs)
    inner = sorted({e % c for e in ends} - {0})
    want = sorted({i * c + b for i in range(r) for b in [0] + inner} - {0})
    if A.request_cuts(x.segs, want):
        return A.unknown(node, "radix groups (their channels are cut at the next pass)", x)
    roles = ("",) + tuple("r" if i == big[0] else "c" if i == big[1] else "1" for i in range(k)) \
        + ("",) * (len(after) - 1 - k)
    _found(A, x.segs)
    return Val(x.segs, 1, len(after), radix=Radix(roles, r))


def _product(A: Analyzer, node, a: Val, b: Val) -> Val:
    """x * attention, both laid out in the same radix groups (broadcasting over '1' and
    spatial dims): joined channel for channel, zero where either is."""
    ra, rb = a.radix, b.radix
    pos = lambda roles, role: roles.index(role) if role in roles else -1  # noqa: E731
    if ra.groups != rb.groups or len(a.segs) != len(b.segs) or not A.compatible(a.segs, b.segs) or \
            pos(ra.roles, "r") != pos(rb.roles, "r") or pos(ra.roles, "c") != pos(rb.roles, "c"):
        return A.unknown(node, "mul of differently laid out radix groups", (a, b))
    segs = []
    for x, y in zip(a.segs, b.segs):
        A.union(x.space, y.space)
        zero = x.zero or y.zero
        segs.append(Seg(x.space, zero, "" if zero else x.via))
    return replace(a, segs=tuple(segs))


def _sum(A: Analyzer, node, x: Val, dim: int) -> Val:
    """The sum over the radix groups: joined (as a residual addition joins its operands),
    the channels back at dim 1."""
    roles = x.radix.roles[:dim] + x.radix.roles[dim + 1:]
    if [r for r in roles if r in ("c", "1")] != ["c"] or roles.index("c") != 1:
        return A.unknown(node, "sum of radix groups", x)
    _join(A, x)
    items = _items(x)
    segs = tuple(Seg(s.space, all(it[i].zero for it in items), next((it[i].via for it in items if not it[i].zero), ""))
                 for i, s in enumerate(items[0]))
    return Val(segs, 1, None if x.rank is None else x.rank - 1)


def _merge(A: Analyzer, node, x: Val) -> Optional[Val]:
    """[B, ..., R, ..., C, ...] with only '1' dims besides: one channel dimension again,
    R-major (a reshape or flatten of everything after the batch dimension)."""
    before, after = A.shapes.get(node.args[0].name), A.shapes.get(node.name)
    roles = x.radix.roles
    order = [r for r in roles if r in ("r", "c")]
    if order != ["r", "c"] or any(r == "" for r in roles[1:]) or not isinstance(before, tuple) \
            or not isinstance(after, tuple) or after != (before[0], math.prod(before[1:])):
        return None
    if reshape_like(node):
        entries = shape_entries(node)
        if len(entries) != 2 or not reads_own_size(A, node, entries[1][1], x):
            return None
    return Val(x.segs, 1, 2)
