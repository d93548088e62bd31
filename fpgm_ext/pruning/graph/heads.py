"""Attention heads (fx graphs): a Linear's output reshaped into heads and back, as timm's
``Attention`` spells it::

    qkv = self.qkv(x).reshape(B, N, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)                        # (or qkv[0], qkv[1], qkv[2])
    q, k = self.q_norm(q), self.k_norm(k)          # LayerNorm over head_dim, or Identity
    x = F.scaled_dot_product_attention(q, k, v)
    x = x.transpose(1, 2).reshape(B, N, C)         # (or .flatten(2))
    x = self.proj(x)

Whole heads are units: removing head h removes its q, k and v rows of ``qkv`` (each
group's rows a sub-space of the Linear's output, cut at the groups' ends) and its columns
of ``proj``; the reshapes' head counts and widths are constants of the fx graph, which the
plan rewrites (``Analysis.head_ops``, plan/rewrite.py). Exact by the zeroing criterion: zeroed v
rows make the head's attention output zero, whatever q and k are, so ``proj`` reads zeros.

A value laid out in heads carries ``Val.heads``: each dimension's role ('g' the q/k/v
group, 'h' the head, 'd' the head's features, '' another). It may pass layout ops
(permute, transpose, contiguous), the group split (unbind, an index of the group dim),
a LayerNorm over the head's features, a scaling, dropout and identity modules, the fused
attention, and the reshape that merges heads back into the last dimension; anything else
leaves its channels alone, by name (so do attention masks per head).
"""
from __future__ import annotations


import operator
from dataclasses import replace
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from .nodes import op_name, reshape_like, shape_entries
from .model import NOT_TENSOR, HeadOp, Heads, Seg, Tup, Val


if TYPE_CHECKING:   # (annotations only: the analyzer imports no visitor)
    from .analyzer import Analyzer


def visit(A: Analyzer, node, args, kwargs, module: Optional[nn.Module] = None):
    """The output of ``node`` where attention heads are involved, else None (the other
    rules apply)."""
    vals = [v for v in list(args) + list(kwargs.values()) if isinstance(v, Val) and v.tensor]
    if not any(v.heads is not None for v in vals):
        if reshape_like(node) and args and isinstance(args[0], Val) and args[0].last:
            return _split_heads(A, node, args[0])
        return None
    x = args[0] if args and isinstance(args[0], Val) else None
    name = op_name(node)
    if name == "getattr" or (node.op == "call_method" and name in ("size", "dim")):
        return NOT_TENSOR   # a shape query
    if module is not None:
        if x is not None and x.heads is not None and len(vals) == 1:
            if isinstance(module, (nn.Identity, nn.Dropout)):
                return x
            if isinstance(module, nn.Softmax) and x.heads.scores and isinstance(module.dim, int) \
                    and x.heads.roles[module.dim % len(x.heads.roles)] != "h":
                return x
            if isinstance(module, nn.LayerNorm) and tuple(module.normalized_shape) == (x.heads.dim,) \
                    and x.heads.roles[-1] == "d":   # per head: its statistics are its own
                return replace(x, segs=tuple(Seg(s.space, False, f"{node.name} (LayerNorm)") for s in x.segs))
        return A.unknown(node, f"{type(module).__name__} on attention heads", (args, kwargs))
    if name == "scaled_dot_product_attention":
        return _attention(A, node, args, kwargs)
    if name == "matmul" and len(args) == 2 and not kwargs:
        return _matmul(A, node, *args)
    scores = next((v for v in vals if v.heads is not None and v.heads.scores), None)
    if scores is not None:
        out = _on_scores(A, node, name, scores, args, kwargs, vals)
        if out is not None:
            return out
    if x is None or x.heads is None or len(vals) != 1:
        return A.unknown(node, f"{name} on attention heads", (args, kwargs))
    roles = x.heads.roles
    rest = [a for a in args[1:]]
    if name in ("permute",) and node.op == "call_method":
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
        if sorted(d % len(roles) for d in dims) == list(range(len(roles))):
            return _with_roles(x, tuple(roles[d] for d in dims))
    if name in ("transpose", "swapaxes") and len(rest) == 2 and all(isinstance(d, int) for d in rest):
        a, b = (d % len(roles) for d in rest)
        new = list(roles)
        new[a], new[b] = new[b], new[a]
        return _with_roles(x, tuple(new))
    if name == "contiguous" or (name in ("mul", "truediv", "div") and len(rest) == 1
                                and isinstance(rest[0], (int, float))):
        return x
    if name == "unbind":
        dim = rest[0] if rest else kwargs.get("dim", 0)
        if isinstance(dim, int) and roles[dim % len(roles)] == "g":
            return Tup(tuple(_group(x, g, dim % len(roles)) for g in range(x.heads.groups)))
    if node.op == "call_function" and node.target is operator.getitem and len(args) == 2:
        idx = args[1]
        if isinstance(idx, int) and roles[0] == "g" and -x.heads.groups <= idx < x.heads.groups:
            return _group(x, idx % x.heads.groups, 0)
    if reshape_like(node) or name == "flatten":
        merged = _merge_heads(A, node, x, args, kwargs)
        if merged is not None:
            return merged
    return A.unknown(node, f"{name} on attention heads", (args, kwargs))


