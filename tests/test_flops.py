"""The FLOPs in prune's report are FlopCounterMode's counts of the model and of the pruned
model, whether they come from the analysis's own forward and a derivation (fpgm_ext.
pruning.flops: the fast path, no extra pass) or from real passes (the fallback)."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpgm_ext
from fpgm_ext.models import cifar_resnet
from fpgm_ext.pruning import flops

torchvision = pytest.importorskip("torchvision")

if os.environ.get("FPGM_EXT_BACKEND") == "reference":
    pytest.skip("measurement and search are backend-independent; they run once, on the default "
                "backend", allow_module_level=True)


class FunctionalConv(nn.Module):
    """A convolution called functionally on a module's weight: its FLOPs belong to no conv
    module, so the report must measure for real."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.w = nn.Parameter(torch.randn(8, 16, 3, 3))
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.conv2d(self.conv(x).relu(), self.w, padding=1)
        return self.fc(x.mean((2, 3)))


class Attention(nn.Module):
    """Linear layers and a matrix product of activations (not a module's)."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.out = nn.Linear(16, 32), nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        a = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2), -1)
        return self.out(a @ self.q(x))


class MHA(nn.Module):
    """A leaf module whose FLOPs are matrix products inside it (not a conv or linear)."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def _pruned_counts(model, x, **kw):
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.4, **kw)
    return pruned, report, {s.name: (s.flops_before, s.flops_after) for s in report.layers}


def _real_counts(model, pruned, x):
    before, after = flops.measure(model, (x,)), flops.measure(pruned, (x,))
    layers = {name: (before.layer_flops.get(name), after.layer_flops.get(name))
              for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    return before.flops, after.flops, layers


CASES = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 32, 32)),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(num_classes=10), (1, 3, 32, 32)),
    "regnet_y_400mf": (lambda: torchvision.models.regnet_y_400mf(num_classes=10), (1, 3, 32, 32)),
    "cifar_resnet20": (lambda: cifar_resnet(20), (2, 3, 32, 32)),
    "efficientnet_b0": (lambda: torchvision.models.efficientnet_b0(num_classes=10), (1, 3, 32, 32)),
    "functional_conv": (FunctionalConv, (1, 3, 16, 16)),
    "attention": (Attention, (2, 5, 16)),
    "mha": (lambda: nn.Sequential(nn.Linear(16, 16), MHA()), (2, 5, 16)),
}
FAST = {"resnet18", "mobilenet_v2", "regnet_y_400mf", "cifar_resnet20", "efficientnet_b0"}
# no extra pass either: counted by FlopCounterMode during the analysis's forward, all in
# the Linear (FlopCounterMode counts nothing for the fused attention kernel in eval)
COUNTED_IN_LAYERS = FAST | {"mha"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_report_flops_are_flop_counter_counts(name, monkeypatch):
    make, shape = CASES[name]
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(*shape)
    real_measure = flops.measure
    calls = []
    monkeypatch.setattr(flops, "measure", lambda *a: calls.append(1) or real_measure(*a))
    pruned, report, layers = _pruned_counts(model, x)
    assert calls == ([] if name in COUNTED_IN_LAYERS else [1, 1])   # the fast path: no extra pass
    monkeypatch.undo()
    total_before, total_after, real_layers = _real_counts(model, pruned, x)
    assert (report.flops_before, report.flops_after) == (total_before, total_after)
    if name in FAST:
        assert report.flops_after < report.flops_before
    for layer, counts in real_layers.items():
        assert layers[layer] == counts, layer


@pytest.mark.parametrize("name", sorted(CASES))
def test_counted_from_shapes_only_where_all_flops_are_conv_and_linear(name):
    """The analysis's forward skips FlopCounterMode where the graph holds no other op it
    counts (functional convs, matrix products, attention modules): the counts from the
    output shapes then equal FlopCounterMode's, layer by layer."""
    from fpgm_ext.pruning.graph.tracing import _fx_graph, _fx_shapes

    make, shape = CASES[name]
    torch.manual_seed(0)
    model, x = make().eval(), torch.randn(*shape)
    graph = _fx_graph(model)
    assert flops.FlopRecorder.countable_from_shapes(graph, dict(model.named_modules())) == (name in FAST)
    recorder = flops.FlopRecorder()
    _fx_shapes(graph, model, (x,), recorder)
    got, real = recorder.measurement(model), flops.measure(model, (x,))
    if name in FAST:
        assert got.flops == real.flops and got.layer_flops == {
            k: v for k, v in real.layer_flops.items() if k in got.layer_flops}
        assert set(got.layer_flops) == {n for n, m in model.named_modules()
                                        if isinstance(m, (nn.Conv2d, nn.Linear)) and real.layer_flops.get(n)}


def test_export_tracer_measures_for_real():
    model, x = cifar_resnet(20).eval(), torch.randn(1, 3, 32, 32)
    pruned, report, _ = _pruned_counts(model, x, trace="export")
    assert report.tracer == "export"
    total_before, total_after, _ = _real_counts(model, pruned, x)
    assert (report.flops_before, report.flops_after) == (total_before, total_after)


def test_derive_refuses_a_count_that_is_not_a_multiple():
    m = flops.Measurement(flops=7, params=0, layer_flops={"fc": 7}, layer_params={})
    assert flops.derive_pruned(m, {"fc": 4}, nn.Sequential()) is None


class _ExpandedParameterArgument(nn.Module):
    """A parameter expanded under no_grad and passed to a submodule (timm's CaiT class
    token): FlopCounterMode's module tracker cannot hook its gradient under no_grad."""

    def __init__(self):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.fc = nn.Linear(8, 8)
        self.block = _AddToken()

    def forward(self, x):
        return self.block(self.fc(x), self.cls.expand(x.shape[0], -1, -1))


class _AddToken(nn.Module):
    def forward(self, x, token):
        return x + token


def test_measure_with_an_expanded_parameter_argument():
    model = _ExpandedParameterArgument().eval()
    m = flops.measure(model, (torch.randn(2, 3, 8),))
    assert m.flops == 2 * 2 * 3 * 8 * 8
    assert not any(p.grad is not None for p in model.parameters())
