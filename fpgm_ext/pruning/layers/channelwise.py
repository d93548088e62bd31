"""What the layers with one tensor entry per channel share (BatchNorm, PReLU, GroupNorm,
LayerNorm): a plan entry of their kept channels, the surgery gathering each of their
per-channel tensors at those channels, and masks of their affine weight and bias."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn

from .base import Layer, Surgery, affine_masks, check_size, kept_indices, own_tensors


class Channelwise(Layer):
    """A layer whose ``tensors`` hold one entry per channel along dim 0."""
    tensors: Tuple[str, ...] = ("weight", "bias")

    def size(self, m: nn.Module) -> int:
        """Its channel count."""
        raise NotImplementedError

    def plan_entry(self, use, out, inn):
        if inn is None:
            return None
        return {"type": type(use.module).__name__, "size": self.size(use.module), "channels": inn}

    def replaced(self, m):
        return self.tensors

    def surgery(self, name: str, m: nn.Module, entry: Dict[str, Any], batch: Surgery) -> None:
        check_size(name, entry, "size", self.size(m))
        own = own_tensors(m, self.tensors)
        idx = kept_indices(entry, "channels", self.size(m), name, self.device(name, m, own))
        self.check_kept(name, m, idx)
        for attr in own:
            batch.gather_into(m, attr, 0, idx)
        batch.then(lambda res, n=len(idx): self.resize(m, n))

    def device(self, name: str, m: nn.Module, own: Dict[str, torch.Tensor]):
        """Where its kept indices go: its tensors' device (the CPU when it has none)."""
        return next(iter(own.values())).device if own else torch.device("cpu")

    def check_kept(self, name: str, m: nn.Module, idx: torch.Tensor) -> None:
        """Refuses kept channels the layer cannot have (GroupNorm: whole groups only)."""

    def resize(self, m: nn.Module, n: int) -> None:
        """Sets the layer's own channel count to ``n``."""

    def params_removed(self, m, entry) -> int:
        if "channels" not in entry:
            return 0
        kept = len(entry["channels"])
        return sum(t.numel() - kept for a in ("weight", "bias") if isinstance(t := getattr(m, a, None), nn.Parameter))

    def masks(self, name, m, entry):
        return affine_masks(name, m, "channels", "size", entry)
