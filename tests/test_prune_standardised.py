"""Weight-standardised convs (timm's StdConv2d, ScaledStdConv2d: the weight normalised per
output filter at every forward): their filters, and a ScaledStdConv2d's per-filter gain,
are pruned exactly; their input channels are not (removing one changes every filter's
statistics), and the group that feeds them is left alone by that reason."""
import pytest
import torch
from torch import nn

import fpgm_ext
from test_prune import assert_exact, randomize

layers = pytest.importorskip("timm.layers")


class Net(nn.Module):
    def __init__(self, conv):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2 = conv(16, 24, 3, padding=1)
        self.c3 = nn.Conv2d(24, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.c2(x))
        return self.fc(self.c3(x).mean((2, 3)))


@pytest.mark.parametrize("conv", ["StdConv2d", "ScaledStdConv2d"])
def test_filters_pruned_inputs_left_alone(conv):
    torch.manual_seed(0)
    model = randomize(Net(getattr(layers, conv)))
    if hasattr(model.c2, "gain"):
        model.c2.gain.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 10, 10)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.4)
    assert_exact(model, pruned, report.plan, x)
    assert pruned.c2.out_channels < 24 and pruned.c2.in_channels == 16 and pruned.c1.out_channels == 16
    if hasattr(model.c2, "gain"):
        assert pruned.c2.gain.shape == (pruned.c2.out_channels, 1, 1, 1)
        assert report.plan.modules["c2"]["out_params"] == ["gain"]
    reasons = [g["left_alone"] for g in report.left_alone]
    assert any("c2 standardises its weight over its input channels" in r for r in reasons)
    assert report.unsupported == []     # the weight's computation is not an unsupported op
