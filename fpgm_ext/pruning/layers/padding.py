"""Constant padding modules (``nn.ConstantPad*d``, ``nn.ZeroPad*d``): no tensors, and a
zero channel stays zero where the pad value is 0."""
from __future__ import annotations

from .base import Layer


class ConstantPad(Layer):
    rule = "constant_pad"

    def analyse(self, A, node, name, m, x):
        return A.unary(x, m.value == 0, f"{name} (ConstantPad, value {m.value})")

    def plan_entry(self, use, out, inn):
        return None
