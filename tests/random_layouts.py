"""More prunable blocks of the random architectures (tests/random_arch.py; the base class
and the conv blocks are in tests/random_blocks.py): gates, GroupNorm, channels-last and
token MLPs, per-channel parameters, pooling and upsampling, and the blocks of two inputs
(a residual sum or a concatenation of two earlier values: fan-in to match the fan-out)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from random_blocks import MAX_WIDTH, Block, ConvBNAct, Fn, conv_hw, make_act, width


class Gate(Block):
    """a * sigmoid(b): two convs, or one conv's channels chunked in halves (GLU), or
    silu(a) * b."""
    kind = "gate"

    def __init__(self, rng, c, hw):
        o = width(rng, 4, 16)
        super().__init__(o, hw, rng.randrange(3))
        self.a = ConvBNAct(rng, c, 2 * o if self.variant == 1 else o, act=False)
        self.b = ConvBNAct(rng, c, o, act=False)

    def forward(self, x):
        if self.variant == 0:
            return self.a(x) * torch.sigmoid(self.b(x))
        if self.variant == 1:
            a, b = self.a(x).chunk(2, 1)
            return a * b.sigmoid()
        return F.silu(self.a(x)) * self.b(x)


class GroupNormBlock(Block):
    """conv -> GroupNorm (1, 2, 3 or 4 groups, affine or not) -> activation."""
    kind = "groupnorm"

    def __init__(self, rng, c, hw):
        groups = rng.choice((1, 2, 2, 3, 4))
        c_out = groups * rng.randint(2, MAX_WIDTH // groups)
        super().__init__(c_out, hw)
        self.conv = nn.Conv2d(c, c_out, rng.choice((1, 3)), padding="same")
        self.norm = nn.GroupNorm(groups, c_out, affine=rng.random() < 0.7)
        self.act = make_act(rng)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class ChannelsLastMLP(Block):
    """ConvNeXt's pointwise MLP: permute to [B, H, W, C], maybe a LayerNorm, Linear ->
    activation -> Linear, permute back; maybe a residual around it."""
    kind = "channels_last_mlp"

    def __init__(self, rng, c, hw):
        self.residual = rng.random() < 0.5
        c_out = c if self.residual else width(rng)
        super().__init__(c_out, hw)
        hidden = width(rng, 4, 32)
        self.norm = nn.LayerNorm(c) if rng.random() < 0.3 else nn.Identity()
        self.fc1, self.act, self.fc2 = nn.Linear(c, hidden), make_act(rng), nn.Linear(hidden, c_out)

    def forward(self, x):
        y = self.norm(x.permute(0, 2, 3, 1))
        y = self.fc2(self.act(self.fc1(y))).permute(0, 3, 1, 2)
        return x + y if self.residual else y


class TokenMLP(Block):
    """A transformer's MLP on tokens: [B, C, H, W] flattened to [B, HW, C], Linear ->
    activation -> Linear, back to [B, C, H, W] with sizes read from the input or written
    as constants; maybe a residual around it."""
    kind = "token_mlp"

    def __init__(self, rng, c, hw):
        self.residual = rng.random() < 0.5
        c_out = c if self.residual else width(rng)
        super().__init__(c_out, hw, rng.randrange(2))
        hidden = width(rng, 4, 32)
        self.fc1, self.act, self.fc2 = nn.Linear(c, hidden), make_act(rng), nn.Linear(hidden, c_out)

    def forward(self, x):
        b, c, h, w = x.shape
        t = self.fc2(self.act(self.fc1(x.flatten(2).transpose(1, 2))))
        if self.variant == 0:
            y = t.transpose(1, 2).reshape(b, -1, h, w)
        else:
            y = t.transpose(1, 2).reshape(b, self.c_out, self.hw_out, self.hw_out)
        return x + y if self.residual else y


class LayerScale(Block):
    """A per-channel tensor: x + gamma * body(x) in three spellings of the view, a
    per-channel bias, a scale of x alone with the channel count written in the view, a
    parameter shaped [1, C, 1, 1] or [C, 1, 1], a buffer."""
    kind = "layer_scale"
    SHAPES = {5: (1, -1, 1, 1), 6: (-1, 1, 1)}   # the parameter's shape, by variant

    def __init__(self, rng, c, hw):
        super().__init__(c, hw, rng.randrange(8))
        self.body = ConvBNAct(rng, c, c)
        self.gamma = nn.Parameter(torch.randn(c).view(self.SHAPES.get(self.variant, (-1,))))
        self.register_buffer("scale", torch.rand(c) + 0.5)

    def forward(self, x):
        v = self.variant
        if v == 0:
            return x + self.gamma.view(1, -1, 1, 1) * self.body(x)
        if v == 1:
            return x + self.body(x).mul(self.gamma.reshape(1, -1, 1, 1))
        if v == 2:
            return self.body(x) * self.gamma[:, None, None]
        if v == 3:
            return self.body(x) + self.gamma.view(1, -1, 1, 1)
        if v == 4:
            return x * self.gamma.view(1, self.c_out, 1, 1)
        if v in self.SHAPES:
            return x + self.body(x) * self.gamma
        return self.body(x) * self.scale.view(1, -1, 1, 1)


class Pool(Block):
    """Max or average pooling, by module or function, halving the size or keeping it."""
    kind = "pool"

    def __init__(self, rng, c, hw):
        variant = rng.randrange(5)
        hw_out = {0: hw // 2, 1: hw // 2, 2: conv_hw(hw, 2), 3: hw, 4: hw // 2}[variant]
        super().__init__(c, hw_out, variant)
        self.pool = nn.AvgPool2d(2) if variant == 1 else nn.MaxPool2d(3, 1, 1) if variant == 3 else nn.Identity()

    @staticmethod
    def fits(c, hw):
        return hw >= 4

    def forward(self, x):
        if self.variant == 0:
            return F.max_pool2d(x, 2)
        if self.variant == 2:
            return F.avg_pool2d(x, 3, 2, 1)
        if self.variant == 4:
            return F.adaptive_avg_pool2d(x, self.hw_out)
        return self.pool(x)


class Upsample(Block):
    """Twice the size: nearest or bilinear F.interpolate, nn.Upsample, a size, or a
    transposed conv of stride 2 (a layer the analysis does not know)."""
    kind = "upsample"

    def __init__(self, rng, c, hw):
        variant = rng.randrange(5)
        super().__init__(width(rng) if variant == 4 else c, 2 * hw, variant)
        self.up = nn.Upsample(scale_factor=2) if variant != 4 else nn.ConvTranspose2d(c, self.c_out, 2, 2)

    @staticmethod
    def fits(c, hw):
        return hw <= 8

    def forward(self, x):
        if self.variant == 0:
            return F.interpolate(x, scale_factor=2, mode="nearest")
        if self.variant == 1:
            return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if self.variant == 3:
            return F.interpolate(x, size=(self.hw_out, self.hw_out))
        return self.up(x)


class MergeAdd(Block):
    """a + b of two earlier values (b through a 1x1 conv where the widths differ): a sum,
    a stack summed (SKNet), or their maximum (not a sum: the analysis does not know it);
    then an activation."""
    ARITY = 2
    kind = "merge_add"

    def __init__(self, rng, c_a, c_b, hw):
        super().__init__(c_a, hw, rng.choice((0, 0, 1, 2)))
        self.proj = nn.Identity() if c_a == c_b else ConvBNAct(rng, c_b, c_a, 1, act=False)
        self.act = make_act(rng)

    def forward(self, a, b):
        if self.variant == 0:
            return self.act(a + self.proj(b))
        if self.variant == 1:
            return self.act(torch.stack([a, self.proj(b)], dim=1).sum(1))
        return self.act(torch.maximum(a, self.proj(b)))


class MergeCat(Block):
    """torch.cat of two earlier values along the channels, maybe a sigmoid after it."""
    ARITY = 2
    kind = "merge_cat"

    def __init__(self, rng, c_a, c_b, hw):
        super().__init__(c_a + c_b, hw)
        self.act = Fn("sigmoid") if rng.random() < 0.2 else nn.Identity()

    def forward(self, a, b):
        return self.act(torch.cat([a, b], dim=1))