def _with_roles(x: Val, roles) -> Val:
    return replace(x, heads=replace(x.heads, roles=roles))


def _group(x: Val, g: int, dim: int) -> Val:
    """Group ``g`` (q, k or v) of a value with a group dimension at ``dim``."""
    roles = x.heads.roles[:dim] + x.heads.roles[dim + 1:]
    return Val((x.segs[g],), 1, None if x.rank is None else x.rank - 1,
               heads=Heads(roles, 1, x.heads.heads, x.heads.dim, x.heads.node))


def _split_heads(A: Analyzer, node, x: Val) -> Optional[Val]:
    """``reshape`` of a Linear's last dimension W into [..., G, H, D] or [..., H, D]: a
    value laid out in heads, each group (q, k, v) one sub-space of the Linear's output.
    None (the reshape is left alone by the other rules) where the shapes say otherwise."""
    before, after = A.shapes.get(node.args[0].name), A.shapes.get(node.name)
    if A.tracer != "fx" or x.factor != 1 or not isinstance(before, tuple) or not isinstance(after, tuple) \
            or not all(isinstance(s, int) for s in before + after):
        return None
    width = A.size(x)
    extra = len(after) - len(before)
    if extra not in (1, 2) or after[:len(before) - 1] != before[:-1] or width != before[-1]:
        return None
    g, h, d = (after[-3:] if extra == 2 else (1,) + after[-2:])
    if g * h * d != width or h < 2:
        return None
    entries = shape_entries(node)
    if len(entries) != len(after):
        return None
    path, value = entries[len(after) - 2]
    if isinstance(value, torch.fx.Node) or (value != h and value != -1):
        return A.unknown(node, "a head count computed at run time", x)
    if A.request_cuts(x.segs, [k * h * d for k in range(1, g)]):
        return A.unknown(node, "reshape into heads (its groups are cut at the next pass)", x)
    ends = A.bounds(x.segs)
    if ends != [k * h * d for k in range(1, g + 1)]:
        return A.unknown(node, "reshape into heads of channels cut inside a group", x)
    roles = ("",) * (len(before) - 1) + (("g", "h", "d") if extra == 2 else ("h", "d"))
    if value == h:
        A.head_ops[node.name] = HeadOp("heads", tuple(path), h, x.segs[-1].space, d, A.index.reshapes.get(node.name, -1))
    return Val(x.segs, 1, len(after), heads=Heads(roles, g, h, d, node.name))


def _attention(A: Analyzer, node, args, kwargs) -> Val:
    """F.scaled_dot_product_attention(q, k, v): head h of the output is zero when head h
    of v is; q, k and v lose the same heads (their spaces are joined, in units of heads)."""
    names = ("query", "key", "value")
    q, k, v = (args[i] if len(args) > i else kwargs.get(n) for i, n in enumerate(names))
    ok = all(isinstance(t, Val) and t.heads is not None and t.heads.groups == 1 and len(t.segs) == 1
             and t.heads.roles[-3:] == ("h", "", "d") for t in (q, k, v))
    mask_node = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    mask = A.shapes.get(mask_node.name) if isinstance(mask_node, torch.fx.Node) else None
    if ok and q.heads.heads == k.heads.heads == v.heads.heads and q.heads.dim == k.heads.dim:
        h = v.heads.heads
        if isinstance(mask, tuple) and len(mask) >= 3 and mask[-3] == h:
            return A.unknown(node, "an attention mask per head", (args, kwargs))
        for t in (q, k, v):
            A.union(t.segs[0].space, v.segs[0].space)
            A.ties.append((t.segs[0].space, h))
        return v
    return A.unknown(node, "scaled_dot_product_attention", (args, kwargs))


