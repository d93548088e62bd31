"""What only fx graphs show of layers: a layer called functionally on its own module's
tensors (``F.batch_norm(x, self.running_mean, ..., self.bias)``, as timm's BatchNormAct2d
does) follows that layer's rule (``functional``), and a weight-standardised conv (timm's
StdConv2d: its weight normalised per filter at each forward) is found before the walk
(``find_standardised``), so that the nodes computing its weight are not taken for
activations."""
from __future__ import annotations

import operator
from typing import TYPE_CHECKING, List

import torch
from torch.nn import functional as F

from ..layers import LayerCall, handler_computing, handler_for, rule_of
from ..rule import Rule
from .model import Val
from .rules import _arg, conv_groups, group_norm_args, spellings

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


def find_standardised(A: Analyzer, graph) -> None:
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
    layer = handler_computing(m, Rule.BN, LayerCall(affine=_arg(node.args, node.kwargs, 3, "weight") is not None))
    return layer.analyse(A, node, name, m, x) if layer is not None else None


def _fx_group_norm(A: Analyzer, node, fn, x: Val, args, kwargs):
    groups, weight, bias = group_norm_args(node.args, node.kwargs, native=False)
    name, m = _fx_owner(A, weight, "weight") if weight is not None else _fx_owner(A, bias, "bias")
    layer = handler_computing(m, Rule.GN, LayerCall(groups=groups, affine=weight is not None))
    if layer is None or (bias is not None and _fx_owner(A, bias, "bias") != (name, m)):
        return None
    return layer.analyse(A, node, name, m, x)


def _fx_conv(A: Analyzer, node, fn, x: Val, args, kwargs):
    if node.name in A.std.convs:
        name, m, extra = A.std.convs[node.name]
        layer = handler_computing(m, Rule.CONV, LayerCall(groups=conv_groups(args, kwargs, fn.__name__)))
        if layer is None:
            return None
        out = layer.analyse(A, node, name, m, x)
        A.uses[name].out_params = extra
        A.freeze(x, f"{name} standardises its weight over its input channels (weight "
                    "standardisation): removing one changes every filter")
        return out
    name, m = _weight_owner(A, node)
    layer = handler_computing(m, Rule.CONV, LayerCall(groups=conv_groups(args, kwargs, fn.__name__),
                                                      weight_rank=_WEIGHT_RANK[fn]))
    return layer.analyse(A, node, name, m, x) if layer is not None else None


def _fx_linear(A: Analyzer, node, fn, x: Val, args, kwargs):
    name, m = _weight_owner(A, node)
    layer = handler_computing(m, Rule.LINEAR, LayerCall())
    return layer.analyse(A, node, name, m, x) if layer is not None else None


def _fx_layer_norm(A: Analyzer, node, fn, x: Val, args, kwargs):
    shape = _arg(node.args, node.kwargs, 1, "normalized_shape")
    weight, bias = _arg(node.args, node.kwargs, 2, "weight"), _arg(node.args, node.kwargs, 3, "bias")
    name, m = _fx_owner(A, weight, "weight") if weight is not None else _fx_owner(A, bias, "bias")
    layer = handler_computing(m, Rule.LN, LayerCall(normalized_shape=tuple(shape or ())))
    if layer is None or (bias is not None and _fx_owner(A, bias, "bias") != (name, m)):
        return None
    return layer.analyse(A, node, name, m, x)


LAYER_CALLS = {Rule.BN: _fx_batch_norm, Rule.GN: _fx_group_norm, Rule.LN: _fx_layer_norm, Rule.CONV: _fx_conv,
              Rule.LINEAR: _fx_linear}


def functional(A: Analyzer, node, rule: str, fn, x: Val, args, kwargs):
    """Functional spellings of a supported layer on its own module's tensors, as subclasses
    of the torch.nn layers call them from their forward (timm's BatchNormAct2d: F.batch_norm
    on self.running_mean ... self.bias): the layer's rule, or None when the call does not
    use exactly one module's tensors as that module would."""
    layer = LAYER_CALLS.get(rule)
    return layer(A, node, fn, x, args, kwargs) if layer is not None else None
