"""Code on a branch of ``self.training`` (graph/modes.py; checks.py under torch.export):
fx traces the model's current mode, so the other mode is traced too and channels that reach code only it runs (a
statistic over the channels, a scale by their count, a split of constant sizes) are left
alone, by name; ops that keep channels (a scale by a number, as the test_prune_split's
ModeDependent has) do not. Judged by value in both modes."""
import pytest
import torch
from torch import nn

import fpgm_ext

from masking import masked_original


class TrainingOnly(nn.Module):
    def __init__(self, op, eval_split=False):
        super().__init__()
        self.op, self.eval_split = op, eval_split
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        y = self.conv1(x)
        if self.training:
            if self.op == "centre":
                y = y - y.mean(1, keepdim=True)
            elif self.op == "count":
                y = y * (1.0 / y.size(1))
            elif self.op == "split":
                a, b = y.split([4, 12], 1)
                y = torch.cat([a, b], 1)
            else:
                y = torch.relu(y) * 0.5
        if self.eval_split:
            p, q = y.split([8, 8], 1)
            y = torch.cat([self.conv2(p), q], 1)
        return self.conv3(y)


def errors(model, pruned, x):
    masked = masked_original(model, pruned)
    out = []
    for training in (False, True):
        masked.train(training), pruned.train(training)
        with torch.no_grad():
            ref, got = masked(x), pruned(x)
        out.append(float((got - ref).abs().max() / ref.abs().max()))
    return out


@pytest.mark.parametrize("op", ["centre", "count", "split"])
@pytest.mark.parametrize("eval_split", [False, True])
@pytest.mark.parametrize("trace", ["fx", "export"])
def test_channels_reaching_training_only_code_stay(op, eval_split, trace):
    """fx: the other mode's trace; export (eval mode only): the plan's check on the model's
    code, which runs it in both modes (checks.py)."""
    torch.manual_seed(0)
    model, x = TrainingOnly(op, eval_split).eval(), torch.randn(2, 3, 8, 8)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.3, trace=trace)
    assert pruned.conv1.out_channels == 16
    if trace == "fx":
        assert any("runs in training mode only" in (g["left_alone"] or "") for g in report.groups)
    assert max(errors(model, pruned, x)) < 1e-5


def test_channel_keeping_training_code_is_still_pruned():
    torch.manual_seed(0)
    model, x = TrainingOnly("keep").eval(), torch.randn(2, 3, 8, 8)
    pruned, _ = fpgm_ext.prune(model, x, rate_dist=0.3, trace="fx")
    assert pruned.conv1.out_channels < 16
    assert max(errors(model, pruned, x)) < 1e-5
