"""Plans saved by the release before the layer registry (tests/data/plans_v1, written by
``python tests/plan_models.py DIR`` with that release) still load and apply, and today's
pruner decides the same plans for the same models: modules, groups and graph edits."""
import json
import os

import pytest
import torch

import fpgm_ext
from fpgm_ext.pruning import Plan, PrunedGraph, apply_plan

from plan_models import build, cases

DATA = os.path.join(os.path.dirname(__file__), "data", "plans_v1")


@pytest.mark.parametrize("name", sorted(cases()))
def test_a_saved_plan_loads_applies_and_is_decided_again(name):
    path = os.path.join(DATA, f"{name}.json")
    saved = Plan.load(path)
    model, x, kwargs = build(name)
    rebuilt = apply_plan(model, path)
    _, report = fpgm_ext.prune(model, x, measure=False, **kwargs)
    now = report.plan.to_dict()
    want = json.load(open(path))
    for key in ("modules", "groups"):
        assert now[key] == want[key], key
    assert now.get("graph", {}) == want.get("graph", {})
    assert {k: v for k, v in now["meta"].items() if k != "torch"} == \
        {k: v for k, v in want["meta"].items() if k != "torch"}
    assert isinstance(rebuilt, PrunedGraph) == bool(saved.graph)
    pruned = apply_plan(model, report.plan)
    rebuilt.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), pruned.eval()(x))
