"""The state of the fx-only extensions of the analysis, one record each, held by the
``Analyzer`` of a pass: weight-standardised convs (fx.py), radix groups (radix.py),
channel counts read at run time (sizes.py), and the places of the nodes that the plan
finds again in another trace (nodes.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Set, Tuple

from torch import nn

from .model import Seg
from .nodes import reshape_like, split_like
from .sizes import SizeReads


@dataclass
class Standardised:
    """Weight-standardised convs: conv node -> (module name, module, its per-filter
    tensors), and the nodes that compute their weights (not activations: no channels)."""
    convs: Dict[str, Tuple[str, nn.Module, Tuple[str, ...]]] = field(default_factory=dict)
    weight_nodes: Set[str] = field(default_factory=set)


@dataclass
class RadixState:
    """Producers whose channels are laid out in radix groups: ``hint`` found by earlier
    passes (a grouped conv comes before the reshape that shows it), ``found`` by this one."""
    hint: Set[str] = field(default_factory=set)
    found: Set[str] = field(default_factory=set)


@dataclass
class SizeState:
    """Channel counts read at run time: where sizes come from (``reads``), the (size node,
    user node) reads the rules approved (``ok``), and the reshapes whose count is read from
    another tensor, checked to be joined with it after the walk (``links``)."""
    reads: SizeReads
    ok: Set[Tuple[str, str]] = field(default_factory=set)
    links: List[Tuple[Tuple[Seg, ...], Tuple[Seg, ...], str]] = field(default_factory=list)

    @classmethod
    def of(cls, vals) -> "SizeState":
        return cls(SizeReads(vals))


@dataclass
class NodeIndex:
    """fx node -> its place among the trace's split-like nodes and among its reshapes."""
    splits: Dict[str, int] = field(default_factory=dict)
    reshapes: Dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, graph) -> "NodeIndex":
        return cls({n.name: k for k, n in enumerate(n for n in graph.nodes if split_like(n))},
                   {n.name: k for k, n in enumerate(n for n in graph.nodes if reshape_like(n))})
