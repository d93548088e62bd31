"""Channel dependency groups of a model, found from its graph, not from module names.

(Over the ~450-line limit on purpose, for now: the tracing, the per-op layout rules and
the group joining share one set of dataclasses and were kept together while the rules
settled; the coverage issue (#11) splits this file into a package.)

The model is traced with ``torch.fx`` (``symbolic_trace`` with the pruner's leaf modules),
or with ``torch.export`` where fx fails and example inputs are given. Every tensor on the
way carries a *layout*: the channel spaces its dimension 1 is made of, in order (one for
a conv output, several after a ``torch.cat``). A *space* is the output channels of one
producer (a conv, a linear, a ``PadShortcut``); spaces that must lose the same channels
are joined into a *group*:

- a residual addition (``+``/``-``) joins the spaces of its operands channel for channel
  (all producers of a residual stream form one group);
- a product ``x * s`` (a squeeze-excitation scale) joins them too;
- a grouped or depthwise convolution joins its input and output spaces *by conv group*:
  the group is then pruned in units of whole conv groups (``units``);
- a GroupNorm prunes its input's spaces in units of whole GN groups (a group's statistics
  are its own channels'); with one group it is a LayerNorm over channels: left alone;
- a weight-standardised conv (its weight normalised per filter at each forward) prunes its
  filters and their gain, never its input channels (that would change every filter);
- ``torch.cat`` along channels makes no join: the consumer's input channels are the
  concatenated spaces at their offsets (DenseNet);
- flatten into a ``Linear``: each channel expands to the ``H*W`` features it became;
- a ``Linear`` on an input of rank >= 3 ([B, T, C] tokens, [B, H, W, C] channels-last)
  works on the last dimension: its output's layout is marked ``Val.last`` and may only
  pass elementwise ops into the next ``Linear`` (the hidden dimension of an MLP); any
  other op leaves it alone.

A space is *frozen* (left unpruned, with the reason recorded) when its channels reach
anything the analysis does not understand: an op it does not know (reported by name),
the model's output, the model's input, a module attribute used as a tensor, or a consumer
that would see a pruned channel as non-zero (after a ``sigmoid``, an added constant, a
BatchNorm without affine). A frozen space freezes its whole group: a pattern the analysis
cannot prove safe is left unpruned, never pruned wrongly.

A ``PadShortcut`` (the CIFAR ResNets' parameter-free shortcut) is a producer of its own
output space: the streams before and after it are separate groups, and the selection
(prune.py) prunes an output channel it feeds only together with the feeding channel.

"Safe" is checked against the zeroing criterion: zeroing the pruned channels of every
member (conv and linear filters and biases, BatchNorm weight and bias) must make every
consumer see exactly zero in those channels; then removing them changes nothing. Each channel segment carries that flag (``Seg.zero``) through the graph.
"""
from __future__ import annotations

import contextlib
import io
import logging

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from .layers import LEAF_TYPES, PadShortcut


# ----------------------------------------------------------------------------- data
@dataclass
class Space:
    """The output channels of one producer."""
    id: int
    size: Optional[int]
    producer: str            # module name, or a description for inputs and opaque tensors
    kind: str                # conv | linear | shortcut | input | opaque
    reasons: List[str] = field(default_factory=list)  # non-empty: frozen


@dataclass(frozen=True)
class Seg:
    space: int
    zero: bool = True        # zero here when the group's pruned channels are zeroed
    via: str = ""            # the op that made it non-zero, when it is not


@dataclass(frozen=True)
class Val:
    """What the analysis knows of one graph value."""
    segs: Tuple[Seg, ...] = ()
    factor: Optional[int] = 1    # features per channel after a flatten (None: not yet known)
    rank: Optional[int] = None
    tensor: bool = True
    last: bool = False           # the segs lay out the LAST dimension, not dim 1: the output
                                 # of a Linear on an input of rank >= 3 (tokens, channels-last)


@dataclass(frozen=True)
class Tup:
    items: Tuple[Any, ...]


NOT_TENSOR = Val(tensor=False)


@dataclass
class Use:
    """One module's place in the channel graph."""
    name: str
    module: nn.Module
    kind: str                         # conv | linear | bn | prelu | shortcut
    in_segs: Tuple[Seg, ...] = ()     # channels of its input (bn, prelu: its channels)
    factor: int = 1                   # input features per channel (linear after flatten)
    out_space: Optional[int] = None   # conv, linear, shortcut
    grouped: bool = False             # conv with groups > 1: input tied to output by group
    out_params: Tuple[str, ...] = ()  # other per-filter tensors pruned with the filters (a
                                      # weight-standardised conv's gain)


@dataclass
class Group:
    id: int
    spaces: List[int]
    units: int                # pruning happens in this many equal units per space
    residual: bool            # joined by a residual addition
    reasons: List[str]        # non-empty: left unpruned, and why


@dataclass
class Analysis:
    tracer: str
    spaces: List[Space]
    uses: Dict[str, Use]
    groups: List[Group]
    group_of: Dict[int, int]          # space id -> group id
    unsupported: List[str]            # ops not understood: "op (node): what it froze"

    def producers(self, group: Group) -> List[Use]:
        """The modules whose filters make the group's channels (its scoring members)."""
        spaces = set(group.spaces)
        return [u for u in self.uses.values()
                if u.out_space in spaces and u.kind in ("conv", "linear")]

    def members(self, group: Group) -> List[str]:
        spaces = set(group.spaces)
        return [u.name for u in self.uses.values()
                if u.out_space in spaces or any(s.space in spaces for s in u.in_segs)]


class TraceFailure(RuntimeError):
    """The model could not be traced. The message is one line; the tracers' own errors,
    which can run to pages (torch.export prints the graph it got stuck in), are kept as
    ``fx_error`` and ``export_error``."""

    def __init__(self, message: str, fx_error=None, export_error=None):
        super().__init__(message)
        self.fx_error, self.export_error = fx_error, export_error


def _first_line(exc: BaseException, limit: int = 160) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


def _hint(model: nn.Module) -> str:
    """Where to prune instead: the submodule holding most of the convolutions' weights (a
    detection model's backbone), else most of the parameters."""
    def weight(m: nn.Module):
        convs = sum(c.weight.numel() for c in m.modules() if isinstance(c, _CONV))
        return convs, sum(p.numel() for p in m.parameters())

    children = [(weight(m), n) for n, m in model.named_children()]
    if not children or max(children)[0] == (0, 0):
        return ""
    return (f"; prune a part that traces instead, e.g. its largest convolutional submodule: "
            f"fpgm_ext.prune(model.{max(children)[1]}, an input of that part)")


