"""The layer registry (fpgm_ext/pruning/layers): a user teaches the pruner a layer of their
own with ``register_layer``, and it is pruned exactly, with both tracers; the registry's
checks; every rule has what applies it (graph.check_rules)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpgm_ext
from fpgm_ext.pruning import apply_plan, register_layer, unregister_layer
from fpgm_ext.pruning import graph
from fpgm_ext.pruning.layers import Conv, Layer, Linear, handler_for

from masking import assert_exact_by_value


class MyConv(nn.Module):
    """A conv wrapper holding its own weight, a per-filter scale and a bias (no torch.nn
    conv inside): the pruner knows nothing of it until told."""

    def __init__(self, cin, cout, groups=1, scaled=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin // groups, 3, 3) * 0.2)
        self.scale = nn.Parameter(torch.rand(cout) + 0.5) if scaled else None
        self.bias = nn.Parameter(torch.randn(cout) * 0.1)
        self.groups = groups

    def forward(self, x):
        w = self.weight if self.scale is None else self.weight * self.scale.view(-1, 1, 1, 1)
        return F.conv2d(x, w, self.bias, padding=1, groups=self.groups)


class MyLinear(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) * 0.2)
        self.bias = None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class Net(nn.Module):
    def __init__(self, groups=1, scaled=True):
        super().__init__()
        self.a = MyConv(3, 12, scaled=scaled)
        self.b = MyConv(12, 24, groups, scaled=scaled)
        self.c = nn.Conv2d(24, 16, 1)
        self.head = MyLinear(16, 5)

    def forward(self, x):
        x = F.relu(self.a(x))
        x = F.relu(self.b(x))
        x = F.relu(self.c(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture
def registered():
    register_layer(MyConv, Conv(out_params=("scale",)))
    register_layer(MyLinear, Linear())
    yield
    unregister_layer(MyConv)
    unregister_layer(MyLinear)


def test_unknown_layers_are_left_alone_by_name():
    torch.manual_seed(0)
    model = Net()
    pruned, report = fpgm_ext.prune(model, torch.randn(2, 3, 12, 12), rate_dist=0.4, trace="fx")
    assert pruned.a.weight.shape == model.a.weight.shape and pruned.b.weight.shape == model.b.weight.shape
    assert any(g["left_alone"] for g in report.groups)


# torch.fx traces a registered layer as one call (a leaf), which its handler analyses;
# torch.export inlines its code, understood where it is a torch layer's op on the module's
# own tensors (a weight computed first, as the scaled one, is not: left alone there).
@pytest.mark.parametrize("trace, scaled", [("fx", True), ("fx", False), ("export", False)])
@pytest.mark.parametrize("groups", [1, 4])
def test_a_registered_layer_is_pruned_exactly(registered, trace, scaled, groups):
    torch.manual_seed(1)
    model, x = Net(groups, scaled), torch.randn(2, 3, 12, 12)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.4, trace=trace)
    assert report.tracer == trace
    assert pruned.a.weight.shape[0] < 12 and pruned.b.weight.shape[0] < 24
    if scaled:
        assert pruned.a.scale.shape == pruned.a.weight.shape[:1]      # out_params go with the filters
    assert pruned.head.weight.shape[1] < 16                            # a registered Linear's inputs
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # the input untouched
    assert_exact_by_value(model, pruned, x, conv_types=(MyConv, MyLinear))
    again = apply_plan(Net(groups, scaled), report.plan)
    again.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(again(x), pruned(x))


def test_registration_checks_its_arguments():
    with pytest.raises(TypeError, match="handler must be"):
        register_layer(MyConv, object())
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_layer(int, Conv())
    with pytest.raises(ValueError, match="module-qualified"):
        register_layer("MyConv", Conv())


def test_subclasses_follow_their_base_but_only_registered_classes_are_leaves(registered):
    class Sub(MyConv):
        pass

    assert isinstance(handler_for(Sub(3, 4)), Conv)
    assert fpgm_ext.pruning.layers.is_leaf(MyConv(3, 4)) and not fpgm_ext.pruning.layers.is_leaf(Sub(3, 4))


def test_the_package_layers_are_registered_handlers():
    for m in (nn.Conv2d(2, 2, 1), nn.Linear(2, 2), nn.BatchNorm2d(2), nn.GroupNorm(1, 2), nn.LayerNorm(2),
              nn.PReLU(2), nn.ZeroPad2d(1), fpgm_ext.pruning.PadShortcut(2, 4)):
        assert isinstance(handler_for(m), Layer), type(m)


def test_every_rule_has_what_applies_it(monkeypatch):
    graph.check_rules()
    missing = dict(graph.TENSOR_RULES)
    del missing[graph.Rule.CAT]
    monkeypatch.setattr(graph, "TENSOR_RULES", missing)
    with pytest.raises(AssertionError, match="cat has no function"):
        graph.check_rules()
