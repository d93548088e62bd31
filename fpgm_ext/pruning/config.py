"""The settings of one prune, in one record: what ``prune`` and ``make_plan`` were asked
for (checked by ``fpgm_ext._checks.check_prune_args``), passed as one value to every step."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Dict, Sequence

import torch
from torch import nn

from ..ops import distance_scores_multi as _distance_scores_multi
from .plan import architecture


@dataclass(frozen=True)
class Settings:
    rate_dist: float = 0.4
    rate_norm: float = 1.0
    metric: str = "l2"
    ignore: Sequence[str] = ()   # module names (as check_prune_args gives them: a list)
    prune_residual: bool = True
    min_channels: int = 1
    round_to: int = 1
    approximate: bool = False
    ops: Any = None            # an object with distance_scores_multi and gather_channels

    def at_rate(self, rate_dist: float) -> "Settings":
        return replace(self, rate_dist=rate_dist)

    @property
    def distance_scores_multi(self):
        return _distance_scores_multi if self.ops is None else self.ops.distance_scores_multi

    def meta(self, model: nn.Module, tracer: str) -> Dict[str, Any]:
        """The plan's ``meta``: these settings, the tracer, torch's version and the
        architecture's fingerprint."""
        meta = {"model": type(model).__name__, "rate_dist": self.rate_dist, "rate_norm": self.rate_norm,
                "metric": self.metric, "prune_residual": self.prune_residual, "min_channels": self.min_channels,
                "round_to": self.round_to, "ignore": self.ignore, "tracer": tracer,
                "torch": torch.__version__, "architecture": architecture(model)}
        if self.approximate:
            meta["approximate"] = True
        return meta
