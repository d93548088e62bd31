"""The copy of a model that the surgery prunes: a deep copy that shares, instead of
copying, the tensors the surgery is about to replace, made fast for trees of plain
modules."""
from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any, Dict, Iterable, Tuple

import torch
from torch import nn


def copy_for_surgery(model: nn.Module, replaced: Iterable[Tuple[nn.Module, str]]) -> nn.Module:
    """A deep copy of ``model`` that does not copy the tensors ``(module, attribute)`` of
    ``replaced`` (the copy refers to the original's until the surgery replaces them, and
    never writes to them): the pruned model is built from the original's tensors, not
    from a copy of them. A tensor held in more than one place (tied weights) is copied."""
    held: Dict[int, int] = {}
    for _, t in list(model.named_parameters(remove_duplicate=False)) + \
            list(model.named_buffers(remove_duplicate=False)):
        held[id(t)] = held.get(id(t), 0) + 1
    memo: Dict[int, Any] = {}
    for m, attr in replaced:
        t = getattr(m, attr, None)
        if isinstance(t, torch.Tensor) and held.get(id(t)) == 1:
            memo[id(t)] = t
    return _deepcopy(model, memo)


_SHARED = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def _plain_module(cls) -> bool:
    """A module class that ``copy.deepcopy`` copies the generic way: a new instance whose
    ``__setstate__`` gets a deep copy of ``__getstate__`` (no custom copy or pickling)."""
    return (getattr(cls, "__deepcopy__", None) is None and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__ and cls.__getstate__ is nn.Module.__getstate__
            and cls.__setstate__ is nn.Module.__setstate__)


def _deepcopy(value, memo: Dict[int, Any]):
    """``copy.deepcopy(value, memo)``, the same copy, in a fraction of the time for a tree
    of plain modules: deepcopy's generic path (``__reduce_ex__``, ``_reconstruct``, a dozen
    hook dicts per module, mostly empty) is most of the cost of copying a model whose
    large tensors the surgery replaces anyway. Anything else goes to ``copy.deepcopy``."""
    if isinstance(value, _SHARED):
        return value   # deepcopy returns these as they are
    found = memo.get(id(value))
    if found is not None:
        return found
    cls = type(value)
    if isinstance(value, nn.Module) and _plain_module(cls):
        new = cls.__new__(cls)
        memo[id(value)] = new
        new.__setstate__({k: _deepcopy(v, memo) for k, v in value.__getstate__().items()})
        return new
    if cls in (dict, OrderedDict) and all(type(k) is str for k in value):
        new = cls()
        memo[id(value)] = new
        for k, v in value.items():
            new[k] = _deepcopy(v, memo)
        return new
    return copy.deepcopy(value, memo)
