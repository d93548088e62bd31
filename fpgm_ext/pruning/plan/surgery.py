"""``apply_plan``: the weight surgery of a plan, each module's by its layer handler
(pruning/layers), all tensors in one ``gather_channels`` call."""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

from torch import nn

from ...ops import gather_channels as _gather_channels
from ..families import family_of
from ..layers import TENSOR_ENTRY_TYPES, TENSOR_MEMBER, Surgery, handler_for
from .copy import copy_for_surgery
from .format import Plan, as_plan, check_architecture
from .rewrite import rewrite_graph


def apply_plan(model: nn.Module, plan, *, inplace: bool = False, ops=None) -> nn.Module:
    """Rebuilds the pruned architecture that ``plan`` describes from ``model`` (the same
    architecture, unpruned: e.g. a fresh instance, so that the pruned ``state_dict`` loads
    into the result), and returns it. ``plan`` is a ``Plan``, its dict, or a JSON file path.

    A copy is pruned unless ``inplace=True``. Every weight, bias and BatchNorm statistic is
    gathered in one ``gather_channels`` call (``ops.gather_channels``; default the
    ``torch.ops.fpgm`` operator): a conv or linear weight pruned on both sides is gathered
    through its flattened ``[out * in, k]`` view with one combined index.
    """
    plan = as_plan(plan)
    check_architecture(model, plan)
    return apply_fitting(model, plan, inplace, ops)


def apply_fitting(model: nn.Module, plan: Plan, inplace: bool, ops) -> nn.Module:
    """``apply_plan`` of a plan known to fit ``model`` (``prune``'s own, just made from it)."""
    if not inplace:
        model = copy_for_surgery(model, _replaced(model, plan))
    refit = family_of(model).refit(model)   # attributes its code reads as channel counts
    modules = dict(model.named_modules())
    batch = Surgery()
    for name, entry in plan.modules.items():
        if entry.get("type") in TENSOR_ENTRY_TYPES:   # a layer scale pruned with its channels
            TENSOR_MEMBER.gather(modules, name, entry, batch, type(model).__name__)
            continue
        m = _planned_module(modules, name, entry, model)
        handler = handler_for(m)
        if handler is None:
            raise ValueError(f"fpgm_ext.apply_plan: the plan prunes {name}, a {type(m).__name__}, "
                             "which apply_plan does not know how to prune")
        handler.surgery(name, m, entry, batch)
    batch.run(_gather_channels if ops is None else ops.gather_channels)
    refit(model)
    if plan.graph:
        return rewrite_graph(model, plan.graph)
    return model


def _planned_module(modules: Dict[str, nn.Module], name: str, entry, model: nn.Module) -> nn.Module:
    m = modules.get(name)
    if m is None:
        raise ValueError(f"fpgm_ext.apply_plan: the plan names module '{name}', which this "
                         f"{type(model).__name__} does not have")
    if type(m).__name__ != entry.get("type"):
        raise ValueError(f"fpgm_ext.apply_plan: the plan does not fit this model: {name} is a "
                         f"{type(m).__name__}, the plan was made for a {entry.get('type')}")
    return m


def _replaced(model: nn.Module, plan: Plan) -> Iterator[Tuple[nn.Module, str]]:
    """(module, attribute) of every tensor the surgery replaces."""
    modules = dict(model.named_modules())
    for name in plan.modules:
        m = modules.get(name)
        handler = handler_for(m) if m is not None else None
        for attr in handler.replaced(m) if handler is not None else ():
            yield m, attr