@contextlib.contextmanager
def _quiet():
    """torch.export logs, and writes to stderr, the whole graph it failed on: silenced
    for the attempt (the error keeps it)."""
    old = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(old)


# ------------------------------------------------------------------------ op tables
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Tanh, nn.Softsign, nn.Tanhshrink, nn.Hardshrink, nn.Softshrink,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
    nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d,
)
_NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)

_PASS_FUNCS = {
    F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu,
    F.gelu, F.silu, F.mish, F.hardswish, torch.tanh, F.tanh, F.softsign, F.tanhshrink,
    F.hardshrink, F.softshrink, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.alpha_dropout, F.feature_alpha_dropout, F.max_pool1d, F.max_pool2d, F.max_pool3d,
    F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
    F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
    F.interpolate, torch.clone,
}
_NONZERO_FUNCS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.logsigmoid, torch.exp}
_ADD_FUNCS = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_MUL_FUNCS = {operator.mul, operator.imul, torch.mul}
_DIV_FUNCS = {operator.truediv, operator.itruediv, torch.div}
_CAT_FUNCS = {torch.cat, torch.concat, torch.concatenate}
_REDUCE_FUNCS = {torch.mean, torch.sum, torch.amax, torch.amin}

_PASS_METHODS = {"relu", "relu_", "tanh", "tanh_", "contiguous", "clone", "detach", "to", "float",
                 "double", "half", "bfloat16", "type_as", "cpu", "cuda", "requires_grad_"}
_NONZERO_METHODS = {"sigmoid", "sigmoid_", "exp", "exp_"}
_NONTENSOR_METHODS = {"size", "dim", "numel", "nelement", "item", "tolist", "ndimension"}
_ADD_METHODS = {"add", "add_", "sub", "sub_"}
_MUL_METHODS = {"mul", "mul_"}
_DIV_METHODS = {"div", "div_"}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}

# aten op names (torch.export graphs): op._opname
_ATEN_PASS = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu",
    "gelu", "gelu_", "silu", "silu_", "mish", "mish_", "hardswish", "hardswish_", "tanh", "tanh_",
    "dropout", "dropout_", "feature_dropout", "alpha_dropout", "feature_alpha_dropout",
    "max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "_adaptive_avg_pool2d",
    "adaptive_max_pool1d", "clone", "contiguous", "alias", "detach", "_to_copy", "to",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d",
    "upsample_linear1d", "upsample_trilinear3d", "softshrink", "hardshrink", "lift_fresh_copy",
}
_ATEN_NONZERO = {"sigmoid", "sigmoid_", "hardsigmoid", "hardsigmoid_", "softplus", "exp", "log_sigmoid"}


def _zero_in(lo, hi) -> bool:
    return (lo is None or lo <= 0) and (hi is None or hi >= 0)


# ------------------------------------------------------------------------- tracing
class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LEAF_TYPES) or super().is_leaf_module(m, qualname)


def _fx_trace(model: nn.Module) -> torch.fx.GraphModule:
    tracer = _Tracer()
    graph = tracer.trace(model)
    return torch.fx.GraphModule(tracer.root, graph, type(model).__name__)


class _ModeGuard:
    """Eval mode and no grad for a forward that must not change the model; restores the
    training flags of every submodule afterwards."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()

    def __exit__(self, *exc):
        self.grad.__exit__(*exc)
        for m, flag in self.flags:
            m.training = flag


def _shape_of(x):
    if isinstance(x, torch.Tensor):
        return tuple(int(s) for s in x.shape)
    if isinstance(x, (tuple, list)):
        return tuple(_shape_of(v) for v in x)
    return None


def _fx_shapes(gm: torch.fx.GraphModule, model: nn.Module, example_inputs, flops=None) -> Dict[str, Any]:
    """The output shape of every node, from one run of the traced graph; with ``flops`` (a
    ``flops.FlopRecorder``), that run also counts the model's FLOPs per called module."""
    shapes: Dict[str, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            if flops is not None and n.op == "call_module":
                out = flops.module_call(n.target, lambda: super(Recorder, self).run_node(n))
            else:
                out = super().run_node(n)
            shapes[n.name] = _shape_of(out)
            return out

    inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in example_inputs]
    with _ModeGuard(model), (flops if flops is not None else contextlib.nullcontext()):
        Recorder(gm).run(*inputs)
    return shapes


def _export(model: nn.Module, example_inputs):
    with _ModeGuard(model):
        return torch.export.export(model, tuple(example_inputs))


def trace(model: nn.Module, example_inputs=None, method: str = "auto", flops=None):
    """(graph, shapes, tracer name, param/buffer placeholder names -> FQN, user inputs).
    ``flops``: see ``_fx_shapes`` (the export path runs nothing: it stays unused)."""
    fx_error = None
    if method in ("auto", "fx"):
        try:
            gm = _fx_trace(model)
        except Exception as exc:  # TraceError, TypeError, NotImplementedError, ...
            fx_error = exc
            if method == "fx":
                raise TraceFailure(f"torch.fx could not trace {type(model).__name__}: "
                                   f"{_first_line(exc)}{_hint(model)}", fx_error=exc) from None
        else:
            shapes = _fx_shapes(gm, model, example_inputs, flops) if example_inputs is not None else {}
            return gm.graph, shapes, "fx", {}, gm
    if example_inputs is None:
        raise TraceFailure(
            f"torch.fx could not trace {type(model).__name__} ({_first_line(fx_error)}); "
            "pass example_inputs so that torch.export can trace it instead", fx_error=fx_error)
    try:
        with _quiet():
            ep = _export(model, example_inputs)
    except Exception as exc:
        before = f"torch.fx failed ({_first_line(fx_error)}), then " if fx_error else ""
        raise TraceFailure(f"fpgm_ext.prune: {before}torch.export failed on {type(model).__name__} "
                           f"({_first_line(exc)}){_hint(model)}", fx_error=fx_error,
                           export_error=exc) from None
    sig = ep.graph_signature
    names = dict(sig.inputs_to_parameters)
    names.update(sig.inputs_to_buffers)
    names.update(getattr(sig, "inputs_to_lifted_tensor_constants", {}) or {})
    shapes = {}
    for n in ep.graph.nodes:
        if "val" in n.meta:
            shapes[n.name] = _shape_of(n.meta["val"])
    return ep.graph, shapes, "export", names, ep


