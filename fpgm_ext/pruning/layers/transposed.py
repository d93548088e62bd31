"""Linear layers that store their weight transposed, ``[in, out]`` (GPT-2's ``Conv1D`` in
Hugging Face transformers, registered by fpgm_ext.integrations.transformers): a linear
layer whose filters are the weight's columns. ``nf`` / ``nx`` (out / in features) are set
after the surgery."""
from __future__ import annotations

from typing import Any, Dict

import torch
from torch import nn

from .base import Channels, Surgery, keep_mask
from .linear import Linear


class TransposedLinear(Linear):
    size_attrs = ("nf", "nx")

    def channels(self, m: nn.Module) -> Channels:
        return Channels(m.weight.shape[0], m.weight.shape[1], 1)

    def filters(self, m: nn.Module) -> torch.Tensor:
        return m.weight.t()

    def surgery(self, name: str, m: nn.Module, entry: Dict[str, Any], batch: Surgery) -> None:
        ch, out, inn = self.kept(name, m, entry)
        if len(inn) == ch.inputs or len(out) == ch.outputs:   # one side: a gather along it
            batch.gather_into(m, "weight", 1 if len(inn) == ch.inputs else 0, out if len(inn) == ch.inputs else inn)
        else:
            combined = (inn[:, None] * ch.outputs + out[None, :]).reshape(-1)
            batch.gather_into(m, "weight", 0, combined, (len(inn), len(out)), source=m.weight.reshape(-1, 1))
        if m.bias is not None:
            batch.gather_into(m, "bias", 0, out)
        sizes = {"nf": len(out), "nx": len(inn)}
        batch.then(lambda res: [setattr(m, a, v) for a, v in sizes.items() if hasattr(m, a)])

    def masks(self, name, m, entry):
        if "out" not in entry:
            return {}
        keep = keep_mask(entry["out_size"], entry["out"], m.weight.device)
        masks = {"weight": keep[None, :].expand_as(m.weight)}
        if m.bias is not None:
            masks["bias"] = keep
        return masks

    def input_masks(self, name, m, entry):
        if "in" not in entry:
            return {}
        keep = keep_mask(entry["in_size"], entry["in"], m.weight.device)
        return {"weight": keep[:, None].expand_as(m.weight)}
