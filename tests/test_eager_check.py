"""torch.export plans are checked on the model's own code (checks.py) in float64, each
output against its own scale: a channel count the code reads at run time is caught even
where its effect is small or lands on a small output (fuzz seeds 185, 635, 653, 840, 1498)."""
import pytest
import torch
from torch import nn

import fpgm_ext


class SizeReadTwoOutputs(nn.Module):
    """Output 1 depends on y.size(1) and is small next to output 0."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 8, 1)
        self.conv3 = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(y) * 100, self.conv3(y * (1.0 / y.size(1)))


class SizeReadDamped(SizeReadTwoOutputs):
    """One output; the size-scaled term is a small part of it."""

    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(y) + self.conv3(y * (0.01 / y.size(1)))


class NoRead(SizeReadTwoOutputs):
    def forward(self, x):
        y = self.conv1(x)
        return self.conv2(y) * 100, self.conv3(y * 0.0625)


@pytest.mark.parametrize("cls", [SizeReadTwoOutputs, SizeReadDamped])
def test_a_small_effect_of_a_size_read_is_caught(cls):
    torch.manual_seed(0)
    pruned, report = fpgm_ext.prune(cls().eval(), torch.randn(2, 3, 8, 8), rate_dist=0.3, trace="export")
    assert pruned.conv1.out_channels == 16
    assert any("differs from the masked original" in (g["left_alone"] or "") for g in report.groups)


def test_exact_export_plans_still_pass():
    torch.manual_seed(0)
    pruned, _ = fpgm_ext.prune(NoRead().eval(), torch.randn(2, 3, 8, 8), rate_dist=0.3, trace="export")
    assert pruned.conv1.out_channels < 16
