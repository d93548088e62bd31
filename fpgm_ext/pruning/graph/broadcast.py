"""Dims added next to the channels, for both tracers: ``unsqueeze``, indexing with None
and full slices (``s[:, :, None, None]``, ``gamma[None, :, None, None]``; torch.export
writes these as ``aten.unsqueeze``), and ``unflatten`` of a dim that is not the channels'
(tokens ``[B, C, H*W]`` put back as an image ``[B, C, H, W]``).

Each op is read as a map from its output's dims to its input's: the input dim each output
dim is (an input dim named twice: split by an unflatten), or None for a new dim of size 1.
The channels follow their dim: an activation's layout comes out with the channels at dim 1
or last (``as_layout``), a tensor attribute's ``ParamRef.dims`` are carried along, so that
``param_member`` finds the dim that meets the channels. Anything else (an index that is
not None or a full slice, the channels split or moved elsewhere) is left to the caller,
which leaves the channels alone by name."""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, List, Optional

from .model import Val

if TYPE_CHECKING:   # (annotations only: the analyzer imports no visitor)
    from .analyzer import Analyzer

Dims = List[Optional[int]]   # per output dim: the input dim it is, or None (a new dim of 1)


def channel_dim(x: Val) -> int:
    """Where the channels of an activation's layout are: dim 1, or the last dim."""
    return x.rank - 1 if x.last else 1


def as_layout(x: Val, dim: int, rank: int) -> Optional[Val]:
    """``x`` with its channels moved to ``dim`` of a tensor of ``rank``: dim 1, or the
    last (channels-last and token layouts); None elsewhere."""
    if rank == 2 and dim == 1:
        return replace(x, rank=2, last=False)
    if dim == 1:
        return replace(x, rank=rank, last=False)
    if dim == rank - 1 and rank >= 3:
        return replace(x, rank=rank, last=True)
    return None


def _full(i) -> bool:
    return isinstance(i, slice) and i == slice(None)


def is_broadcast_index(idx) -> bool:
    """An index made only of None, full slices and at most one Ellipsis, with a None in
    it (``[:, :, None, None]``, ``[None, ..., None]``): it adds dims of size 1 and
    moves nothing else."""
    items = idx if isinstance(idx, tuple) else (idx,)
    return any(i is None for i in items) and sum(i is Ellipsis for i in items) <= 1 and \
        all(i is None or i is Ellipsis or _full(i) for i in items)


def index_dims(idx, rank: Optional[int]) -> Optional[Dims]:
    """The dims of ``x[idx]`` for an ``x`` of ``rank`` (``is_broadcast_index``), or None."""
    if rank is None or not is_broadcast_index(idx):
        return None
    items = idx if isinstance(idx, tuple) else (idx,)
    explicit = sum(1 for i in items if i is not None and i is not Ellipsis)
    if explicit > rank:
        return None
    out: Dims = []
    src = 0
    for i in items:
        if i is None:
            out.append(None)
        elif i is Ellipsis:
            out.extend(range(src, src + rank - explicit))
            src += rank - explicit
        else:
            out.append(src)
            src += 1
    return out + list(range(src, rank))   # (the dims after the index: full slices)


def unsqueeze_dims(rank: Optional[int], dim) -> Optional[Dims]:
    """The dims of ``x.unsqueeze(dim)``, or None."""
    if rank is None or not isinstance(dim, int) or not -rank - 1 <= dim <= rank:
        return None
    d = dim % (rank + 1)
    return list(range(d)) + [None] + list(range(d, rank))


def unflatten_dims(rank: Optional[int], dim, sizes) -> Optional[Dims]:
    """The dims of ``x.unflatten(dim, sizes)``: dim ``dim`` named once per size, or None."""
    if rank is None or not isinstance(dim, int) or not -rank <= dim < rank or \
            not isinstance(sizes, (tuple, list)) or not sizes:
        return None
    d = dim % rank
    return list(range(d)) + [d] * len(sizes) + list(range(d + 1, rank))


def reindex(A: Analyzer, node, x: Val, dims: Optional[Dims], what: str) -> Val:
    """The output of an op that maps ``x``'s dims as ``dims`` says: a tensor attribute
    with its dims carried along, or an activation with its channels where their dim
    went; left alone (by name) where ``dims`` is None, the channels are split, or they
    land at neither dim 1 nor the last dim."""
    if dims is None:
        return _refused(A, node, x, f"{what} not understood")
    named = [d for d in dims if d is not None]
    if x.param is not None:
        if len(set(named)) != len(named) or x.rank is None or len(x.param.dims) != x.rank:
            return _refused(A, node, x, f"{what} that splits a dim")
        return replace(x, rank=len(dims), param=replace(
            x.param, dims=tuple(None if d is None else x.param.dims[d] for d in dims)))
    if x.factor != 1 or x.heads is not None or x.radix is not None or x.stat is not None or not x.segs:
        return A.unknown(node, what, x)
    at = [k for k, d in enumerate(dims) if d == channel_dim(x)]
    out = as_layout(x, at[0], len(dims)) if len(at) == 1 else None
    return out if out is not None else A.unknown(node, f"{what} that splits or moves the channels", x)


def _refused(A: Analyzer, node, x: Val, what: str) -> Val:
    if x.param is not None:
        return A.opaque(node, f"the module attribute {x.param.name} is used as a tensor ({what})")
    return A.unknown(node, what, x)
