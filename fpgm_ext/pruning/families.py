"""Model families whose code the pruner must know beyond their layers, found by the module
of the model's class and imported only for such a model:

- the outputs their users read for their shapes only (outputs.py), which may lose channels;
- the attributes their code reads as channel counts where the analysis sees a constant (a
  ``split((self.c, self.c))`` that torch.export's graph shows as two numbers, in a forward
  the model runs only when exported; attention head counts): ``refit(model)``, called
  before the surgery, returns what sets them on the pruned model after it;
- an analysis from the module structure, for families no tracer follows (structure.py).

Ultralytics (fpgm_ext.integrations.ultralytics) and Hugging Face transformers
(fpgm_ext.integrations.transformers) are the ones known today.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import nn

from .outputs import ALL, Outputs, selected


def _unchanged(pruned: nn.Module) -> None:
    return None


def _nothing_to_refit(model: nn.Module) -> Callable[[nn.Module], None]:
    return _unchanged


@dataclass(frozen=True)
class Family:
    outputs: Outputs = ALL
    refit: Callable[[nn.Module], Callable[[nn.Module], None]] = _nothing_to_refit
    # (model, example inputs, outputs, rate_dist) -> the family's analysis from the module
    # structure (structure.py), or None where it finds nothing it knows: then the graph's.
    # The rate may choose between structures (GQA heads: hf_blocks.by_kv_group).
    analyse: Optional[Callable[[nn.Module, Any, Outputs, float], Any]] = None
    # (model, example inputs) -> (a small model of the same blocks, its inputs) on which
    # the plans of a large model are checked (twin.py), or None
    twin: Optional[Callable[[nn.Module, Any], Any]] = None
    # (pruned model, path, report) -> how to load it: the family's own file format, or None
    # where ``torch.save`` of the module is it
    save: Optional[Callable[[nn.Module, Any, Any], str]] = None


ANY = Family()

# The module prefix of a model's class -> where its family's ``Family`` lives.
FAMILIES = {"ultralytics.": "fpgm_ext.integrations.ultralytics:FAMILY",
            "transformers.": "fpgm_ext.integrations.transformers:FAMILY"}


def family_of(model: nn.Module) -> Family:
    module = type(model).__module__ or ""
    for prefix, where in FAMILIES.items():
        if module.startswith(prefix):
            path, name = where.split(":")
            return getattr(importlib.import_module(path), name)
    return ANY


def outputs_for(model: nn.Module, select: Optional[Callable[[Any], Any]] = None) -> Outputs:
    """The outputs ``model`` must keep: ``select``'s (``prune(..., outputs=)``), else its
    family's rule, else all."""
    return selected(select) if select is not None else family_of(model).outputs