# ------------------------------------------------------------------------ analysis
class _Analyzer:
    def __init__(self, model: nn.Module, shapes: Dict[str, Any], tracer: str, names: Dict[str, str]):
        self.model = model
        self.modules = dict(model.named_modules())
        self.shapes = shapes
        self.tracer = tracer
        self.param_names = names          # export: placeholder -> FQN
        self.spaces: List[Space] = []
        self.parent: List[int] = []
        self.ties: List[Tuple[int, int]] = []     # (space, conv groups): unit constraints
        self.residual_edges: List[int] = []       # spaces joined by a residual addition
        self.uses: Dict[str, Use] = {}
        self.unsupported: List[str] = []
        self.vals: Dict[str, Any] = {}
        # fx: conv node -> (module name, module, per-filter tensors) of a weight-standardised
        # conv, and the nodes that compute its weight (not activations: no channels)
        self.standardised: Dict[str, Tuple[str, nn.Module, Tuple[str, ...]]] = {}
        self.weight_nodes: set = set()

    # ---- spaces
    def new_space(self, size, producer, kind, reason=None) -> int:
        sid = len(self.spaces)
        self.spaces.append(Space(sid, size, producer, kind, [reason] if reason else []))
        self.parent.append(sid)
        return sid

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def freeze(self, val, reason: str) -> None:
        for seg in self._segs(val):
            if reason not in self.spaces[seg.space].reasons:
                self.spaces[seg.space].reasons.append(reason)

    def _segs(self, val):
        if isinstance(val, Val):
            return list(val.segs)
        if isinstance(val, Tup):
            return [s for v in val.items for s in self._segs(v)]
        if isinstance(val, (list, tuple)):
            return [s for v in val for s in self._segs(v)]
        if isinstance(val, dict):
            return [s for v in val.values() for s in self._segs(v)]
        return []

    def size(self, val: Val) -> Optional[int]:
        sizes = [self.spaces[s.space].size for s in val.segs]
        return None if not sizes or any(s is None for s in sizes) else sum(sizes)

    def opaque(self, node, reason: str) -> Val:
        shape = self.shapes.get(node.name)
        size = shape[1] if isinstance(shape, tuple) and len(shape) >= 2 and isinstance(shape[1], int) else None
        rank = len(shape) if isinstance(shape, tuple) and all(isinstance(s, int) for s in shape) else None
        return Val((Seg(self.new_space(size, node.name, "opaque", reason)),), 1, rank)

    def consume(self, val: Val, who: str) -> None:
        for seg in val.segs:
            if not seg.zero:
                self.freeze(Val((seg,)), f"its pruned channels would reach {who} as non-zero values "
                                         f"(after {seg.via}, which does not map 0 to 0)")

    def compatible(self, a: Sequence[Seg], b: Sequence[Seg]) -> bool:
        return len(a) == len(b) and all(
            self.spaces[x.space].size is not None and self.spaces[x.space].size == self.spaces[y.space].size
            for x, y in zip(a, b))

    def unknown(self, node, what: str, inputs) -> Val:
        tensors = [s for s in self._segs(inputs)]
        reason = f"unsupported op '{what}' (node {node.name})"
        if tensors:
            self.unsupported.append(reason)
        self.freeze(inputs, reason)
        return self.opaque(node, f"output of {reason}")

    # ---- modules
    def record(self, name, module, kind, x: Val, factor=1, out_size=None, grouped=False) -> Use:
        use = self.uses.get(name)
        if use is None:
            out = self.new_space(out_size, name, kind) if out_size is not None else None
            use = Use(name, module, kind, tuple(x.segs), factor, out, grouped)
            self.uses[name] = use
        elif self.compatible(use.in_segs, x.segs) and use.factor == factor:
            for a, b in zip(use.in_segs, x.segs):   # a shared module: the same channels in
                self.union(a.space, b.space)
        else:
            reason = f"{name} is called more than once on inputs made of different channels"
            self.freeze(Val(use.in_segs), reason)
            self.freeze(x, reason)
            if use.out_space is not None:
                self.freeze(Val((Seg(use.out_space),)), reason)
        return use

    def conv(self, node, name: str, m: nn.Module, x: Val) -> Val:
        rank = x.rank if x.rank is not None else m.weight.dim()
        if x.factor != 1:
            return self.unknown(node, f"{type(m).__name__} on flattened features", x)
        self.consume(x, name)
        size = self.size(x)
        if size != m.in_channels:
            self.freeze(x, f"the input channels of {name} could not be matched to their producers")
        if m.groups == 1:
            use = self.record(name, m, "conv", x, out_size=m.out_channels)
        else:
            use = self.record(name, m, "conv", x, out_size=m.out_channels, grouped=True)
            if len(x.segs) != 1 or size != m.in_channels:
                self.freeze(Val((Seg(use.out_space),)), f"{name} is a grouped conv whose input is not "
                                                       "one whole channel space")
                self.freeze(x, f"{name} is a grouped conv whose input is not one whole channel space")
            else:
                self.union(x.segs[0].space, use.out_space)
                self.ties.append((use.out_space, m.groups))
        return Val((Seg(use.out_space),), 1, rank)

    def linear(self, node, name: str, m: nn.Linear, x: Val) -> Val:
        if x.rank is not None and x.rank >= 3:
            # The features are the last dimension ([B, T, C] tokens, [B, H, W, C] channels
            # last): the input's last-dimension space is consumed when it is one (another
            # Linear's output, the hidden dimension of an MLP), and the output's last
            # dimension is this layer's own space, for the next Linear to consume.
            if x.last and x.factor == 1 and self.size(x) == m.in_features:
                self.consume(x, name)
                use = self.record(name, m, "linear", x, out_size=m.out_features)
            else:
                self.freeze(x, f"{name} (Linear) reads the last dimension of an input whose "
                               "channels are elsewhere")
                use = self.record(name, m, "linear", Val(), out_size=m.out_features)
            return Val((Seg(use.out_space),), 1, x.rank, last=True)
        if x.rank != 2:
            why = "of unknown rank (pass example_inputs)" if x.rank is None else f"of rank {x.rank}"
            reason = f"{name} (Linear) is applied to an input {why}; only [N, features] inputs are pruned"
            self.freeze(x, reason)
            use = self.record(name, m, "linear", Val(), out_size=m.out_features)
            self.freeze(Val((Seg(use.out_space),)), reason)
            return Val((Seg(use.out_space),), 1, x.rank)
        size = self.size(x)
        factor = x.factor
        if size is not None and factor is None and m.in_features % size == 0:
            factor = m.in_features // size
        if size is None or factor is None or size * factor != m.in_features:
            self.freeze(x, f"the input features of {name} could not be matched to their producers")
            use = self.record(name, m, "linear", Val(), out_size=m.out_features)
        else:
            self.consume(x, name)
            use = self.record(name, m, "linear", x, factor=factor, out_size=m.out_features)
        return Val((Seg(use.out_space),), 1, 2)

    def channelwise(self, node, name: str, m: nn.Module, x: Val, kind: str, count: int,
                    zero_out: bool, via: str) -> Val:
        """A module with per-channel tensors (BatchNorm, PReLU): a member of every space of
        its input, pruned at the same channels."""
        size = self.size(x)
        factor = x.factor
        if size is not None and factor is None and count % size == 0:
            factor = count // size
        if size is None or factor is None or size * factor != count:
            self.freeze(x, f"the channels of {name} could not be matched to their producers")
            self.record(name, m, kind, Val())
            factor = x.factor
        else:
            self.record(name, m, kind, x, factor=factor)
        segs = tuple(Seg(s.space, True) if zero_out else
                     (s if not s.zero else Seg(s.space, False, via)) for s in x.segs)
        return Val(segs, factor, x.rank)

    def group_norm(self, node, name: str, m: nn.GroupNorm, x: Val) -> Val:
        """GroupNorm: a group's statistics are its own channels', so whole GN groups go or
        stay and the rest normalise as before (exact). Each space of the input is pruned
        in units of whole GN groups, which must not straddle two spaces. With one group
        (a LayerNorm over the channels) any pruning changes the statistics: left alone."""
        per = m.num_channels // m.num_groups
        size = self.size(x)
        if x.factor != 1 or size != m.num_channels:
            self.freeze(x, f"the channels of {name} could not be matched to their producers")
            self.record(name, m, "gn", Val())
            return self.opaque(node, f"output of {name} (GroupNorm on unmatched channels)")
        if m.num_groups == 1:
            self.freeze(x, f"{name} is a GroupNorm with one group (a LayerNorm over the channels: "
                           "pruning any channel changes its statistics)")
        offset = 0
        for seg in x.segs:
            space = self.spaces[seg.space].size
            if offset % per or space % per:
                self.freeze(x, f"{name}'s groups of {per} channels straddle two channel spaces")
                break
            self.ties.append((seg.space, space // per))
            offset += space
        self.record(name, m, "gn", x)
        # Affine: the pruned channels' weight and bias are zeroed, so they come out zero
        # whatever came in. Without: a group of zeros normalises to zero.
        segs = tuple(Seg(s.space, True) if m.affine else s for s in x.segs)
        return Val(segs, 1, x.rank)

    def call_module(self, node, name: str, m: nn.Module, args, kwargs) -> Val:
        x = args[0] if args else next(iter(kwargs.values()), None)
        if not isinstance(x, Val) or not x.tensor:
            return self.unknown(node, type(m).__name__, (args, kwargs))
        if len([a for a in list(args) + list(kwargs.values()) if isinstance(a, (Val, Tup))]) > 1:
            return self.unknown(node, f"{type(m).__name__} with several tensor inputs", (args, kwargs))
        if isinstance(m, _CONV):
            return self.conv(node, name, m, x)
        if isinstance(m, nn.Linear):
            return self.linear(node, name, m, x)
        if isinstance(m, _BN):
            if m.num_features is None:
                return self.unknown(node, type(m).__name__, x)
            return self.channelwise(node, name, m, x, "bn", m.num_features, m.affine,
                                    f"{name} (BatchNorm without affine)")
        if isinstance(m, nn.PReLU):
            if m.num_parameters == 1:
                return x
            return self.channelwise(node, name, m, x, "prelu", m.num_parameters, False, "")
        if isinstance(m, nn.GroupNorm):
            return self.group_norm(node, name, m, x)
        if isinstance(m, PadShortcut):
            if len(x.segs) != 1 or x.factor != 1 or self.size(x) != m.in_channels:
                return self.unknown(node, f"{name} (PadShortcut) on an input of several spaces", x)
            self.consume(x, name)
            use = self.record(name, m, "shortcut", x, out_size=m.out_channels)
            return Val((Seg(use.out_space),), 1, x.rank)
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                          nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)) and m.return_indices:
            return self.unknown(node, f"{type(m).__name__}(return_indices=True)", x)
        if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
            return self.unary(x, m.value == 0, f"{name} (ConstantPad, value {m.value})")
        if isinstance(m, nn.Hardtanh):  # ReLU6 too
            return self.unary(x, _zero_in(m.min_val, m.max_val), f"{name} (Hardtanh)")
        if isinstance(m, _PASS_MODULES):
            return self.unary(x, True, "")
        if isinstance(m, _NONZERO_MODULES):
            return self.unary(x, False, f"{name} ({type(m).__name__})")
        if isinstance(m, nn.Flatten):
            return self.flatten(node, x, m.start_dim, m.end_dim)
        return self.unknown(node, type(m).__name__, (args, kwargs))

    # ---- tensor ops
    def unary(self, x: Val, zero_preserving: bool, via: str) -> Val:
        if zero_preserving:
            return x
        return replace(x, segs=tuple(s if not s.zero else Seg(s.space, False, via) for s in x.segs))

    def flatten(self, node, x: Val, start: int, end: int) -> Val:
        rank = x.rank
        if rank is not None:
            start = start % rank if rank else start
            end = end % rank if rank else end
        if x.factor != 1:
            if rank == 2 and start == 1:
                return x
            return self.unknown(node, "flatten of flattened features", x)
        if start != 1 or (end != -1 and (rank is None or end != rank - 1)):
            return self.unknown(node, f"flatten(start_dim={start}, end_dim={end})", x)
        factor = None
        shape = self.shapes.get(self._arg_node_name(node))
        if isinstance(shape, tuple) and len(shape) >= 2:
            factor = math.prod(shape[2:])
        if rank == 2:
            factor = 1
        return Val(x.segs, factor, 2)

    def _arg_node_name(self, node):
        first = node.args[0] if node.args else None
        return first.name if isinstance(first, torch.fx.Node) else None

    def view(self, node, x: Val, shape_args) -> Val:
        in_shape = self.shapes.get(self._arg_node_name(node))
        out_shape = self.shapes.get(node.name)
        if isinstance(in_shape, tuple) and isinstance(out_shape, tuple) and in_shape and \
                all(isinstance(s, int) for s in in_shape + out_shape):
            if out_shape == in_shape:
                return x
            if len(in_shape) >= 2 and out_shape == (in_shape[0], math.prod(in_shape[1:])):
                return self.flatten(node, replace(x, rank=len(in_shape)), 1, -1)
            return self.unknown(node, f"view/reshape {list(in_shape)} -> {list(out_shape)}", x)
        if len(shape_args) == 2 and shape_args[1] == -1 and shape_args[0] != -1:
            return self.flatten(node, x, 1, -1)   # x.view(x.size(0), -1)
        return self.unknown(node, "view/reshape", x)

    def reduce(self, node, what: str, x: Val, dims, keepdim: bool) -> Val:
        if dims is None:
            return self.unknown(node, f"{what} over all dims", x)
        dims = [dims] if isinstance(dims, int) else list(dims)
        if x.rank is None and any(d < 0 for d in dims):
            return self.unknown(node, f"{what} over dims {dims} of unknown rank", x)
        norm = [d % x.rank if x.rank else d for d in dims]
        if 0 in norm or 1 in norm or x.factor != 1:
            return self.unknown(node, f"{what} over dims {dims}", x)
        rank = None if x.rank is None else (x.rank if keepdim else x.rank - len(set(norm)))
        return Val(x.segs, 1, rank)

    def cat(self, node, tensors, dim) -> Val:
        vals = [t for t in tensors if isinstance(t, Val) and t.tensor]
        rank = next((v.rank for v in vals if v.rank is not None), None)
        d = dim % rank if rank else dim
        if len(vals) != len(tensors) or d != 1 or any(v.factor != 1 for v in vals):
            return self.unknown(node, f"cat(dim={dim})", tensors)
        if any(self.size(v) is None for v in vals):
            return self.unknown(node, "cat of tensors with unknown channel counts", tensors)
        return Val(tuple(s for v in vals for s in v.segs), 1, rank)

    def broadcast_one(self, node, a: Val, b: Val) -> Optional[int]:
        """Which operand (0 or 1) broadcasts along channels (size 1), if shapes say so."""
        shapes = [self.shapes.get(n.name) if isinstance(n, torch.fx.Node) else None for n in node.args[:2]]
        sa, sb = shapes + [None] * (2 - len(shapes))
        if isinstance(sa, tuple) and isinstance(sb, tuple) and len(sa) == len(sb) >= 2:
            if sa[1] == 1 and sb[1] != 1:
                return 0
            if sb[1] == 1 and sa[1] != 1:
                return 1
        return None

    def binary(self, node, kind: str, a, b) -> Val:
        ta = isinstance(a, Val) and a.tensor
        tb = isinstance(b, Val) and b.tensor
        if not ta and not tb:
            return NOT_TENSOR
        if kind == "div":
            if ta and not tb:
                return a
            return self.unknown(node, "division by a tensor", (a, b))
        if not (ta and tb):   # with a python number
            x = a if ta else b
            if kind == "mul":
                return x
            const = b if ta else a
            if isinstance(const, (int, float)) and const == 0:
                return x
            return self.unary(x, False, f"{node.name} (adds a constant)")
        if (a.rank is not None and b.rank is not None and a.rank != b.rank) or a.factor != b.factor:
            return self.unknown(node, f"{kind} of tensors of different layouts", (a, b))
        one = self.broadcast_one(node, a, b)
        if one is not None:
            x = b if one == 0 else a
            if kind == "mul":
                return x
            return self.unary(x, False, f"{node.name} (adds a broadcast tensor)")
        if not self.compatible(a.segs, b.segs):
            reason = f"{kind} of tensors whose channels are made differently (node {node.name})"
            self.unsupported.append(reason)
            self.freeze((a, b), reason)
            return a
        segs = []
        for x, y in zip(a.segs, b.segs):
            if self.find(x.space) != self.find(y.space) and kind == "add":
                self.residual_edges += [x.space, y.space]
            self.union(x.space, y.space)
            if kind == "add":
                zero = x.zero and y.zero
                via = x.via or y.via
            else:
                zero = x.zero or y.zero
                via = "" if zero else x.via
            segs.append(Seg(x.space, zero, via))
        return Val(tuple(segs), a.factor, a.rank if a.rank is not None else b.rank)

    def getitem(self, node, base, idx) -> Any:
        if isinstance(base, Tup):
            return base.items[idx] if isinstance(idx, int) and -len(base.items) <= idx < len(base.items) \
                else self.unknown(node, "getitem", base)
        if isinstance(base, Val) and not base.tensor:
            return NOT_TENSOR
        if isinstance(base, (list, tuple)):
            return base[idx] if isinstance(idx, int) else self.unknown(node, "getitem", base)
        if isinstance(base, Val):
            # x[:, :, ::2, ::2] (spatial slicing): channels untouched
            if isinstance(idx, tuple) and len(idx) >= 2 and all(isinstance(i, slice) for i in idx) \
                    and idx[0] == slice(None) and idx[1] == slice(None) and base.factor == 1:
                return base
            return self.unknown(node, "tensor indexing", base)
        return NOT_TENSOR

    def pad(self, node, x: Val, pad, mode, value) -> Val:
        spatial = x.rank is not None and len(pad) <= 2 * (x.rank - 2) and x.factor == 1
        if spatial and (mode != "constant" or value in (None, 0, 0.0)):
            return x
        return self.unknown(node, f"pad {list(pad)} mode={mode}", x)

    def clamp(self, x: Val, lo, hi, via) -> Val:
        if not (lo is None or isinstance(lo, (int, float))) or not (hi is None or isinstance(hi, (int, float))):
            return self.unary(x, False, via)
        return self.unary(x, _zero_in(lo, hi), via)


