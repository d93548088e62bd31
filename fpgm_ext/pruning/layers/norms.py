"""Normalisation layers with per-channel tensors: BatchNorm (torch's, and frozen ones that
keep their affine and statistics in buffers: torchvision's FrozenBatchNorm2d), GroupNorm
(whole GN groups go or stay; one group is a LayerNorm over the channels: approximate) and
LayerNorm over the channels (approximate: its statistics change)."""
from __future__ import annotations

import torch
from torch import nn

from ..rule import Rule
from .channelwise import Channelwise


class BatchNorm(Channelwise):
    """A BatchNorm: ``weight``, ``bias``, ``running_mean``, ``running_var`` per channel;
    its pruned channels' affine zeroed, a zero channel comes out zero (without affine it
    comes out as ``-mean / std``: non-zero)."""
    rule = Rule.BN
    tensors = ("weight", "bias", "running_mean", "running_var")

    def size(self, m):
        return m.num_features if hasattr(m, "num_features") else m.weight.numel()

    def computes(self, m, call):
        return getattr(m, "num_features", None) is not None and (call.affine is None or call.affine == m.affine)

    def analyse(self, A, node, name, m, x):
        if getattr(m, "num_features", 0) is None:   # a lazy BatchNorm not yet initialised
            return A.unknown(node, type(m).__name__, x)
        return A.channelwise(node, name, m, x, "bn", self.size(m), getattr(m, "affine", True),
                             f"{name} (BatchNorm without affine)")

    def device(self, name, m, own):
        if not own:
            raise ValueError(f"fpgm_ext.apply_plan: {name} has no per-channel tensors to prune")
        return next(iter(own.values())).device

    def resize(self, m, n):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):   # (frozen ones have no count)
            m.num_features = n


class GroupNorm(Channelwise):
    """A GroupNorm: a GN group's statistics are its own channels', so whole GN groups are
    pruned exactly; with one group it normalises over all channels (approximate)."""
    rule = Rule.GN

    def size(self, m):
        return m.num_channels

    def computes(self, m, call):
        return (call.groups is None or call.groups == m.num_groups) and (call.affine is None or call.affine == m.affine)

    def analyse(self, A, node, name, m, x):
        return A.group_norm(node, name, m, x, m.num_channels, m.num_groups, m.affine)

    def device(self, name, m, own):
        return m.weight.device if m.affine else torch.device("cpu")

    def check_kept(self, name, m, idx):
        if m.num_groups == 1:   # approximate: any channels
            return
        per = m.num_channels // m.num_groups
        whole = idx.reshape(-1, per) if len(idx) % per == 0 else None
        if whole is None or not bool(((whole[:, :1] % per == 0) &
                                      (whole == whole[:, :1] + torch.arange(per, device=idx.device))).all()):
            raise ValueError(f"fpgm_ext.apply_plan: the plan's channels of {name} are not whole "
                             f"groups of its {m.num_groups} groups of {per}")

    def resize(self, m, n):
        per = m.num_channels // m.num_groups
        m.num_channels, m.num_groups = n, (1 if m.num_groups == 1 else n // per)


class LayerNorm(Channelwise):
    """A LayerNorm over the channels (``[B, C]`` or the last dimension of tokens and
    channels-last layouts): per-channel ``weight`` and ``bias``, statistics over all the
    channels (approximate: pruned only with ``approximate=True``)."""
    rule = Rule.LN

    def size(self, m):
        return m.normalized_shape[0]

    def computes(self, m, call):
        return call.normalized_shape is None or tuple(call.normalized_shape) == tuple(m.normalized_shape)

    def analyse(self, A, node, name, m, x):
        return A.layer_norm(node, name, m, x, tuple(m.normalized_shape), getattr(m, "weight", None) is not None)

    def surgery(self, name, m, entry, batch):
        if len(m.normalized_shape) != 1:
            raise ValueError(f"fpgm_ext.apply_plan: {name} normalises over {tuple(m.normalized_shape)}, "
                             "not one channel dimension")
        super().surgery(name, m, entry, batch)

    def resize(self, m, n):
        m.normalized_shape = (n,)


class PReLU(Channelwise):
    """A PReLU: one slope per channel (a single slope is shared: the channels pass)."""
    rule = Rule.PRELU
    tensors = ("weight",)

    def size(self, m):
        return m.num_parameters

    def analyse(self, A, node, name, m, x):
        if m.num_parameters == 1:
            return x
        return A.channelwise(node, name, m, x, "prelu", m.num_parameters, False, "")

    def resize(self, m, n):
        m.num_parameters = n
