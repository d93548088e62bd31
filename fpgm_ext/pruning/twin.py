"""Plans of large models checked on a small twin: the same code, built by the model's
family from its config with fewer layers, a small vocabulary and narrow MLPs, random
weights (which tell channels apart), pruned by the same analysis and settings and checked
as the model's own plan would be (checks.py, float64 copies, both modes). Checking a 7 B
model itself would need several float64 copies of it; the twin's blocks run the same code
with the same heads.
The model's groups are refused where the twin's group of the same modules (layer indices
aside) is refused, and where the twin has no such group.

Used for analyses from the module structure (structure.py) of models with more than
``TWIN_ABOVE`` parameters whose family can build a twin (``Family.twin``).
"""
from __future__ import annotations

import re
from typing import Dict, Optional

from .checks import check_plan
from .decide import decide
from .families import family_of

TWIN_ABOVE = 50_000_000   # parameters; below this the model itself is checked

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")


def _key(producers) -> str:
    """A group's producers with their layer indices blanked: the same block in any layer."""
    return "|".join(sorted({_INDEX.sub("#", p) for p in producers}))


def twin_refused(model, analysis, plan, settings, example_inputs) -> Optional[Dict[int, str]]:
    """The groups of ``plan`` whose pruning the twin's code does not take, with why; None
    where the model is checked itself (small, or its family builds no twin)."""
    family = family_of(model)
    if family.twin is None or family.analyse is None or sum(p.numel() for p in model.parameters()) <= TWIN_ABOVE:
        return None
    made = family.twin(model, example_inputs)
    if made is None:
        return None
    twin, inputs = made
    twin_analysis = family.analyse(twin, inputs, analysis.outputs, settings.rate_dist)
    twin_plan = decide(twin, twin_analysis, settings)
    refused = check_plan(twin, twin_analysis, twin_plan, inputs, settings.ops)
    layers = f"a {type(twin).__name__} of the same blocks built small to check them"
    bad = {_key(g["producers"]): refused[g["id"]] for g in twin_plan.groups if g["id"] in refused}
    seen = {_key(g["producers"]) for g in twin_plan.groups if g["kept"] is not None}
    out: Dict[int, str] = {}
    for g in plan.groups:
        if g["kept"] is None:
            continue
        key = _key(g["producers"])
        if key in bad:
            out[g["id"]] = f"checked on {layers}: {bad[key]}"
        elif key not in seen:
            out[g["id"]] = f"no block like it in {layers}, so not checked"
    return out