# ------------------------------------------------------------------ graph drivers
def _map_args(a, vals):
    if isinstance(a, torch.fx.Node):
        return vals.get(a.name, NOT_TENSOR)
    if isinstance(a, (list, tuple)):
        return type(a)(_map_args(v, vals) for v in a)
    if isinstance(a, dict):
        return {k: _map_args(v, vals) for k, v in a.items()}
    return a


def _arg(args, kwargs, i, name, default=None):
    if len(args) > i:
        return args[i]
    return kwargs.get(name, default)


# A value laid out along its last dimension (Val.last) goes only through ops that act on
# each element alone, into a Linear; anything else (pooling, reshapes, reductions,
# additions, norms) leaves its channels alone, by name.
_ELEMENTWISE_MODULES = tuple(m for m in _PASS_MODULES if not issubclass(m, (
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Upsample, nn.modules.padding._ConstantPadNd, nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd, nn.modules.padding._CircularPadNd)))
_ELEMENTWISE_FUNCS = {f for f in _PASS_FUNCS if "pool" not in getattr(f, "__name__", "")
                      and f is not F.interpolate}
_ELEMENTWISE_EXPORT = {"relu", "relu_", "gelu", "silu", "silu_", "hardswish", "mish", "tanh",
                       "dropout", "clone", "alias", "contiguous"}


