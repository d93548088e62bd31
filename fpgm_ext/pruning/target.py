"""``prune(..., target_flops=...)`` and ``target_params=...``: the uniform rate that reaches
a reduction.

The paper prunes every layer at one rate; a target is met the same way: one ``rate_dist``
for all groups (``rate_norm`` as given), found by bisection on the reduction it gives.
Each candidate rate is a plan decided on scores computed once (``_select``'s cache) and
measured without surgery or forward passes: parameters from the plan's channel counts,
FLOPs from the count before pruning scaled per conv and linear layer (``flops.py``) -- or,
for models whose FLOPs are not all in such layers, by pruning a copy and measuring it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from torch import nn

from .flops import Measurement, derive_weight_sizes, scaled_flops
from .layers import TENSOR_ENTRY_TYPES, TENSOR_MEMBER, handler_for
from .plan import Plan

_TOLERANCE = 0.01  # a target counts as met within 1 % (absolute) of the reduction asked
_STEPS = 24        # bisection steps on rate_dist: 2^-24, below any layer's 1 / N


@dataclass
class TargetResult:
    kind: str             # "flops" or "params"
    target: float         # the reduction asked for (0.5: half the FLOPs removed)
    achieved: float       # the reduction of the plan returned
    rate_dist: float      # the uniform rate that gives it
    met: bool             # achieved within 1 % of target

    def summary(self) -> str:
        how = "met" if self.met else "not reachable; the closest achievable"
        return (f"target: {100 * self.target:.1f} % fewer {self.kind}, {how}: "
                f"{100 * self.achieved:.2f} % at rate_dist {self.rate_dist:.4f}")


def planned_params(model: nn.Module, plan: Plan, params_before: int) -> int:
    """Parameters of ``model`` once ``plan`` is applied, from the plan's channel counts."""
    modules = dict(model.named_modules())
    removed = 0
    for name, entry in plan.modules.items():
        if entry.get("type") in TENSOR_ENTRY_TYPES:   # a layer scale, keyed by its own name
            removed += TENSOR_MEMBER.params_removed_of(modules, name, entry)
            continue
        handler = handler_for(modules[name])
        removed += handler.params_removed(modules[name], entry) if handler is not None else 0
    return params_before - removed


def planned_flops(before: Measurement, sizes_before: Dict[str, int], model: nn.Module,
                  plan: Plan) -> Optional[int]:
    """FLOPs once ``plan`` is applied, from ``before`` (``flops.scaled_flops``: every FLOP in a
    conv or linear layer), or None when they cannot be derived (then measure for real)."""
    layer_flops = scaled_flops(before, sizes_before, {**sizes_before, **derive_weight_sizes(model, plan)})
    return None if layer_flops is None else sum(layer_flops.values())


def search(plan_at: Callable[[float], Plan], reduction: Callable[[Plan], float], kind: str,
           target: float) -> Tuple[Plan, TargetResult]:
    """The plan whose reduction is nearest ``target``, searching the smallest rate_dist
    that reaches it (reductions grow with the rate) and the largest that stays below."""
    lo, hi = 0.0, 1.0 - 2.0 ** -_STEPS
    plan_hi = plan_at(hi)
    red_hi = reduction(plan_hi)
    if red_hi < target:            # the most pruning possible falls short
        return plan_hi, TargetResult(kind, target, red_hi, hi, red_hi >= target - _TOLERANCE)
    plan_lo, red_lo = None, None
    for _ in range(_STEPS):
        mid = (lo + hi) / 2
        plan = plan_at(mid)
        red = reduction(plan)
        if red >= target:
            hi, plan_hi, red_hi = mid, plan, red
        else:
            lo, plan_lo, red_lo = mid, plan, red
        if red_hi - target <= _TOLERANCE / 10:
            break
    if plan_lo is not None and target - red_lo < red_hi - target:
        return plan_lo, TargetResult(kind, target, red_lo, lo, target - red_lo <= _TOLERANCE)
    return plan_hi, TargetResult(kind, target, red_hi, hi, red_hi - target <= _TOLERANCE)


def check_target(target_flops: Optional[float], target_params: Optional[float]) -> Optional[Tuple[str, float]]:
    """("flops" | "params", value) or None; a reduction in (0, 1)."""
    given = [(k, v) for k, v in (("flops", target_flops), ("params", target_params)) if v is not None]
    if not given:
        return None
    if len(given) > 1:
        raise ValueError("fpgm_ext.prune: give target_flops or target_params, not both")
    kind, value = given[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"fpgm_ext.prune: target_{kind} is the fraction of {kind} to remove, in (0, 1); "
                         f"got {value!r}")
    return kind, float(value)
