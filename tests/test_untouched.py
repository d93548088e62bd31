"""prune() never changes the model it is given (unless inplace=True): what a forward
writes on its modules while traced (fx or torch.export, whose FakeTensors must not stay
on the caller's model) or while measured is put back; its state_dict is unchanged."""
import pytest
import torch
from torch import nn

import fpgm_ext

from masking import assert_exact_by_value


class CachingHead(nn.Module):
    """Caches a tensor computed from its input's shape on its first call, as detection
    heads cache their anchors (a branch on the shape: torch.fx cannot trace it)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 4, 1)
        self.anchors = torch.empty(0)
        self.shape = None

    def forward(self, x):
        y = self.conv(x)
        if self.shape != y.shape:
            self.anchors = torch.arange(y.shape[-1], dtype=y.dtype)
            self.shape = y.shape
        return y + self.anchors


class Counting(nn.Module):
    """Counts its calls on itself (a Python side effect fx runs while tracing)."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


class Net(nn.Module):
    def __init__(self, head):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)
        self.count = Counting()
        self.head = head

    def forward(self, x):
        return self.head(self.count(torch.relu(self.b(torch.relu(self.a(x))))))


def snapshot(model):
    return {name: dict(vars(m)) for name, m in model.named_modules()}, \
        {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(model, before):
    attrs, state = before
    for name, m in model.named_modules():
        assert vars(m).keys() == attrs[name].keys(), name
        for key, value in vars(m).items():
            assert value is attrs[name][key], (name, key)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("head, tracer", [(CachingHead, "export"), (lambda: nn.Conv2d(8, 4, 1), "fx")])
def test_prune_leaves_the_callers_model_as_it_was(head, tracer):
    torch.manual_seed(0)
    model, x = Net(head()), torch.randn(1, 3, 16, 16)
    before = snapshot(model)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.4)
    assert report.tracer == tracer
    assert_same(model, before)
    assert pruned.b.out_channels < 8
    assert_exact_by_value(model, pruned, x)


def test_a_never_run_caching_model_prunes_with_every_tracer_option():
    for trace in ("auto", "export"):
        torch.manual_seed(1)
        model, x = Net(CachingHead()), torch.randn(1, 3, 16, 16)
        before = snapshot(model)
        plan = fpgm_ext.pruning.make_plan(model, x, rate_dist=0.4, trace=trace)
        assert_same(model, before)
        assert any(g["kept"] is not None for g in plan.groups)
