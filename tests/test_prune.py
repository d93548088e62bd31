"""fpgm_ext.prune / apply_plan on the built-in CIFAR ResNets and small models made to hit
one pattern each: exactness against the model with its pruned channels zeroed, the plan's
JSON round trip, export / jit.trace of the result, the selection against the float64
oracle, options, and bad input. (Torchvision models: test_prune_torchvision.py.)"""
import copy
import os
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fpgm_ext
import oracle
from fpgm_ext.pruning import PadShortcut, Plan, PrunedGraph

REFERENCE_RUN = os.environ.get("FPGM_EXT_BACKEND") == "reference"


# ----------------------------------------------------------------------------- helpers
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm affine and statistics (a fresh BN is the identity), so that a
    channel pruned wrongly shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm) and m.affine:
            m.weight.data = torch.rand(m.num_channels, generator=g) * 0.5 + 0.5
            m.bias.data = torch.randn(m.num_channels, generator=g) * 0.2
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=g) * 0.5 + 0.5
            m.bias.data = torch.randn(n, generator=g) * 0.2
            m.running_mean = torch.randn(n, generator=g) * 0.2
            m.running_var = torch.rand(n, generator=g) * 0.5 + 0.75
    return model.eval()


def zeroed(model: nn.Module, plan: Plan) -> nn.Module:
    """The original model with the pruned channels zeroed instead of removed: conv and
    linear filters and biases, BatchNorm weight and bias (nothing else). Written from the
    plan's entries, independently of apply_plan."""
    z = copy.deepcopy(model)
    mods = dict(z.named_modules())
    with torch.no_grad():
        for name, e in plan.modules.items():
            m = mods[name]
            if isinstance(m, PadShortcut):
                continue
            key, size = ("out", "out_size") if "out_size" in e else ("channels", "size")
            if key in e:
                pruned = torch.ones(e[size], dtype=torch.bool)
                pruned[e[key]] = False
                if m.weight is not None:   # a GroupNorm without affine has none
                    m.weight[pruned] = 0
                if m.bias is not None:
                    m.bias[pruned] = 0
    return z


def run(model, x):
    with torch.no_grad():
        return model.eval()(x)


def assert_exact(model, pruned, plan, x):
    ref = run(zeroed(model, plan), x)
    out = run(pruned, x)
    orig = run(model, x)
    scale = ref.abs().max()
    assert scale > 0
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5 * float(scale))
    # the zeroing did something: the pruned model is not the original
    assert (orig - ref).abs().max() > 1e-3 * scale


def assert_exports(pruned, x):
    pruned.eval()
    want = run(pruned, x)
    ep = torch.export.export(pruned, (x,))
    torch.testing.assert_close(ep.module()(x), want, rtol=1e-5, atol=1e-6)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # torch.jit.trace is deprecated
        traced = torch.jit.trace(pruned, (x,), check_trace=False)
        torch.testing.assert_close(traced(x), want, rtol=1e-5, atol=1e-6)


