"""Per-layer knowledge of the pruner, one handler per layer kind, and the registry that
maps module types to handlers. A handler (``base.Layer``) says how a module of its kind
joins the channel analysis (the rule it follows), its plan entry, its surgery (in the one
``gather_channels`` batch), its masks, and its weight's size after pruning.

Teaching the pruner a layer of your own (a conv wrapper holding its own weight)::

    from fpgm_ext.pruning import register_layer
    from fpgm_ext.pruning.layers import Conv

    register_layer(MyConv, Conv())   # weight [out, in / groups, *k], bias [out] or None

Files: base.py (``Layer``, ``Surgery``, entry checks), registry.py (``register_layer``,
``handler_for``), conv.py, linear.py, channelwise.py (what per-channel layers share),
norms.py (BatchNorm, GroupNorm, LayerNorm, PReLU), padding.py, shortcut.py
(``PadShortcut``), parameter.py (tensor attributes pruned with the channels they meet),
transposed.py (a linear layer storing ``[in, out]``: GPT-2's ``Conv1D``).
"""
from __future__ import annotations

from torch import nn

from .base import Channels, Layer, LayerCall, Surgery, replace_tensor
from .channelwise import Channelwise
from .conv import Conv
from .linear import Linear
from .norms import BatchNorm, GroupNorm, LayerNorm, PReLU
from .padding import ConstantPad
from .parameter import ENTRY_TYPES as TENSOR_ENTRY_TYPES, TENSOR_MEMBER
from .registry import (handler_computing, handler_for, is_leaf, register_layer, registered_handlers, rule_of,
                       type_name, unregister_layer)
from .shortcut import PadShortcut, Shortcut
from .transposed import TransposedLinear

__all__ = ["Layer", "LayerCall", "handler_computing", "Channels", "Surgery", "Channelwise", "Conv", "Linear", "BatchNorm", "GroupNorm",
           "LayerNorm", "PReLU", "ConstantPad", "TransposedLinear", "Shortcut", "PadShortcut", "register_layer", "unregister_layer", "handler_for",
           "rule_of", "is_leaf", "registered_handlers", "type_name", "replace_tensor", "TENSOR_MEMBER",
           "TENSOR_ENTRY_TYPES"]


def _register_builtins() -> None:
    for kind in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        register_layer(kind, Conv())
    register_layer(nn.Linear, Linear())
    for kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
        register_layer(kind, BatchNorm())
    register_layer(nn.GroupNorm, GroupNorm())
    register_layer(nn.LayerNorm, LayerNorm())
    register_layer(nn.PReLU, PReLU())
    for kind in (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d,
                 nn.ZeroPad3d):   # (ZeroPad: a ConstantPad of value 0)
        register_layer(kind, ConstantPad())
    register_layer(PadShortcut, Shortcut())
    # Named, not imported: BatchNorm with its affine and statistics in buffers (torchvision's
    # detection backbones, timm's freeze_batch_norm_2d), and timm's "same"-padding conv,
    # which computes its padding from the input's shape in Python (fx cannot trace it; the
    # padding keeps a zero channel zero).
    register_layer("torchvision.ops.misc.FrozenBatchNorm2d", BatchNorm())
    register_layer("timm.layers.conv2d_same.Conv2dSame", Conv())
    register_layer("transformers.pytorch_utils.Conv1D", TransposedLinear())   # GPT-2's [in, out] linear


_register_builtins()
