"""Edits of the model's own code that a plan carries (``Plan.graph``: fx node -> the JSON
form of one edit), as typed records: a channel split whose pieces change size, and a
reshape whose head count or width does. ``edit_from_dict`` reads and validates one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

SPLIT_OPS = ("split", "narrow", "slice")
RESHAPE_OPS = ("heads", "merge_heads", "channels")


@dataclass(frozen=True)
class SplitEdit:
    """A channel split (``split``/``chunk``, ``narrow``, a slice of dim 1): its pieces'
    new sizes and starts, the old ones (to recognise the node again), the old total, and
    the node's place among the trace's split-like nodes (``rules.split_like``)."""
    op: str
    sizes: Tuple[int, ...]
    starts: Tuple[int, ...]
    was_sizes: Tuple[int, ...]
    was_starts: Tuple[int, ...]
    was_total: int
    index: int

    def to_dict(self) -> Dict[str, Any]:
        return {"op": self.op, "sizes": list(self.sizes), "starts": list(self.starts),
                "was_sizes": list(self.was_sizes), "was_starts": list(self.was_starts),
                "was_total": self.was_total, "index": self.index}


@dataclass(frozen=True)
class ReshapeEdit:
    """A reshape into attention heads (``heads``: the head count), out of them
    (``merge_heads``: the merged width) or a view of a per-channel tensor (``channels``):
    the shape argument at ``arg`` (an index, or an index into a sequence argument) gets
    ``size``; ``was`` is its old constant (None: a size read at run time); ``index`` the
    node's place among the trace's reshapes (``heads.reshape_like``)."""
    op: str
    arg: Tuple[int, ...]
    size: int
    was: Optional[int]
    index: int

    def to_dict(self) -> Dict[str, Any]:
        return {"op": self.op, "index": self.index, "arg": list(self.arg), "was": self.was, "size": self.size}


Edit = Union[SplitEdit, ReshapeEdit]


def _ints(v) -> bool:
    return isinstance(v, list) and all(_int(i) and i >= 0 for i in v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _count(v) -> bool:
    return _int(v) and v >= 1


def edit_from_dict(d: Any) -> Optional[Edit]:
    """The typed edit of one ``Plan.graph`` entry, or None where it is malformed."""
    if not isinstance(d, dict):
        return None
    if d.get("op") in RESHAPE_OPS:
        if not (_ints(d.get("arg")) and len(d["arg"]) in (1, 2) and _count(d.get("size"))
                and (d.get("was") is None or _count(d.get("was"))) and _int(d.get("index"))):
            return None
        return ReshapeEdit(d["op"], tuple(d["arg"]), d["size"], d.get("was"), d["index"])
    keys = ("sizes", "starts", "was_sizes", "was_starts")
    if d.get("op") not in SPLIT_OPS or not all(_ints(d.get(k)) for k in keys) or \
            len({len(d[k]) for k in keys}) != 1 or not all(_int(d.get(k)) for k in ("was_total", "index")):
        return None
    return SplitEdit(d["op"], *(tuple(d[k]) for k in keys), d["was_total"], d["index"])


def edits_of(graph: Dict[str, Any]) -> List[Tuple[str, Edit]]:
    """(node, typed edit) of every entry of a plan's (validated) ``graph``."""
    return [(node, edit_from_dict(d)) for node, d in graph.items()]
