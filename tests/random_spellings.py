"""Blocks of the random architectures (tests/random_arch.py) that spell layers and
elementwise ops in the less common ways: elementwise ops with constants (some keep zero,
some do not), norms and per-channel slopes applied to a value of several spaces,
functional layers on their modules' tensors, a module applied twice, spatial mixing
(a Linear over the pixels, a Conv1d on flattened pixels, spatial padding and crops),
channel counts read at run time, and fpgm_ext's own PadShortcut."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from fpgm_ext.pruning import PadShortcut
from random_blocks import Block, ConvBNAct, conv_hw, make_act, width


class ScalarOps(Block):
    """An elementwise op with a constant, on the input itself (a value whose producers are
    upstream, maybe several): x * 0.5, x / 3, -x, x.abs(), x ** 2, clamp(-1, 1) keep zero;
    x + 1, 1 - x, clamp(min=0.5), exp, cos do not; a per-channel constant made in the
    forward (its size is the channel count)."""
    kind = "scalar_ops"

    def __init__(self, rng, c, hw):
        super().__init__(c, hw, rng.randrange(12))

    def forward(self, x):
        v = self.variant
        if v == 0:
            return x * 0.5
        if v == 1:
            return x / 3
        if v == 2:
            return -x
        if v == 3:
            return x.abs()
        if v == 4:
            return x ** 2
        if v == 5:
            return x.clamp(-1, 1)
        if v == 6:
            return x + 1
        if v == 7:
            return 1 - x
        if v == 8:
            return torch.clamp(x, min=0.5)
        if v == 9:
            return torch.exp(x)
        if v == 10:
            return torch.cos(x)
        return x * torch.linspace(0.5, 1.5, self.c_out).view(1, -1, 1, 1)


class NormOnInput(Block):
    """A per-channel layer on the input itself (a concatenation, a residual stream...):
    BatchNorm, GroupNorm of groups dividing its width, affine InstanceNorm, PReLU of one
    slope per channel; then an activation."""
    kind = "norm_on_input"

    def __init__(self, rng, c, hw):
        super().__init__(c, hw, rng.randrange(4))
        if self.variant == 0:
            self.norm = nn.BatchNorm2d(c)
        elif self.variant == 1:
            self.norm = nn.GroupNorm(rng.choice([g for g in (1, 2, 3, 4) if c % g == 0]), c)
        elif self.variant == 2:
            self.norm = nn.InstanceNorm2d(c, affine=True)
        else:
            self.norm = nn.PReLU(c)
            nn.init.uniform_(self.norm.weight, -0.5, 0.5)   # slopes that tell channels apart
        self.act = make_act(rng)

    def forward(self, x):
        return self.act(self.norm(x))


class StdConv2d(nn.Conv2d):
    """timm's weight-standardised conv: the weight normalised per filter at each call."""

    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         training=True, momentum=0.0, eps=1e-6).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class FunctionalLayers(Block):
    """Layers called as functions on their modules' tensors: F.conv2d then F.batch_norm,
    F.linear channels-last, F.conv2d then F.group_norm, a weight-standardised conv, a conv
    of a weight computed in the forward (halved)."""
    kind = "functional_layers"

    def __init__(self, rng, c, hw):
        o = width(rng)
        super().__init__(o, hw, rng.randrange(5))
        self.std = StdConv2d(c, o, 3, padding=1)
        self.conv = nn.Conv2d(c, o, 3, padding=1, bias=rng.random() < 0.5)
        self.bn = nn.BatchNorm2d(o)
        self.fc = nn.Linear(c, o)
        self.gn = nn.GroupNorm(rng.choice([g for g in (2, 3, 4, 1) if o % g == 0]), o)
        self.act = make_act(rng)

    def forward(self, x):
        if self.variant == 0:
            y = F.conv2d(x, self.conv.weight, self.conv.bias, padding=1)
            y = F.batch_norm(y, self.bn.running_mean, self.bn.running_var, self.bn.weight,
                             self.bn.bias, False, 0.0, self.bn.eps)
        elif self.variant == 1:
            y = F.linear(x.permute(0, 2, 3, 1), self.fc.weight, self.fc.bias).permute(0, 3, 1, 2)
        elif self.variant == 2:
            y = F.conv2d(x, self.conv.weight, self.conv.bias, 1, 1)
            y = F.group_norm(y, self.gn.num_groups, self.gn.weight, self.gn.bias, self.gn.eps)
        elif self.variant == 3:
            y = self.bn(self.std(x))
        else:
            y = F.conv2d(x, self.conv.weight * 0.5, self.conv.bias, padding=1)
        return self.act(y)


