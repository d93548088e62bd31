"""Channel splits in the model's own code (split, chunk, narrow, channel slices: CSP
stages, Res2Net, MixNet's mixed convs): each piece is pruned with its own group, and the
pruned model, whose code still holds the old sizes, comes back as a torch.fx.GraphModule
of that code with the new ones (the plan's ``graph`` entries, which apply_plan replays on
a fresh instance). Exact by the plan and, independently, by value."""
import pytest
import torch
from torch import nn

import fpgm_ext
from fpgm_ext.pruning import PrunedGraph, apply_plan
from fpgm_ext.pruning.plan import Plan
from masking import assert_exact_by_value
from test_prune import assert_exact, randomize


def cbr(c_in, c_out, k=1, groups=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups), nn.BatchNorm2d(c_out),
                         nn.ReLU())


class CrossStage(nn.Module):
    """timm's CSP stage: expand, split in halves by an attribute, blocks with residuals on
    one half, concatenate, transition."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 8, 3)
        self.expand_chs = 24
        self.conv_exp = cbr(8, 24)
        self.blocks = nn.ModuleList([cbr(12, 12, 3) for _ in range(2)])
        self.transition = cbr(24, 16)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        x = self.conv_exp(self.stem(x))
        xs, xb = x.split(self.expand_chs // 2, dim=1)
        for b in self.blocks:
            xb = xb + b(xb)
        return self.head(self.transition(torch.cat([xs, xb], dim=1)))


class Res2(nn.Module):
    """Res2Net's block: torch.split into scales, each fed with the previous one's output,
    the last scale passed through, concatenated."""

    def __init__(self, width=6, scales=4):
        super().__init__()
        self.width, self.scales = width, scales
        self.conv1 = cbr(3, width * scales)
        self.convs = nn.ModuleList([cbr(width, width, 3) for _ in range(scales - 1)])
        self.conv3 = nn.Conv2d(width * scales, 8, 1)

    def forward(self, x):
        spx = torch.split(self.conv1(x), self.width, 1)
        out, sp = [], None
        for i, conv in enumerate(self.convs):
            sp = spx[i] if i == 0 else sp + spx[i]
            sp = conv(sp)
            out.append(sp)
        out.append(spx[-1])
        return self.conv3(torch.cat(out, 1))


class Mixed(nn.Module):
    """MixNet's mixed depthwise conv (chunk into kernel sizes), then a slice and a narrow."""

    def __init__(self):
        super().__init__()
        self.pw = cbr(3, 18)
        self.dws = nn.ModuleList([cbr(6, 6, k, groups=6) for k in (3, 5, 7)])
        self.a, self.b = nn.Conv2d(12, 4, 1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = self.pw(x)
        pieces = y.chunk(3, 1)
        y = torch.cat([dw(pieces[i]) for i, dw in enumerate(self.dws)], 1)
        return self.a(y[:, :-6]) + self.b(y.narrow(1, 12, 6))   # (a negative bound, too)


MODELS = {"csp": CrossStage, "res2net": Res2, "mixed": Mixed}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_split_pieces_pruned_exactly(name, tmp_path):
    torch.manual_seed(0)
    model = randomize(MODELS[name]())
    x = torch.randn(2, 3, 10, 10)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.4)
    assert isinstance(pruned, PrunedGraph) and report.plan.graph
    assert not report.unsupported
    assert 1 - report.params_after / report.params_before > 0.25
    assert_exact(model, pruned, report.plan, x)
    assert_exact_by_value(model, pruned, x)
    # The plan alone rebuilds it from a fresh instance (its graph entries replayed).
    report.plan.save(tmp_path / "plan.json")
    fresh = apply_plan(randomize(MODELS[name]()), Plan.load(tmp_path / "plan.json"))
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), pruned.eval()(x))


def test_export_leaves_splits_alone_by_name():
    """torch.export's graph cannot be handed back as the model: splits stay whole there."""
    model = randomize(CrossStage())
    pruned, report = fpgm_ext.prune(model, torch.randn(1, 3, 8, 8), rate_dist=0.4, trace="export")
    assert not isinstance(pruned, PrunedGraph) and not report.plan.graph
    assert pruned.conv_exp[0].out_channels == 24
    assert any("split" in u for u in report.unsupported)


def test_sizes_computed_at_run_time_are_left_alone():
    class Dynamic(CrossStage):
        def forward(self, x):
            x = self.conv_exp(self.stem(x))
            xs, xb = x.split(x.shape[1] // 2, dim=1)   # the pruned width would halve unevenly
            return self.head(self.transition(torch.cat([xs, self.blocks[0](xb)], dim=1)))

    model = randomize(Dynamic())
    pruned, report = fpgm_ext.prune(model, torch.randn(1, 3, 8, 8), rate_dist=0.4, trace="fx")
    assert pruned.conv_exp[0].out_channels == 24
    assert any("split" in g["left_alone"] for g in report.left_alone)


def test_a_plan_whose_split_does_not_fit_is_refused():
    model = randomize(CrossStage())
    _, report = fpgm_ext.prune(model, torch.randn(1, 3, 8, 8), rate_dist=0.4)
    plan = Plan.from_dict(report.plan.to_dict())
    (node,) = plan.graph
    plan.graph[node]["was_sizes"] = [10, 14]
    with pytest.raises(ValueError, match=f"channel split at node '{node}'"):
        apply_plan(randomize(CrossStage()), plan)


class ModeDependent(CrossStage):
    """A forward that branches on self.training, as timm's BatchNormAct and DropPath do:
    fx bakes the branch into a trace, so the pruned model needs one trace per mode."""

    def forward(self, x):
        x = self.conv_exp(self.stem(x))
        if self.training:
            x = x * 0.5
        xs, xb = x.split(self.expand_chs // 2, dim=1)
        for b in self.blocks:
            xb = xb + b(xb)
        return self.head(self.transition(torch.cat([xs, xb], dim=1)))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_train_and_eval_branches_survive(mode):
    """Pruned in either mode, the pruned model follows .train() / .eval() as the original
    does (compared with the original masked by value, in both modes, BatchNorm statistics
    included after a training step)."""
    torch.manual_seed(0)
    model = randomize(ModeDependent()).train(mode == "train")
    x = torch.randn(4, 3, 8, 8)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.4)
    assert isinstance(pruned, PrunedGraph)
    from masking import masked_original
    ref = masked_original(model, pruned)
    for training in (False, True, False):
        ref.train(training)
        pruned.train(training)
        with torch.no_grad():
            torch.testing.assert_close(pruned(x), ref(x), rtol=1e-4, atol=1e-5)
    # the step in train mode updated the same running statistics in both
    torch.testing.assert_close(pruned.conv_exp[1].running_mean,
                               ref.conv_exp[1].running_mean[report.plan.modules["conv_exp.1"]["channels"]])
