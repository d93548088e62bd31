"""Blocks of the random architectures (tests/random_arch.py) that spell what hybrid CNN /
transformer models write (tests/test_prune_hybrid.py has one model of each): tokens
[B, H*W, C] through a Linear MLP and put back as an image in the ways PVT, SegFormer and
hybrid stems do, per-channel layer scales broadcast by indexing with None or by
unsqueeze, and squeeze-excitation through Linear layers broadcast back over the image;
each with near misses the analysis must leave alone (a reshape that mixes the channels
with space, a scale that is not one entry per channel)."""
from __future__ import annotations

import torch
from torch import nn

from random_blocks import Block, ConvBNAct, Fn, Method, make_act, width


class TokenImage(Block):
    """An image to tokens (flatten and transpose, reshape and permute, a channels-last
    view), a Linear MLP on the tokens (maybe a residual in token space), back to an image
    (transpose or permute, then reshape, view or unflatten, the sizes read at run time;
    a channels-last view), maybe a residual across the two layouts. Near misses: the
    tokens reshaped to an image without their transpose (the channels mixed with space),
    and a channel count written as a constant."""
    kind = "token_image"
    BACK = 7   # spellings of the way back

    def __init__(self, rng, c, hw):
        self.residual = rng.random() < 0.5
        c_out = c if self.residual else width(rng)
        super().__init__(c_out, hw, rng.randrange(self.BACK))
        self.to_tokens = rng.randrange(3)
        self.token_residual = c_out == c and rng.random() < 0.3
        hidden = width(rng, 4, 32)
        self.fc1, self.act, self.fc2 = nn.Linear(c, hidden), make_act(rng), nn.Linear(hidden, c_out)

    def tokens(self, x):
        B, C, H, W = x.shape
        if self.to_tokens == 0:
            return x.flatten(2).transpose(1, 2)
        if self.to_tokens == 1:
            return x.reshape(B, C, H * W).permute(0, 2, 1)
        return x.permute(0, 2, 3, 1).reshape(B, H * W, C)

    def image(self, t, H, W):
        B, N, C = t.shape
        v = self.variant
        if v == 0:
            return t.transpose(1, 2).reshape(B, C, H, W)
        if v == 1:
            return t.permute(0, 2, 1).contiguous().view(B, -1, H, W)
        if v == 2:
            return t.transpose(1, 2).unflatten(2, (H, W))
        if v == 3:
            return t.view(B, H, W, C).permute(0, 3, 1, 2)
        if v == 4:
            return t.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
        if v == 5:   # near miss: no transpose, so each "channel" is a run of token features
            return t.reshape(B, C, H, W)
        return t.transpose(1, 2).reshape(B, self.c_out, H, W)   # near miss: a constant count

    def forward(self, x):
        H, W = x.shape[2:]
        t = self.tokens(x)
        y = self.fc2(self.act(self.fc1(t)))
        if self.token_residual:
            y = t + y
        y = self.image(y, H, W)
        return x + y if self.residual else y


class ScaleIndex(Block):
    """x + gamma * body(x) with gamma broadcast over the image by indexing with None, an
    Ellipsis or unsqueeze, or on tokens ([None, None, :]). Near misses: gamma of one entry
    (the same for every channel: no member, the channels still pruned), a slice of a
    longer gamma, one entry per row."""
    kind = "layer_scale_index"

    def __init__(self, rng, c, hw):
        super().__init__(c, hw, rng.randrange(8))
        self.body = ConvBNAct(rng, c, c)
        size = {5: 1, 6: c + 3, 7: hw}.get(self.variant, c)
        self.gamma = nn.Parameter(torch.randn(size))

    def scale(self, y):
        g, v = self.gamma, self.variant
        if v == 0:
            return y * g[None, :, None, None]
        if v == 1:
            return g[:, None, None] * y
        if v == 2:
            return y * g[None, ..., None, None]
        if v == 3:
            return y.mul(g.unsqueeze(0).unsqueeze(2).unsqueeze(3))
        if v == 4:   # on tokens
            B, C, H, W = y.shape
            t = y.flatten(2).transpose(1, 2) * g[None, None, :]
            return t.transpose(1, 2).reshape(B, C, H, W)
        if v == 5:
            return y * g[None, :, None, None]       # one entry: broadcast over the channels
        if v == 6:
            return y * g[None, :self.c_out, None, None]
        return y * g[None, None, :, None]           # one entry per row

    def forward(self, x):
        return x + self.scale(self.body(x))


class SqueezeLinear(Block):
    """x * gate(fc2(act(fc1(x.mean((2, 3)))))) broadcast back over the image: [..., None,
    None], a reshape with the sizes read from x, unsqueeze(2).unsqueeze(3), [:, :, None]
    on the flattened image. Near misses: the scale's mean over its channels (one number
    per sample), and the scale broadcast over the rows (where there are as many)."""
    kind = "squeeze_linear"

    def __init__(self, rng, c, hw):
        variants = 6 if c == hw else 5
        super().__init__(c, hw, rng.randrange(variants))
        r = width(rng, 2, max(2, c // 2))
        self.fc1, self.act, self.fc2 = nn.Linear(c, r), make_act(rng), nn.Linear(r, c)
        self.gate = rng.choice((nn.Sigmoid(), Fn("sigmoid"), Method("sigmoid"), nn.Identity()))

    def forward(self, x):
        s = self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3))))))
        b, c, h, w = x.shape
        v = self.variant
        if v == 0:
            return x * s[..., None, None]
        if v == 1:
            return x * s.reshape(b, c, 1, 1)
        if v == 2:
            return s.unsqueeze(2).unsqueeze(3) * x
        if v == 3:
            return (x.flatten(2) * s[:, :, None]).view(b, c, h, w)
        if v == 4:   # near miss: a statistic over the scale's channels
            return x * s.mean(1)[:, None, None, None]
        return x * s[:, None, :, None]               # near miss: a scale per row