def _last_axis(A: _Analyzer, node, args, kwargs, elementwise: bool, linear):
    """The rule for an op some of whose inputs are laid out along their last dimension:
    None when no input is; the input itself through an elementwise op (its only tensor);
    ``linear()`` for a Linear (which knows the layout); else the inputs are left alone."""
    vals = [v for v in list(args) + list(kwargs.values()) if isinstance(v, (Val, Tup))]
    if not any(isinstance(v, Val) and v.last for v in vals):
        return None
    if linear is not None:
        return linear()
    if elementwise and len(vals) == 1:
        return vals[0]
    return A.unknown(node, f"{node.target} on a last-dimension layout", (args, kwargs))


def _fx_owner(A: _Analyzer, node_arg, attr: str):
    """(name, module) when ``node_arg`` is a get_attr of ``attr`` of a module of the model
    (as ``module.<attr>``); else (None, None). The module comes from the model itself: the
    traced GraphModule holds only empty containers around the attributes it reads."""
    if not isinstance(node_arg, torch.fx.Node) or node_arg.op != "get_attr":
        return None, None
    name, _, last = node_arg.target.rpartition(".")
    m = A.modules.get(name)
    return (name, m) if m is not None and last == attr else (None, None)


def _fx_functional(A: _Analyzer, node, fn, x: Val, args, kwargs):
    """Functional spellings of a supported layer on its own module's tensors, as subclasses
    of the torch.nn layers call them from their forward (timm's BatchNormAct2d: F.batch_norm
    on self.running_mean ... self.bias): the layer's rule, or None when the call does not
    use exactly one module's tensors as that module would."""
    raw = lambda i, key: node.args[i] if len(node.args) > i else node.kwargs.get(key)  # noqa: E731
    if fn in (F.batch_norm, torch.batch_norm):
        names = {}
        for i, key in ((1, "running_mean"), (2, "running_var"), (3, "weight"), (4, "bias")):
            arg = raw(i, key)
            if arg is None:
                continue
            name, m = _fx_owner(A, arg, key)
            if m is None:
                return None
            names[name] = m
        if len(names) != 1:
            return None
        name, m = next(iter(names.items()))
        if not isinstance(m, _BN) or m.num_features is None or (raw(3, "weight") is None) == m.affine:
            return None
        return A.channelwise(node, name, m, x, "bn", m.num_features, m.affine,
                             f"{name} (BatchNorm without affine)")
    if fn is F.group_norm:
        groups = _arg(args, kwargs, 1, "num_groups")
        weight, bias = raw(2, "weight"), raw(3, "bias")
        name, m = _fx_owner(A, weight, "weight") if weight is not None else _fx_owner(A, bias, "bias")
        if m is None or not isinstance(m, nn.GroupNorm) or groups != m.num_groups or \
                (weight is None) == m.affine or (bias is not None and _fx_owner(A, bias, "bias") != (name, m)):
            return None
        return A.group_norm(node, name, m, x)
    if fn in (F.conv1d, F.conv2d, F.conv3d) and node.name in A.standardised:
        name, m, extra = A.standardised[node.name]
        if _arg(args, kwargs, 6, "groups", 1) != m.groups:
            return None
        out = A.conv(node, name, m, x)
        A.uses[name].out_params = extra
        A.freeze(x, f"{name} standardises its weight over its input channels (weight "
                    "standardisation): removing one changes every filter")
        return out
    if fn in (F.conv1d, F.conv2d, F.conv3d, F.linear):
        name, m = _fx_owner(A, raw(1, "weight"), "weight")
        bias = raw(2, "bias")
        if m is None or (bias is not None and _fx_owner(A, bias, "bias") != (name, m)):
            return None
        if fn is F.linear:
            return A.linear(node, name, m, x) if isinstance(m, nn.Linear) else None
        groups = _arg(args, kwargs, 6, "groups", 1)
        if not isinstance(m, _CONV) or m.weight.dim() != {F.conv1d: 3, F.conv2d: 4, F.conv3d: 5}[fn] \
                or groups != m.groups:
            return None
        return A.conv(node, name, m, x)
    return None


