"""tests/masking.py, the plan-independent masked original, is itself tested: it agrees
with the plan where the pruning is right, and it catches a pruning that is wrong."""
import torch
from torch import nn

import fpgm_ext
from fpgm_ext.pruning import apply_plan
from fpgm_ext.pruning.plan import Plan
from masking import assert_exact_by_value, kept_channels, masked_original
from test_prune import randomize


class ChannelMean(nn.Module):
    """conv1's channels feed conv2 and, averaged over channels, the output: removing any
    of them changes that mean, so none may go."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 1)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv1(x)))
        return self.conv2(h) + h.mean(1, keepdim=True)


def test_agrees_with_the_plan():
    torch.manual_seed(0)
    model = randomize(nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(),
                                    nn.Conv2d(16, 12, 3), nn.BatchNorm2d(12), nn.ReLU(),
                                    nn.Conv2d(12, 4, 1)))
    x = torch.randn(2, 3, 10, 10)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.4)
    kept = kept_channels(model, pruned)
    plan = report.plan.modules
    assert kept["0"][0].tolist() == plan["0"]["out"] and kept["3"][1].tolist() == plan["3"]["in"]
    assert kept["1"][0].tolist() == plan["1"]["channels"]
    assert_exact_by_value(model, pruned, x)


def test_catches_a_wrong_pruning():
    torch.manual_seed(0)
    model = randomize(ChannelMean())
    x = torch.randn(2, 3, 8, 8)
    _, report = fpgm_ext.prune(model, x, rate_dist=0.5)
    assert report.plan.modules == {} or "conv1" not in report.plan.modules   # the analysis refuses
    wrong = Plan(modules={
        "conv1": {"type": "Conv2d", "out_size": 8, "in_size": 3, "out": [0, 2, 4, 6]},
        "bn": {"type": "BatchNorm2d", "size": 8, "channels": [0, 2, 4, 6]},
        "conv2": {"type": "Conv2d", "out_size": 6, "in_size": 8, "in": [0, 2, 4, 6]}})
    pruned = apply_plan(model, wrong)
    with torch.no_grad():
        diff = (pruned(x) - masked_original(model, pruned)(x)).abs().max()
    assert diff > 1e-3
