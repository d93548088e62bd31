"""The prunable blocks of the random architectures (tests/random_arch.py): each draws its
shape and its spelling of the forward from a ``random.Random`` at construction and says
what it gives (``c_out`` channels at ``hw_out`` x ``hw_out``). The channel-mixing blocks
the analysis must refuse are in tests/random_mixers.py.

A block's ``kind`` names what it exercises (the fuzz test checks that every kind
appears); ``variant`` picks one spelling of its forward, a constant that fx and
torch.export bake into the trace, so each traced graph holds one spelling only."""
from __future__ import annotations

import random

import torch
from torch import nn
from torch.nn import functional as F

MIN_WIDTH, MAX_WIDTH = 4, 24

# activations by function: call_function nodes in an fx graph
FUNCTIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "hardswish": F.hardswish,
             "sigmoid": torch.sigmoid, "tanh": torch.tanh, "leaky_relu": F.leaky_relu,
             "relu6": F.relu6, "hardsigmoid": F.hardsigmoid, "elu": F.elu, "mish": F.mish}
METHODS = ("relu", "sigmoid", "tanh")   # activations by Tensor method: call_method nodes
MODULES = (nn.ReLU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Tanh, nn.ReLU6, nn.LeakyReLU, nn.Identity,
           nn.Mish, nn.ELU)
# the activations that map 0 to non-zero: drawn less often, as each keeps the channels
# before it whole wherever they reach a conv
NONZERO = ("sigmoid", "hardsigmoid")


def width(rng: random.Random, lo: int = MIN_WIDTH, hi: int = MAX_WIDTH) -> int:
    return rng.randint(lo, hi)


def conv_hw(hw: int, stride: int) -> int:
    """The output size of a conv of kernel 1 (padding 0) or 3 (padding 1)."""
    return (hw - 1) // stride + 1


class Fn(nn.Module):
    """An activation spelled as a function (F.gelu, torch.sigmoid, ...)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x):
        return FUNCTIONS[self.name](x)


class Method(nn.Module):
    """An activation spelled as a Tensor method (x.relu(), x.sigmoid())."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, x):
        return getattr(x, self.name)()


def make_act(rng: random.Random) -> nn.Module:
    """An activation: a module, a function or a method; one mapping 0 to non-zero, 1 in 10."""
    spelling = rng.random()
    if spelling < 0.1:
        return rng.choice((nn.Sigmoid(), nn.Hardsigmoid(), nn.Softplus(), Fn("sigmoid"),
                           Fn("hardsigmoid"), Method("sigmoid")))
    if spelling < 0.15:   # in place: each block applies it to a tensor of its own
        return rng.choice((nn.ReLU(inplace=True), Method("relu_"), nn.Hardswish(inplace=True)))
    if spelling < 0.55:
        return rng.choice(MODULES)()
    if spelling < 0.85:
        return Fn(rng.choice([f for f in sorted(FUNCTIONS) if f not in NONZERO]))
    return Method(rng.choice([m for m in METHODS if m not in NONZERO]))


class ConvBNAct(nn.Module):
    """conv (kernel 1 or 3, maybe a bias) -> BatchNorm (mostly) -> activation (maybe)."""

    def __init__(self, rng: random.Random, c_in: int, c_out: int, k: int = 0, stride: int = 1,
                 groups: int = 1, act: bool = True):
        super().__init__()
        k = k or rng.choice((1, 3))
        dilation = 2 if k == 3 and rng.random() < 0.15 else 1
        # (reflection of a padding of 1 needs 2 pixels: no value is smaller)
        mode = rng.choice(("reflect", "circular")) if k == 3 and dilation == 1 and rng.random() < 0.15 \
            else "zeros"
        self.conv = nn.Conv2d(c_in, c_out, k, stride, k // 2 * dilation, dilation, groups,
                              bias=rng.random() < 0.4, padding_mode=mode)
        self.norm = nn.BatchNorm2d(c_out) if rng.random() < 0.8 else nn.Identity()
        self.act = make_act(rng) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class Block(nn.Module):
    """A block of one input (``ARITY`` 2: of two, of one spatial size)."""
    ARITY = 1
    kind = ""

    def __init__(self, c_out: int, hw_out: int, variant: int = 0):
        super().__init__()
        self.c_out, self.hw_out, self.variant = c_out, hw_out, variant

    @staticmethod
    def fits(c: int, hw: int) -> bool:
        return True


