"""Sub-spaces: where the graph needs a boundary inside one producer's channels, the
analysis cuts them and prunes each part with its own group. A concatenation added to one
conv's output (GhostNet's residual with a conv shortcut) cuts that conv's filters at the
concatenation's boundary; a grouped or depthwise conv on a concatenation cuts its output
(and its input) along its groups. Exact by the plan and, independently, by value."""
import pytest
import torch
from torch import nn

import fpgm_ext
from fpgm_ext.pruning import analyse
from masking import assert_exact_by_value
from test_prune import assert_exact, randomize


def cbr(c_in, c_out, k=1, groups=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class GhostResidual(nn.Module):
    """cat(primary, depthwise(primary)) + a conv shortcut of the block's input."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 12, 3)
        self.primary = cbr(12, 10)
        self.cheap = cbr(10, 10, 3, groups=10)
        self.shortcut = nn.Sequential(nn.Conv2d(12, 20, 1), nn.BatchNorm2d(20))
        self.head = nn.Conv2d(20, 6, 1)

    def forward(self, x):
        x = self.stem(x)
        a = self.primary(x)
        y = torch.cat([a, self.cheap(a)], 1) + self.shortcut(x)
        return self.head(y)


class DepthwiseOnCat(nn.Module):
    """A depthwise conv on a concatenation of two producers, then a residual addition of
    the concatenation: the depthwise conv's filters are cut like its input."""

    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 8), cbr(3, 16)
        self.dw = nn.Sequential(nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.BatchNorm2d(24))
        self.head = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        z = torch.cat([self.a(x), self.b(x)], 1)
        return self.head(torch.relu(self.dw(z)) + z)


def _analysed(make, trace):
    """A fresh model with non-trivial norm layers, an input, and its analysis."""
    torch.manual_seed(0)
    model = randomize(make())
    x = torch.randn(2, 3, 8, 8)
    return model, x, analyse(model, (x,), trace)


@pytest.mark.parametrize("trace", ["fx", "export"])
def test_conv_shortcut_cut_at_the_concatenation(trace):
    model, x, analysis = _analysed(GhostResidual, trace)
    cut = analysis.uses["shortcut.0"].out_spaces
    assert [analysis.spaces[s].size for s in cut] == [10, 10]
    assert [analysis.spaces[s].offset for s in cut] == [0, 10]
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.3, trace=trace)
    assert pruned.shortcut[0].out_channels < 20 and pruned.primary[0].out_channels < 10
    assert pruned.shortcut[0].out_channels == pruned.primary[0].out_channels + pruned.cheap[0].out_channels
    assert not report.unsupported
    assert_exact(model, pruned, report.plan, x)
    assert_exact_by_value(model, pruned, x)


@pytest.mark.parametrize("trace", ["fx", "export"])
def test_depthwise_conv_cut_along_its_input(trace):
    model, x, analysis = _analysed(DepthwiseOnCat, trace)
    assert [analysis.spaces[s].size for s in analysis.uses["dw.0"].out_spaces] == [8, 16]
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.3, trace=trace)
    dw = pruned.dw[0]
    assert dw.out_channels == dw.groups == pruned.a[0].out_channels + pruned.b[0].out_channels < 24
    assert_exact(model, pruned, report.plan, x)
    assert_exact_by_value(model, pruned, x)


def test_misaligned_channels_that_cannot_be_cut_are_left_alone():
    """A grouped conv (groups of 4) on a concatenation of 6 + 10 channels: the boundary at
    6 falls inside a conv group, so nothing there is pruned, by name."""

    class Misaligned(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = cbr(3, 6), cbr(3, 10)
            self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            return self.head(torch.relu(self.g(torch.cat([self.a(x), self.b(x)], 1))))

    model = randomize(Misaligned())
    pruned, report = fpgm_ext.prune(model, torch.randn(1, 3, 8, 8), rate_dist=0.5)
    assert pruned.a[0].out_channels == 6 and pruned.g.out_channels == 16
    assert any("g is a grouped conv whose input channels do not split along its groups" in g["left_alone"]
               for g in report.left_alone)


class ResidualChain(nn.Module):
    """Inception-ResNet: a stream born of a concatenation, then a chain of blocks each
    adding one conv's output to it: every block's conv is cut at the stream's boundaries,
    all of them asked for by one pass (not one block per pass, which ran out of passes)."""

    def __init__(self, blocks=12):
        super().__init__()
        self.a, self.b = cbr(3, 6), cbr(3, 10)
        self.blocks = nn.ModuleList(nn.Sequential(cbr(16, 8), nn.Conv2d(8, 16, 1)) for _ in range(blocks))
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        x = torch.cat([self.a(x), self.b(x)], 1)
        for block in self.blocks:
            x = torch.relu(block(x) * 0.5 + x)
        return self.head(x)


@pytest.mark.parametrize("trace", ["fx", "export"])
def test_chain_of_cut_residuals(trace, monkeypatch):
    from fpgm_ext.pruning import graph

    walks = []
    walk = graph._walk
    monkeypatch.setattr(graph, "_walk", lambda *a, **k: walks.append(1) or walk(*a, **k))
    model, x, analysis = _analysed(ResidualChain, trace)
    assert len(walks) == 2            # the cuts found, then the pass with them
    for k in range(12):
        assert [analysis.spaces[s].size for s in analysis.uses[f"blocks.{k}.1"].out_spaces] == [6, 10]
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.3, trace=trace)
    assert pruned.a[0].out_channels < 6 and pruned.b[0].out_channels < 10
    assert all(b[1].out_channels == pruned.a[0].out_channels + pruned.b[0].out_channels for b in pruned.blocks)
    assert_exact(model, pruned, report.plan, x)
    assert_exact_by_value(model, pruned, x)
