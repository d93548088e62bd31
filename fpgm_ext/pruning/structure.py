"""An analysis read off a model's module structure instead of its graph: for model families
whose code no tracer follows far enough (Hugging Face transformers: torch.fx cannot trace
them, torch.export's graph stops at the embedding) but whose blocks are known by their
modules (a gated MLP's ``gate_proj`` / ``up_proj`` / ``down_proj``; attention's
``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj``). The family names the producers and
consumers of each prunable space; the result is the same ``Analysis`` the graph gives, so
the selection, the plan, the surgery and the report are the graph's. Its tracer is
``"structure"``: like torch.export's, its plans are checked on the model's own code
(checks.py) before the surgery, which catches a block that is not what its modules say.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Sequence

from torch import nn

from .graph.model import Analysis, EqualCounts, Group, Seg, Space, Use
from .outputs import Outputs

TRACER = "structure"


class StructureBuilder:
    """Spaces, the layers that make and read them, and their groups, declared one by one."""

    def __init__(self, model: nn.Module):
        self.modules = dict(model.named_modules())
        self.spaces: List[Space] = []
        self.uses: Dict[str, Use] = {}
        self.groups: List[Group] = []
        self.group_of: Dict[int, int] = {}
        self.equal_counts: List[EqualCounts] = []

    def rows(self, producer: str, size: int, offset: int = 0) -> int:
        """A space: ``size`` output channels (weight rows) of ``producer`` from ``offset``."""
        self.spaces.append(Space(len(self.spaces), size, producer, "linear", offset=offset))
        use = self._use(producer)
        self.uses[producer] = replace(use, out_spaces=use.out_spaces + (self.spaces[-1].id,))
        return self.spaces[-1].id

    def reads(self, consumer: str, spaces: Sequence[int]) -> None:
        """``consumer``'s input features are these spaces, in order (its weight columns)."""
        self.uses[consumer] = replace(self._use(consumer), in_segs=tuple(Seg(s) for s in spaces))

    def _use(self, name: str) -> Use:
        return self.uses.get(name) or Use(name, self.modules[name], "linear")

    def group(self, spaces: Sequence[int], units: int, reasons: Sequence[str] = ()) -> int:
        """The spaces lose the same units: ``units`` equal runs of each space's channels
        (an MLP channel, an attention head)."""
        if any(self.spaces[s].size % units for s in spaces):
            raise ValueError(f"fpgm_ext: spaces of {[self.spaces[s].size for s in spaces]} channels "
                             f"cannot be cut into {units} units")
        gid = len(self.groups)
        self.groups.append(Group(gid, list(spaces), units, False, list(reasons)))
        for s in spaces:
            self.group_of[s] = gid
        return gid

    def equal(self, spaces: Sequence[int], what: str) -> None:
        """The groups of these spaces lose equal numbers of units (query heads from every
        key/value group)."""
        self.equal_counts.append(EqualCounts(what, tuple(spaces)))

    def analysis(self, outputs: Outputs) -> Analysis:
        return Analysis(TRACER, self.spaces, self.uses, self.groups, self.group_of, [],
                        equal_counts=list(self.equal_counts), outputs=outputs)

