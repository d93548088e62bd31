"""Which of a model's outputs the pruned model must give by value. All of them, unless the
caller selects some (``prune(..., outputs=lambda out: out[0])``) or the model's family
returns feature maps that its users read for their shapes only: the outputs left out may
lose channels like any inner tensor, and the report says so.

Ultralytics' detection heads return the feature maps they were given (``"feats"``, next to
the boxes and scores): the loss reads their heights and widths to place anchors, never their
channels. Left as outputs, they would freeze the three widest layers of the neck
(fpgm_ext.integrations.ultralytics selects the rest; families.py finds it).

A selection is a function of the outputs that picks some of them (indexing, keys,
attributes; new tuples, lists and dicts of them). It is applied to the outputs' structure
with a marker in place of each tensor (``torch.utils._pytree``): the same structure in the
model's eager outputs, in an fx graph's returned value and in torch.export's flat outputs
with their spec, so the one function serves the analysis and the checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence

import torch.utils._pytree as pytree


class _Leaf:
    """The marker of one output leaf while a selection runs."""
    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index


def _everything(out):
    return out


@dataclass(frozen=True)
class Outputs:
    """``select(outputs)``: the outputs the pruned model must give by value (channels kept,
    values compared); the others may lose channels. ``note``: what the report says."""
    select: Callable[[Any], Any] = _everything
    note: str = ""

    def kept(self, structure) -> List[Any]:
        """The leaves of ``structure`` (outputs, or an fx output node's mapped arguments)
        that the selection keeps, in order."""
        leaves, spec = pytree.tree_flatten(structure)
        return [leaves[i] for i in self._chosen(spec)]

    def kept_flat(self, flat: Sequence[Any], spec: Optional[pytree.TreeSpec]) -> List[Any]:
        """The same for flat outputs with their spec (torch.export's output node); every
        leaf where the spec does not match them."""
        if spec is None or spec.num_leaves != len(flat):
            return list(flat)
        return [flat[i] for i in self._chosen(spec)]

    def _chosen(self, spec: pytree.TreeSpec) -> List[int]:
        if self.select is _everything:
            return list(range(spec.num_leaves))
        must = "fpgm_ext.prune: outputs= must pick parts of the model's outputs (index, key, attribute)"
        try:
            picked = self.select(pytree.tree_unflatten([_Leaf(i) for i in range(spec.num_leaves)], spec))
        except Exception as exc:   # noqa: BLE001 - a computation on the outputs, said in one line
            raise TypeError(f"{must}: it raised {type(exc).__name__}: {exc}") from None
        chosen = set()
        for leaf in pytree.tree_leaves(picked):
            if not isinstance(leaf, _Leaf):
                raise TypeError(f"{must}, got {type(leaf).__name__}")
            chosen.add(leaf.index)
        return sorted(chosen)


ALL = Outputs()

def selected(select: Callable[[Any], Any]) -> Outputs:
    """The ``Outputs`` of ``prune(..., outputs=select)``."""
    if not callable(select):
        raise TypeError(f"fpgm_ext.prune: outputs= takes a function of the model's outputs, "
                        f"got {type(select).__name__}")
    return Outputs(select, "outputs= selects the outputs compared by value; the others may lose channels")
