"""The analysis of one pass over a graph: ``Analyzer`` holds the channel spaces and joins
them (spaces.py), has one method per channel rule (layer_rules.py for layers, which record
the module's ``Use``; tensor_rules.py for tensor ops, which map input layouts to an output
layout), and the state of the fx-only extensions, one record each (state.py). The
visitors (fx.py, export.py, visit.py) decide which rule a node follows."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Set, Tuple

from torch import nn

from ..outputs import ALL
from .layer_rules import LayerRules
from .model import ChannelOp, EqualCounts, HeadOp, Space, Use
from .spaces import SpaceGraph
from .state import NodeIndex, RadixState, SizeState, Standardised
from .tensor_rules import TensorRules


class Analyzer(SpaceGraph, LayerRules, TensorRules):
    """One pass over the graph. ``cuts``: producer -> the offsets at which its output
    channels are cut into sub-spaces (found by earlier passes); a pass that needs more
    boundaries records them in ``requests`` for the next (``analyse`` repeats the pass
    until no new boundary is needed). ``radix``: the producers laid out in radix groups
    found by earlier passes (radix.py)."""

    def __init__(self, model: nn.Module, shapes: Dict[str, Any], tracer: str, names: Dict[str, str],
                 cuts: Optional[Dict[str, Set[int]]] = None, radix: Optional[Set[str]] = None):
        self.model = model
        self.modules = dict(model.named_modules())
        self.shapes = shapes
        self.tracer = tracer
        self.param_names = names          # export: placeholder -> FQN
        self.spaces: List[Space] = []
        self.parent: List[int] = []
        self.ties: List[Tuple[int, int]] = []     # (space, conv groups): unit constraints
        self.residual_edges: List[int] = []       # spaces joined by a residual addition
        self.uses: Dict[str, Use] = {}
        self.unsupported: List[str] = []
        self.vals: Dict[str, Any] = {}
        self.cuts: Dict[str, Set[int]] = cuts or {}
        self.requests: Dict[str, Set[int]] = {}
        self.channel_ops: Dict[str, ChannelOp] = {}   # the channel splits the plan resizes
        self.head_ops: Dict[str, HeadOp] = {}         # the reshapes the plan rewrites
        self.param_dims: Dict[str, int] = {}    # parameter members: qualified name -> channel dim
        self.equal_counts: List[EqualCounts] = []   # export chunks: pieces pruned alike
        self.outputs = ALL        # the outputs that keep their channels (../outputs.py)
        self.out_spec = None      # export: the pytree spec of the graph's flat outputs
        # the fx-only extensions' state
        self.std = Standardised()
        self.radix = RadixState(hint=set(radix or ()))
        self.sizes = SizeState.of(self.vals)
        self.index = NodeIndex()
