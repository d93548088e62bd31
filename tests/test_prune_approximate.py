"""``prune(..., approximate=True)``: channels under a LayerNorm (or GroupNorm(1, C)) over
all of them, left alone by default (by name), are pruned on request; each such group is
reported with the output difference it makes, measured. Channels-last blocks (permute,
LayerNorm, a layer scale), token streams (patch embedding, class token, position
embedding, a class-token pool) and GroupNorm(1, C) with a scale viewed by a constant shape
(PoolFormer)."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fpgm_ext
from fpgm_ext.pruning import apply_plan
from fpgm_ext.pruning.plan import zero_pruned


class ChannelsLast(nn.Module):
    """ConvNeXt's block: depthwise conv, permute, LayerNorm, MLP, layer scale, permute
    back, residual; a LayerNorm2d-style downsample (permute, F.layer_norm, permute)."""

    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 2, stride=2)
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c)
        self.norm = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.gamma = nn.Parameter(torch.rand(c) + 0.5)
        self.down_norm = nn.LayerNorm(c)
        self.down = nn.Conv2d(c, 8, 1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        y = self.norm(self.dw(x).permute(0, 2, 3, 1))
        y = self.fc2(F.gelu(self.fc1(y))).permute(0, 3, 1, 2)
        x = x + y.mul(self.gamma.reshape(1, -1, 1, 1))
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.down_norm.normalized_shape, self.down_norm.weight,
                         self.down_norm.bias).permute(0, 3, 1, 2)
        return self.head(self.down(x).mean((2, 3)))


class Tokens(nn.Module):
    """ViT's stream: conv patches flattened into tokens, a class token, a position
    embedding, a pre-norm MLP block, the class token pooled."""

    def __init__(self, c=24, n=16):
        super().__init__()
        self.patch = nn.Conv2d(3, c, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, c))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, c))
        self.norm1 = nn.LayerNorm(c)
        self.fc1, self.fc2 = nn.Linear(c, 2 * c), nn.Linear(2 * c, c)
        self.norm = nn.LayerNorm(c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        x = self.patch(x)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)   # (torchvision's spelling)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        x = x + self.fc2(F.gelu(self.fc1(self.norm1(x))))
        return self.head(self.norm(x)[:, 0])


class Scale(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.shape = (c, 1, 1)
        self.scale = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.scale.view(self.shape)   # the channel count, a constant of the graph


class PoolFormer(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.norm = nn.GroupNorm(1, c)
        self.mlp = nn.Sequential(nn.Conv2d(c, 2 * c, 1), nn.GELU(), nn.Conv2d(2 * c, c, 1))
        self.scale = Scale(c)
        self.head = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.scale(self.mlp(self.norm(x)))
        return self.head(x).mean((2, 3))


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN on an MLP's hidden channels (channels first, as timm's conv MLP):
    each channel scaled by its spatial norm over the mean of all channels' norms. That
    mean changes when channels go: approximate, not exact."""

    def __init__(self, c=32):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)
        self.fc1, self.fc2 = nn.Conv2d(8, c, 1), nn.Conv2d(c, 8, 1)
        self.weight = nn.Parameter(torch.rand(c) + 0.5)
        self.bias = nn.Parameter(torch.randn(c) * 0.1)
        self.head = nn.Conv2d(8, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        h = F.gelu(self.fc1(x))
        g = h.norm(p=2, dim=(2, 3), keepdim=True)
        n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
        h = h + torch.addcmul(self.bias.view(1, -1, 1, 1), self.weight.view(1, -1, 1, 1), h * n)
        return self.head(x + self.fc2(h)).mean((2, 3))


def _randomize(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return model.eval()


CASES = {"channels_last": (ChannelsLast, (2, 3, 16, 16)), "tokens": (Tokens, (2, 3, 16, 16)),
         "poolformer": (PoolFormer, (2, 3, 8, 8)), "grn": (GlobalResponseNorm, (2, 3, 8, 8))}


@pytest.mark.parametrize("name", sorted(CASES))
def test_left_alone_by_default_pruned_on_request(name):
    cls, shape = CASES[name]
    torch.manual_seed(0)
    model = _randomize(cls())
    x = torch.randn(*shape)
    exact = fpgm_ext.prune(model, x, rate_dist=0.3)
    assert any("approximate=True prunes it" in g["left_alone"] for g in exact.report.left_alone)
    assert not exact.report.approximate

    result = fpgm_ext.prune(model, x, rate_dist=0.3, approximate=True)
    report = result.report
    assert report.approximate and report.params_after < exact.report.params_after
    assert report.plan.meta["approximate"] is True
    for g in report.approximate:
        assert "normalisation" in g["approximate"] and g["output_difference"] >= 0
    with torch.no_grad():
        out = result.model(x)
    assert out.shape == model(x).shape
    # the plan replays on a fresh instance (PoolFormer: its scale's view rewritten)
    fresh = apply_plan(_randomize(cls()), report.plan)
    fresh.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out)
    assert "approximate:" in report.summary()


class OneGroup(nn.Module):
    """A conv, a LayerNorm over its channels (channels last), a linear head: one group."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 20, 3)
        self.norm = nn.LayerNorm(20)
        self.head = nn.Linear(20, 5)

    def forward(self, x):
        return self.head(self.norm(self.stem(x).permute(0, 2, 3, 1)).mean((1, 2)))


def test_output_difference_is_the_pruned_against_the_zeroed():
    import copy

    torch.manual_seed(0)
    model = _randomize(OneGroup())
    x = torch.randn(2, 3, 9, 9)
    result = fpgm_ext.prune(model, x, rate_dist=0.4, approximate=True)
    (g,) = result.report.approximate
    assert len(g["kept"]) == 12
    with torch.no_grad():
        out = result.model(x)
        masked = zero_pruned(copy.deepcopy(model), result.report.plan)(x)
        orig = model(x)
    want = float((out - masked).abs().max() / masked.abs().max())
    assert 1e-4 < g["output_difference"] == pytest.approx(want, rel=1e-5)
    assert float((masked - orig).abs().max()) > 1e-3   # the zeroing did something


def test_stream_without_a_norm_is_exact():
    """A residual token stream with no LayerNorm on it: pruned exactly, by default."""
    torch.manual_seed(0)
    model = Tokens().eval()
    model.norm1, model.norm = nn.Identity(), nn.Identity()
    x = torch.randn(2, 3, 16, 16)
    result = fpgm_ext.prune(model, x, rate_dist=0.3)
    assert result.model.patch.out_channels < 24 and result.model.cls_token.shape[-1] < 24
    assert not result.report.approximate
    with torch.no_grad():
        masked = zero_pruned(__import__("copy").deepcopy(model), result.report.plan)(x)
        torch.testing.assert_close(result.model(x), masked, rtol=1e-4, atol=1e-5)


def test_cli_approximate(capsys, tmp_path):
    """``fpgm-ext prune MODEL --approximate``: the option reaches prune (the plan says so)."""
    from fpgm_ext import cli

    plan = tmp_path / "plan.json"
    assert cli.main(["prune", "cifar_resnet20", "--rate-dist", "0.3", "--approximate", "--plan", str(plan)]) == 0
    assert fpgm_ext.pruning.plan.Plan.load(plan).meta.get("approximate") is True


class CountFromOther(nn.Module):
    """``b`` reshaped with ``a``'s channel count (PVT's ``sr(x).reshape(B, C, -1)`` reads C
    from its block's input): pruning either alone would break or mis-shape the model."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
        self.head_a, self.head_b = nn.Linear(8, 5), nn.Linear(8, 5)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        y = b.reshape(b.shape[0], a.shape[1], -1).mean(2)
        return self.head_a(a.mean((2, 3))) + self.head_b(y)


def test_a_channel_count_read_from_other_channels_keeps_both():
    torch.manual_seed(0)
    model = CountFromOther().eval()
    x = torch.randn(2, 3, 4, 4)
    result = fpgm_ext.prune(model, x, rate_dist=0.4)
    assert result.model.a.out_channels == result.model.b.out_channels == 8
    assert any("reads its channel count from other channels" in g["left_alone"] for g in result.report.left_alone)
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x))
