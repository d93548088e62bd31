"""The models of the saved-plan compatibility test (tests/test_plan_compat.py): each a
constructor, a seed, an input and prune's settings, so that a plan saved by one release
of the pruner can be checked against what another release decides. ``python
tests/plan_models.py DIR`` writes each model's plan into DIR (run by the release whose
plans are kept: tests/data/plans_v1 holds those of the release before the layer registry)."""
from __future__ import annotations

import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fpgm_ext  # noqa: E402
from test_prune import randomize  # noqa: E402
from test_prune_heads import Tokens  # noqa: E402
from test_prune_split import CrossStage  # noqa: E402


class LayerScale(nn.Module):
    """A conv, a per-channel scale (a tensor member), a grouped conv, a Linear head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(16) + 0.5)
        self.b = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.bn = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.a(x)) * self.gamma.view(1, -1, 1, 1)
        x = torch.relu(self.bn(self.b(x)))
        return self.head(x.mean((2, 3)))


def cases():
    """name -> (model constructor, input, prune's keyword arguments)."""
    g = torch.Generator().manual_seed(5)
    return {
        "cifar_resnet20": (lambda: fpgm_ext.models.cifar_resnet(20), torch.randn(1, 3, 32, 32, generator=g),
                           dict(rate_dist=0.3, rate_norm=0.9)),
        "cross_stage": (CrossStage, torch.randn(2, 3, 16, 16, generator=g), dict(rate_dist=0.4)),
        "tokens": (lambda: Tokens(heads=4), torch.randn(2, 7, 10, generator=g), dict(rate_dist=0.5)),
        "layer_scale": (LayerScale, torch.randn(2, 3, 12, 12, generator=g), dict(rate_dist=0.4, round_to=2)),
    }


def build(name):
    make, x, kwargs = cases()[name]
    torch.manual_seed(11)
    return randomize(make()), x, kwargs


if __name__ == "__main__":
    out = sys.argv[1]
    for name in cases():
        model, x, kwargs = build(name)
        _, report = fpgm_ext.prune(model, x, measure=False, **kwargs)
        report.plan.save(os.path.join(out, f"{name}.json"))
        print(name, sum(g["kept"] is not None for g in report.groups), "groups pruned")
