"""trace="auto": torch.fx's analysis, and torch.export's too where fx leaves a quarter or
more of the channels alone for ops it does not know; whichever prunes more is kept, and
the report says which and why."""
import os

import pytest
import torch
from torch import nn

import fpgm_ext
from fpgm_ext.pruning import PrunedGraph
from test_prune import assert_exact, randomize

if os.environ.get("FPGM_EXT_BACKEND") == "reference":
    pytest.skip("tracer choice is backend-independent", allow_module_level=True)


class Ghost(nn.Module):
    """GhostNet's module: a primary conv, a cheap depthwise conv on its output, their cat,
    then an indexing that keeps all of it, spelled with an Ellipsis: fx keeps it as an
    indexing the analysis leaves alone; torch.export drops it as a no-op. (Should the fx
    rules learn this spelling, pick another op fx leaves alone and export drops.)"""

    def __init__(self, c_in=8, c=16):
        super().__init__()
        self.out_chs = 2 * c
        self.primary = nn.Sequential(nn.Conv2d(c_in, c, 1), nn.BatchNorm2d(c), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU())

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[..., :]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.g1, self.g2 = Ghost(8, 16), Ghost(32, 24)
        self.head = nn.Linear(48, 10)

    def forward(self, x):
        return self.head(self.g2(self.g1(torch.relu(self.stem(x)))).mean((2, 3)))


def test_auto_keeps_the_analysis_that_prunes_more():
    torch.manual_seed(0)
    model = randomize(Net())
    x = torch.randn(2, 3, 12, 12)
    fx_pruned, fx_report = fpgm_ext.prune(model, x, rate_dist=0.3, trace="fx")
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.3)
    assert report.tracer == "export" and fx_report.tracer == "fx" and fx_report.tracer_note == ""
    assert "trace='auto' kept torch.export's analysis" in report.tracer_note
    assert report.tracer_note in report.summary()
    assert report.params_reduction > fx_report.params_reduction
    assert_exact(model, pruned, report.plan, x)


def test_auto_stays_with_fx_when_it_understands_the_model():
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)))
    _, report = fpgm_ext.prune(model, torch.randn(1, 3, 8, 8), rate_dist=0.3)
    assert report.tracer == "fx" and report.tracer_note == ""


class Slice(Ghost):
    def __init__(self, keep):
        super().__init__()
        self.keep = keep

    def forward(self, x):
        a = self.primary(x)
        return torch.cat([a, self.cheap(a)], 1)[:, :self.keep]


@pytest.mark.parametrize("keep", [32, 100, 31])
def test_fx_channel_slice(keep):
    """GhostNet's x[:, :out_chs] with out_chs the whole width is no slicing at all (the
    model keeps its class); a slice that drops channels is a split (tests/test_prune_split.py):
    the pruned model is a PrunedGraph with the slice's new bound."""
    torch.manual_seed(0)
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 1), Slice(keep), nn.Conv2d(min(keep, 32), 4, 1)))
    x = torch.randn(1, 3, 6, 6)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.3, trace="fx")
    assert pruned.get_submodule("1.primary.0").out_channels < 16   # (a PrunedGraph: no [1])
    assert isinstance(pruned, PrunedGraph) == (keep < 32)
    assert_exact(model, pruned, report.plan, x)
