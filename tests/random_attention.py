"""Blocks of the random architectures (tests/random_arch.py) whose channels come in
groups the analysis rewrites: attention heads on the pixels as tokens (timm's spellings:
one qkv Linear or q and kv, unbind or indexing, fused or spelled-out attention, three
merges back), and radix groups (SKNet's selective kernel, ResNeSt's split attention)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from random_blocks import Block, ConvBNAct, width


class Attention(Block):
    """x + proj(attention(qkv(tokens))) on the pixels of x as tokens [B, HW, C], back to
    [B, C, H, W]; ``qkv``, ``attend`` and ``merge`` pick the spellings."""
    kind = "attention"

    def __init__(self, rng, c, hw):
        super().__init__(c, hw)
        self.heads, self.head_dim = rng.randint(1, 4), rng.randint(2, 6)
        inner = self.heads * self.head_dim
        self.qkv_spelling = rng.choice(("unbind", "index", "split_kv"))
        self.attend = rng.choice(("sdpa", "manual"))
        self.merge = rng.choice(("flatten", "constant", "shape"))
        self.qkv = nn.Linear(c, 3 * inner)
        self.q, self.kv = nn.Linear(c, inner), nn.Linear(c, 2 * inner)
        self.q_norm = nn.LayerNorm(self.head_dim) if rng.random() < 0.3 else nn.Identity()
        self.proj = nn.Linear(inner, c)

    def qkv_heads(self, t):
        B, N, _ = t.shape
        h, d = self.heads, self.head_dim
        if self.qkv_spelling == "split_kv":
            q = self.q(t).reshape(B, N, h, d).transpose(1, 2)
            kv = self.kv(t).reshape(B, N, 2, h, d).permute(2, 0, 3, 1, 4)
            return q, kv[0], kv[1]
        qkv = self.qkv(t).reshape(B, N, 3, h, d).permute(2, 0, 3, 1, 4)
        if self.qkv_spelling == "unbind":
            return qkv.unbind(0)
        return qkv[0], qkv[1], qkv[2]

    def forward(self, x):
        b, c, hh, ww = x.shape
        t = x.flatten(2).transpose(1, 2)
        B, N, C = t.shape
        q, k, v = self.qkv_heads(t)
        q = self.q_norm(q)
        if self.attend == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v)
        else:
            y = ((q * self.head_dim ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        y = y.transpose(1, 2)
        if self.merge == "flatten":
            y = y.flatten(2)
        elif self.merge == "constant":
            y = y.reshape(B, N, self.heads * self.head_dim)
        else:
            y = y.reshape(B, N, -1)
        t = t + self.proj(y)
        return t.transpose(1, 2).reshape(b, c, hh, ww)


class Radix(Block):
    """Radix groups: SKNet's paths stacked, attention from their sum, a softmax over the
    paths, the weighted sum (variant 0); ResNeSt's grouped conv reshaped into radix
    groups, the attention's softmax after a transpose (variant 1)."""
    kind = "radix"

    def __init__(self, rng, c, hw):
        o, r = width(rng, 4, 12), 2
        super().__init__(o, hw, rng.randrange(2) if c % r == 0 else 0)
        self.radix = r
        self.paths = nn.ModuleList([ConvBNAct(rng, c, o, 3), ConvBNAct(rng, c, o, 1)])
        self.conv = ConvBNAct(rng, c, o * r, 3, groups=r) if self.variant == 1 else nn.Identity()
        inner = width(rng, 4, 8)
        self.fc_reduce = ConvBNAct(rng, o, inner, 1)
        self.fc_select = nn.Conv2d(inner, o * r, 1)

    def forward(self, x):
        if self.variant == 0:
            paths = torch.stack([p(x) for p in self.paths], dim=1)
            s = paths.sum(1).mean((2, 3), keepdim=True)
            a = self.fc_select(self.fc_reduce(s))
            B, RC, H, W = a.shape
            a = a.view(B, self.radix, RC // self.radix, H, W).softmax(dim=1)
            return (paths * a).sum(dim=1)
        x = self.conv(x)
        B, RC = x.shape[:2]
        x = x.reshape(B, self.radix, RC // self.radix, x.shape[2], x.shape[3])
        a = self.fc_select(self.fc_reduce(x.sum(dim=1).mean((2, 3), keepdim=True)))
        a = a.view(B, 1, self.radix, -1).transpose(1, 2)
        a = F.softmax(a, dim=1).reshape(B, -1).view(B, -1, 1, 1)
        a = a.reshape(B, self.radix, RC // self.radix, 1, 1)
        return (x * a).sum(dim=1).contiguous()
