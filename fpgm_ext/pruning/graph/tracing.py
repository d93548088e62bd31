"""Tracing a model into a graph: ``torch.fx`` (with the pruner's leaf modules), else
``torch.export`` where fx fails and example inputs are given; the shape of every node from
one run (fx) or from the export's metadata; and the one-line ``TraceFailure`` with a hint
of where to prune instead. Kept apart from the analysis, which only reads the graph."""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from typing import Any, Dict

import torch
from torch import nn

from ..layers import is_leaf, rule_of, type_name


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
        convs = sum(c.weight.numel() for c in m.modules() if rule_of(c) == "conv")
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


# timm's "same"-padding pools (its tf_* models) compute their padding from the input's
# shape in Python, which fx cannot trace; each is the pool it subclasses with padding
# around the spatial dims that keeps a zero channel zero (zeros for the average, -inf
# for the max): leaves, analysed as that pool (the table finds it by MRO). Named, not
# imported. (The layers' leaves, its same-padding conv among them: the layer registry.)
_NAMED_LEAVES = {"timm.layers.pool2d_same.MaxPool2dSame", "timm.layers.pool2d_same.AvgPool2dSame"}


class _Tracer(torch.fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_leaf(m) or type_name(m) in _NAMED_LEAVES or super().is_leaf_module(m, qualname)


TRACE_CONSTANT = "_tensor_constant"   # torch.fx's name for a tensor made while tracing


@contextlib.contextmanager
def no_trace_constants(model: nn.Module):
    """torch.fx stores each tensor a forward computes from module attributes while traced
    (torchvision's FrozenBatchNorm2d: its scale from its buffers) on the root module as
    ``_tensor_constantN``; they are needed while the graph is used, then taken off again
    so that the caller's model is left as it was."""
    before = set(vars(model))
    try:
        yield
    finally:
        for name in [n for n in vars(model) if n not in before and n.startswith(TRACE_CONSTANT)]:
            delattr(model, name)


_TABLES = ("_parameters", "_buffers", "_modules")


@contextlib.contextmanager
def untouched(model: nn.Module):
    """Every module of ``model`` as it was when the block is left: the attributes a forward
    sets (a detection head caching its anchors on its first call, as FakeTensors while
    torch.export traces it; fx's trace constants), removes or replaces, and the parameters,
    buffers and submodules it registers, are put back. Tensors changed in place are not
    (the pruner's runs change none)."""
    saved = [(m, dict(vars(m)), [dict(getattr(m, t)) for t in _TABLES]) for m in model.modules()]
    try:
        yield
    finally:
        for m, attrs, tables in saved:
            now = vars(m)
            for name in [n for n in now if n not in attrs]:
                del now[name]
            for name, value in attrs.items():
                if now.get(name, _MISSING) is not value:
                    now[name] = value
            for t, table in zip(_TABLES, tables):
                held = getattr(m, t)
                if held.keys() != table.keys() or any(held[k] is not v for k, v in table.items()):
                    held.clear()
                    held.update(table)


_MISSING = object()


def _fx_graph(model: nn.Module) -> torch.fx.Graph:
    """The fx graph of ``model``, its targets named from ``model`` (the analysis needs no
    GraphModule: building one generates and compiles its code)."""
    return _Tracer().trace(model)


def _fx_trace(model: nn.Module) -> torch.fx.GraphModule:
    with no_trace_constants(model):   # (the GraphModule holds its own reference to each)
        return torch.fx.GraphModule(model, _fx_graph(model), type(model).__name__)


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


# Ops whose output shape depends on the values (and indexing by a tensor): the shape run
# that skips the convolutions stops at one and runs the graph for real (see _fx_shapes).
_VALUE_SHAPED = {"nonzero", "masked_select", "unique", "unique_consecutive", "argwhere", "bincount",
                 "histc", "multinomial", "item", "tolist", "repeat_interleave"}


class _NeedValues(Exception):
    pass


def _needs_values(n: torch.fx.Node, shapes: Dict[str, Any]) -> bool:
    if n.op not in ("call_function", "call_method"):
        return False
    name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", "")
    if name in _VALUE_SHAPED:
        return True
    if name != "getitem" or len(n.args) < 2:
        return False
    found: list = []
    torch.fx.node.map_arg(n.args[1], found.append)
    return any(isinstance(shapes.get(a.name), tuple) and all(isinstance(v, int) for v in shapes[a.name])
               for a in found)   # a tensor index: its values pick the elements


def _conv_shape(m: nn.Module, x: torch.Tensor):
    """The output shape of a plain ``nn.ConvNd`` on ``x``, or None where only running it
    can tell (or raise its own error): any mismatch of rank, channels, dtype or device."""
    n = m.weight.dim() - 2
    if x.dim() not in (n + 1, n + 2) or x.shape[-n - 1] != m.in_channels or x.dtype != m.weight.dtype \
            or x.device != m.weight.device or isinstance(m.padding, str) and m.padding != "valid":
        return None
    padding = (0,) * n if isinstance(m.padding, str) else m.padding
    out = [(size + 2 * p - d * (k - 1) - 1) // s + 1 for size, p, d, k, s in
           zip(x.shape[-n:], padding, m.dilation, m.kernel_size, m.stride)]
    if min(out) <= 0:
        return None
    return tuple(x.shape[:-n - 1]) + (m.out_channels,) + tuple(out)


def _fx_shapes(graph: torch.fx.Graph, model: nn.Module, example_inputs, flops=None,
               skip_compute: bool = True) -> Dict[str, Any]:
    """The output shape of every node, from one run of the traced graph; with ``flops`` (a
    ``flops.FlopRecorder``), that run also counts the model's FLOPs per called module.

    Shapes are all the analysis needs: where nothing but conv and linear modules counts
    FLOPs (counted from the shapes), a plain conv module is not computed (its output is
    zeros of its shape: the convolutions are most of a CNN's forward), nor are BatchNorms
    and activation modules (their input passes through). Should an op's shape depend on
    the values (``_needs_values``), or anything fail on them, the graph runs for real
    (as it always does with ``skip_compute=False``)."""
    shapes: Dict[str, Any] = {}
    modules = dict(model.named_modules())
    by_shapes = flops is not None and flops.countable_from_shapes(graph, modules)
    counting = flops is not None and not by_shapes
    shapes_only = [skip_compute and not counting]

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            if shapes_only[0] and _needs_values(n, shapes):
                raise _NeedValues(n.name)
            if counting and n.op == "call_module":
                out = flops.module_call(n.target, lambda: super(Recorder, self).run_node(n))
            else:
                out = super().run_node(n)
            shapes[n.name] = _shape_of(out)
            return out

        def call_module(self, target, args, kwargs):
            m = modules[target]   # (Interpreter.fetch_attr walks the dotted path every call)
            if shapes_only[0] and len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
                x, kind = args[0], type(m)
                if kind in _PLAIN_CONVS:
                    shape = _conv_shape(m, x)
                    if shape is not None:
                        return x.new_zeros(shape)
                elif kind in _SAME_SHAPE and (kind not in _NORMS or x.dim() >= 2 and x.shape[1] == m.num_features):
                    return x
            return m(*args, **kwargs)

    def run():
        inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in example_inputs]
        with _ModeGuard(model), (flops if counting else contextlib.nullcontext()):
            Recorder(model, graph=graph).run(*inputs)

    try:
        run()
    except Exception:   # _NeedValues, or an op that failed on the zeros
        if not shapes_only[0]:
            raise
        shapes_only[0] = False   # the real values were needed after all
        shapes.clear()
        run()
    if by_shapes:   # FLOPs only in conv and linear modules: counted from the shapes
        flops.count_from_shapes(graph, modules, shapes)
    return shapes


