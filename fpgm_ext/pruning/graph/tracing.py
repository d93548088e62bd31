"""Tracing a model into a graph: ``torch.fx`` (with the pruner's leaf modules), else
``torch.export`` where fx fails and example inputs are given; the shape of every node from
one run (fx) or from the export's metadata; and the one-line ``TraceFailure`` with a hint
of where to prune instead. Kept apart from the analysis, which only reads the graph."""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, Dict

import torch
from torch import nn

from ..layers import LEAF_TYPES
from .rules import CONV


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
        convs = sum(c.weight.numel() for c in m.modules() if isinstance(c, CONV))
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
    by_shapes = flops is not None and flops.countable_from_shapes(gm)
    counting = flops is not None and not by_shapes

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n):
            if counting and n.op == "call_module":
                out = flops.module_call(n.target, lambda: super(Recorder, self).run_node(n))
            else:
                out = super().run_node(n)
            shapes[n.name] = _shape_of(out)
            return out

    inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in example_inputs]
    with _ModeGuard(model), (flops if counting else contextlib.nullcontext()):
        Recorder(gm).run(*inputs)
    if by_shapes:   # FLOPs only in conv and linear modules: counted from the shapes
        flops.count_from_shapes(gm, shapes)
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
