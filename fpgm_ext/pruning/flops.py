"""Measured FLOPs and parameters: ``torch.utils.flop_counter.FlopCounterMode`` on a real
forward pass (eval mode, no grad), per module and in total, not a closed formula.

FlopCounterMode counts the matrix work (convolutions, matrix products, attention) as
2 FLOPs per multiply-add; BatchNorm, activations, pooling and additions count 0.

``prune`` avoids running the model only to measure it: the FLOPs before pruning are
counted during the forward that the graph analysis runs anyway (``FlopRecorder``; where
every op FlopCounterMode counts is in a conv or linear module, from the output shapes by
its own formulas, without the counter's dispatch), and
those after pruning are derived from them (``derive_pruned``) where every counted FLOP
belongs to a conv or linear layer, whose count is proportional to its weight's size
(the kernel, the batch and the spatial sizes do not change). Where that does not hold
(functional convolutions, attention, the export tracer), the real passes run as before;
either way the counts are FlopCounterMode's (tests/test_flops.py compares them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .graph import _ModeGuard, entry_of, untouched
from .layers import handler_for

# torch's own conv and linear modules: FlopCounterMode counts 2 x rows x weight.numel()
_COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# graph rules (graph/rules.py) of ops FlopCounterMode counts no FLOPs for
_NO_FLOPS = frozenset({"pass", "nonzero", "hardtanh", "clamp", "pad", "constant_pad", "add", "mul", "div",
                       "cat", "flatten", "view", "reduce", "slice", "getitem", "size", "scalar", "split",
                       "bn", "gn", "prelu", "shortcut", "pool_indices"})


@dataclass
class Measurement:
    flops: int                     # total
    params: int                    # total
    layer_flops: Dict[str, int]    # module name -> FLOPs of its calls (submodules included)
    layer_params: Dict[str, int]   # module name -> its own parameters


def _params(model: nn.Module):
    layer_params = {name: sum(p.numel() for p in m.parameters(recurse=False))
                    for name, m in model.named_modules()}
    return sum(p.numel() for p in model.parameters()), {k: v for k, v in layer_params.items() if v}


def measure(model: nn.Module, example_inputs: Sequence) -> Measurement:
    with untouched(model):   # what its forward caches on the model is put back
        return _measure(model, example_inputs)


def _measure(model: nn.Module, example_inputs: Sequence) -> Measurement:
    inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in example_inputs]
    counter = FlopCounterMode(display=False)
    try:
        with _ModeGuard(model), counter:
            model(*inputs)
    except AssertionError:
        # FlopCounterMode's module tracker hooks the gradients of module inputs, which fails
        # under no_grad for some (torch 2.14, timm's CaiT: "Expected gradient function to be
        # set"): counted again with gradients on
        counter = FlopCounterMode(display=False)
        with _ModeGuard(model), torch.enable_grad(), counter:
            model(*inputs)
    root = type(model).__name__ + "."
    layer_flops = {}
    for key, counts in counter.get_flop_counts().items():
        if key.startswith(root):
            layer_flops[key[len(root):]] = int(sum(counts.values()))
    params, layer_params = _params(model)
    return Measurement(int(counter.get_total_flops()), params, layer_flops, layer_params)


class FlopRecorder:
    """FlopCounterMode over a run of the traced graph (``graph.analyse(..., flops=...)``),
    with each call of a leaf module attributed to its name by the FLOPs counted during it
    (FlopCounterMode's own attribution needs the model's module hierarchy, which an fx
    interpreter does not enter)."""

    def __init__(self):
        self.counter = FlopCounterMode(display=False)
        self.layer_flops: Dict[str, int] = {}
        self.ran = False
        self.total: Optional[int] = None   # set by count_from_shapes

    def __enter__(self):
        self.counter.__enter__()
        return self

    def __exit__(self, *exc):
        self.counter.__exit__(*exc)
        self.ran = exc[0] is None

    @staticmethod
    def countable_from_shapes(graph: torch.fx.Graph, modules: Dict[str, nn.Module]) -> bool:
        """True when FlopCounterMode would count FLOPs in this graph's conv and linear
        modules only: every other node is an op it counts nothing for (the graph rules'
        elementwise, norm, pooling, layout and shape ops). Then the counts follow from the
        output shapes alone (``count_from_shapes``) and the analysis's forward runs without
        the counter's dispatch (about 13 ms on MobileNetV2 and ResNet-50 at 1 thread)."""
        for n in graph.nodes:   # (modules: the model's named_modules, its call targets)
            if n.op in ("placeholder", "output", "get_attr"):
                continue
            if n.op == "call_module":
                m = modules[n.target]
                if type(m) in _COUNTED:
                    continue
                entry = entry_of("module", m)
            else:
                entry = entry_of("method" if n.op == "call_method" else "function", n.target)
            if entry is None or entry.rule not in _NO_FLOPS:
                return False
        return True

    def count_from_shapes(self, graph: torch.fx.Graph, modules: Dict[str, nn.Module],
                          shapes: Dict[str, object]) -> None:
        """FlopCounterMode's counts of the conv and linear modules from their output shapes:
        2 x (output elements / output channels) x weight elements (its conv and matrix
        product formulas); the graph must pass ``countable_from_shapes``."""
        for n in graph.nodes:
            if n.op != "call_module":
                continue
            m = modules[n.target]
            shape = shapes.get(n.name)
            if type(m) not in _COUNTED or not isinstance(shape, tuple):
                continue
            channels = shape[1] if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) else shape[-1]
            flops = 2 * math.prod(shape) // channels * m.weight.numel()
            if flops:
                self.layer_flops[n.target] = self.layer_flops.get(n.target, 0) + flops
        self.total = sum(self.layer_flops.values())
        self.ran = True

    def module_call(self, name: str, call: Callable):
        start = self.counter.get_total_flops()
        out = call()
        flops = self.counter.get_total_flops() - start
        if flops:
            self.layer_flops[name] = self.layer_flops.get(name, 0) + int(flops)
        return out

    def measurement(self, model: nn.Module) -> Optional[Measurement]:
        """The same Measurement as ``measure(model, inputs)`` gives for the conv and linear
        layers and the total, or None where some FLOPs fall outside conv and linear modules
        (then only a real pass attributes them as ``measure`` does)."""
        if not self.ran:
            return None
        modules = dict(model.named_modules())
        total = self.total if self.total is not None else int(self.counter.get_total_flops())
        if any(not isinstance(modules.get(n), _COUNTED) for n in self.layer_flops) or \
                sum(self.layer_flops.values()) != total:
            return None
        params, layer_params = _params(model)
        return Measurement(total, params, dict(self.layer_flops), layer_params)