class ConvChain(Block):
    """One or two conv/BN/activation units, maybe strided."""
    kind = "conv_act"

    def __init__(self, rng, c, hw):
        units = []
        for _ in range(rng.randint(1, 2)):
            o = width(rng)
            stride = 2 if hw >= 8 and rng.random() < 0.25 else 1
            units.append(ConvBNAct(rng, c, o, stride=stride))
            c, hw = o, conv_hw(hw, stride)
        super().__init__(c, hw)
        self.units = nn.Sequential(*units)

    def forward(self, x):
        return self.units(x)


class Residual(Block):
    """body(x) + shortcut(x): an identity shortcut, or a 1x1 conv and BN (maybe strided)."""

    def __init__(self, rng, c, hw, project: bool):
        c_out = width(rng) if project else c
        stride = 2 if project and hw >= 8 and rng.random() < 0.3 else 1
        super().__init__(c_out, conv_hw(hw, stride), rng.randrange(3))
        self.kind = "residual_projection" if project else "residual_identity"
        m = width(rng)
        self.body = nn.Sequential(ConvBNAct(rng, c, m, 3, stride), ConvBNAct(rng, m, c_out, act=False))
        self.short = nn.Sequential(nn.Conv2d(c, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)) \
            if project else nn.Identity()
        self.post = make_act(rng)

    def forward(self, x):
        y = self.body(x)
        if self.variant == 0:
            y = y + self.short(x)
        elif self.variant == 1:
            y = torch.add(self.short(x), y)
        else:
            y += self.short(x)
        return self.post(y)


class Concat(Block):
    """torch.cat along the channels: DenseNet's [x, f(x)], two branches, or an inception
    of two branches around a max-pooled x."""
    kind = "concat"

    def __init__(self, rng, c, hw):
        variant = rng.randrange(4)
        a, b = width(rng, 4, 12), width(rng, 4, 12)
        c_out = {0: c + a, 1: a + b, 2: a + c + b, 3: a + b}[variant]
        super().__init__(c_out, hw, variant)
        self.f, self.g = ConvBNAct(rng, c, a), ConvBNAct(rng, c, b)

    @staticmethod
    def fits(c, hw):
        return c <= 20

    def forward(self, x):
        if self.variant == 0:
            return torch.cat([x, self.f(x)], 1)
        if self.variant == 1:
            return torch.cat((self.f(x), self.g(x)), dim=1)
        if self.variant == 2:
            return torch.cat([self.f(x), F.max_pool2d(x, 3, 1, 1), self.g(x)], 1)
        return torch.concat([self.f(x), self.g(x)], dim=1)


