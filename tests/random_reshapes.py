"""Blocks of the random architectures (tests/random_arch.py) that index, reshape and
broadcast along the channels and the pixels: one-channel maps broadcast over the
channels, space-to-depth and depth-to-space, concatenations and splits along a spatial
dim, and channel indexing (strided and middle slices, one channel, unbind and stack)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from random_blocks import Block, ConvBNAct, width


class Broadcast(Block):
    """A one-channel map broadcast over the channels: x + conv(x) and x * sigmoid(conv(x))
    with a conv to one channel, x times its first channel, x + its spatial mean."""
    kind = "broadcast"

    def __init__(self, rng, c, hw):
        super().__init__(c, hw, rng.randrange(4))
        self.to_one = nn.Conv2d(c, 1, 3, padding=1)

    def forward(self, x):
        v = self.variant
        if v == 0:
            return x + self.to_one(x)
        if v == 1:
            return x * torch.sigmoid(self.to_one(x))
        if v == 2:
            return x * x[:, :1]
        return x + x.mean((2, 3), keepdim=True)


class SpaceToDepth(Block):
    """2x2 pixels into channels (pixel_unshuffle, nn.PixelUnshuffle, or by view, permute
    and reshape: channel c becomes 4c to 4c + 3), or channels into pixels (pixel_shuffle),
    then a conv unit."""
    kind = "space_to_depth"

    def __init__(self, rng, c, hw):
        variant = rng.randrange(4) if c % 4 == 0 else rng.randrange(3)
        inner, hw_out = (c // 4, 2 * hw) if variant == 3 else (4 * c, hw // 2)
        o = width(rng)
        super().__init__(o, hw_out, variant)
        self.unshuffle = nn.PixelUnshuffle(2)
        self.unit = ConvBNAct(rng, inner, o)

    @staticmethod
    def fits(c, hw):
        return hw % 2 == 0 and hw >= 4 and c <= 12   # (values keep 2 pixels or more)

    def forward(self, x):
        v = self.variant
        if v == 0:
            y = F.pixel_unshuffle(x, 2)
        elif v == 1:
            y = self.unshuffle(x)
        elif v == 2:
            b, c, h, w = x.shape
            y = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
        else:
            y = F.pixel_shuffle(x, 2)
        return self.unit(y)


class SpatialCat(Block):
    """A value and a conv of it concatenated along a spatial dim, pooled back to the size;
    or the rows split in halves and concatenated in the other order."""
    kind = "spatial_cat"

    def __init__(self, rng, c, hw):
        super().__init__(c, hw, rng.randrange(4))
        self.f = ConvBNAct(rng, c, c)

    @staticmethod
    def fits(c, hw):
        return hw % 2 == 0

    def forward(self, x):
        v = self.variant
        if v == 0:
            return F.max_pool2d(torch.cat([x, self.f(x)], 2), (2, 1))
        if v == 1:
            return F.avg_pool2d(torch.cat((self.f(x), x), dim=-1), (1, 2))
        if v == 2:
            top, bottom = x.split(x.shape[2] // 2, dim=2)
            return self.f(torch.cat([bottom, top], 2))
        left, right = x.chunk(2, 3)
        return torch.cat([self.f(right), left], dim=3)


class ChannelIndex(Block):
    """Channels picked by indexing: the even and the odd ones (strided slices), a middle
    slice, one channel, all of them unbound and stacked again; then a conv unit."""
    kind = "channel_index"

    def __init__(self, rng, c, hw):
        variant = rng.randrange(5)
        inner = {0: (c + 1) // 2, 1: c // 2, 2: c - 2, 3: 1, 4: c}[variant]
        o = width(rng)
        super().__init__(o, hw, variant)
        self.unit = ConvBNAct(rng, inner, o)

    @staticmethod
    def fits(c, hw):
        return c >= 4

    def forward(self, x):
        v = self.variant
        if v == 0:
            y = x[:, ::2]
        elif v == 1:
            y = x[:, 1::2]
        elif v == 2:
            y = x[:, 1:-1]
        elif v == 3:
            y = x[:, 2:3]
        else:
            y = torch.stack(x.unbind(1), 1)
        return self.unit(y)
