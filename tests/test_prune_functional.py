"""Layers that call their operation functionally on their own tensors (subclasses of the
torch.nn layers, as timm's BatchNormAct2d: F.batch_norm on self.running_mean ...
self.bias): torch.fx traces through them, and the analysis gives them the rule of the
layer they are. Exact, or left alone with a reason when the tensors are not the module's
own as they are."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpgm_ext
from test_prune import assert_exact, randomize

X = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


class BatchNormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d, in short: F.batch_norm on the module's tensors, then an act."""

    def forward(self, x):
        x = F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                         False, 0.0, self.eps)
        return F.silu(x)


class FunctionalConv(nn.Conv2d):
    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FunctionalLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class ScaledBatchNorm(nn.BatchNorm2d):
    """Not the module's tensors as they are: a different layer, left alone."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight * 2, self.bias,
                            False, 0.0, self.eps)


class Net(nn.Module):
    def __init__(self, bn=BatchNormAct):
        super().__init__()
        self.c1, self.b1 = FunctionalConv(3, 16, 3, padding=1), bn(16)
        self.c2, self.b2 = nn.Conv2d(16, 24, 3, padding=1, bias=False), bn(24)
        self.dw, self.b3 = FunctionalConv(24, 24, 3, padding=1, groups=24, bias=False), bn(24)
        self.fc1, self.fc2 = FunctionalLinear(24, 32), FunctionalLinear(32, 10)

    def forward(self, x):
        x = self.b1(self.c1(x))
        x = self.b3(self.dw(self.b2(self.c2(x))))
        return self.fc2(F.relu(self.fc1(x.mean((2, 3)))))


def test_functional_layers_are_pruned_exactly():
    model = randomize(Net())
    pruned, report = fpgm_ext.prune(model, X, rate_dist=0.4)
    assert report.tracer == "fx" and not report.unsupported
    assert pruned.c1.out_channels < 16 and pruned.b1.num_features == pruned.c1.out_channels
    assert pruned.c2.out_channels < 24 and pruned.dw.groups == pruned.c2.out_channels
    assert pruned.fc1.out_features < 32
    assert_exact(model, pruned, report.plan, X)


def test_same_plan_as_the_plain_layers():
    """The functional spellings give the very plan of nn.Conv2d / nn.BatchNorm2d / nn.Linear."""
    model = randomize(Net())
    plain = randomize(Net(bn=nn.BatchNorm2d))
    plain.load_state_dict(model.state_dict())
    for name in ("c1", "dw"):
        conv = getattr(model, name)
        setattr(plain, name, nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1,
                                       groups=conv.groups, bias=conv.bias is not None))
    for name in ("fc1", "fc2"):
        setattr(plain, name, nn.Linear(getattr(model, name).in_features, getattr(model, name).out_features))
    plain.load_state_dict(model.state_dict())
    a = fpgm_ext.prune(model, X, rate_dist=0.4)[1].plan.groups
    b = fpgm_ext.prune(plain, X, rate_dist=0.4)[1].plan.groups
    assert [g["kept"] for g in a] == [g["kept"] for g in b]


def test_transformed_tensors_are_left_alone_by_name():
    model = randomize(Net(bn=ScaledBatchNorm))
    pruned, report = fpgm_ext.prune(model, X, rate_dist=0.4, trace="fx")   # auto may try export
    assert any("batch_norm" in u for u in report.unsupported)
    assert pruned.c1.out_channels == 16 and report.left_alone
    assert pruned(X).shape == (2, 10)