def weight_sizes(model: nn.Module) -> Dict[str, int]:
    """name -> weight.numel() of the conv and linear layers (before the surgery)."""
    return {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, _COUNTED)}


def scaled_flops(before: Measurement, sizes_before: Dict[str, int],
                 sizes_after: Dict[str, int]) -> Optional[Dict[str, int]]:
    """Each layer's FLOPs of ``before`` (a ``FlopRecorder`` measurement: all FLOPs in conv
    and linear layers) scaled from its weight's size before to after, exactly
    (FlopCounterMode counts 2 x batch x output positions x weight.numel() for a conv,
    2 x rows x weight.numel() for a linear). None when a layer is missing from either
    table or its count is not a whole multiple of the old size (then measure for real)."""
    layer_flops = {}
    for name, flops in before.layer_flops.items():
        old, new = sizes_before.get(name), sizes_after.get(name)
        if not old or new is None or flops % old:
            return None
        layer_flops[name] = flops // old * new
    return layer_flops


def derive_pruned(before: Measurement, sizes_before: Dict[str, int],
                  pruned: nn.Module) -> Optional[Measurement]:
    """The measurement of the pruned model from ``before`` (``scaled_flops``), or None."""
    layer_flops = scaled_flops(before, sizes_before, weight_sizes(pruned))
    if layer_flops is None:
        return None
    params, layer_params = _params(pruned)
    return Measurement(sum(layer_flops.values()), params, layer_flops, layer_params)


def derive_weight_sizes(model: nn.Module, plan) -> Dict[str, int]:
    """name -> weight.numel() that each conv and linear layer ``plan`` changes will have
    once it is applied to ``model`` (unpruned), from the plan's channel counts: no surgery.
    As ``apply_plan`` builds them: a grouped conv keeps its inputs per group."""
    modules = dict(model.named_modules())
    sizes = {}
    for name, e in plan.modules.items():
        m = modules.get(name)
        if isinstance(m, _COUNTED):
            sizes[name] = handler_for(m).weight_size_after(m, e)
    return sizes