class SharedModule(Block):
    """One module called at two places: a conv twice in a row, a conv on x and on its
    max-pooled x (summed), one BatchNorm after two convs (summed); or two convs of one
    weight (tied)."""
    kind = "shared_module"

    def __init__(self, rng, c, hw):
        o = c if rng.random() < 0.4 else width(rng)
        super().__init__(o, hw, 0 if o == c else rng.randrange(1, 4))
        self.conv = nn.Conv2d(c, o, 3, padding=1)
        self.other = nn.Conv2d(c, o, 1)
        self.tied = nn.Conv2d(c, o, 3, padding=1, bias=False)
        self.tied.weight = self.conv.weight
        self.bn = nn.BatchNorm2d(o)
        self.act = make_act(rng)

    def forward(self, x):
        if self.variant == 0:
            return self.conv(self.act(self.conv(x)))
        if self.variant == 1:
            return self.act(self.conv(x) + self.conv(F.max_pool2d(x, 3, 1, 1)))
        if self.variant == 2:
            return self.act(self.bn(self.conv(x)) + self.bn(self.other(x)))
        return self.act(self.bn(self.conv(x)) + self.tied(F.avg_pool2d(x, 3, 1, 1)))


class SpatialMix(Block):
    """Ops that mix pixels, each channel on its own (MLP-Mixer's token mixing: a Linear
    over the flattened pixels; spatial padding with zeros, ones or a reflection; a crop),
    or a Conv1d on the flattened pixels, viewed back."""
    kind = "spatial_mix"

    def __init__(self, rng, c, hw):
        variant = rng.randrange(6)
        c_out = width(rng) if variant == 1 else c
        hw_out = hw - 2 if variant == 4 else hw
        super().__init__(c_out, hw_out, variant)
        self.mixing = nn.Linear(hw * hw, hw * hw) if variant == 0 else nn.Identity()
        self.conv1d = nn.Conv1d(c, c_out, 1) if variant == 1 else nn.Identity()
        self.pad = nn.ZeroPad2d(1)
        self.conv = nn.Conv2d(c, c, 3, groups=c)
        self.value = float(rng.choice((0, 1)))

    @staticmethod
    def fits(c, hw):
        return hw >= 6

    def forward(self, x):
        v = self.variant
        b, c, h, w = x.shape
        if v == 0:
            return self.mixing(x.flatten(2)).view(b, c, h, w)
        if v == 1:
            return self.conv1d(x.reshape(b, c, h * w)).view(b, -1, h, w)
        if v == 2:
            return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), value=self.value), 3, 1)
        if v == 3:
            return F.max_pool2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), 3, 1)
        if v == 4:
            return x[:, :, 1:-1, 1:-1]
        return self.conv(self.pad(x))


class SizeRead(Block):
    """The channel count read at run time: a scale by it and a tensor made of it (the
    pruned count would change the result), a reshape by a constant count, reshapes by the
    input's own count and the legacy squeeze-excitation's ``view(b, c)`` (understood)."""
    kind = "size_read"

    def __init__(self, rng, c, hw):
        super().__init__(c, hw, rng.randrange(6))
        r = width(rng, 2, 8)
        self.fc1, self.fc2 = nn.Linear(c, r), nn.Linear(r, c)

    def forward(self, x):
        v = self.variant
        if v == 0:
            return x * x.shape[1] ** -0.5
        if v == 1:
            return x + x.new_ones(x.shape[:2]).view(x.shape[0], -1, 1, 1)
        if v == 2:
            return x.reshape(x.shape[0], self.c_out, self.hw_out, self.hw_out)
        B, C, H, W = x.shape
        if v == 3:
            return x.reshape(B, C, H * W).reshape(x.shape)
        if v == 4:
            return x * (1.0 / x.size(1))
        b, c = x.size(0), x.size(1)
        y = F.adaptive_avg_pool2d(x, 1).view(b, c)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(y)))).view(b, c, 1, 1)


class PadShortcutResidual(Block):
    """A CIFAR ResNet block with fpgm_ext's parameter-free PadShortcut (maybe strided; its
    channel map the identity, or the input's channels placed at drawn output channels,
    in order or not)."""
    kind = "pad_shortcut"

    def __init__(self, rng, c, hw):
        o = rng.randint(c, c + 8)
        stride = 2 if hw >= 8 and rng.random() < 0.4 else 1
        super().__init__(o, conv_hw(hw, stride))
        self.body = nn.Sequential(ConvBNAct(rng, c, o, 3, stride), ConvBNAct(rng, o, o, 3, act=False))
        self.shortcut = PadShortcut(c, o, stride)
        if rng.random() < 0.5:   # (the map of a shortcut that was pruned before)
            dst = rng.sample(range(o), c)
            self.shortcut.dst = torch.tensor(dst if rng.random() < 0.5 else sorted(dst))
        self.act = make_act(rng)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))
