"""A tensor attribute pruned with the channels it meets (a layer scale, a class token, a
position embedding): a plan entry of type ``Parameter`` (or ``Tensor``, a buffer) keyed by
its qualified name, gathered along its channel dimension."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from .base import Layer, Surgery, check_size, keep_mask, kept_indices

ENTRY_TYPES = ("Parameter", "Tensor")


def owner_and_attr(modules: Dict[str, nn.Module], name: str):
    owner, _, attr = name.rpartition(".")
    return modules.get(owner), attr


class TensorMember(Layer):
    """A tensor pruned along one dimension (``Analysis.param_dims``)."""

    def plan_entry(self, use, out, inn, dim: int = 0):
        if inn is None:
            return None
        t = use.module
        return {"type": "Parameter" if isinstance(t, nn.Parameter) else "Tensor", "dim": dim,
                "size": t.shape[dim], "channels": inn}

    def gather(self, modules, name: str, entry: Dict[str, Any], batch: Surgery, model_type: str) -> None:
        """Registers the tensor's gather along its dim in ``batch``."""
        owner, attr = owner_and_attr(modules, name)
        t = getattr(owner, attr, None)
        dim = entry.get("dim")
        if not isinstance(t, torch.Tensor) or not isinstance(dim, int) or not 0 <= dim < t.dim():
            raise ValueError(f"fpgm_ext.apply_plan: the plan prunes the tensor '{name}', which this "
                             f"{model_type} does not have as planned")
        check_size(name, entry, "size", t.shape[dim])
        batch.gather_into(owner, attr, dim, kept_indices(entry, "channels", t.shape[dim], name, t.device))

    def params_removed_of(self, modules, name: str, entry: Dict[str, Any]) -> int:
        """Parameters removed by the entry of the tensor ``name`` (a buffer: none)."""
        owner, attr = owner_and_attr(modules, name)
        t = getattr(owner, attr, None)
        if not isinstance(t, nn.Parameter) or "channels" not in entry:
            return 0
        return t.numel() - t.numel() // t.shape[entry["dim"]] * len(entry["channels"])

    def mask(self, modules, name: str, entry: Dict[str, Any]) -> torch.Tensor:
        """The bool mask of the tensor (True: kept), shaped to broadcast along its dim."""
        owner, attr = owner_and_attr(modules, name)
        t = getattr(owner, attr, None)
        if not isinstance(t, torch.Tensor) or t.dim() <= entry.get("dim", -1) or \
                t.shape[entry["dim"]] != entry.get("size"):
            raise ValueError(f"fpgm_ext: the plan does not fit this model: it prunes the tensor '{name}'")
        keep = keep_mask(entry["size"], entry["channels"], t.device)
        d = entry["dim"]
        return keep if d == 0 else keep.reshape((1,) * d + (-1,) + (1,) * (t.dim() - d - 1))


TENSOR_MEMBER = TensorMember()
