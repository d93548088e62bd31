"""The visitor of a torch.fx graph: each call of a leaf module, a function or a Tensor
method looked up in the table (rules.py) and its rule applied. Also what only fx graphs
hold: the functional spellings of a layer on its own module's tensors (``_fx_functional``,
timm's BatchNormAct2d), and weight-standardised convs, whose weight is computed in the
graph (``_find_standardised``)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import operator
from dataclasses import replace
from typing import List, Optional

import torch
from torch.nn import functional as F

from .model import APPROXIMATE, NOT_TENSOR, Tup, Val
from .rules import Call, LAYERS, _arg, conv_groups, entry_of, group_norm_args, spellings
from .tracing import TRACE_CONSTANT
from ..layers import handler_for, rule_of
from . import heads as _heads
from . import radix as _radix
from .nodes import shape_entries
from .visit import _last_axis, _map_args, apply

if TYPE_CHECKING:   # (annotations only: the analyzer imports no visitor)
    from .analyzer import Analyzer


_CONV_FUNCS = spellings("function", "conv")
_BN_FUNCS = spellings("function", "bn")
_WEIGHT_RANK = {F.conv1d: 3, F.conv2d: 4, F.conv3d: 5}


def _fx_owner(A: Analyzer, node_arg, attr: str):
    """(name, module) when ``node_arg`` is a get_attr of ``attr`` of a module of the model
    (as ``module.<attr>``); else (None, None). The module comes from the model itself: the
    traced GraphModule holds only empty containers around the attributes it reads."""
    if not isinstance(node_arg, torch.fx.Node) or node_arg.op != "get_attr":
        return None, None
    name, _, last = node_arg.target.rpartition(".")
    m = A.modules.get(name)
    return (name, m) if m is not None and last == attr else (None, None)


def _find_standardised(A: Analyzer, graph) -> None:
    """Weight-standardised convs in an fx graph (timm's StdConv2d, ScaledStdConv2d): a
    conv whose weight is its module's own weight normalised per output filter,
    ``F.batch_norm(w.reshape(1, out, -1), None, None, [weight=gain.view(-1)],
    training=True).reshape_as(w)``. Each filter is standardised on its own, so filters
    (and their gain) can go; the chain's nodes compute a weight, not activations."""
    def get_attr(n, attr):
        name, m = _fx_owner(A, n, attr)
        return (name, m) if m is not None else (None, None)

    for node in graph.nodes:
        if node.op != "call_function" or node.target not in _CONV_FUNCS:
            continue
        w2 = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        if not (isinstance(w2, torch.fx.Node) and w2.op == "call_method" and
                w2.target in ("reshape_as", "view_as", "reshape", "view")):
            continue
        bn = w2.args[0]
        if not (isinstance(bn, torch.fx.Node) and bn.target in _BN_FUNCS):
            continue
        bn_arg = lambda i, key: bn.args[i] if len(bn.args) > i else bn.kwargs.get(key)  # noqa: E731
        flat = bn_arg(0, "input")
        if bn_arg(1, "running_mean") is not None or bn_arg(2, "running_var") is not None or \
                bn_arg(4, "bias") is not None or bn_arg(5, "training") is not True or \
                not (isinstance(flat, torch.fx.Node) and flat.op == "call_method" and
                     flat.target in ("reshape", "view")):
            continue
        name, m = get_attr(flat.args[0], "weight")
        if m is None or rule_of(m) != "conv":
            continue
        out_channels = handler_for(m).channels(m).outputs
        if tuple(flat.args[1:]) not in ((1, out_channels, -1), ((1, out_channels, -1),)):
            continue
        chain = [w2, bn, flat, flat.args[0]]
        extra: List[str] = []
        gain = bn_arg(3, "weight")
        if gain is not None:   # (gain [* scale]).view(-1): per-filter tensors of the module
            if not (isinstance(gain, torch.fx.Node) and gain.op == "call_method" and
                    gain.target in ("view", "reshape") and tuple(gain.args[1:]) in ((-1,), ((-1,),))):
                continue
            prod = gain.args[0]
            chain.append(gain)
            factors = [prod]
            if isinstance(prod, torch.fx.Node) and prod.op == "call_function" and prod.target is operator.mul:
                chain.append(prod)
                factors = [a for a in prod.args if isinstance(a, torch.fx.Node)]
                if len(prod.args) != 2 or any(not isinstance(a, (torch.fx.Node, float, int)) for a in prod.args):
                    continue
            ok = True
            for f in factors:
                attr = f.target.rpartition(".")[2] if isinstance(f, torch.fx.Node) and f.op == "get_attr" else ""
                owner, mm = get_attr(f, attr) if attr else (None, None)
                t = getattr(mm, attr, None) if mm is not None else None
                if owner != name or not isinstance(t, torch.Tensor) or t.shape[:1] != (out_channels,) or \
                        t.numel() != out_channels:
                    ok = False
                    break
                chain.append(f)
                extra.append(attr)
            if not ok:
                continue
        inside = {c.name for c in chain} | {node.name}
        if any(u.name not in inside for c in chain for u in c.users):
            continue   # the weight is used elsewhere too: not only a standardised conv
        A.std.convs[node.name] = (name, m, tuple(extra))
        A.std.weight_nodes.update(c.name for c in chain)


def _weight_owner(A: Analyzer, node):
    """(name, module) owning the weight (and the bias, if any) of F.conv*d / F.linear."""
    name, m = _fx_owner(A, _arg(node.args, node.kwargs, 1, "weight"), "weight")
    bias = _arg(node.args, node.kwargs, 2, "bias")
    if m is None or (bias is not None and _fx_owner(A, bias, "bias") != (name, m)):
        return None, None
    return name, m


def _fx_batch_norm(A: Analyzer, node, fn, x: Val, args, kwargs):
    names = {}
    for i, key in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
        arg = _arg(node.args, node.kwargs, i, key)
        if arg is None:
            continue
        name, m = _fx_owner(A, arg, key)
        if m is None:
            return None
        names[name] = m
    if len(names) != 1:
        return None
    name, m = next(iter(names.items()))
    if rule_of(m) != "bn" or getattr(m, "num_features", None) is None or \
            (_arg(node.args, node.kwargs, 3, "weight") is None) == m.affine:
        return None
    return handler_for(m).analyse(A, node, name, m, x)


def _fx_group_norm(A: Analyzer, node, fn, x: Val, args, kwargs):
    groups, weight, bias = group_norm_args(node.args, node.kwargs, native=False)
    name, m = _fx_owner(A, weight, "weight") if weight is not None else _fx_owner(A, bias, "bias")
    if m is None or rule_of(m) != "gn" or groups != m.num_groups or \
            (weight is None) == m.affine or (bias is not None and _fx_owner(A, bias, "bias") != (name, m)):
        return None
    return handler_for(m).analyse(A, node, name, m, x)


def _fx_conv(A: Analyzer, node, fn, x: Val, args, kwargs):
    if node.name in A.std.convs:
        name, m, extra = A.std.convs[node.name]
        if conv_groups(args, kwargs, fn.__name__) != handler_for(m).channels(m).groups:
            return None
        out = handler_for(m).analyse(A, node, name, m, x)
        A.uses[name].out_params = extra
        A.freeze(x, f"{name} standardises its weight over its input channels (weight "
                    "standardisation): removing one changes every filter")
        return out
    name, m = _weight_owner(A, node)
    if m is None or rule_of(m) != "conv" or m.weight.dim() != _WEIGHT_RANK[fn] or \
            conv_groups(args, kwargs, fn.__name__) != handler_for(m).channels(m).groups:
        return None
    return handler_for(m).analyse(A, node, name, m, x)


def _fx_linear(A: Analyzer, node, fn, x: Val, args, kwargs):
    name, m = _weight_owner(A, node)
    return handler_for(m).analyse(A, node, name, m, x) if m is not None and rule_of(m) == "linear" else None


def _fx_layer_norm(A: Analyzer, node, fn, x: Val, args, kwargs):
    shape = _arg(node.args, node.kwargs, 1, "normalized_shape")
    weight, bias = _arg(node.args, node.kwargs, 2, "weight"), _arg(node.args, node.kwargs, 3, "bias")
    name, m = _fx_owner(A, weight, "weight") if weight is not None else _fx_owner(A, bias, "bias")
    if m is None or rule_of(m) != "ln" or tuple(shape or ()) != tuple(m.normalized_shape) or \
            (bias is not None and _fx_owner(A, bias, "bias") != (name, m)):
        return None
    return handler_for(m).analyse(A, node, name, m, x)


_FX_LAYERS = {"bn": _fx_batch_norm, "gn": _fx_group_norm, "ln": _fx_layer_norm, "conv": _fx_conv,
              "linear": _fx_linear}


_VIEWS = ("reshape", "view", "expand")
_BINARY = ("add", "add_", "mul", "mul_", "sub", "sub_")
_REDUCE = ("mean", "sum", "amax", "max", "norm")
_DIV = ("truediv", "div", "div_")


def _param_use(node):
    """The product or sum that a parameter read by ``node`` reaches through views, when
    that is its one use (so that pruning it along the channels changes nothing else)."""
    n = node
    while len(n.users) == 1:
        user = next(iter(n.users))
        name = user.target if user.op == "call_method" else getattr(user.target, "__name__", "")
        if name in _VIEWS and user.args[0] is n:
            n = user
            continue
        if name in ("cat", "addcmul") and user.op == "call_function":   # a class token; GRN's affine
            return user
        return user if name in _BINARY and user.op in ("call_method", "call_function") else None
    return None


def _channel_dim(x: Val) -> int:
    return x.rank - 1 if x.last else 1


def _as_layout(x: Val, dim: int, rank: int) -> Optional[Val]:
    """``x`` with its channels moved to ``dim`` of a tensor of ``rank``: dim 1, or the
    last (channels-last and token layouts); None elsewhere."""
    if rank == 2 and dim == 1:
        return replace(x, rank=2, last=False)
    if dim == 1:
        return replace(x, rank=rank, last=False)
    if dim == rank - 1 and rank >= 3:
        return replace(x, rank=rank, last=True)
    return None


def _cat_tokens(A: Analyzer, node, args, kwargs):
    """``torch.cat`` of token or channels-last layouts along a dimension that is not the
    channels' (a class token prepended): the pieces' channels are one, joined; a parameter
    among them (the class token) is pruned with them. None for other concatenations."""
    items = args[0] if args else kwargs.get("tensors")
    dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
    if not isinstance(items, (list, tuple)) or not isinstance(dim, int):
        return None
    acts = [v for v in items if isinstance(v, Val) and v.tensor and v.param is None]
    params = [v for v in items if isinstance(v, Val) and v.param is not None]
    if not acts or not all(v.last for v in acts) or len(acts) + len(params) != len(items):
        return None
    x = acts[0]
    if dim % x.rank == x.rank - 1 or any(not A.compatible(x.segs, v.segs) or v.rank != x.rank for v in acts):
        return None
    for v in acts[1:]:
        x = A.joined("add", x, v)
    for p in params:
        A.param_member(node, "cat", replace(x, last=True), p)
    return replace(x, last=True, rank=acts[0].rank)


def _layout(A: Analyzer, node, args, kwargs):
    """Layout ops the table's rules do not cover: a permute between channels at dim 1 and
    channels last; a view of a parameter read by get_attr; a product or sum with such a
    parameter (a layer scale: the parameter is pruned with the channels); a residual sum or
    a product of two channels-last or token layouts. None where none applies."""
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    x = args[0] if args else None
    if not isinstance(x, Val) or not x.tensor:
        x = None
    layout = x is not None and x.param is None and x.rank is not None and x.factor == 1 and \
        x.heads is None and x.radix is None and bool(x.segs)
    if name == "permute" and layout:
        dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
        dims = [d % x.rank for d in dims if isinstance(d, int)]
        if sorted(dims) != list(range(x.rank)):
            return None
        out = _as_layout(x, dims.index(_channel_dim(x)), x.rank)
        return out if out is not None else A.unknown(node, "permute of the channels elsewhere", x)
    if name in ("transpose", "swapaxes") and layout and len(args) == 3 and all(isinstance(d, int) for d in args[1:]):
        a, b = (d % x.rank for d in args[1:])
        ch = _channel_dim(x)
        to = b if ch == a else a if ch == b else ch
        out = _as_layout(x, to, x.rank)
        return out if out is not None else A.unknown(node, "transpose of the channels elsewhere", x)
    if name == "flatten" and layout and not x.last and x.rank >= 3:
        start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
        end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
        if isinstance(start, int) and isinstance(end, int) and start % x.rank >= 2:
            return replace(x, rank=x.rank - (end % x.rank - start % x.rank))   # spatial dims only
        return None
    if name == "getitem" and layout and x.last and len(args) == 2 and isinstance(args[1], tuple) \
            and len(args[1]) < x.rank and args[1][:1] == (slice(None),) \
            and all(isinstance(i, (int, slice)) for i in args[1]):
        # tokens picked (x[:, 0], x[:, 1:]): the channels, last, untouched
        shape = A.shapes.get(node.name)
        return _as_layout(x, len(shape) - 1, len(shape)) if isinstance(shape, tuple) else None
    if name in _REDUCE and layout and node.op == "call_method" and (x.last or name == "norm" or
                                                                   x.rank is not None):
        dims = (args[2] if len(args) > 2 else kwargs.get("dim")) if name == "norm" else \
            (args[1] if len(args) > 1 else kwargs.get("dim"))
        dims = [dims] if isinstance(dims, int) else list(dims) if isinstance(dims, (tuple, list)) else None
        dims = None if dims is None or not all(isinstance(d, int) for d in dims) else [d % x.rank for d in dims]
        shape = A.shapes.get(node.name)
        ch = _channel_dim(x)
        if dims == [ch] and isinstance(shape, tuple) and len(shape) == x.rank:
            # over the channels, kept as a dim of 1 (GRN's mean): a statistic of all of them
            # (its channels' removal changes it: they are left alone unless approximate)
            A.freeze(x, f"{APPROXIMATE} a {name} over them at node {node.name}")
            return Val((), 1, x.rank, stat=f"a {name} over them at node {node.name}")
        if (x.last or name == "norm") and dims and all(d not in (0, ch) for d in dims) and \
                isinstance(shape, tuple) and A.size(x) in shape:
            # over tokens or pixels: per channel (a norm of zeros is zero)
            return _as_layout(x, len(shape) - 1 if x.last else 1, len(shape))
        return None
    if name in _BINARY + _DIV and len(args) == 2 and not kwargs and \
            any(isinstance(v, Val) and v.stat is not None for v in args):
        return _with_statistic(A, node, name, *args)
    if name == "addcmul" and node.op == "call_function" and len(args) == 3 and not kwargs.get("value", 1) != 1:
        base, t1, t2 = args   # base + t1 * t2 (ConvNeXt-V2's GRN: bias + weight * (x * x_n))
        if all(isinstance(v, Val) and v.tensor for v in args) and base.param is not None:
            y = _layout_binary(A, node, "mul", t1, t2)
            return A.param_member(node, "add", y, base) if y is not None else None
        return None
    if x is not None and x.param is not None and name in _VIEWS:
        shape, before = A.shapes.get(node.name), A.shapes.get(node.args[0].name)
        if name == "expand" and isinstance(shape, tuple) and isinstance(before, tuple) and len(shape) == len(before):
            return x   # broadcast dims only: the tensor's dims stay where they are
        big = [d for d, n in enumerate(shape or ()) if n != 1]
        was = [d for d, n in enumerate(before or ()) if n != 1]
        if len(big) == 1 and len(was) == 1 and name != "expand":   # a per-channel vector, viewed
            entries = shape_entries(node)
            fixed = [(path, v) for path, v in entries if isinstance(v, int) and v == shape[big[0]] > 1]
            if len(entries) != len(shape) or len(fixed) > 1:
                return A.opaque(node, f"the module attribute {x.param[0]} is viewed in a way not understood")
            # a constant channel count in the view (PoolFormer's scale.view(self.shape)): the
            # pruned model's graph gets the new count (plan.py), once the channels are known
            edit = (node.name, fixed[0][0], fixed[0][1]) if fixed else None
            return replace(x, rank=len(shape), param=(x.param[0], tuple(
                x.param[1][was[0]] if d == big[0] else None for d in range(len(shape))), edit))
        return A.opaque(node, f"the module attribute {x.param[0]} is used as a tensor")
    if name == "cat" and node.op == "call_function":
        return _cat_tokens(A, node, args, kwargs)
    if name in _BINARY and len(args) == 2 and not kwargs:
        return _layout_binary(A, node, "add" if name.startswith(("add", "sub")) else "mul", *args)
    return None


def _layout_binary(A: Analyzer, node, kind: str, a, b):
    """A product or sum with a parameter (a member), or of two channels-last / token
    layouts (joined); None for the other rules."""
    ta = isinstance(a, Val) and a.tensor
    tb = isinstance(b, Val) and b.tensor
    if ta and tb and (a.param is None) != (b.param is None):
        act, par = (a, b) if b.param is not None else (b, a)
        return A.param_member(node, kind, act, par)
    if ta and tb and a.last and b.last:
        return A.join_last(node, kind, a, b)
    return None


def _with_statistic(A: Analyzer, node, name: str, a, b):
    """An op with a statistic over all of some channels (``x_g / (x_g.mean(1) + eps)``),
    whose channels are left alone unless approximate (removing one changes it): broadcast
    over the channels it meets, a number per sample; zero stays zero in a product or in a
    numerator."""
    stat = next(v for v in (a, b) if isinstance(v, Val) and v.stat is not None)
    other = b if stat is a else a
    if not (isinstance(other, Val) and other.tensor):   # with a number: still a statistic
        return stat
    if other.stat is not None:
        return stat
    if other.param is not None or (name in _DIV and other is b):
        return A.unknown(node, f"{name} with a statistic over the channels", (a, b))
    if name in _BINARY and name.startswith(("add", "sub")):
        return A.unary(other, False, f"{node.name} (adds {stat.stat})")
    return other

def _fx_functional(A: Analyzer, node, rule: str, fn, x: Val, args, kwargs):
    """Functional spellings of a supported layer on its own module's tensors, as subclasses
    of the torch.nn layers call them from their forward (timm's BatchNormAct2d: F.batch_norm
    on self.running_mean ... self.bias): the layer's rule, or None when the call does not
    use exactly one module's tensors as that module would."""
    layer = _FX_LAYERS.get(rule)
    return layer(A, node, fn, x, args, kwargs) if layer is not None else None


def _call_module(A: Analyzer, node, c: Call, rule):
    m, x, args, kwargs = c.target, c.x, c.args, c.kwargs
    if not isinstance(x, Val) or not x.tensor:
        return A.unknown(node, type(m).__name__, (args, kwargs))
    if len([a for a in list(args) + list(kwargs.values()) if isinstance(a, (Val, Tup))]) > 1:
        return A.unknown(node, f"{type(m).__name__} with several tensor inputs", (args, kwargs))
    if rule in LAYERS:
        return handler_for(m).analyse(A, node, c.who, m, x)
    if rule is None:
        return A.unknown(node, type(m).__name__, (args, kwargs))
    return apply(A, node, rule, c)


# Function rules applied whatever the first argument is (an operator on a number, cat's
# list, a tuple's item, getattr); every other function's first argument must be a tensor.
_ANY_FIRST_ARG = {"size", "getitem", "add", "mul", "div", "cat"}


# rules that keep a channels-last or token layout as they keep channels at dim 1
_LAYOUT_RULES = ("split", "nonzero")


def _call(kind: str, target, args, kwargs, node) -> Call:
    x = args[0] if args else None
    if kind == "method":
        return Call("method", target, args, kwargs, x, target, f"Tensor.{target}", node.name)
    fname = getattr(target, "__name__", str(target))
    return Call("function", target, args, kwargs, x, fname, fname, node.name)


def _visit_fx(A: Analyzer, node, gm):
    if node.name in A.std.weight_nodes:
        return NOT_TENSOR
    args = _map_args(node.args, A.vals)
    kwargs = _map_args(node.kwargs, A.vals)
    op, target = node.op, node.target
    if op == "placeholder":
        return A.opaque(node, "the model's input channels")
    if op == "get_attr":
        if target.startswith(TRACE_CONSTANT):   # computed from module attributes at trace
            return A.opaque(node, f"a tensor the model computes from its attributes (node {node.name}: "
                                  f"a constant in the traced graph, e.g. a frozen BatchNorm's scale)")
        obj = gm
        for part in target.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, torch.Tensor):
            if obj.dim() >= 1 and _param_use(node) is not None:
                return Val((), 1, obj.dim(), param=(target, tuple(range(obj.dim())), None))
            return A.opaque(node, f"the module attribute {target} is used as a tensor")
        return NOT_TENSOR
    if op == "output":
        A.freeze(args, "it reaches the model's output")
        return None
    out = _heads.visit(A, node, args, kwargs, gm.get_submodule(target) if op == "call_module" else None)
    if out is None and op != "call_module":
        out = _radix.visit(A, node, args, kwargs)
    if out is None and op != "call_module":
        out = _layout(A, node, args, kwargs)
    if out is not None:
        return out
    if op == "call_module":
        m = gm.get_submodule(target)
        entry = entry_of("module", m)
        rule = entry.rule if entry is not None else None
        x = args[0] if args else next(iter(kwargs.values()), None)
        c = Call("module", m, args, kwargs, x, type(m).__name__, type(m).__name__, target)
        out = _last_axis(A, node, args, kwargs, entry is not None and entry.elementwise,
                         (lambda: _call_module(A, node, c, rule)) if rule in ("linear", "ln") else None)
        return out if out is not None else _call_module(A, node, c, rule)
    kind = "method" if op == "call_method" else "function"
    entry = entry_of(kind, target)
    rule = entry.rule if entry is not None else None
    if rule != "size":     # a shape query is no use of the channels
        out = _last_axis(A, node, args, kwargs, entry is not None and entry.elementwise,
                         (lambda: _fx_functional(A, node, rule, target, args[0], args, kwargs) or
                          A.unknown(node, f"F.{getattr(target, '__name__', target)}", (args, kwargs)))
                         if kind == "function" and rule in ("linear", "ln") else None,
                         (lambda: apply(A, node, rule, _call(kind, target, args, kwargs, node)))
                         if rule in _LAYOUT_RULES and args and isinstance(args[0], Val) else None)
        if out is not None:
            return out
    x = args[0] if args else None
    tensor_in = isinstance(x, Val) and x.tensor
    c = _call(kind, target, args, kwargs, node)
    if kind == "method":
        if rule == "size":
            return NOT_TENSOR
        if not tensor_in or rule is None:
            return A.unknown(node, c.label, (args, kwargs))
        return apply(A, node, rule, c)
    fname = c.name
    if rule in _ANY_FIRST_ARG:
        return apply(A, node, rule, c)
    if not tensor_in:
        if not A.segs_of((args, kwargs)):
            return NOT_TENSOR     # arithmetic on sizes
        return A.unknown(node, fname, (args, kwargs))
    if kwargs.get("return_indices"):
        return A.unknown(node, f"{fname}(return_indices=True)", x)
    if rule in LAYERS:
        return _fx_functional(A, node, rule, target, x, args, kwargs) or A.unknown(node, fname, (args, kwargs))
    if rule is None:
        return A.unknown(node, fname, (args, kwargs))
    return apply(A, node, rule, c)
