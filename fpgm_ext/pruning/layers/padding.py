"""Constant padding modules (``nn.ConstantPad*d``, ``nn.ZeroPad*d``): no tensors, and a
zero channel stays zero where the pad value is 0."""
from __future__ import annotations

from ..rule import Rule
from .base import Layer


class ConstantPad(Layer):
    rule = Rule.CONSTANT_PAD

    def analyse(self, A, node, name, m, x):
        return A.unary(x, m.value == 0, f"{name} (ConstantPad, value {m.value})")

    def plan_entry(self, use, out, inn):
        return None
