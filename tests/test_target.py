"""prune(target_flops=..., target_params=...): the uniform rate_dist whose reduction is
nearest the target (within 1 % where reachable), measured as the report measures, with
the scores computed once for every rate tried."""
import os

import pytest
import torch
from torch import nn

import fpgm_ext
from fpgm_ext.models import cifar_resnet
from fpgm_ext.pruning import flops

torchvision = pytest.importorskip("torchvision")

if os.environ.get("FPGM_EXT_BACKEND") == "reference":
    pytest.skip("measurement and search are backend-independent; they run once, on the default "
                "backend", allow_module_level=True)

X64 = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
@pytest.mark.parametrize("goal", [0.3, 0.5])
def test_target_flops_within_one_percent(name, goal):
    model = getattr(torchvision.models, name)(num_classes=10).eval()
    pruned, report = fpgm_ext.prune(model, X64, target_flops=goal)
    t = report.target
    assert t.kind == "flops" and t.met and abs(t.achieved - goal) <= 0.01
    assert report.flops_reduction == pytest.approx(t.achieved, abs=1e-12)
    real = flops.measure(pruned, (X64,)).flops          # what the pruned model really costs
    assert report.flops_after == real
    assert report.plan.meta["rate_dist"] == t.rate_dist
    assert pruned(X64).shape == (1, 10)


def test_target_params_and_the_same_plan_as_its_rate():
    torch.manual_seed(0)
    model = cifar_resnet(32).eval()
    x = torch.randn(2, 3, 32, 32)
    pruned, report = fpgm_ext.prune(model, x, target_params=0.4)
    t = report.target
    assert t.kind == "params" and t.met and abs(t.achieved - 0.4) <= 0.01
    assert report.params_after == _params(pruned)
    assert report.params_reduction == pytest.approx(t.achieved, abs=1e-12)
    _, direct = fpgm_ext.prune(model, x, rate_dist=t.rate_dist)   # scores computed afresh
    assert direct.plan.groups == report.plan.groups


def test_unreachable_target_gives_the_closest():
    model = cifar_resnet(20).eval()
    pruned, report = fpgm_ext.prune(model, torch.randn(1, 3, 32, 32), target_flops=0.9,
                                    ignore=["layer3", "conv1", "bn1"], prune_residual=False)
    assert not report.target.met and report.target.achieved < 0.85
    assert "not reachable" in str(report)
    assert report.flops_reduction == pytest.approx(report.target.achieved, abs=1e-12)


class Gram(nn.Module):
    """FLOPs outside conv modules (a product of activations): each rate tried is measured
    on a pruned copy."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 8, 3, padding=1)

    def forward(self, x):
        y = self.conv2(self.conv1(x).relu()).flatten(2)
        return (y @ y.transpose(1, 2)).mean()


def test_target_flops_measured_for_real_when_not_derivable(monkeypatch):
    model = Gram().eval()
    x = torch.randn(1, 3, 16, 16)
    real_measure, calls = flops.measure, []
    monkeypatch.setattr(flops, "measure", lambda *a: calls.append(1) or real_measure(*a))
    pruned, report = fpgm_ext.prune(model, x, target_flops=0.3)
    monkeypatch.undo()
    assert len(calls) > 3                                 # before, each rate tried, after
    assert abs(report.target.achieved - 0.3) <= 0.05    # 32 channels: steps of about 3 %
    assert report.flops_after == flops.measure(pruned, (x,)).flops


@pytest.mark.parametrize("kw, match", [
    ({"target_flops": 0.5, "target_params": 0.5}, "not both"),
    ({"target_flops": 1.0}, r"in \(0, 1\)"),
    ({"target_params": 0.0}, r"in \(0, 1\)"),
    ({"target_params": True}, r"in \(0, 1\)"),
    ({"target_flops": 0.5, "measure": False}, "needs example_inputs"),
])
def test_bad_targets(kw, match):
    with pytest.raises(ValueError, match=match):
        fpgm_ext.prune(cifar_resnet(20), torch.randn(1, 3, 32, 32), **kw)
