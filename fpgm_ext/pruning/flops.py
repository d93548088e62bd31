"""Measured FLOPs and parameters: ``torch.utils.flop_counter.FlopCounterMode`` on a real
forward pass (eval mode, no grad), per module and in total, not a closed formula.

FlopCounterMode counts the matrix work (convolutions, matrix products, attention) as
2 FLOPs per multiply-add; BatchNorm, activations, pooling and additions count 0."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Sequence

import torch
from torch import nn

from .graph import _ModeGuard


@dataclass
class Measurement:
    flops: int                     # total
    params: int                    # total
    layer_flops: Dict[str, int]    # module name -> FLOPs of its calls (submodules included)
    layer_params: Dict[str, int]   # module name -> its own parameters


def measure(model: nn.Module, example_inputs: Sequence) -> Measurement:
    from torch.utils.flop_counter import FlopCounterMode

    inputs = [x.clone() if isinstance(x, torch.Tensor) else x for x in example_inputs]
    counter = FlopCounterMode(display=False)
    with _ModeGuard(model), counter:
        model(*inputs)
    root = type(model).__name__ + "."
    layer_flops = {}
    for key, counts in counter.get_flop_counts().items():
        if key.startswith(root):
            layer_flops[key[len(root):]] = int(sum(counts.values()))
    layer_params = {name: sum(p.numel() for p in m.parameters(recurse=False))
                    for name, m in model.named_modules()}
    return Measurement(int(counter.get_total_flops()), sum(p.numel() for p in model.parameters()),
                       layer_flops, {k: v for k, v in layer_params.items() if v})
