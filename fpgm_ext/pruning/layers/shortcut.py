"""``PadShortcut``, the CIFAR ResNets' parameter-free shortcut, and its handler: a
producer of its own output channels (the streams before and after it are separate
groups), pruned by renumbering its channel map."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..rule import Rule
from .base import Channels, Layer, check_size, kept_indices


class PadShortcut(nn.Module):
    """The parameter-free shortcut of the paper's CIFAR ResNets ("option A", the official
    code's ``DownsampleA``): subsample by ``stride`` (``AvgPool2d(kernel_size=1)``), then
    place the input channels among zero channels, ``out[:, dst] = x[:, src]``. Unpruned,
    ``src = dst = arange(in_channels)``: the input channels first, zeros appended, which is
    ``torch.cat((x, x.mul(0)), 1)`` of the official code.

    Its input and output channels belong to different residual streams, pruned as two
    groups. ``prune`` prunes an output channel that receives an input channel only if that
    input channel is pruned too (the zero-padded output channels are free), so the pruned
    model equals the original with the pruned conv filters and BatchNorm affine zeroed;
    ``apply_plan`` keeps the ``(src, dst)`` pairs whose channels both survive, renumbered.
    ``src`` and ``dst`` are non-persistent buffers: architecture, rebuilt by
    ``fpgm_ext.apply_plan``, not weights.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"PadShortcut: out_channels ({out_channels}) < in_channels ({in_channels})")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.register_buffer("src", torch.arange(in_channels), persistent=False)
        self.register_buffer("dst", torch.arange(in_channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = F.avg_pool2d(x, kernel_size=1, stride=self.stride)
        y = x.index_select(1, self.src)
        out = y.new_zeros((y.shape[0], self.out_channels, y.shape[2], y.shape[3]))
        return out.index_copy(1, self.dst, y)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"mapped={self.src.numel()}")


class Shortcut(Layer):
    """The handler of ``PadShortcut``: its input and output channels are its own spaces;
    the surgery keeps the ``(src, dst)`` pairs whose channels both survive, renumbered."""
    rule = Rule.SHORTCUT

    def analyse(self, A, node, name, m, x):
        return A.shortcut(node, name, m, x, self.channels(m))

    def channels(self, m):
        return Channels(m.in_channels, m.out_channels)

    def plan_entry(self, use, out, inn):
        if out is None and inn is None:
            return None
        entry = {"type": type(use.module).__name__, "out_size": use.module.out_channels,
                 "in_size": use.module.in_channels}
        if out is not None:
            entry["out"] = out
        if inn is not None:
            entry["in"] = inn
        return entry

    def replaced(self, m):
        return ("src", "dst")

    def surgery(self, name, m, entry, batch):
        check_size(name, entry, "in_size", m.in_channels)
        check_size(name, entry, "out_size", m.out_channels)
        dev = m.src.device
        keep_in = kept_indices(entry, "in", m.in_channels, name, dev)
        keep_out = kept_indices(entry, "out", m.out_channels, name, dev)
        src, dst = _renumber(m.src, keep_in, m.in_channels), _renumber(m.dst, keep_out, m.out_channels)
        both = (src >= 0) & (dst >= 0)
        m.src, m.dst = src[both].contiguous(), dst[both].contiguous()
        m.in_channels, m.out_channels = len(keep_in), len(keep_out)


def _renumber(channels: torch.Tensor, kept: torch.Tensor, size: int) -> torch.Tensor:
    """Each channel's index among the kept ones, -1 for a removed one."""
    new = torch.full((size,), -1, dtype=torch.int64, device=channels.device)
    new[kept] = torch.arange(len(kept), device=channels.device)
    return new[channels]
