"""Channel counts read at run time (fpgm_ext/pruning/graph/sizes.py): a size read off a
tensor and used where the analysis does not understand it keeps that tensor's channels
whole, by name; a reshape that spells a channel count as a constant keeps its input's;
the reads the analysis understands (a reshape by its own count, or by a joined tensor's)
still prune. Each model is pruned, run, and compared with its masked original by value."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fpgm_ext
from masking import assert_exact_by_value
from test_prune import randomize


def cbr(c_in, c_out, k=3):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2), nn.BatchNorm2d(c_out), nn.ReLU())


class Base(nn.Module):
    def __init__(self, c=16):
        super().__init__()
        self.stem = cbr(3, c)
        self.mid = cbr(c, c)
        self.body = cbr(c, c)
        self.head = nn.Conv2d(c, 5, 1)


class ReshapeByInputCount(Base):
    """timm's LambdaLayer: ``out.reshape(B, C, H, W)`` with C the input's channel count,
    ``out`` another tensor (here a sum of two halves of a conv's output, in no layout the
    analysis follows)."""

    def __init__(self, c=16):
        super().__init__(c)
        self.qkv = nn.Conv2d(c, 2 * c, 1)

    def forward(self, x):
        x = self.mid(self.stem(x))
        B, C, H, W = x.shape
        out = self.qkv(x).reshape(B, 2, -1).sum(1)
        return self.head(self.body(out.reshape(B, C, H, W)))


class ScaleByCount(Base):
    """Attention's ``C ** -0.5``: the pruned count would change the scale."""

    def forward(self, x):
        x = self.mid(self.stem(x))
        return self.head(self.body(x) * x.shape[1] ** -0.5)


class AssertCount(Base):
    def forward(self, x):
        x = self.mid(self.stem(x))
        torch._assert(x.size(1) == 16, "sixteen channels")
        return self.head(self.body(x))


class NewTensorOfCount(Base):
    def forward(self, x):
        x = self.mid(self.stem(x))
        bias = x.new_ones(x.shape[:2]).view(x.shape[0], -1, 1, 1)
        return self.head(self.body(x + bias))


class ConstantView(Base):
    """A reshape to the shape it had, with the channel count a constant."""

    def forward(self, x):
        x = self.mid(self.stem(x))
        return self.head(self.body(x.reshape(x.shape[0], 16, x.shape[2], x.shape[3])))


class ConstantFlatten(Base):
    """A flatten with the feature count a constant (``x.view(-1, 16)`` after a pool)."""

    def __init__(self, c=16):
        super().__init__(c)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        x = self.body(self.mid(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).view(-1, 16))


@pytest.mark.parametrize("cls,layer", [
    (ReshapeByInputCount, "mid.0"),
    (ScaleByCount, "mid.0"),
    (AssertCount, "mid.0"),
    (NewTensorOfCount, "mid.0"),
    (ConstantView, "mid.0"),
    (ConstantFlatten, "body.0"),
])
def test_count_read_keeps_channels(cls, layer):
    torch.manual_seed(0)
    model = randomize(cls().eval())
    x = torch.randn(2, 3, 8, 8)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.5)
    assert pruned.get_submodule(layer).out_channels == 16, report.summary()
    assert pruned.get_submodule("stem.0").out_channels == 8   # the rest still prunes
    reasons = [g["left_alone"] for g in report.left_alone if layer in str(g)]
    assert reasons and any(("read at run time" in r or "constant" in r) for r in reasons), reasons
    assert_exact_by_value(model, pruned, x)


class OwnCounts(Base):
    """Reads the analysis understands: a reshape by its own count, a flatten by -1, the
    legacy squeeze-excitation's ``view(b, c)`` of the pooled tensor with ``b, c`` read off
    its input (joined with it by the product), a view by the whole shape."""

    def __init__(self, c=16):
        super().__init__(c)
        self.fc1 = nn.Linear(c, 4)
        self.fc2 = nn.Linear(4, c)
        self.fc = nn.Linear(c, 5)

    def forward(self, x):
        x = self.mid(self.stem(x))
        B, C, H, W = x.shape
        x = x.reshape(B, C, H * W).reshape(x.shape)
        b, c = x.size(0), x.size(1)
        y = F.adaptive_avg_pool2d(x, 1).view(b, c)
        y = torch.sigmoid(self.fc2(F.relu(self.fc1(y)))).view(b, c, 1, 1)
        x = self.body(x * y)
        return self.fc(F.adaptive_avg_pool2d(x, 1).view(x.size(0), -1))


def test_understood_reads_prune():
    torch.manual_seed(0)
    model = randomize(OwnCounts().eval())
    x = torch.randn(2, 3, 8, 8)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.5)
    assert pruned.get_submodule("mid.0").out_channels == 8, report.summary()
    assert pruned.get_submodule("body.0").out_channels == 8, report.summary()
    assert pruned.fc2.out_features == 8
    assert not any("read at run time" in g["left_alone"] for g in report.left_alone), report.left_alone
    assert_exact_by_value(model, pruned, x)


class ExportOnly(ReshapeByInputCount):
    """As ReshapeByInputCount, with a branch on a size that torch.fx cannot trace: only
    torch.export's graph, whose sizes are constants, is there to analyse."""

    def forward(self, x):
        x = self.mid(self.stem(x))
        B, C, H, W = x.shape
        if H % 2 == 0:
            x = x * 1.0
        out = self.qkv(x).reshape(B, 2, -1).sum(1)
        return self.head(self.body(out.reshape(B, C, H, W)))


@pytest.mark.parametrize("make_plan", [False, True])
def test_export_plan_checked_on_the_code(make_plan):
    torch.manual_seed(0)
    model = randomize(ExportOnly().eval())
    x = torch.randn(2, 3, 8, 8)
    if make_plan:
        plan = fpgm_ext.pruning.make_plan(model, x, rate_dist=0.5)
        assert plan.meta["tracer"] == "export"
        pruned = fpgm_ext.pruning.apply_plan(model, plan)
        reasons = [g["left_alone"] for g in plan.groups if g["left_alone"]]
    else:
        pruned, report = fpgm_ext.prune(model, x, rate_dist=0.5)
        assert report.tracer == "export"
        reasons = [g["left_alone"] for g in report.left_alone]
    assert pruned.get_submodule("mid.0").out_channels == 16
    assert pruned.get_submodule("stem.0").out_channels == 8
    assert any("torch.export" in r and "fails" in r for r in reasons), reasons
    assert_exact_by_value(model, pruned, x)
