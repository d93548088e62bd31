"""Linear layers (``nn.Linear`` and any layer registered with ``Linear``): a weight
``[out, in]`` whose rows make a new channel space, on ``[N, features]`` inputs (a flatten's
features expanded per channel) or on the last dimension of tokens and channels-last
layouts; the surgery is a conv's with one group."""
from __future__ import annotations

from ..rule import Rule
from .conv import Conv


class Linear(Conv):
    """A linear layer: ``weight`` ``[out, in]``, ``bias`` ``[out]`` or None."""
    rule = Rule.LINEAR
    size_attrs = ("out_features", "in_features")

    def analyse(self, A, node, name, m, x):
        return A.linear(node, name, m, x, self.channels(m))