def out_channels(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


class CountingOps:
    """fpgm_ext's two ops, counting calls (the ``ops`` parameter of prune/apply_plan)."""

    def __init__(self):
        self.calls = {"distance_scores_multi": 0, "gather_channels": 0}

    def distance_scores_multi(self, weights, metric="l2"):
        self.calls["distance_scores_multi"] += 1
        return fpgm_ext.distance_scores_multi(weights, metric)

    def gather_channels(self, tensors, dims, indices):
        self.calls["gather_channels"] += 1
        return fpgm_ext.gather_channels(tensors, dims, indices)


# ---------------------------------------------------------------------- small models
def cbr(i, o, k=3, s=1, groups=1):
    return nn.Sequential(nn.Conv2d(i, o, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(o), nn.ReLU())


class Chain(nn.Module):
    """VGG-like: conv (with bias) -> BN -> ReLU chains, flatten by view into Linear layers."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 24, 3, padding=1)
        self.b2 = nn.BatchNorm2d(24)
        self.c3 = nn.Conv2d(24, 20, 3, padding=1, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(20 * 4, 30)
        self.fc2 = nn.Linear(30, 5)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        x = self.pool(F.relu(self.c3(x)))
        x = x.view(x.size(0), -1)
        return self.fc2(F.relu(self.fc1(x)))


class Mixed(nn.Module):
    """Concatenation, a projection shortcut, a squeeze-excitation product, a depthwise conv
    with a channel multiplier, a grouped conv, hardswish, spatial mean into a Linear."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.a = cbr(16, 12)
        self.b = cbr(16, 20)
        self.proj = nn.Sequential(nn.Conv2d(32, 24, 1, bias=False), nn.BatchNorm2d(24))
        self.body = nn.Sequential(nn.Conv2d(32, 24, 3, 1, 1, bias=False), nn.BatchNorm2d(24))
        self.se1 = nn.Conv2d(24, 6, 1)
        self.se2 = nn.Conv2d(6, 24, 1)
        self.dw = cbr(24, 48, groups=24)            # depthwise, multiplier 2
        self.pw = cbr(48, 32, k=1)
        self.grouped = cbr(32, 32, groups=8)       # grouped
        self.head = nn.Linear(32, 7)

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat([self.a(x), self.b(x)], 1)
        x = F.relu(self.body(x) + self.proj(x))
        s = torch.sigmoid(self.se2(F.relu(self.se1(F.adaptive_avg_pool2d(x, 1)))))
        x = F.hardswish(x * s)
        x = self.grouped(self.pw(self.dw(x)))
        return self.head(x.mean((2, 3)))


class Unsupported(nn.Module):
    """Patterns the analysis must leave alone: a softmax over channels, a sigmoid between
    producer and consumer (a zeroed channel would read 0.5); and a channel slice, which it
    prunes (each part of c1 with its own group, the slice's bound rewritten)."""

    def __init__(self):
        super().__init__()
        self.c1 = cbr(3, 16)
        self.c2 = cbr(8, 16)
        self.c3 = cbr(16, 16)
        self.c4 = nn.Conv2d(16, 16, 3, padding=1)
        self.c5 = cbr(16, 16)
        self.c6 = cbr(16, 16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        x = self.c2(self.c1(x)[:, :8])
        x = self.c3(torch.softmax(x, dim=1))
        x = self.c5(torch.sigmoid(self.c4(x)))
        x = self.c6(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ShapeBranch(nn.Module):
    """Python control flow on a shape: torch.fx cannot trace it, torch.export can."""

    def __init__(self):
        super().__init__()
        self.c1 = cbr(3, 16)
        self.c2 = cbr(16, 16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.c1(x)
        if x.shape[-1] > 8:
            x = F.max_pool2d(x, 2)
        x = self.c2(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def small_models():
    return {"chain": Chain, "mixed": Mixed, "unsupported": Unsupported}


X16 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
X32 = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


# -------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("depth", [20, 56, 110])
def test_cifar_resnet_exact(depth):
    if REFERENCE_RUN and depth != 20:
        pytest.skip("pruning logic is backend-independent; the fallback run keeps to ResNet-20")
    torch.manual_seed(depth)
    model = randomize(fpgm_ext.models.cifar_resnet(depth))
    x = X32[:1]
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.3, rate_norm=0.9, measure=depth == 20)
    assert_exact(model, pruned, report.plan, x)
    # every group but the classifier's output is pruned, residual streams included
    left = report.left_alone
    assert [g["producers"] for g in left] == [["fc"]]
    assert all(g["kept"] is not None for g in report.groups if g not in left)
    assert pruned.layer3[0].conv2.out_channels < 64 and pruned.conv1.out_channels < 16
    assert report.tracer == "fx" and report.unsupported == []
    if depth == 20:
        assert report.flops_after < 0.6 * report.flops_before
        assert report.params_after < report.params_before
        convs = [s for s in report.layers if s.type == "Conv2d"]
        assert len(convs) == 19 and all(s.flops_after < s.flops_before for s in convs)
        assert "| layer3.2.conv2 |" in report.to_markdown()
        assert_exports(pruned, x)


@pytest.mark.parametrize("rate_dist, round_to", [(0.4, 1), (0.6, 1), (0.5, 8)])
def test_cifar_resnet_shortcut_maps_kept_channels(rate_dist, round_to):
    """The stream after a stage change is its own group. A channel of it that the shortcut
    feeds may go only with its source channel (else a live value would be cut off); the
    zero-padded channels are free. So every kept input channel of the shortcut still
    reaches its (kept) output channel, renumbered."""
    model = randomize(fpgm_ext.models.cifar_resnet(20))
    pruned, report = fpgm_ext.prune(model, X32[:1], rate_dist=rate_dist, round_to=round_to, measure=False)
    for stage in (pruned.layer2, pruned.layer3):
        sc = stage[0].shortcut
        e = report.plan.modules[f"layer{2 if stage is pruned.layer2 else 3}.0.shortcut"]
        assert sc.out_channels == stage[0].conv2.out_channels < e["out_size"]
        assert sc.in_channels < e["in_size"]
        assert sorted(sc.src.tolist()) == list(range(sc.in_channels))       # all inputs mapped
        kept_in, kept_out = e["in"], e["out"]
        assert set(kept_in) <= set(kept_out)            # source i lands on output i
        assert [kept_out[d] for d in sc.dst.tolist()] == [kept_in[s] for s in sc.src.tolist()]
        assert sc.out_channels % round_to == 0
    streams = [g for g in report.groups if g["residual"]]
    assert len(streams) == 3 and all(len(g["producers"]) == 4 for g in streams)
    assert_exact(model, pruned, report.plan, X32[:1])


@pytest.mark.parametrize("name", ["chain", "mixed"])
def test_small_models_exact(name):
    torch.manual_seed(0)
    model = randomize(small_models()[name]())
    pruned, report = fpgm_ext.prune(model, X16, rate_dist=0.4, rate_norm=0.9, measure=False)
    assert_exact(model, pruned, report.plan, X16)
    assert report.unsupported == []
    assert_exports(pruned, X16)


def test_mixed_model_groups():
    model = randomize(Mixed())
    pruned, report = fpgm_ext.prune(model, X16, rate_dist=0.5, measure=False)
    by_producer = {frozenset(g["producers"]): g for g in report.groups}
    # cat: a and b stay separate groups; the projection shortcut and the body join the SE
    # scale (the product ties the channels) and the depthwise conv, in whole conv groups
    assert frozenset({"a.0"}) in by_producer and frozenset({"b.0"}) in by_producer
    joined = by_producer[frozenset({"proj.0", "body.0", "se2", "dw.0"})]
    assert joined["residual"] and joined["units"] == 24 and joined["channels"] == [24, 24, 24, 48]
    grouped = by_producer[frozenset({"pw.0", "grouped.0"})]       # groups kept whole
    assert grouped["units"] == 8 and not grouped["residual"]
    assert pruned.dw[0].groups == pruned.dw[0].in_channels == pruned.dw[0].out_channels // 2 == 12
    assert pruned.grouped[0].groups == 4 and pruned.grouped[0].in_channels == 16
    assert pruned.pw[0].out_channels == 16


def test_unsupported_patterns_left_alone_and_named():
    model = randomize(Unsupported())
    pruned, report = fpgm_ext.prune(model, X16, rate_dist=0.4, measure=False)
    assert_exact(model, pruned, report.plan, X16)
    reasons = {g["producers"][0]: g["left_alone"] or "" for g in report.groups}
    assert reasons["c1.0"] == "" and isinstance(pruned, PrunedGraph)   # the slice
    assert "softmax" in reasons["c2.0"]
    assert "sigmoid" in reasons["c4"] and "does not map 0 to 0" in reasons["c4"]
    assert reasons["c3.0"] == "" and reasons["c5.0"] == "" and reasons["c6.0"] == ""
    assert any("softmax" in u for u in report.unsupported)
    sizes = out_channels(pruned)
    assert sizes["c1.0"] < 16 and sizes["c2.0"] == 16 and sizes["c4"] == 16
    assert sizes["c3.0"] < 16 and sizes["c5.0"] < 16
    assert "left alone" in str(report)


def test_export_when_fx_fails():
    model = randomize(ShapeBranch())
    with pytest.raises(RuntimeError, match="pass example_inputs"):
        fpgm_ext.prune(model, None)
    pruned, report = fpgm_ext.prune(model, X16, rate_dist=0.4)
    assert report.tracer == "export"
    assert pruned.c1[0].out_channels < 16 and pruned.c2[0].out_channels < 16
    assert_exact(model, pruned, report.plan, X16)


def test_export_and_fx_agree():
    model = randomize(Mixed())
    _, a = fpgm_ext.prune(model, X16, rate_dist=0.4, measure=False, trace="fx")
    _, b = fpgm_ext.prune(model, X16, rate_dist=0.4, measure=False, trace="export")
    assert (a.tracer, b.tracer) == ("fx", "export")
    assert a.plan.modules == b.plan.modules


# ------------------------------------------------------------------- plan round trip
def test_plan_round_trip(tmp_path):
    torch.manual_seed(3)
    model = randomize(fpgm_ext.models.cifar_resnet(56))
    pruned, report = fpgm_ext.prune(model, X32[:1], rate_dist=0.4, measure=False)
    path = tmp_path / "plan.json"
    report.plan.save(path)
    fresh = fpgm_ext.models.cifar_resnet(56)
    rebuilt = fpgm_ext.apply_plan(fresh, str(path))
    assert out_channels(fresh)["layer1.0.conv1"] == 16          # not in place
    rebuilt.load_state_dict(pruned.state_dict())                # strict: every shape fits
    torch.testing.assert_close(run(rebuilt, X32), run(pruned, X32))
    # the plan is plain JSON and loads back equal
    assert Plan.load(path).to_dict() == report.plan.to_dict()


def test_apply_plan_rejects_a_plan_for_another_model():
    _, report = fpgm_ext.prune(fpgm_ext.models.cifar_resnet(20), None, rate_dist=0.4)
    with pytest.raises(ValueError, match="does not have|does not fit"):
        fpgm_ext.apply_plan(fpgm_ext.models.cifar_resnet(32, num_classes=100), report.plan)
    with pytest.raises(ValueError, match="does not fit"):
        fpgm_ext.apply_plan(fpgm_ext.models.cifar_resnet(20, num_classes=100), report.plan)
    with pytest.raises(ValueError, match="not a pruning plan"):
        fpgm_ext.apply_plan(fpgm_ext.models.cifar_resnet(20), {"modules": {}})


def test_inplace():
    model = fpgm_ext.models.cifar_resnet(20)
    before = copy.deepcopy(model.state_dict())
    pruned, _ = fpgm_ext.prune(model, X32[:1], rate_dist=0.4, measure=False)
    assert pruned is not model
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training                                        # modes restored too
    same, _ = fpgm_ext.prune(model, X32[:1], rate_dist=0.4, inplace=True, measure=False)
    assert same is model and model.conv1.out_channels < 16


def test_pruned_copy_shares_nothing_with_the_original():
    """The copy is built from the original's tensors without copying those the surgery
    replaces: afterwards the two models share no storage, and training the pruned one
    leaves the original as it was."""
    model = randomize(fpgm_ext.models.cifar_resnet(20))
    model.fc.extra = model.fc.weight          # a tensor held twice is copied as usual
    before = copy.deepcopy(model.state_dict())
    pruned, _ = fpgm_ext.prune(model, X32[:1], rate_dist=0.4, measure=False)
    ptrs = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    for t in list(pruned.parameters()) + list(pruned.buffers()):
        assert t.untyped_storage().data_ptr() not in ptrs
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(1.0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------ selection
def test_single_member_groups_are_select():
    """A group of one conv is pruned exactly as fpgm_ext.select and the official code."""
    torch.manual_seed(0)
    model = Chain()
    for rate_dist, rate_norm in [(0.4, 1.0), (0.3, 0.9), (0.5, 0.7)]:
        _, report = fpgm_ext.prune(model, X16, rate_dist=rate_dist, rate_norm=rate_norm, measure=False)
        for g in report.groups:
            if g["kept"] is None:
                continue
            (name,) = g["producers"]
            w = dict(model.named_modules())[name].weight
            sel = fpgm_ext.select(w, rate_dist, rate_norm)
            assert g["kept"] == sel.keep.tolist(), name
            assert sorted(set(range(w.shape[0])) - set(g["kept"])) == \
                oracle.official_select(w, rate_dist, rate_norm).tolist()


def test_group_score_is_the_sum_over_members():
    """A residual stream: each producer's FPGM score over its own filters (float64 scipy
    oracle), summed; the smallest int(N * rate) are pruned."""
    torch.manual_seed(1)
    model = fpgm_ext.models.cifar_resnet(20)
    _, report = fpgm_ext.prune(model, X32[:1], rate_dist=0.4, measure=False)
    stream = [g for g in report.groups if "conv1" in g["producers"]][0]
    mods = dict(model.named_modules())
    total = sum(oracle.scores(mods[p].weight, "l2") for p in stream["producers"])
    pruned = sorted(torch.argsort(torch.from_numpy(total), stable=True)[:int(16 * 0.4)].tolist())
    assert sorted(set(range(16)) - set(stream["kept"])) == pruned


def test_one_call_for_scores_and_one_for_surgery():
    ops = CountingOps()
    model = randomize(Mixed())
    pruned, report = fpgm_ext.prune(model, X16, rate_dist=0.4, rate_norm=0.9, ops=ops)
    assert ops.calls == {"distance_scores_multi": 1, "gather_channels": 1}
    fpgm_ext.apply_plan(Mixed(), report.plan, ops=ops)
    assert ops.calls["gather_channels"] == 2


def test_reference_ops_give_the_same_plan():
    import fpgm_ext.reference as reference

    model = fpgm_ext.models.cifar_resnet(20)
    _, a = fpgm_ext.prune(model, None, rate_dist=0.4, rate_norm=0.9)
    _, b = fpgm_ext.prune(model, None, rate_dist=0.4, rate_norm=0.9, ops=reference)
    assert a.plan.modules == b.plan.modules


# -------------------------------------------------------------------------- options
def test_prune_residual_false_keeps_streams():
    model = fpgm_ext.models.cifar_resnet(20)
    pruned, report = fpgm_ext.prune(model, None, rate_dist=0.4, prune_residual=False)
    assert pruned.conv1.out_channels == 16
    assert [pruned.layer3[i].conv2.out_channels for i in range(3)] == [64] * 3
    assert pruned.layer3[0].conv1.out_channels == 64 - int(64 * 0.4)
    assert sum(1 for g in report.left_alone if "prune_residual=False" in g["left_alone"]) == 3


def test_ignore_leaves_a_layer_whole():
    model = randomize(fpgm_ext.models.cifar_resnet(20))
    pruned, report = fpgm_ext.prune(model, X32[:1], rate_dist=0.4, ignore=["layer2.1.conv1", "layer3"],
                                    measure=False)
    assert (pruned.layer2[1].conv1.in_channels, pruned.layer2[1].conv1.out_channels) == (32, 32)
    assert all(m.out_channels == m.in_channels == 64 for n, m in pruned.layer3.named_modules()
               if isinstance(m, nn.Conv2d) and n != "0.conv1")
    assert pruned.layer2[0].conv1.out_channels < 32
    assert any("layer2.1.conv1 is in ignore" in g["left_alone"] for g in report.left_alone)
    assert_exact(model, pruned, report.plan, X32[:1])


def test_min_channels_and_round_to():
    model = fpgm_ext.models.cifar_resnet(20)
    pruned, _ = fpgm_ext.prune(model, None, rate_dist=0.6, min_channels=12)
    assert min(out_channels(pruned).values()) == 12
    pruned, _ = fpgm_ext.prune(model, None, rate_dist=0.4, round_to=8)
    assert all(c % 8 == 0 for c in out_channels(pruned).values())
    assert pruned.layer3[0].conv1.out_channels == 40     # 64 - 25 = 39 kept, rounded up


def test_nothing_to_prune():
    model = fpgm_ext.models.cifar_resnet(20)
    pruned, report = fpgm_ext.prune(model, X32[:1], rate_dist=0.0)
    assert report.plan.modules == {} and report.flops_after == report.flops_before


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(rate_dist=1.0), "rate_dist must be in"),
    (dict(rate_dist=-0.1), "rate_dist must be in"),
    (dict(rate_dist=float("nan")), "rate_dist must be a number"),
    (dict(rate_norm=0.0), "rate_norm must be in"),
    (dict(rate_norm=1.5), "rate_norm must be in"),
    (dict(metric="l3"), "unknown metric"),
    (dict(ignore=["layer1.0.conv9"]), "not a submodule of CifarResNet; did you mean .*'layer1.0.conv1'"),
    (dict(ignore="nothing"), "'nothing', which is not a submodule"),
    (dict(min_channels=0), "min_channels must be an integer >= 1"),
    (dict(round_to=2.5), "round_to must be an integer >= 1"),
    (dict(trace="jit"), "trace must be"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fpgm_ext.prune(fpgm_ext.models.cifar_resnet(20), X32[:1], **kwargs)


def test_bad_model_and_inputs():
    with pytest.raises(TypeError, match="must be a torch.nn.Module"):
        fpgm_ext.prune(lambda x: x, X16)
    with pytest.raises(TypeError, match="example_inputs must be a tensor or a tuple"):
        fpgm_ext.prune(Chain(), {"x": X16})
    with pytest.raises(RuntimeError, match="torch.fx could not trace ShapeBranch.*pass example_inputs"):
        fpgm_ext.prune(ShapeBranch(), None)
    with pytest.raises(ValueError, match="trace='export' needs example_inputs"):
        fpgm_ext.prune(Chain(), None, trace="export")
    bad = Chain()
    with torch.no_grad():
        bad.c2.weight[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="c2 contains NaN or Inf"):
        fpgm_ext.prune(bad, X16)
    with torch.no_grad():
        bad.c2.weight[3, 0, 0, 0] = 1.0
        bad.c1.weight[0, 1, 2, 0] = -float("inf")
    with pytest.raises(ValueError, match="c1 contains NaN or Inf"):
        fpgm_ext.prune(bad, X16)


def test_models_registry():
    assert isinstance(fpgm_ext.models.get("resnet32"), fpgm_ext.models.CifarResNet)
    with pytest.raises(ValueError, match="6n \\+ 2"):
        fpgm_ext.models.cifar_resnet(21)
    n = sum(p.numel() for p in fpgm_ext.models.cifar_resnet(56).parameters())
    assert n == 853018        # the paper's ResNet-56 (0.85 M parameters)
