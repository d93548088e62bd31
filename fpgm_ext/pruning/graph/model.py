"""What the analysis knows and what it returns: channel spaces, the layout of a graph value
(``Val``, ``Seg``), the modules' places in the channel graph (``Use``), and the result
(``Group``, ``Analysis``). Plain dataclasses, shared by every other file of the package."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from torch import nn

from ..outputs import ALL, Outputs


# A reason that starts with this leaves a group alone only by default: the group's pruning
# changes a normalisation's statistics (a LayerNorm over the channels), which
# ``prune(..., approximate=True)`` accepts, measuring the difference it makes.
APPROXIMATE = "approximate:"


@dataclass
class Space:
    """The output channels of one producer, or a run of them: where the graph needs a
    boundary inside a producer's channels (a residual addition of a concatenation, a
    depthwise conv on one), the analysis cuts them into sub-spaces, each with its own
    group (see ``analyse``)."""
    id: int
    size: Optional[int]
    producer: str            # module name, or a description for inputs and opaque tensors
    kind: str                # conv | linear | shortcut | input | opaque
    reasons: List[str] = field(default_factory=list)  # non-empty: frozen
    offset: int = 0          # its first channel among the producer's output channels


@dataclass(frozen=True)
class Seg:
    space: int
    zero: bool = True        # zero here when the group's pruned channels are zeroed
    via: str = ""            # the op that made it non-zero, when it is not


@dataclass(frozen=True)
class Heads:
    """A value laid out in attention heads (heads.py): each dimension's role ('g' the
    q / k / v group, 'h' the head, 'd' the head's features, '' another), the number of
    groups, of heads and of features per head, and the reshape that made it."""
    roles: Tuple[str, ...]
    groups: int
    heads: int
    dim: int
    node: str
    scores: bool = False   # an attention map q @ k^T (its segs: q's), not a value per channel


@dataclass(frozen=True)
class Radix:
    """A value whose channels are laid out as radix groups (radix.py): each dimension's
    role ('r' the groups, 'c' the channels, '1' a dimension of size 1, '' another) and the
    number of groups, whose segs follow each other in ``Val.segs``."""
    roles: Tuple[str, ...]
    groups: int


@dataclass(frozen=True)
class ParamView:
    """A view of a tensor attribute that spells its channel count as a constant
    (PoolFormer's ``scale.view(self.shape)``): the node, the path of that entry in its
    shape argument, the count; the pruned model's graph gets the new count."""
    node: str
    path: Tuple[int, ...]
    count: int


@dataclass(frozen=True)
class ParamRef:
    """A tensor attribute read by ``get_attr`` (fx), as a value: its qualified name, its
    dim at each of the value's dims (None for a view's size-1 dims), and the view that
    holds its size, if any."""
    name: str
    dims: Tuple[Optional[int], ...]
    view: Optional[ParamView] = None


@dataclass(frozen=True)
class Val:
    """What the analysis knows of one graph value."""
    segs: Tuple[Seg, ...] = ()
    factor: Optional[int] = 1    # features per channel after a flatten (None: not yet known)
    rank: Optional[int] = None
    tensor: bool = True
    last: bool = False           # the segs lay out the LAST dimension, not dim 1: the output
                                 # of a Linear on an input of rank >= 3 (tokens, channels-last)
    heads: Optional[Heads] = None  # the segs are laid out in attention heads (heads.py)
    radix: Optional[Radix] = None  # the segs are laid out in radix groups (radix.py)
    stat: Optional[str] = None     # a statistic over all channels (fx: ``x.mean(dim=C)``), by
                                   # its node: no channels of its own, broadcast over them
    param: Optional[ParamRef] = None   # a tensor attribute read by get_attr (fx)


@dataclass(frozen=True)
class Tup:
    items: Tuple[Any, ...]


NOT_TENSOR = Val(tensor=False)


@dataclass
class Use:
    """One module's place in the channel graph."""
    name: str
    module: nn.Module
    kind: str                         # its rule (conv | linear | bn | gn | ln | prelu | shortcut),
                                      # or "param": a tensor attribute pruned with the channels
    in_segs: Tuple[Seg, ...] = ()     # channels of its input (bn, prelu: its channels)
    factor: int = 1                   # input features per channel (linear after flatten)
    out_spaces: Tuple[int, ...] = ()  # conv, linear, shortcut: its output's spaces, in order
                                      # (one, or the sub-spaces its channels are cut into)
    grouped: bool = False             # conv with groups > 1: input tied to output by group
    out_params: Tuple[str, ...] = ()  # other per-filter tensors pruned with the filters (a
                                      # weight-standardised conv's gain)
    local_groups: bool = False        # grouped conv pruned at the same local indices in
                                      # every conv group, their number kept (analyzer.grouped_conv)


@dataclass(frozen=True)
class ChannelOp:
    """A channel split of an fx graph (split, chunk, narrow, a slice of dim 1) whose
    pieces' sizes change with the pruning: the op (split | narrow | slice), its input's
    segs, each piece's [first, last) seg indices, and the node's place among the graph's
    split-like nodes (``rules.split_like``)."""
    op: str
    segs: Tuple[Seg, ...]
    spans: Tuple[Tuple[int, int], ...]
    index: int


@dataclass(frozen=True)
class EqualCounts:
    """A chunk of an export graph (whose code keeps ``chunk(n)``): its pieces' spaces,
    which must keep equal channel counts (decide.py)."""
    node: str
    spaces: Tuple[int, ...]


@dataclass(frozen=True)
class HeadOp:
    """A reshape of an fx graph whose head count (``heads``), merged width
    (``merge_heads``) or channel count (``channels``: a per-channel tensor's view) changes
    with the pruning: the path of the shape argument, its old constant (None: read at run
    time), a space of the group, features per head, and the node's place among the
    graph's reshapes (``heads.reshape_like``)."""
    op: str
    path: Tuple[int, ...]
    was: Optional[int]
    space: int
    dim: int
    index: int


@dataclass
class Group:
    id: int
    spaces: List[int]
    units: int                # pruning happens in this many equal units per space
    residual: bool            # joined by a residual addition
    reasons: List[str]        # non-empty: left unpruned, and why


@dataclass
class Analysis:
    tracer: str
    spaces: List[Space]
    uses: Dict[str, Use]
    groups: List[Group]
    group_of: Dict[int, int]          # space id -> group id
    unsupported: List[str]            # ops not understood: "op (node): what it froze"
    channel_ops: Dict[str, ChannelOp] = field(default_factory=dict)   # fx node -> its split
    head_ops: Dict[str, HeadOp] = field(default_factory=dict)         # fx node -> its reshape
    param_dims: Dict[str, int] = field(default_factory=dict)   # parameter members -> channel dim
    equal_counts: List[EqualCounts] = field(default_factory=list)   # export chunks
    outputs: Outputs = ALL            # the outputs that keep their channels (../outputs.py)
    _members: Optional[Dict[int, List[str]]] = field(default=None, repr=False, compare=False)

    def producers(self, group: Group) -> List[Use]:
        """The modules whose filters make the group's channels (its scoring members)."""
        return list({id(u): u for u, _ in self.producer_spaces(group)}.values())

    def producer_spaces(self, group: Group) -> List[Tuple[Use, Space]]:
        """(module, space) for every space of the group a conv or linear layer produces:
        the filters of that space are rows [space.offset, space.offset + space.size)."""
        spaces = set(group.spaces)
        return [(u, self.spaces[s]) for u in self.uses.values() if u.kind in ("conv", "linear")
                for s in u.out_spaces if s in spaces]

    def members(self, group: Group) -> List[str]:
        """The modules that touch the group's channels (on either side), in module order."""
        if self._members is None:   # every group's at once: one pass over the modules
            self._members = {g.id: [] for g in self.groups}
            for u in self.uses.values():
                touched = {self.group_of[s] for s in u.out_spaces} | \
                    {self.group_of[seg.space] for seg in u.in_segs}
                for gid in touched:
                    self._members[gid].append(u.name)
        return list(self._members[group.id])