def _find_standardised(A: _Analyzer, graph) -> None:
    """Weight-standardised convs in an fx graph (timm's StdConv2d, ScaledStdConv2d): a
    conv whose weight is its module's own weight normalised per output filter,
    ``F.batch_norm(w.reshape(1, out, -1), None, None, [weight=gain.view(-1)],
    training=True).reshape_as(w)``. Each filter is standardised on its own, so filters
    (and their gain) can go; the chain's nodes compute a weight, not activations."""
    def get_attr(n, attr):
        name, m = _fx_owner(A, n, attr)
        return (name, m) if m is not None else (None, None)

    for node in graph.nodes:
        if node.op != "call_function" or node.target not in (F.conv1d, F.conv2d, F.conv3d):
            continue
        w2 = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        if not (isinstance(w2, torch.fx.Node) and w2.op == "call_method" and
                w2.target in ("reshape_as", "view_as", "reshape", "view")):
            continue
        bn = w2.args[0]
        if not (isinstance(bn, torch.fx.Node) and bn.target in (F.batch_norm, torch.batch_norm)):
            continue
        bn_arg = lambda i, key: bn.args[i] if len(bn.args) > i else bn.kwargs.get(key)  # noqa: E731
        flat = bn_arg(0, "input")
        if bn_arg(1, "running_mean") is not None or bn_arg(2, "running_var") is not None or \
                bn_arg(4, "bias") is not None or bn_arg(5, "training") is not True or \
                not (isinstance(flat, torch.fx.Node) and flat.op == "call_method" and
                     flat.target in ("reshape", "view")):
            continue
        name, m = get_attr(flat.args[0], "weight")
        if m is None or not isinstance(m, _CONV) or \
                tuple(flat.args[1:]) not in ((1, m.out_channels, -1), ((1, m.out_channels, -1),)):
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
                if owner != name or not isinstance(t, torch.Tensor) or t.shape[:1] != (m.out_channels,) or \
                        t.numel() != m.out_channels:
                    ok = False
                    break
                chain.append(f)
                extra.append(attr)
            if not ok:
                continue
        inside = {c.name for c in chain} | {node.name}
        if any(u.name not in inside for c in chain for u in c.users):
            continue   # the weight is used elsewhere too: not only a standardised conv
        A.standardised[node.name] = (name, m, tuple(extra))
        A.weight_nodes.update(c.name for c in chain)


