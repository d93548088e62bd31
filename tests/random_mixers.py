"""The channel-mixing blocks of the random architectures (tests/random_arch.py), which the
analysis must refuse: each is a conv unit whose output channels are then mixed, so that
the conv's filters may not go (or not without the mixing op's arguments changing), in
eval mode or in training mode only. A correct pruner leaves that conv alone and is exact
everywhere else. Also the heads: the model's outputs."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from random_blocks import Block, ConvBNAct, make_act, width


class Mixer(Block):
    """conv unit -> ``mix`` -> maybe an activation; ``c_out`` from ``mix``'s width."""

    def __init__(self, rng, c, hw, c_mid: int, c_out: int, variants: int):
        super().__init__(c_out, hw, rng.randrange(variants))
        self.unit = ConvBNAct(rng, c, c_mid)
        self.post = make_act(rng) if rng.random() < 0.5 else nn.Identity()

    def forward(self, x):
        return self.post(self.mix(self.unit(x)))


class SameWidth(Mixer):
    """A mixer whose output has its middle width, one of ``variants`` spellings."""
    variants = 1

    def __init__(self, rng, c, hw):
        o = width(rng)
        super().__init__(rng, c, hw, o, o, self.variants)


class ChannelStat(SameWidth):
    """A statistic over the channels: centred, L2-normalised, softmax, scaled by a gate of
    their sum, less their maximum."""
    kind = "channel_stat"
    variants = 5

    def mix(self, y):
        v = self.variant
        if v == 0:
            return y - y.mean(1, keepdim=True)
        if v == 1:
            return F.normalize(y, dim=1)
        if v == 2:
            return y.softmax(1)
        if v == 3:
            return y * y.sum(1, keepdim=True).sigmoid()
        return y - torch.amax(y, 1, keepdim=True)


