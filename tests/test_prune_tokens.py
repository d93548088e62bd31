"""Linear layers on the last dimension of inputs of rank >= 3: token MLPs ([B, T, C], as in
ViT, DeiT, Mixer) and channels-last blocks ([B, H, W, C], as in ConvNeXt). The hidden
dimension of an MLP (Linear -> elementwise ops -> Linear) is pruned exactly; the stream
around it (LayerNorm statistics change with its width) is left alone, by name, and so is a
hidden dimension that meets anything but an elementwise op."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpgm_ext
from test_prune import assert_exact, randomize

G = torch.Generator().manual_seed(0)


class TokenBlock(nn.Module):
    """A transformer block's MLP half: x + fc2(drop(gelu(fc1(norm(x)))))."""

    def __init__(self, dim=24, hidden=64, centre_hidden=False):
        super().__init__()
        self.embed = nn.Linear(12, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.drop, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(0.1), nn.Linear(hidden, dim)
        self.head = nn.Linear(dim, 5)
        self.centre_hidden = centre_hidden

    def forward(self, x):                       # x: [B, T, 12]
        x = self.embed(x)
        h = self.drop(self.act(self.fc1(self.norm(x))))
        if self.centre_hidden:                  # mixes the hidden channels: not prunable
            h = h - h.mean(-1, keepdim=True)
        x = x + self.fc2(h)
        return self.head(x.mean(1))


class ChannelsLast(nn.Module):
    """ConvNeXt's block: depthwise conv, then LayerNorm and a pointwise MLP channels-last."""

    def __init__(self, c=16, hidden=48):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, hidden), nn.Linear(hidden, c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.pw2(F.gelu(self.pw1(y))).permute(0, 3, 1, 2)
        return self.fc((x + y).mean((2, 3)))


class RowMLP(nn.Module):
    """A Linear over the last (spatial) dimension of a conv's output [B, C, H, W]: its input
    is not the channels; its own hidden width is prunable."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.l1, self.l2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.l2(F.relu(self.l1(self.conv(x)))).flatten(1)


def _exact(model, x, rate=0.4):
    pruned, report = fpgm_ext.prune(randomize(model), x, rate_dist=rate)
    assert_exact(model, pruned, report.plan, x)
    return pruned, report


@pytest.mark.parametrize("trace", ["fx", "export"])
def test_token_mlp_hidden_pruned_exactly(trace):
    model, x = TokenBlock(), torch.randn(2, 7, 12, generator=G)
    pruned, report = fpgm_ext.prune(randomize(model), x, rate_dist=0.4, trace=trace)
    assert_exact(model, pruned, report.plan, x)
    assert pruned.fc1.out_features == pruned.fc2.in_features < 64
    assert pruned.fc2.out_features == 24 and pruned.norm.normalized_shape == (24,)  # the stream


def test_channels_last_mlp_hidden_pruned_exactly():
    pruned, report = _exact(ChannelsLast(), torch.randn(2, 3, 12, 12, generator=G))
    assert pruned.pw1.out_features == pruned.pw2.in_features < 48
    assert pruned.pw2.out_features == 16


def test_hidden_mixed_by_a_reduction_is_left_alone():
    model, x = TokenBlock(centre_hidden=True), torch.randn(2, 7, 12, generator=G)
    pruned, report = fpgm_ext.prune(randomize(model), x, rate_dist=0.4)
    assert pruned.fc1.out_features == 64
    reasons = [g["left_alone"] for g in report.groups if "fc1" in g["producers"] and g["left_alone"]]
    assert reasons and "over all its channels" in reasons[0] and "non-zero" in reasons[0]


def test_linear_over_a_spatial_dimension():
    pruned, report = _exact(RowMLP(), torch.randn(2, 3, 16, 16, generator=G))
    assert pruned.l1.out_features < 32 and pruned.l1.in_features == 16
    assert pruned.conv.out_channels == 8       # its channels are not what l1 reads