def _visit_fx(A: _Analyzer, node, gm):
    if node.name in A.weight_nodes:
        return NOT_TENSOR
    args = _map_args(node.args, A.vals)
    kwargs = _map_args(node.kwargs, A.vals)
    op, target = node.op, node.target
    if op == "placeholder":
        return A.opaque(node, "the model's input channels")
    if op == "get_attr":
        obj = gm
        for part in target.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, torch.Tensor):
            return A.opaque(node, f"the module attribute {target} is used as a tensor")
        return NOT_TENSOR
    if op == "output":
        A.freeze(args, "it reaches the model's output")
        return None
    if op == "call_module":
        m = gm.get_submodule(target)
        out = _last_axis(A, node, args, kwargs, isinstance(m, _ELEMENTWISE_MODULES),
                         (lambda: A.call_module(node, target, m, args, kwargs))
                         if isinstance(m, nn.Linear) else None)
        return out if out is not None else A.call_module(node, target, m, args, kwargs)
    shape_query = (op == "call_function" and target is getattr) or \
        (op == "call_method" and target in _NONTENSOR_METHODS)
    if op in ("call_function", "call_method") and not shape_query:
        functional_linear = op == "call_function" and target is F.linear
        out = _last_axis(A, node, args, kwargs,
                         target in _ELEMENTWISE_FUNCS if op == "call_function" else
                         target in _PASS_METHODS,
                         (lambda: _fx_functional(A, node, target, args[0], args, kwargs) or
                          A.unknown(node, "F.linear", (args, kwargs))) if functional_linear else None)
        if out is not None:
            return out
    x = args[0] if args else None
    tensor_in = isinstance(x, Val) and x.tensor
    if op == "call_method":
        name = target
        if name in _NONTENSOR_METHODS:
            return NOT_TENSOR
        if not tensor_in:
            return A.unknown(node, f"Tensor.{name}", (args, kwargs))
        if name in _PASS_METHODS:
            return x
        if name in _NONZERO_METHODS:
            return A.unary(x, False, f"{node.name} ({name})")
        if name in _ADD_METHODS:
            return A.binary(node, "add", x, _arg(args, kwargs, 1, "other"))
        if name in _MUL_METHODS:
            return A.binary(node, "mul", x, _arg(args, kwargs, 1, "other"))
        if name in _DIV_METHODS:
            return A.binary(node, "div", x, _arg(args, kwargs, 1, "other"))
        if name == "flatten":
            return A.flatten(node, x, _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1))
        if name in ("view", "reshape"):
            shape = list(args[1:])
            if len(shape) == 1 and isinstance(shape[0], (list, tuple)):
                shape = list(shape[0])
            return A.view(node, x, shape)
        if name in _REDUCE_METHODS:
            return A.reduce(node, name, x, _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "keepdim", False))
        if name in ("clamp", "clamp_", "clip", "clip_"):
            return A.clamp(x, _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max"), f"{node.name} (clamp)")
        return A.unknown(node, f"Tensor.{name}", (args, kwargs))
    # call_function
    fn = target
    fname = getattr(fn, "__name__", str(fn))
    if fn is getattr:
        return NOT_TENSOR
    if fn is operator.getitem:
        return A.getitem(node, x, args[1])
    if fn in _ADD_FUNCS:
        return A.binary(node, "add", x, _arg(args, kwargs, 1, "other"))
    if fn in _MUL_FUNCS:
        return A.binary(node, "mul", x, _arg(args, kwargs, 1, "other"))
    if fn in _DIV_FUNCS:
        return A.binary(node, "div", x, _arg(args, kwargs, 1, "other"))
    if fn in _CAT_FUNCS:
        return A.cat(node, list(_arg(args, kwargs, 0, "tensors")), _arg(args, kwargs, 1, "dim", 0))
    if not tensor_in:
        if not A._segs((args, kwargs)):
            return NOT_TENSOR     # arithmetic on sizes
        return A.unknown(node, fname, (args, kwargs))
    if kwargs.get("return_indices"):
        return A.unknown(node, f"{fname}(return_indices=True)", x)
    if fn in (F.hardtanh, F.hardtanh_):
        return A.unary(x, _zero_in(_arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)),
                       f"{node.name} (hardtanh)")
    if fn in _PASS_FUNCS or (fname == "stochastic_depth" and
                             getattr(fn, "__module__", "").startswith("torchvision.ops")):
        return x   # (stochastic depth: zero stays zero, whatever the row's draw)
    if fn in _NONZERO_FUNCS:
        return A.unary(x, False, f"{node.name} ({fname})")
    if fn is torch.flatten:
        return A.flatten(node, x, _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1))
    if fn in (torch.reshape,):
        return A.view(node, x, list(_arg(args, kwargs, 1, "shape")))
    if fn in _REDUCE_FUNCS:
        return A.reduce(node, fname, x, _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "keepdim", False))
    if fn in (torch.clamp, torch.clip):
        return A.clamp(x, _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max"), f"{node.name} (clamp)")
    if fn is F.pad:
        return A.pad(node, x, _arg(args, kwargs, 1, "pad"), _arg(args, kwargs, 2, "mode", "constant"),
                     _arg(args, kwargs, 3, "value", None))
    out = _fx_functional(A, node, fn, x, args, kwargs)
    if out is not None:
        return out
    return A.unknown(node, fname, (args, kwargs))


def _module_of(A: _Analyzer, node_arg, suffix_ok=("weight", "running_mean")):
    """The module owning a parameter placeholder of an exported graph."""
    if not isinstance(node_arg, torch.fx.Node):
        return None, None
    fqn = A.param_names.get(node_arg.name)
    if not fqn:
        return None, None
    name, _, attr = fqn.rpartition(".")
    m = A.modules.get(name)
    return (name, m) if m is not None and attr in suffix_ok else (None, None)


def _visit_export(A: _Analyzer, node, user_inputs):
    args = _map_args(node.args, A.vals)
    kwargs = _map_args(node.kwargs, A.vals)
    if node.op == "placeholder":
        if node.name in A.param_names:
            return A.opaque(node, f"the parameter or buffer {A.param_names[node.name]} is used as a tensor")
        return A.opaque(node, "the model's input channels")
    if node.op == "output":
        A.freeze(args, "it reaches the model's output")
        return None
    if node.op != "call_function":
        return A.unknown(node, node.op, (args, kwargs))
    name_of = getattr(node.target, "_opname", None) or getattr(node.target, "__name__", "")
    if name_of not in ("linear", "sym_size", "sym_numel", "sym_stride"):
        out = _last_axis(A, node, args, kwargs, name_of in _ELEMENTWISE_EXPORT, None)
        if out is not None:
            return out
    if node.target is operator.getitem:
        return A.getitem(node, args[0], args[1])
    target = node.target
    opname = getattr(target, "_opname", None) or getattr(target, "__name__", str(target))
    full = str(target)
    x = args[0] if args else None
    if opname in ("sym_size", "sym_numel", "sym_stride", "item", "_assert_tensor_metadata"):
        return NOT_TENSOR
    if opname in ("conv1d", "conv2d", "conv3d", "convolution"):
        name, m = _module_of(A, node.args[1])
        groups = _arg(node.args, node.kwargs, 8 if opname == "convolution" else 6, "groups", 1)
        transposed = opname == "convolution" and _arg(node.args, node.kwargs, 6, "transposed", False)
        if m is None or not isinstance(m, _CONV) or transposed or groups != m.groups:
            return A.unknown(node, full, (args, kwargs))
        return A.conv(node, name, m, x)
    if opname == "linear":
        name, m = _module_of(A, node.args[1])
        if m is None or not isinstance(m, nn.Linear):
            return A.unknown(node, full, (args, kwargs))
        return A.linear(node, name, m, x)
    if opname in ("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
                  "_native_batch_norm_legit_functional", "native_batch_norm"):
        name, m = _module_of(A, node.args[1])
        if m is None:
            name, m = _module_of(A, node.args[3])
        if m is None or not isinstance(m, _BN):
            return A.unknown(node, full, (args, kwargs))
        out = A.channelwise(node, name, m, x, "bn", m.num_features, m.affine,
                            f"{name} (BatchNorm without affine)")
        return out if opname == "batch_norm" else Tup((out, NOT_TENSOR, NOT_TENSOR, NOT_TENSOR, NOT_TENSOR))
    if opname in ("group_norm", "native_group_norm"):
        # group_norm(input, num_groups, weight, bias, eps, cudnn_enabled);
        # native_group_norm(input, weight, bias, N, C, HxW, group, eps) -> (out, mean, rstd)
        native = opname == "native_group_norm"
        weight = node.args[1] if native else _arg(node.args, node.kwargs, 2, "weight")
        groups = node.args[6] if native else _arg(node.args, node.kwargs, 1, "num_groups")
        name, m = _module_of(A, weight, ("weight",))
        if m is None or not isinstance(m, nn.GroupNorm) or groups != m.num_groups or \
                not (isinstance(x, Val) and x.tensor):
            return A.unknown(node, full, (args, kwargs))
        out = A.group_norm(node, name, m, x)
        return Tup((out, NOT_TENSOR, NOT_TENSOR)) if native else out
    if opname == "_prelu_kernel" or opname == "prelu":
        name, m = _module_of(A, node.args[1])
        if m is None or not isinstance(m, nn.PReLU):
            return A.unknown(node, full, (args, kwargs))
        if m.num_parameters == 1:
            return x
        return A.channelwise(node, name, m, x, "prelu", m.num_parameters, False, "")
    if not (isinstance(x, Val) and x.tensor) and opname != "cat":
        if not A._segs((args, kwargs)):
            return NOT_TENSOR
        return A.unknown(node, full, (args, kwargs))
    if opname in ("hardtanh", "hardtanh_"):
        return A.unary(x, _zero_in(_arg(args, kwargs, 1, "min_val", -1.0), _arg(args, kwargs, 2, "max_val", 1.0)),
                       f"{node.name} (hardtanh)")
    if opname in _ATEN_PASS:
        return x
    if opname in ("max_pool2d_with_indices", "max_pool1d_with_indices", "max_pool3d_with_indices",
                  "adaptive_max_pool2d", "adaptive_max_pool3d"):
        return Tup((x, NOT_TENSOR))
    if opname in _ATEN_NONZERO:
        return A.unary(x, False, f"{node.name} ({opname})")
    if opname in ("add", "add_", "sub", "sub_"):
        return A.binary(node, "add", x, args[1])
    if opname in ("mul", "mul_"):
        return A.binary(node, "mul", x, args[1])
    if opname in ("div", "div_"):
        return A.binary(node, "div", x, args[1])
    if opname in ("cat", "concat"):
        return A.cat(node, list(args[0]), _arg(args, kwargs, 1, "dim", 0))
    if opname == "flatten":
        return A.flatten(node, x, _arg(args, kwargs, 1, "start_dim", 0), _arg(args, kwargs, 2, "end_dim", -1))
    if opname in ("view", "reshape", "_unsafe_view"):
        return A.view(node, x, list(_arg(args, kwargs, 1, "size", [])))
    if opname in ("mean", "sum", "amax", "amin"):
        return A.reduce(node, opname, x, _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "keepdim", False))
    if opname in ("clamp", "clamp_", "clip"):
        return A.clamp(x, _arg(args, kwargs, 1, "min"), _arg(args, kwargs, 2, "max"), f"{node.name} (clamp)")
    if opname == "constant_pad_nd":
        return A.pad(node, x, _arg(args, kwargs, 1, "pad"), "constant", _arg(args, kwargs, 2, "value", 0))
    if opname == "slice":
        dim = _arg(args, kwargs, 1, "dim", 0)
        if x.rank is not None and x.factor == 1 and dim % x.rank >= 2:
            return x
        return A.unknown(node, full, x)
    return A.unknown(node, full, (args, kwargs))