class ChannelShuffle(Mixer):
    """ShuffleNet's shuffle: view into groups, swap, view back (sizes read from the tensor
    or written as constants), or a permute and a flatten."""
    kind = "channel_shuffle"

    def __init__(self, rng, c, hw):
        self.groups = rng.choice((2, 3, 4))
        o = self.groups * rng.randint(2, 24 // self.groups)
        super().__init__(rng, c, hw, o, o, 3)

    def mix(self, y):
        g = self.groups
        if self.variant == 0:
            b, c, h, w = y.shape
            return y.view(b, g, c // g, h, w).transpose(1, 2).reshape(b, c, h, w)
        if self.variant == 1:
            c, hw = self.c_out, self.hw_out
            return y.reshape(-1, g, c // g, hw, hw).transpose(1, 2).reshape(-1, c, hw, hw)
        b, _, h, w = y.shape
        return y.reshape(b, g, -1, h, w).permute(0, 2, 1, 3, 4).flatten(1, 2)


class ChannelPad(Mixer):
    """F.pad of the channels: new channels of zeros (or ones) before and after them."""
    kind = "channel_pad"

    def __init__(self, rng, c, hw):
        o = width(rng)
        self.before, self.after = rng.randint(0, 3), rng.randint(1, 3)
        super().__init__(rng, c, hw, o, o + self.before + self.after, 2)

    def mix(self, y):
        pad = (0, 0, 0, 0, self.before, self.after)
        return F.pad(y, pad) if self.variant == 0 else F.pad(y, pad, value=1.0)


class ChannelFlip(SameWidth):
    """The channels reversed or rolled."""
    kind = "channel_flip"
    variants = 4

    def mix(self, y):
        v = self.variant
        if v == 0:
            return y.flip(1)
        if v == 1:
            return torch.flip(y, [1])
        if v == 2:
            return torch.roll(y, 1, 1)
        return y.roll(shifts=-2, dims=1)


class ChannelPerm(Mixer):
    """The channels permuted by an index: a buffer, a list, or index_select."""
    kind = "channel_perm"

    def __init__(self, rng, c, hw):
        o = width(rng)
        super().__init__(rng, c, hw, o, o, 3)
        order = list(range(o))
        rng.shuffle(order)
        self.order = order
        self.register_buffer("perm", torch.tensor(order))

    def mix(self, y):
        if self.variant == 0:
            return y[:, self.perm]
        if self.variant == 1:
            return y[:, self.order]
        return torch.index_select(y, 1, self.perm)


class ChannelMatmul(Mixer):
    """A dense mixing of the channels the analysis does not know as a layer: einsum with
    a parameter, or a matmul channels-last."""
    kind = "channel_matmul"

    def __init__(self, rng, c, hw):
        o, p = width(rng), width(rng)
        super().__init__(rng, c, hw, o, p, 2)
        self.mixing = nn.Parameter(torch.randn(p, o) / o ** 0.5)

    def mix(self, y):
        if self.variant == 0:
            return torch.einsum("bchw,dc->bdhw", y, self.mixing)
        return (y.permute(0, 2, 3, 1) @ self.mixing.t()).permute(0, 3, 1, 2)


class ChannelRepeat(Mixer):
    """The channels repeated: tiled by repeat, each twice by repeat_interleave, or a value
    concatenated with itself or with a multiple of itself (the only exact one: the same
    channels twice, prunable together)."""
    kind = "channel_repeat"

    def __init__(self, rng, c, hw):
        o = width(rng, 4, 12)
        super().__init__(rng, c, hw, o, 2 * o, 4)

    def mix(self, y):
        v = self.variant
        if v == 0:
            return y.repeat(1, 2, 1, 1)
        if v == 1:
            return y.repeat_interleave(2, 1)
        if v == 2:
            return torch.cat([y, y], 1)
        return torch.cat([y, y * 2], 1)


class SpatialAttention(Mixer):
    """CBAM's spatial attention: the mean and the maximum over the channels, a conv and a
    sigmoid, the product with the channels (their statistics change when any goes)."""
    kind = "spatial_attention"

    def __init__(self, rng, c, hw):
        o = width(rng)
        super().__init__(rng, c, hw, o, o, 2)
        self.attend = nn.Conv2d(2, 1, 3, padding=1)

    def mix(self, y):
        if self.variant == 0:
            a = torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)
        else:
            a = torch.cat([torch.mean(y, dim=1, keepdim=True), torch.max(y, dim=1, keepdim=True)[0]], dim=1)
        return y * torch.sigmoid(self.attend(a))


class TrainingBranch(Mixer):
    """An op on a branch of ``self.training``, run in training mode only: a statistic over
    the channels or a scale by their count (which the pruned model must not change), a
    channel split of constant sizes concatenated again (an identity), or a plain scale."""
    kind = "training_branch"

    def __init__(self, rng, c, hw):
        o = width(rng)
        super().__init__(rng, c, hw, o, o, 4)
        self.cut = rng.randint(1, o - 1)

    def mix(self, y):
        if not self.training:
            return y
        if self.variant == 0:
            return y - y.mean(1, keepdim=True)
        if self.variant == 1:
            return y * (1.0 / y.size(1))
        if self.variant == 2:
            a, b = y.split([self.cut, self.c_out - self.cut], 1)
            return torch.cat([a, b], 1)
        return y * 0.9


class Head(nn.Module):
    """An output: pool -> flatten -> Linear (maybe a hidden Linear first) in five
    spellings of the pooling, or the value itself (a feature map, or its spatial mean)
    returned as it is, its channels visible to the caller."""

    def __init__(self, rng, c, hw, classes: int = 5, features: bool = False):
        super().__init__()
        self.variant = rng.randrange(2) + 5 if features else rng.randrange(5)
        if self.variant == 4 and c * hw * hw > 2048:
            self.variant = 0
        n_in = {2: 4 * c, 4: c * hw * hw}.get(self.variant, c)
        self.pool = nn.AdaptiveAvgPool2d(2)
        hidden = width(rng, 6, 24) if rng.random() < 0.3 else 0
        layers = [nn.Linear(n_in, hidden), make_act(rng), nn.Linear(hidden, classes)] if hidden \
            else [nn.Linear(n_in, classes)]
        self.fc = nn.Sequential(*layers) if self.variant < 5 else nn.Identity()

    def forward(self, x):
        v = self.variant
        if v == 0:
            return self.fc(x.mean((2, 3)))
        if v == 1:
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        if v == 2:
            y = self.pool(x)   # (reshape: a channels-last input pools to a channels-last y)
            return self.fc(y.reshape(y.size(0), -1))
        if v == 3:
            return self.fc(x.amax(dim=(2, 3)))
        if v == 4:
            return self.fc(x.flatten(1))
        return x if v == 5 else x.mean((2, 3))
