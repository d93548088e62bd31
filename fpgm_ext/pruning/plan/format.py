"""A pruning plan (the channels kept, per group and per module) and its JSON form: its
validation when read, and the fingerprint of the architecture it was made for."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Union

import torch
from torch import nn

from .edits import edit_from_dict

PLAN_FORMAT = "fpgm_ext.plan"
PLAN_VERSION = 1


@dataclass
class Plan:
    """What ``prune`` decided, enough to rebuild the pruned architecture from a fresh model.

    ``modules`` maps a module name to the indices it keeps along each pruned dimension
    (``out``/``in`` for convs, linears and ``PadShortcut``, ``channels`` for BatchNorm and
    PReLU) with the original sizes (``out_size``/``in_size``/``size``), and ``groups`` for a
    grouped conv; a dimension not listed is kept whole. ``groups`` lists the channel groups
    for people to read: members, the units kept (``kept``), or why a group was left alone.
    """
    modules: Dict[str, Dict[str, Any]]
    groups: List[Dict[str, Any]] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)
    # fx node -> the JSON form of an edit of the model's own code (plan/edits.py): a
    # channel split whose sizes change, or a reshape whose head count or width does
    graph: Dict[str, Dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        out = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "meta": self.meta,
               "groups": self.groups, "modules": self.modules}
        if self.graph:
            out["graph"] = self.graph
        return out

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Plan":
        if not isinstance(d, dict) or d.get("format") != PLAN_FORMAT:
            raise ValueError(f"fpgm_ext: not a pruning plan (expected format '{PLAN_FORMAT}')")
        if d.get("version") != PLAN_VERSION:
            raise ValueError(f"fpgm_ext: plan version {d.get('version')} is not supported "
                             f"(this fpgm_ext reads version {PLAN_VERSION})")
        modules = d.get("modules")
        if not isinstance(modules, dict):
            raise ValueError("fpgm_ext: the plan has no 'modules' table")
        for name, entry in modules.items():
            _check_entry(name, entry)
        meta = d.get("meta", {})
        if not isinstance(meta, dict):
            raise ValueError("fpgm_ext: the plan's 'meta' is not a table")
        graph = d.get("graph", {})
        if not isinstance(graph, dict):
            raise ValueError("fpgm_ext: the plan's 'graph' is not a table")
        for name, edit in graph.items():
            _check_edit(name, edit)
        return cls(modules=modules, groups=d.get("groups", []), meta=meta, graph=graph)

    def to_json(self, indent=None) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: Union[str, os.PathLike]) -> None:
        with open(path, "w") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Plan":
        try:
            with open(path) as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"fpgm_ext: {os.fspath(path)} is not a readable pruning plan "
                             f"(truncated or corrupted JSON: {exc})") from None
        try:
            return cls.from_dict(d)
        except ValueError as exc:
            raise ValueError(f"{exc} (in {os.fspath(path)})") from None


def _check_entry(name: str, entry: Any) -> None:
    """One entry of a plan's modules table: its sizes whole numbers, its index lists lists
    of whole numbers (their range is checked against the model by apply_plan)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise ValueError(f"fpgm_ext: the plan's entry for module '{name}' is malformed (no type)")
    for key in ("out", "in", "channels"):
        idx = entry.get(key)
        if idx is not None and (not isinstance(idx, list) or
                                not all(isinstance(i, int) and not isinstance(i, bool) for i in idx)):
            raise ValueError(f"fpgm_ext: the plan's entry for module '{name}' is malformed: "
                             f"'{key}' must be a list of integers")
    for key in ("out_size", "in_size", "size", "groups"):
        v = entry.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"fpgm_ext: the plan's entry for module '{name}' is malformed: "
                             f"'{key}' must be a positive integer")


def _check_edit(name: str, edit: Any) -> None:
    if edit_from_dict(edit) is None:
        raise ValueError(f"fpgm_ext: the plan's graph entry for node '{name}' is malformed")


def architecture(model: nn.Module) -> Dict[str, List[Any]]:
    """The fingerprint a plan keeps of the model it was made for: name -> [type, shape of
    its weight or None] of every module holding tensors of its own (buffers included: a
    PadShortcut's channel map), so that apply_plan can tell another architecture from
    this one."""
    out: Dict[str, List[Any]] = {}
    for name, m in model.named_modules():
        own = next(iter(m.parameters(recurse=False)), None) is not None or \
            next(iter(m.buffers(recurse=False)), None) is not None
        if not own:
            continue
        w = getattr(m, "weight", None)
        out[name] = [type(m).__name__, list(w.shape) if isinstance(w, torch.Tensor) else None]
    return out


def check_architecture(model: nn.Module, plan: "Plan") -> None:
    want = plan.meta.get("architecture")
    if want is None:    # a plan written before fingerprints: the entries are checked alone
        return
    have = architecture(model)
    what = type(model).__name__
    for name, (kind, shape) in want.items():
        got = have.get(name)
        if got is None:
            raise ValueError(f"fpgm_ext.apply_plan: the plan does not fit this {what} (it was made "
                             f"for another architecture): it has a {kind} '{name}', which this "
                             f"{what} does not have")
        if got != [kind, shape]:
            raise ValueError(f"fpgm_ext.apply_plan: the plan does not fit this {what} (it was made "
                             f"for another architecture): '{name}' is a {got[0]} with weight {got[1]} "
                             f"here, a {kind} with weight {shape} in the plan's model")
    extra = next((n for n in have if n not in want), None)
    if extra is not None:
        raise ValueError(f"fpgm_ext.apply_plan: the plan does not fit this {what} (it was made for "
                         f"another architecture): this {what} has a {have[extra][0]} '{extra}', "
                         "which the plan's model did not have")


def as_plan(plan) -> Plan:
    """A ``Plan`` from a Plan, its dict or a JSON file path."""
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, dict):
        return Plan.from_dict(plan)
    if isinstance(plan, (str, os.PathLike)):
        return Plan.load(plan)
    raise TypeError(f"fpgm_ext.apply_plan: plan must be a Plan, a dict or a JSON file path, got {type(plan).__name__}")