def analyse(model: nn.Module, example_inputs=None, method: str = "auto", flops=None) -> Analysis:
    """Traces ``model`` and returns its channel groups (see the module docstring).
    ``flops``: a ``flops.FlopRecorder`` that counts the FLOPs of the run that finds the
    shapes (fx only), so that ``prune`` need not run the model again to measure it."""
    graph, shapes, tracer, names, owner = trace(model, example_inputs, method, flops)
    A = _Analyzer(model, shapes, tracer, names)
    if tracer == "fx":
        _find_standardised(A, graph)
    for node in graph.nodes:
        if tracer == "fx":
            val = _visit_fx(A, node, owner)
        else:
            val = _visit_export(A, node, None)
        shape = shapes.get(node.name)
        if isinstance(val, Val) and val.tensor and isinstance(shape, tuple) and \
                all(isinstance(s, int) for s in shape):
            val = replace(val, rank=len(shape))
        A.vals[node.name] = val
    return _finish(A)


def _finish(A: _Analyzer) -> Analysis:
    roots: Dict[int, List[int]] = {}
    for s in range(len(A.spaces)):
        roots.setdefault(A.find(s), []).append(s)
    ties: Dict[int, List[int]] = {}
    for s, g in A.ties:
        ties.setdefault(A.find(s), []).append(g)
    residual = {A.find(s) for s in A.residual_edges}
    groups, group_of = [], {}
    for root, spaces in sorted(roots.items()):
        reasons: List[str] = []
        for s in spaces:
            for r in A.spaces[s].reasons:
                if r not in reasons:
                    reasons.append(r)
        sizes = [A.spaces[s].size for s in spaces]
        units = 0
        for v in [z for z in sizes if z is not None] + ties.get(root, []):
            units = math.gcd(units, v)
        if any(z is None for z in sizes) and not reasons:
            reasons.append("a channel count is unknown")
        gid = len(groups)
        groups.append(Group(gid, spaces, units, root in residual, reasons))
        for s in spaces:
            group_of[s] = gid
    return Analysis(A.tracer, A.spaces, A.uses, groups, group_of, A.unsupported)