_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Modules whose output has their input's shape and dtype: passed through by the shape run.
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_SAME_SHAPE = _NORMS + (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
                        nn.Tanh, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d)


def _export(model: nn.Module, example_inputs):
    with _ModeGuard(model):
        return torch.export.export(model, tuple(example_inputs))


@dataclass(frozen=True)
class Traced:
    """A model's graph and what the analysis reads with it: each node's shape, the tracer,
    export's placeholder names -> parameter or buffer FQN, and the module whose
    attributes the graph's targets name (the model, or the ExportedProgram)."""
    graph: torch.fx.Graph
    shapes: Dict[str, Any]
    tracer: str
    names: Dict[str, str]
    owner: Any


def trace(model: nn.Module, example_inputs=None, method: str = "auto", flops=None) -> Traced:
    """The model traced with torch.fx, else torch.export. ``flops``: see ``_fx_shapes``
    (the export path runs nothing: it stays unused)."""
    fx_error = None
    if method in ("auto", "fx"):
        try:
            graph = _fx_graph(model)
        except Exception as exc:  # TraceError, TypeError, NotImplementedError, ...
            fx_error = exc
            if method == "fx":
                raise TraceFailure(f"torch.fx could not trace {type(model).__name__}: "
                                   f"{_first_line(exc)}{_hint(model)}", fx_error=exc) from None
        else:
            shapes = _fx_shapes(graph, model, example_inputs, flops) if example_inputs is not None else {}
            return Traced(graph, shapes, "fx", {}, model)
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
    return Traced(ep.graph, shapes, "export", names, ep)
