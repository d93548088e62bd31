"""The op table of the graph analysis (fpgm_ext/pruning/graph/rules.py): every spelling
maps to a known rule, the spellings of one op in fx and in export graphs follow the same
rule, and a small model of each rule family gives the same groups with either tracer."""
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fpgm_ext.pruning import analyse
from fpgm_ext.pruning.graph import RULES, TABLE, entry_of
from fpgm_ext.pruning.graph.rules import LAYERS

KINDS = {"module", "function", "method", "aten"}


def test_every_spelling_maps_to_a_known_rule():
    assert LAYERS <= set(RULES)
    for (kind, spelling), entry in TABLE.items():
        assert kind in KINDS and entry.rule in RULES, (kind, spelling, entry)
        if kind == "module":
            assert isinstance(spelling, type) and issubclass(spelling, nn.Module), spelling
        elif kind == "function":
            assert callable(spelling) or (isinstance(spelling, str) and "." in spelling), spelling
        else:
            assert isinstance(spelling, str), spelling
        if entry.elementwise:
            assert entry.rule in ("pass", "hardtanh"), (kind, spelling)


# one op, all its spellings: (module, function, method, aten) -> (rule, elementwise)
SAME_OP = [
    ((nn.ReLU, F.relu, "relu", "relu"), ("pass", True)),
    ((nn.Tanh, torch.tanh, "tanh", "tanh"), ("pass", True)),
    ((nn.GELU, F.gelu, None, "gelu"), ("pass", True)),
    ((nn.SiLU, F.silu, None, "silu"), ("pass", True)),
    ((nn.Dropout, F.dropout, None, "dropout"), ("pass", True)),
    ((None, torch.clone, "clone", "clone"), ("pass", True)),
    ((nn.MaxPool2d, F.max_pool2d, None, "max_pool2d"), ("pass", False)),
    ((nn.Sigmoid, torch.sigmoid, "sigmoid", "sigmoid"), ("nonzero", False)),
    ((None, torch.exp, "exp", "exp"), ("nonzero", False)),
    ((nn.Hardtanh, F.hardtanh, None, "hardtanh"), ("hardtanh", False)),
    ((None, torch.clamp, "clamp", "clamp"), ("clamp", False)),
    ((None, operator.add, "add", "add"), ("add", False)),
    ((None, operator.sub, "sub", "sub"), ("add", False)),
    ((None, operator.mul, "mul", "mul"), ("mul", False)),
    ((None, operator.truediv, "div", "div"), ("div", False)),
    ((None, torch.cat, None, "cat"), ("cat", False)),
    ((nn.Flatten, torch.flatten, "flatten", "flatten"), ("flatten", False)),
    ((None, torch.reshape, "reshape", "reshape"), ("view", False)),
    ((None, torch.mean, "mean", "mean"), ("reduce", False)),
    ((None, torch.sum, "sum", "sum"), ("reduce", False)),
    ((nn.Conv2d, F.conv2d, None, "conv2d"), ("conv", False)),
    ((nn.Linear, F.linear, None, "linear"), ("linear", False)),
    ((nn.BatchNorm2d, F.batch_norm, None, "batch_norm"), ("bn", False)),
    ((nn.GroupNorm, F.group_norm, None, "group_norm"), ("gn", False)),
    ((None, getattr, "size", "sym_size"), ("size", False)),
]


@pytest.mark.parametrize("spellings, expected", SAME_OP, ids=lambda v: str(v[-1]) if isinstance(v, tuple) else None)
def test_spellings_of_one_op_follow_one_rule(spellings, expected):
    for kind, spelling in zip(("module", "function", "method", "aten"), spellings):
        if spelling is None:
            continue
        entry = entry_of(kind, spelling.__new__(spelling) if kind == "module" else spelling)
        assert entry is not None and (entry.rule, entry.elementwise) == expected, (kind, spelling, entry)


def test_module_subclasses_follow_their_base():
    class MyReLU(nn.ReLU):
        pass

    class BatchNormAct(nn.BatchNorm2d):
        pass

    assert entry_of("module", MyReLU()).rule == "pass"
    assert entry_of("module", BatchNormAct(4)).rule == "bn"
    assert entry_of("module", nn.ReLU6()).rule == "hardtanh"          # Hardtanh(0, 6)
    assert entry_of("module", nn.ZeroPad2d(1)).rule == "constant_pad"  # ConstantPad(0)
    assert entry_of("module", nn.LSTM(4, 4)) is None
    assert entry_of("function", torch.linalg.norm) is None
    assert entry_of("method", "index_select") is None and entry_of("aten", "index_select") is None


