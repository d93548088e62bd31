"""The masked model of a plan: the channels it prunes zeroed in place instead of removed
(``pruned_masks``, ``zero_pruned``), each module's masks from its layer handler."""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from ..layers import TENSOR_ENTRY_TYPES, TENSOR_MEMBER, handler_for
from .format import as_plan


def pruned_masks(model: nn.Module, plan) -> Dict[str, torch.Tensor]:
    """The tensors that ``plan`` prunes, as masks for zeroing them in place instead:
    parameter name -> bool ``[size]`` over its first dimension, True where the channel is
    kept. Listed: the weight and bias of every conv and linear layer whose output
    channels are pruned, and of every BatchNorm and PReLU on pruned channels (nothing else:
    running statistics stay, as a zero channel normalises to zero with zero affine)."""
    plan = as_plan(plan)
    modules = dict(model.named_modules())
    masks: Dict[str, torch.Tensor] = {}
    for name, e in plan.modules.items():
        if e.get("type") in TENSOR_ENTRY_TYPES:   # a layer scale: its mask along its dim
            masks[name] = TENSOR_MEMBER.mask(modules, name, e)
            continue
        m = modules.get(name)
        if m is None:
            raise ValueError(f"fpgm_ext: the plan names module '{name}', which this "
                             f"{type(model).__name__} does not have")
        handler = handler_for(m)
        for attr, keep in (handler.masks(name, m, e) if handler is not None else {}).items():
            masks[f"{name}.{attr}" if name else attr] = keep
    return masks


def zero_pruned(model: nn.Module, plan) -> nn.Module:
    """Zeroes, in place, the channels that ``plan`` prunes (the tensors of
    ``pruned_masks``) and the pruned input channels of every conv and linear layer: the
    masked model, whose outputs the physically pruned ``apply_plan(model, plan)``
    reproduces. Returns ``model``."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, keep in [*pruned_masks(model, plan).items(), *_input_masks(model, as_plan(plan)).items()]:
            t = params.get(name, buffers.get(name))
            t.masked_fill_(~keep.reshape((-1,) + (1,) * (t.dim() - 1)) if keep.dim() == 1 else ~keep, 0)
    return model


def _input_masks(model: nn.Module, plan) -> Dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    masks: Dict[str, torch.Tensor] = {}
    for name, e in plan.modules.items():
        m = modules.get(name)
        handler = handler_for(m) if m is not None and e.get("type") not in TENSOR_ENTRY_TYPES else None
        for attr, keep in (handler.input_masks(name, m, e) if handler is not None else {}).items():
            masks[f"{name}.{attr}" if name else attr] = keep
    return masks
