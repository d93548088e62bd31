"""Layers the pruner knows by type (beside torch.nn's): traced as leaves, pruned by mapping."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


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


LEAF_TYPES = (PadShortcut,)

def type_name(obj) -> str:
    """A class's module-qualified name (of ``obj``'s class unless ``obj`` is a class):
    how layers of packages this one does not import are named (timm, torchvision)."""
    kind = obj if isinstance(obj, type) else type(obj)
    return f"{kind.__module__}.{kind.__qualname__}"


# BatchNorm with its affine and statistics in buffers (torchvision's detection backbones
# and timm's freeze_batch_norm_2d use it): pruned as a BatchNorm.
FROZEN_BN = frozenset({"torchvision.ops.misc.FrozenBatchNorm2d"})


def is_frozen_bn(m) -> bool:
    return type_name(m) in FROZEN_BN


def bn_channels(m) -> int:
    """A BatchNorm's channel count, frozen ones (no ``num_features``) included."""
    return m.num_features if hasattr(m, "num_features") else m.weight.numel()