def _matmul(A: Analyzer, node, a, b) -> Val:
    """Attention spelled out: ``q @ k.transpose(-2, -1)`` (an attention map per head,
    ``Heads.scores``; q and k lose the same heads) and ``attn @ v`` (as
    ``scaled_dot_product_attention``: head h of the output is zero when head h of v is,
    whatever the map; q, k and v joined in units of heads)."""
    ok = all(isinstance(t, Val) and t.tensor and t.heads is not None and t.heads.groups == 1
             and len(t.segs) == 1 for t in (a, b)) and a.heads.heads == b.heads.heads
    if ok and not a.heads.scores and not b.heads.scores and a.heads.dim == b.heads.dim \
            and a.heads.roles[-3:] == ("h", "", "d") and b.heads.roles[-3:] == ("h", "d", ""):
        A.union(a.segs[0].space, b.segs[0].space)
        for t in (a, b):   # whole heads, whatever becomes of the map
            A.ties.append((t.segs[0].space, a.heads.heads))
        return replace(a, heads=replace(a.heads, roles=a.heads.roles[:-1] + ("",), scores=True))
    if ok and a.heads.scores and not b.heads.scores and b.heads.roles[-3:] == ("h", "", "d"):
        h = b.heads.heads
        for t in (a, b):
            A.union(t.segs[0].space, b.segs[0].space)
            A.ties.append((t.segs[0].space, h))
        return b
    return A.unknown(node, "matmul on attention heads", (a, b))


def _on_scores(A: Analyzer, node, name: str, x: Val, args, kwargs, vals) -> Optional[Val]:
    """An op on an attention map that keeps each head's map its own: a softmax not over
    the heads; a sum or product with a tensor broadcast over the heads (a mask, a bias
    shared by the heads). A pruned head's map may be anything: ``attn @ v`` reads its v,
    which is zero. None for the other rules (a per-head bias is left alone)."""
    roles = x.heads.roles
    if _timm(node, "resolve_self_attn_mask"):
        return NOT_TENSOR     # a mask made from the map's shape and dtype (checked where added)
    if _timm(node, "maybe_add_mask"):
        name = "add"          # the map, plus the mask if there is one
    if name == "softmax" and len(vals) == 1:
        dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if isinstance(dim, int) and roles[dim % len(roles)] != "h":
            return x
        return None
    if name in ("add", "sub", "mul", "masked_fill", "add_", "mul_", "masked_fill_") and len(args) >= 2:
        others = [a for a in args[:2] if a is not x]
        other_node = next((n for n, a in zip(node.args[:2], args[:2]) if a is not x), None)
        shape = A.shapes.get(other_node.name) if isinstance(other_node, torch.fx.Node) else ()
        if len(others) == 1 and not (isinstance(others[0], Val) and others[0].tensor) and \
                not isinstance(shape, tuple):
            shape = ()        # not a tensor when it ran (timm's mask, None without one)
        at = len(shape) - (len(roles) - roles.index("h")) if isinstance(shape, tuple) else -1
        if len(others) != 1 or (isinstance(others[0], Val) and others[0].heads is not None) or \
                not isinstance(shape, tuple) or (0 <= at and shape[at] != 1):
            return None
        if isinstance(others[0], Val) and others[0].segs:
            A.freeze(others[0], f"it is added to an attention map (node {node.name})")
        return x
    return None


def _timm(node, name: str) -> bool:
    """Whether ``node`` calls timm's function ``name`` (timm marks some of its attention
    helpers as fx leaves; timm is not imported for it)."""
    return node.op == "call_function" and getattr(node.target, "__name__", None) == name and \
        getattr(node.target, "__module__", "").startswith("timm.")


def _merge_heads(A: Analyzer, node, x: Val, args, kwargs) -> Optional[Val]:
    """[..., H, D] -> [..., H * D] (a reshape or a flatten of the last two dimensions):
    the heads' channels back in the last dimension, for the output projection."""
    before, after = A.shapes.get(node.args[0].name), A.shapes.get(node.name)
    heads = x.heads
    if heads.groups != 1 or heads.roles[-2:] != ("h", "d") or not isinstance(before, tuple) \
            or not isinstance(after, tuple) or after != before[:-2] + (heads.heads * heads.dim,):
        return None
    if reshape_like(node):
        entries = shape_entries(node)
        if len(entries) != len(after):
            return None
        path, value = entries[-1]
        if isinstance(value, torch.fx.Node) or value == heads.heads * heads.dim:
            was = None if isinstance(value, torch.fx.Node) else value
            if was is None:     # read at run time: the plan writes it as a constant
                A.sizes.ok.add((value.name, node.name))
            A.head_ops[node.name] = HeadOp("merge_heads", tuple(path), was, x.segs[0].space, heads.dim,
                                           A.index.reshapes.get(node.name, -1))
        elif value != -1:
            return None
    elif not (len(args) == 2 and isinstance(args[1], int) and args[1] % len(before) == len(before) - 2
              and not kwargs):
        return None
    return Val(x.segs, 1, len(after), last=True)
