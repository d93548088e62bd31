"""Split attention (fpgm_ext/pruning/graph/radix.py): SK-Net's stacked paths and ResNeSt's
radix groups, each channel pruned from every radix group at once (their spaces joined),
a grouped conv with one conv group per radix group pruned at the same local channels in
each group. Exact by the plan and by value; other uses of the radix layout left alone."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fpgm_ext
from fpgm_ext.pruning import apply_plan
from masking import assert_exact_by_value
from test_prune import assert_exact, randomize


def cbr(c_in, c_out, k=1, groups=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class SelectiveKernel(nn.Module):
    """SK-Net: two paths stacked, attention over them from their sum, a weighted sum."""

    def __init__(self, c=12, radix=2):
        super().__init__()
        self.stem = cbr(3, c, 3)
        self.paths = nn.ModuleList([cbr(c, c, 3), cbr(c, c, 5)][:radix])
        self.fc_reduce = cbr(c, 8)
        self.fc_select = nn.Conv2d(8, c * radix, 1)
        self.head = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        paths = torch.stack([p(x) for p in self.paths], dim=1)
        s = paths.sum(1).mean((2, 3), keepdim=True)
        a = self.fc_select(self.fc_reduce(s))
        B, RC, H, W = a.shape
        a = a.view(B, len(self.paths), RC // len(self.paths), H, W).softmax(dim=1)
        return self.head((paths * a).sum(dim=1))


class SplitAttention(nn.Module):
    """ResNeSt: a grouped conv with one group per radix, reshaped into radix groups, the
    attention's softmax over the radix after a transpose, a view back."""

    def __init__(self, c=8, radix=2):
        super().__init__()
        self.radix = radix
        self.stem = cbr(3, 2 * c, 3)
        self.conv = cbr(2 * c, c * radix, 3, groups=radix)
        self.fc1 = cbr(c, 6)
        self.fc2 = nn.Conv2d(6, c * radix, 1)
        self.head = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        x = self.conv(self.stem(x))
        B, RC = x.shape[:2]
        x = x.reshape(B, self.radix, RC // self.radix, x.shape[2], x.shape[3])
        gap = self.fc1(x.sum(dim=1).mean((2, 3), keepdim=True))
        a = self.fc2(gap).view(B, 1, self.radix, -1).transpose(1, 2)
        a = F.softmax(a, dim=1).reshape(B, -1).view(B, -1, 1, 1)
        a = a.reshape(B, self.radix, RC // self.radix, 1, 1)
        return self.head((x * a).sum(dim=1).contiguous())


class RadixMixed(SelectiveKernel):
    """The radix groups used as channels (a conv on the stacked, flattened paths): not
    separable into channels of one group, left alone."""

    def __init__(self):
        super().__init__()
        self.mix = nn.Conv2d(24, 12, 1)

    def forward(self, x):
        x = self.stem(x)
        paths = torch.stack([p(x) for p in self.paths], dim=1)
        return self.head(self.mix(paths.transpose(1, 2).flatten(1, 2)))


@pytest.mark.parametrize("cls", [SelectiveKernel, SplitAttention])
def test_radix_pruned_exactly(cls):
    torch.manual_seed(0)
    model = randomize(cls()).eval()
    x = torch.randn(2, 3, 12, 12)
    result = fpgm_ext.prune(model, x, rate_dist=0.4)
    pruned, report = result.model, result.report
    assert not [g for g in report.left_alone if "radix" in g["left_alone"]], report.summary()
    assert_exact(model, pruned, report.plan, x)
    assert_exact_by_value(model, pruned, x)
    if cls is SplitAttention:
        conv = pruned.conv[0]
        assert conv.groups == 2 and conv.in_channels < 16 and conv.out_channels < 16
    fresh = apply_plan(randomize(cls()).eval(), report.plan)   # no graph rewrite needed
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), pruned(x))


def test_radix_used_as_channels_left_alone():
    torch.manual_seed(0)
    model = randomize(RadixMixed()).eval()
    x = torch.randn(2, 3, 12, 12)
    result = fpgm_ext.prune(model, x, rate_dist=0.4)
    assert result.model.paths[0][0].out_channels == 12
    assert any("radix" in g["left_alone"] for g in result.report.left_alone), result.report.summary()
    assert_exact_by_value(model, result.model, x)   # the rest (the stem) still pruned