# ------------------------------------------------------- one model per rule family
def conv(i, o):
    return nn.Conv2d(i, o, 3, padding=1)


class Pass(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b = conv(3, 8), nn.BatchNorm2d(8), conv(8, 4)

    def forward(self, x):
        return self.b(F.max_pool2d(torch.relu(self.bn(self.a(x))), 2))


class Nonzero(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = conv(3, 8), conv(8, 4)

    def forward(self, x):
        return self.b(torch.sigmoid(self.a(x)))


class Add(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv(3, 8), conv(3, 8), conv(8, 4)

    def forward(self, x):
        return self.c(F.relu(self.a(x) + self.b(x)))


class Mul(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv(3, 8), conv(8, 8), conv(8, 4)

    def forward(self, x):
        y = F.relu(self.a(x))
        return self.c(y * self.b(y))


class Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv(3, 8), conv(3, 6), conv(14, 4)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc = conv(3, 8), nn.Linear(8 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.a(x)), 2), 1))


class Reduce(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc = conv(3, 8), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(F.relu(self.a(x)).mean((2, 3)))


class Clamp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = conv(3, 8), conv(8, 8), conv(8, 8), conv(8, 4)

    def forward(self, x):
        y = self.b(torch.clamp(self.a(x), 0, 6))          # 0 inside: zeros kept
        return self.d(self.c(F.hardtanh(y, 0.5, 1.0)))    # 0 outside: b left alone


class Pad(nn.Module):
    """Spatial zero padding (TF "same" padding, aten pad in export): zeros stay zeros."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = conv(3, 8), conv(8, 8), conv(8, 4)

    def forward(self, x):
        return self.c(self.b(F.pad(self.a(x), (0, 1, 0, 1))))


class Tokens(nn.Module):
    """Linear -> GELU -> Linear on [B, T, C]: elementwise ops carry the last dimension."""

    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


FAMILIES = {
    # model, input shape, {producers of a group: frozen}
    "pass": (Pass, (2, 3, 8, 8), {("a",): False, ("b",): True}),
    "nonzero": (Nonzero, (2, 3, 8, 8), {("a",): True, ("b",): True}),
    "add": (Add, (2, 3, 8, 8), {("a", "b"): False, ("c",): True}),
    "mul": (Mul, (2, 3, 8, 8), {("a", "b"): False, ("c",): True}),
    "cat": (Cat, (2, 3, 8, 8), {("a",): False, ("b",): False, ("c",): True}),
    "flatten": (FlattenLinear, (2, 3, 8, 8), {("a",): False, ("fc",): True}),
    "reduce": (Reduce, (2, 3, 8, 8), {("a",): False, ("fc",): True}),
    "clamp": (Clamp, (2, 3, 8, 8), {("a",): False, ("b",): True, ("c",): False, ("d",): True}),
    "elementwise": (Tokens, (2, 5, 6), {("fc1",): False, ("fc2",): True}),
    "pad": (Pad, (2, 3, 8, 8), {("a",): False, ("b",): False, ("c",): True}),
}


def summary(analysis):
    """{producers of a group: (units, residual, frozen)}, and each use's (kind, factor)."""
    groups = {}
    for g in analysis.groups:
        names = tuple(sorted(u.name for u in analysis.producers(g)))
        if names:
            groups[names] = (g.units, g.residual, bool(g.reasons))
    uses = {u.name: (u.kind, u.factor) for u in analysis.uses.values()}
    return groups, uses


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_both_tracers_give_the_same_groups(family):
    make, shape, frozen = FAMILIES[family]
    torch.manual_seed(0)
    model, x = make(), torch.randn(*shape)
    fx, export = analyse(model, (x,), "fx"), analyse(model, (x,), "export")
    assert (fx.tracer, export.tracer) == ("fx", "export")
    assert summary(fx) == summary(export)
    assert {names: f for names, (_, _, f) in summary(fx)[0].items()} == frozen
    assert not fx.unsupported and not export.unsupported
