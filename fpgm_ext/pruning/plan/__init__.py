"""The pruning plan: what ``prune`` decided, enough to rebuild the pruned architecture
from a fresh model.

format.py   ``Plan``, its JSON form and validation, the architecture fingerprint
edits.py    typed edits of the model's own code (channel splits, head reshapes)
build.py    a plan from an analysis and the units kept per group
surgery.py  ``apply_plan``: each module's surgery by its layer handler, one gather call
copy.py     the copy of the model the surgery prunes (sharing the replaced tensors)
rewrite.py  ``PrunedGraph``: the model's fx traces with the edits written in
masks.py    ``pruned_masks`` / ``zero_pruned``: the same channels zeroed in place
"""
from .build import build_plan
from .copy import _deepcopy
from .format import PLAN_FORMAT, PLAN_VERSION, Plan, architecture, as_plan, check_architecture
from .masks import pruned_masks, zero_pruned
from .rewrite import PrunedGraph
from .surgery import apply_fitting, apply_plan

__all__ = ["Plan", "PrunedGraph", "apply_plan", "apply_fitting", "build_plan", "pruned_masks", "zero_pruned",
           "architecture", "as_plan", "check_architecture", "PLAN_FORMAT", "PLAN_VERSION", "_deepcopy"]