class Split(Block):
    """The channels cut into two pieces (split with sizes or with one size, chunk, slices,
    negative slices, narrow), then joined: one piece through a conv and the other passed
    on (CSP), both through convs and concatenated, both through convs and added, or one
    piece only (the other's channels unused)."""
    kind = "split"

    def __init__(self, rng, c, hw):
        cut_variant, self.join = rng.randrange(7), rng.randrange(4)
        p = (c + 1) // 2 if cut_variant in (1, 2, 4) else rng.randint(1, c - 1)
        self.p, self.q = p, c - p
        o = width(rng, 4, 12)   # f's width (and g's, where the two are added)
        b_out = o if self.join == 2 else self.q if self.join == 0 else width(rng, 4, 12)
        c_out = {0: o + self.q, 1: o + b_out, 2: o, 3: o}[self.join]
        super().__init__(c_out, hw, cut_variant)
        self.f = ConvBNAct(rng, p, o)
        self.g = ConvBNAct(rng, self.q, b_out) if self.join in (1, 2) else nn.Identity()

    @staticmethod
    def fits(c, hw):
        return c >= 2

    def cut(self, x):
        p, v = self.p, self.variant
        if v == 0:
            return x.split([p, self.q], 1)
        if v == 1:
            return x.chunk(2, 1)
        if v == 2:
            return torch.chunk(x, 2, dim=1)
        if v == 3:
            return x[:, :p], x[:, p:]
        if v == 4:
            return torch.split(x, p, dim=1)
        if v == 5:
            return x[:, :-self.q], x[:, -self.q:]
        return x.narrow(1, 0, p), x.narrow(1, p, self.q)

    def forward(self, x):
        a, b = self.cut(x)
        if self.join == 0:
            return torch.cat([self.f(a), b], 1)
        if self.join == 1:
            return torch.cat([self.f(a), self.g(b)], 1)
        if self.join == 2:
            return self.f(a) + self.g(b)
        return self.f(a)


class Depthwise(Block):
    """A depthwise conv (maybe with a channel multiplier of 2), BN, activation, maybe a
    pointwise conv after it."""
    kind = "depthwise"

    def __init__(self, rng, c, hw):
        mult = 2 if c <= 12 and rng.random() < 0.3 else 1
        stride = 2 if hw >= 8 and rng.random() < 0.2 else 1
        pointwise = rng.random() < 0.5
        c_out = width(rng) if pointwise else c * mult
        super().__init__(c_out, conv_hw(hw, stride))
        self.dw = ConvBNAct(rng, c, c * mult, 3, stride, groups=c)
        self.pw = ConvBNAct(rng, c * mult, c_out, 1) if pointwise else nn.Identity()

    def forward(self, x):
        return self.pw(self.dw(x))


class Grouped(Block):
    """A grouped conv of 2, 3 or 4 groups, BN, activation."""
    kind = "grouped"

    def __init__(self, rng, c, hw):
        g = rng.choice([d for d in (2, 3, 4) if c % d == 0])
        c_out = g * rng.randint(2, MAX_WIDTH // g)
        super().__init__(c_out, hw)
        self.unit = ConvBNAct(rng, c, c_out, groups=g)

    @staticmethod
    def fits(c, hw):
        return any(c % d == 0 for d in (2, 3, 4))

    def forward(self, x):
        return self.unit(x)


class SqueezeExcite(Block):
    """x * gate(expand(act(reduce(pool(x))))): 1x1 convs on a pooled map, or Linear layers
    on a pooled vector viewed back to [B, C, 1, 1] in one of three spellings."""
    kind = "squeeze_excitation"

    def __init__(self, rng, c, hw):
        super().__init__(c, hw, rng.randrange(5))
        r = width(rng, 2, max(2, c // 2))
        layer = nn.Conv2d if self.variant < 2 else nn.Linear
        args = (1,) if layer is nn.Conv2d else ()
        self.reduce, self.act, self.expand = layer(c, r, *args), make_act(rng), layer(r, c, *args)
        self.gate = rng.choice((nn.Sigmoid(), nn.Hardsigmoid(), Fn("sigmoid"), Method("sigmoid")))

    def forward(self, x):
        if self.variant == 0:
            s = x.mean((2, 3), keepdim=True)
        elif self.variant == 1:
            s = F.adaptive_avg_pool2d(x, 1)
        else:
            s = x.mean((2, 3))
        s = self.gate(self.expand(self.act(self.reduce(s))))
        if self.variant == 2:
            s = s.view(s.shape[0], -1, 1, 1)
        elif self.variant == 3:
            s = s[:, :, None, None]
        elif self.variant == 4:
            s = s.unsqueeze(-1).unsqueeze(-1)
        return x * s
