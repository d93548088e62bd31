"""Spellings of hybrid CNN / transformer models (graph/broadcast.py, graph/layouts.py):
tokens [B, H*W, C] put back as an image (transpose or permute, then reshape, view or
unflatten, the sizes read at run time or passed in), per-channel layer scales broadcast by
indexing with None or by views, and squeeze-excitation through Linear layers scaling a
conv's channels. Each is pruned (the channel counts drop) and equals the original with
the removed channels masked, by value, in eval and in training mode, with either tracer;
a near miss of each spelling is left alone."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpgm_ext
from masking import assert_exact_by_value, masked_original
from test_prune import randomize

TRACES = ["fx", "export"]


def _x(hw=8, seed=0):
    return torch.randn(2, 3, hw, hw, generator=torch.Generator().manual_seed(seed))


def _prune(model, x, trace, rate=0.4):
    torch.manual_seed(0)
    model = randomize(model)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=rate, trace=trace)
    return model, pruned, report


def assert_exact_both_modes(model, pruned, x):
    """Equal to the original masked by value (tests/masking.py) in eval mode, something
    pruned; and in training mode (BatchNorm on the batch's statistics)."""
    assert_exact_by_value(model, pruned, x)
    masked, pruned = masked_original(model, pruned).train(), copy.deepcopy(pruned).train()
    with torch.no_grad():
        ref, out = masked(x), pruned(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * float(ref.abs().max()))


def _left_alone(report, producer):
    return [g["left_alone"] for g in report.groups if producer in g["producers"] and g["left_alone"]]


# ----------------------------------------------------------------- tokens and images
class TokenMLP(nn.Module):
    """A token MLP whose output goes back to an image, H and W passed in (PVT's and
    SegFormer's blocks take them as arguments)."""

    def __init__(self, c, spelling):
        super().__init__()
        self.spelling = spelling
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)

    def forward(self, t, H, W):
        t = self.fc2(F.gelu(self.fc1(t)))
        B, N, C = t.shape
        s = self.spelling
        if s == "transpose_reshape":
            return t.transpose(1, 2).reshape(B, C, H, W)
        if s == "transpose_view":
            return t.transpose(1, 2).contiguous().view(B, C, H, W)
        if s == "permute_reshape":
            return t.permute(0, 2, 1).reshape(B, -1, H, W)
        if s == "unflatten":
            return t.transpose(1, 2).unflatten(2, (H, W))
        if s == "channels_last_view":
            return t.view(B, H, W, C).permute(0, 3, 1, 2)
        if s == "splits_channels":      # C / 2 channels of twice the height: not the channels
            return t.transpose(1, 2).reshape(B, C // 2, 2 * H, W)
        if s == "unflattens_channels":  # the channels split into two dims and merged again
            return t.transpose(1, 2).unflatten(1, (2, C // 2)).flatten(1, 2).reshape(B, C, H, W)
        raise ValueError(s)


class Hybrid(nn.Module):
    """conv stem -> tokens -> Linear MLP -> image -> residual with the stem -> conv."""

    def __init__(self, spelling, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.mlp = TokenMLP(c, spelling)
        self.residual = spelling != "splits_channels"
        self.conv = nn.Conv2d(c if self.residual else c // 2, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.bn(self.stem(x))
        H, W = x.shape[2:]
        y = self.mlp(x.flatten(2).transpose(1, 2), H, W)
        if self.residual:
            y = x + y
        return self.head(self.conv(F.relu(y)).mean((2, 3)))


@pytest.mark.parametrize("trace", TRACES)
@pytest.mark.parametrize("spelling", ["transpose_reshape", "transpose_view", "permute_reshape", "unflatten",
                                      "channels_last_view"])
def test_tokens_back_to_an_image(spelling, trace):
    """The stem's channels, the MLP's input and output features and the conv's input
    channels are one group (joined by the residual across the two layouts)."""
    x = _x()
    model, pruned, report = _prune(Hybrid(spelling), x, trace)
    assert not report.unsupported
    c = pruned.stem.out_channels
    assert c < 16 and pruned.mlp.fc1.in_features == pruned.mlp.fc2.out_features == pruned.conv.in_channels == c
    assert pruned.mlp.fc1.out_features < 32
    assert_exact_both_modes(model, pruned, x)


class ImageToTokens(nn.Module):
    """The reverse: a conv's channels as tokens' features, into a Linear MLP, a residual
    in token space, then a conv on the tokens put back."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(c, 24), nn.Linear(24, c)
        self.conv = nn.Conv2d(c, 8, 1)

    def forward(self, x):
        x = self.stem(x)
        B, C, H, W = x.shape
        t = x.reshape(B, C, H * W).permute(0, 2, 1)
        t = t + self.fc2(F.relu(self.fc1(t)))
        return self.conv(t.transpose(1, 2).reshape(B, C, H, W)).mean((2, 3))


@pytest.mark.parametrize("trace", TRACES)
def test_image_to_tokens_and_back(trace):
    x = _x()
    model, pruned, report = _prune(ImageToTokens(), x, trace)
    c = pruned.stem.out_channels
    assert c < 16 and pruned.fc1.in_features == pruned.fc2.out_features == pruned.conv.in_channels == c
    assert_exact_both_modes(model, pruned, x)


@pytest.mark.parametrize("trace", TRACES)
@pytest.mark.parametrize("spelling", ["splits_channels", "unflattens_channels"])
def test_a_reshape_that_mixes_channels_with_space_is_left_alone(spelling, trace):
    x = _x()
    model, pruned, report = _prune(Hybrid(spelling), x, trace)
    assert pruned.mlp.fc2.out_features == 16 and _left_alone(report, "mlp.fc2")
    assert pruned.mlp.fc1.out_features < 32            # the MLP's hidden features still go
    if trace == "fx":
        assert report.unsupported
    assert_exact_both_modes(model, pruned, x)


# ----------------------------------------------------------------------- layer scales
class LayerScale(nn.Module):
    """x + gamma * body(x), gamma broadcast over the image in one of several spellings."""

    def __init__(self, spelling, c=16, gamma=None):
        super().__init__()
        self.spelling = spelling
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.body = nn.Conv2d(c, c, 3, padding=1)
        self.gamma = nn.Parameter(torch.rand(c if gamma is None else gamma) + 0.5)
        self.conv = nn.Conv2d(c, 8, 1)

    def scale(self, y):
        s, g = self.spelling, self.gamma
        if s == "index":
            return y * g[None, :, None, None]
        if s == "index_three":
            return g[:, None, None] * y
        if s == "ellipsis":
            return y * g[None, ..., None, None]
        if s == "view":
            return y * g.view(1, -1, 1, 1)
        if s == "unsqueeze":
            return y * g.unsqueeze(-1).unsqueeze(-1)
        if s == "slice":          # a slice of the parameter, not all of it
            return y * g[None, :16, None, None]
        if s == "spatial":        # one entry per row, not per channel
            return y * g[None, None, :, None]
        raise ValueError(s)

    def forward(self, x):
        x = self.stem(x)
        return self.conv(x + self.scale(F.relu(self.body(x)))).mean((2, 3))


@pytest.mark.parametrize("trace", TRACES)
@pytest.mark.parametrize("spelling", ["index", "index_three", "ellipsis", "view", "unsqueeze"])
def test_layer_scale_is_pruned_with_the_channels(spelling, trace):
    x = _x()
    model, pruned, report = _prune(LayerScale(spelling), x, trace)
    assert not report.unsupported
    c = pruned.stem.out_channels
    assert c < 16 and pruned.body.out_channels == pruned.gamma.shape[0] == c
    assert_exact_both_modes(model, pruned, x)


@pytest.mark.parametrize("trace", TRACES)
@pytest.mark.parametrize("spelling, gamma", [("index", 1), ("spatial", 8)])
def test_a_scale_the_same_for_every_channel_is_no_member(spelling, gamma, trace):
    """gamma of one entry (broadcast over every channel) or of one per row: it keeps its
    entries, and the channels it scales, each alike, are still pruned."""
    x = _x()
    model, pruned, report = _prune(LayerScale(spelling, gamma=gamma), x, trace)
    assert pruned.gamma.shape == (gamma,)
    assert pruned.stem.out_channels == pruned.body.out_channels < 16
    assert_exact_both_modes(model, pruned, x)


@pytest.mark.parametrize("trace", TRACES)
def test_a_slice_of_a_longer_scale_is_left_alone(trace):
    """gamma[None, :16, None, None] of a gamma of 24: not the whole parameter, which keeps
    its entries; so do the channels it meets."""
    x = _x()
    model, pruned, report = _prune(LayerScale("slice", gamma=24), x, trace)
    assert pruned.gamma.shape == (24,) and pruned.stem.out_channels == pruned.body.out_channels == 16
    assert _left_alone(report, "stem")
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-6)


# --------------------------------------------------- squeeze-excitation through Linear
class LinearSE(nn.Module):
    """x * sigmoid(fc2(relu(fc1(x.mean((2, 3)))))) broadcast back over the image."""

    def __init__(self, spelling, c=8):
        super().__init__()
        self.spelling = spelling
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.fc1, self.fc2 = nn.Linear(c, 4), nn.Linear(4, c)
        self.out = nn.Conv2d(c, 6, 1)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3))))))
        b, c, _, _ = x.shape
        sp = self.spelling
        if sp == "index":
            x = x * s[:, :, None, None]
        elif sp == "ellipsis":
            x = s[..., None, None] * x
        elif sp == "unsqueeze":
            x = x * s.unsqueeze(-1).unsqueeze(-1)
        elif sp == "view":
            x = x * s.view(b, c, 1, 1)
        elif sp == "moved":       # [B, 1, C, 1]: the scale over rows, not channels
            x = x * s[:, None, :, None]
        else:
            raise ValueError(sp)
        return self.out(x).mean((2, 3))


@pytest.mark.parametrize("trace", TRACES)
@pytest.mark.parametrize("spelling", ["index", "ellipsis", "unsqueeze", "view"])
def test_squeeze_excitation_through_linear_layers(spelling, trace):
    """fc2's features are the conv's channels they scale: one group with the conv and
    fc1's input features; fc1's own features are another."""
    x = _x()
    model, pruned, report = _prune(LinearSE(spelling), x, trace)
    assert not report.unsupported
    c = pruned.conv.out_channels
    assert c < 8 and pruned.fc1.in_features == pruned.fc2.out_features == pruned.out.in_channels == c
    assert_exact_both_modes(model, pruned, x)


@pytest.mark.parametrize("trace", TRACES)
def test_a_scale_broadcast_over_rows_is_left_alone(trace):
    """fc2's features scale rows: they stay; the conv's channels, each scaled by the
    rows' factors alike, are still pruned."""
    x = _x()   # 8 x 8: the rows are as many as the channels, so [B, 1, C, 1] broadcasts
    model, pruned, report = _prune(LinearSE("moved"), x, trace)
    assert pruned.fc2.out_features == 8 and _left_alone(report, "fc2")
    assert pruned.conv.out_channels < 8
    assert_exact_both_modes(model, pruned, x)


# ------------------------------------------------------------------------ composite
class HybridStage(nn.Module):
    """A conv stem, a token MLP with a layer scale on the image side, the residual, a
    conv, a squeeze-excitation through Linear layers, a classifier."""

    def __init__(self, c=16):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 3, stride=2, padding=1), nn.BatchNorm2d(c)
        self.fc1, self.fc2 = nn.Linear(c, 32), nn.Linear(32, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.conv, self.bn2 = nn.Conv2d(c, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.se1, self.se2 = nn.Linear(24, 6), nn.Linear(6, 24)
        self.head = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        B, C, H, W = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = self.fc2(F.gelu(self.fc1(t)))
        y = t.transpose(1, 2).reshape(B, C, H, W)
        x = x + y * self.gamma[None, :, None, None]
        x = F.relu(self.bn2(self.conv(x)))
        s = torch.sigmoid(self.se2(F.relu(self.se1(x.mean((2, 3))))))
        x = x * s[:, :, None, None]
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("trace", TRACES)
def test_hybrid_stage(trace):
    x = _x(16)
    model, pruned, report = _prune(HybridStage(), x, trace)
    assert not report.unsupported
    c = pruned.stem.out_channels
    assert c < 16 and pruned.fc1.in_features == pruned.fc2.out_features == pruned.gamma.shape[0] == c
    assert pruned.conv.in_channels == c and pruned.fc1.out_features < 32
    d = pruned.conv.out_channels
    assert d < 24 and pruned.se1.in_features == pruned.se2.out_features == pruned.head.in_features == d
    assert_exact_both_modes(model, pruned, x)
