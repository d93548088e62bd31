"""What ``prune`` did: measured FLOPs and parameters before and after (per layer and in
total), the channel groups and what each kept, the patterns left alone, and timings."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .plan import Plan


@dataclass
class LayerStat:
    name: str
    type: str
    channels_before: str           # "in -> out"
    channels_after: str
    flops_before: Optional[int]
    flops_after: Optional[int]
    params_before: int
    params_after: int


@dataclass
class PruneReport:
    plan: Plan
    tracer: str                                   # "fx" or "export"
    flops_before: Optional[int]                   # None without example_inputs
    flops_after: Optional[int]
    params_before: int
    params_after: int
    layers: List[LayerStat]
    unsupported: List[str]                        # ops the analysis did not understand
    timings: Dict[str, float] = field(default_factory=dict)
    target: Optional[Any] = None                  # target.TargetResult with target_flops/_params
    tracer_note: str = ""                         # trace="auto": why this tracer's analysis
    outputs_note: str = ""                        # outputs that may lose channels (outputs.py)

    @property
    def groups(self) -> List[Dict[str, Any]]:
        return self.plan.groups

    @property
    def flops_reduction(self) -> Optional[float]:
        """Fraction of the FLOPs removed (0.4 = 40 % fewer)."""
        if not self.flops_before:
            return None
        return 1.0 - self.flops_after / self.flops_before

    @property
    def params_reduction(self) -> float:
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def approximate(self) -> List[Dict[str, Any]]:
        """Groups pruned approximately (``approximate=True``): ``approximate`` says why,
        ``output_difference`` is the measured difference (see ``prune``)."""
        return [g for g in self.groups if g.get("approximate") and g["kept"] is not None]

    @property
    def left_alone(self) -> List[Dict[str, Any]]:
        """Groups left unpruned, with the reasons."""
        return [g for g in self.groups if g["left_alone"]]

    def summary(self) -> str:
        pruned = [g for g in self.groups if g["kept"] is not None]
        lines = [f"fpgm_ext.prune ({self.plan.meta.get('model', '?')}, traced with {self.tracer}): "
                 f"{len(pruned)} of {len(self.groups)} channel groups pruned"]
        if self.flops_before is not None:
            lines.append(f"  FLOPs  {self.flops_before:,} -> {self.flops_after:,} "
                         f"({100 * self.flops_reduction:.1f} % fewer, measured)")
        lines.append(f"  params {self.params_before:,} -> {self.params_after:,} "
                     f"({100 * self.params_reduction:.1f} % fewer)")
        for note in (self.tracer_note, self.outputs_note):
            if note:
                lines.append("  " + note)
        if self.target is not None:
            lines.append("  " + self.target.summary())
        for g in self.approximate:
            who = ", ".join(g["producers"][:3]) + (" ..." if len(g["producers"]) > 3 else "")
            diff = g.get("output_difference")
            measured = f"output difference {diff:.2e} of the largest output" if diff is not None else \
                "output difference not measured (no example_inputs)"
            lines.append(f"  approximate: [{who}]: {measured}; {g['approximate']}")
        for g in self.left_alone:
            who = ", ".join(g["producers"][:3]) + (" ..." if len(g["producers"]) > 3 else "")
            lines.append(f"  left alone: [{who}]: {g['left_alone']}")
        if self.unsupported:
            lines.append("  unsupported ops: " + "; ".join(dict.fromkeys(self.unsupported)))
        if self.timings:
            lines.append("  time: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in self.timings.items()))
        return "\n".join(lines)

    __str__ = summary

    def to_markdown(self, layers: bool = True) -> str:
        def num(v):
            return "-" if v is None else f"{v:,}"

        out = [self.summary(), ""]
        if layers:
            out += ["| layer | type | channels before | after | FLOPs before | after | params before | after |",
                    "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"]
            for s in self.layers:
                out.append(f"| {s.name} | {s.type} | {s.channels_before} | {s.channels_after} | "
                           f"{num(s.flops_before)} | {num(s.flops_after)} | {num(s.params_before)} | "
                           f"{num(s.params_after)} |")
            out.append(f"| **total** | | | | {num(self.flops_before)} | {num(self.flops_after)} | "
                       f"{num(self.params_before)} | {num(self.params_after)} |")
        return "\n".join(out)
