"""A pruning plan (the channels kept, per group and per module), its JSON form, and
``apply_plan``: the weight surgery, all of it in one ``gather_channels`` call."""
from __future__ import annotations

import copy
import json
import operator
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Union

import torch
from torch import nn

from ..ops import gather_channels as _gather_channels
from .layers import PadShortcut, bn_channels, is_frozen_bn

PLAN_FORMAT = "fpgm_ext.plan"
PLAN_VERSION = 1

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


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
    # fx node -> {"op": split | narrow | slice, "sizes", "starts", "was_sizes", "was_starts"}:
    # the channel splits of the model's own code whose sizes change (see _rewrite_graph)
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
    ints = lambda v: isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0  # noqa: E731
                                                 for i in v)
    count = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
    if isinstance(edit, dict) and edit.get("op") in ("heads", "merge_heads", "channels"):
        if not (ints(edit.get("arg")) and len(edit["arg"]) in (1, 2) and count(edit.get("size"))
                and (edit.get("was") is None or count(edit.get("was")))
                and isinstance(edit.get("index"), int) and not isinstance(edit.get("index"), bool)):
            raise ValueError(f"fpgm_ext: the plan's graph entry for node '{name}' is malformed")
        return
    if not isinstance(edit, dict) or edit.get("op") not in ("split", "narrow", "slice") or \
            not all(ints(edit.get(k)) for k in ("sizes", "starts", "was_sizes", "was_starts")) or \
            len({len(edit[k]) for k in ("sizes", "starts", "was_sizes", "was_starts")}) != 1 or \
            not all(isinstance(edit.get(k), int) and not isinstance(edit.get(k), bool)
                    for k in ("was_total", "index")):
        raise ValueError(f"fpgm_ext: the plan's graph entry for node '{name}' is malformed")


def architecture(model: nn.Module) -> Dict[str, List[Any]]:
    """The fingerprint a plan keeps of the model it was made for: name -> [type, shape of
    its weight or None] of every module holding tensors of its own (and every
    PadShortcut), so that apply_plan can tell another architecture from this one."""
    out: Dict[str, List[Any]] = {}
    for name, m in model.named_modules():
        own = next(iter(m.parameters(recurse=False)), None) is not None or \
            next(iter(m.buffers(recurse=False)), None) is not None
        if not own and not isinstance(m, PadShortcut):
            continue
        w = getattr(m, "weight", None)
        out[name] = [type(m).__name__, list(w.shape) if isinstance(w, torch.Tensor) else None]
    return out


def _check_architecture(model: nn.Module, plan: "Plan") -> None:
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


def _as_plan(plan) -> Plan:
    if isinstance(plan, Plan):
        return plan
    if isinstance(plan, dict):
        return Plan.from_dict(plan)
    if isinstance(plan, (str, os.PathLike)):
        return Plan.load(plan)
    raise TypeError(f"fpgm_ext.apply_plan: plan must be a Plan, a dict or a JSON file path, got {type(plan).__name__}")


def _indices(entry, key, size, name, device) -> torch.Tensor:
    idx = entry.get(key)
    if idx is None:
        return torch.arange(size, device=device)
    t = torch.as_tensor(idx, dtype=torch.int64)
    if t.dim() != 1 or t.numel() == 0 or int(t.min()) < 0 or int(t.max()) >= size:
        raise ValueError(f"fpgm_ext.apply_plan: the plan's '{key}' indices of {name} do not fit its size {size}")
    if t.numel() > 1 and not bool((t[1:] > t[:-1]).all()):
        raise ValueError(f"fpgm_ext.apply_plan: the plan's '{key}' indices of {name} are not "
                         "increasing (each kept channel once, in order)")
    return t.to(device)


def _check_size(name, entry, key, actual):
    want = entry.get(key)
    if want is not None and want != actual:
        raise ValueError(f"fpgm_ext.apply_plan: the plan does not fit this model: {name} has {key} "
                         f"{actual}, the plan was made for {want}")


def _replaced_tensors(module: nn.Module) -> tuple:
    """The attributes of a planned module that the surgery replaces by gathered tensors."""
    if isinstance(module, (_CONV, nn.Linear)):
        return ("weight", "bias")
    if isinstance(module, (_BN, nn.PReLU)) or is_frozen_bn(module):
        return ("weight", "bias", "running_mean", "running_var")
    if isinstance(module, nn.GroupNorm):
        return ("weight", "bias")
    if isinstance(module, PadShortcut):
        return ("src", "dst")
    return ()


def _copy_for_surgery(model: nn.Module, plan: Plan) -> nn.Module:
    """A deep copy of ``model`` that does not copy the tensors the surgery is about to
    replace (the copy refers to the original's until then, and never writes to them):
    the pruned model is built from the original's tensors, not from a copy of them. A
    tensor held in more than one place (tied weights) is copied as usual."""
    modules = dict(model.named_modules())
    held: Dict[int, int] = {}
    for _, t in list(model.named_parameters(remove_duplicate=False)) + \
            list(model.named_buffers(remove_duplicate=False)):
        held[id(t)] = held.get(id(t), 0) + 1
    memo: Dict[int, Any] = {}
    for name in plan.modules:
        m = modules.get(name)
        for attr in _replaced_tensors(m) if m is not None else ():
            t = getattr(m, attr, None)
            if isinstance(t, torch.Tensor) and held.get(id(t)) == 1:
                memo[id(t)] = t
    return _deepcopy(model, memo)


_SHARED = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


def _plain_module(cls) -> bool:
    """A module class that ``copy.deepcopy`` copies the generic way: a new instance whose
    ``__setstate__`` gets a deep copy of ``__getstate__`` (no custom copy or pickling)."""
    return (getattr(cls, "__deepcopy__", None) is None and cls.__reduce_ex__ is object.__reduce_ex__
            and cls.__reduce__ is object.__reduce__ and cls.__getstate__ is nn.Module.__getstate__
            and cls.__setstate__ is nn.Module.__setstate__)


def _deepcopy(value, memo: Dict[int, Any]):
    """``copy.deepcopy(value, memo)``, the same copy, in a fraction of the time for a tree
    of plain modules: deepcopy's generic path (``__reduce_ex__``, ``_reconstruct``, a dozen
    hook dicts per module, mostly empty) is most of the cost of copying a model whose
    large tensors the surgery replaces anyway. Anything else goes to ``copy.deepcopy``."""
    if isinstance(value, _SHARED):
        return value   # deepcopy returns these as they are
    found = memo.get(id(value))
    if found is not None:
        return found
    cls = type(value)
    if isinstance(value, nn.Module) and _plain_module(cls):
        new = cls.__new__(cls)
        memo[id(value)] = new
        new.__setstate__({k: _deepcopy(v, memo) for k, v in value.__getstate__().items()})
        return new
    if cls in (dict, OrderedDict) and all(type(k) is str for k in value):
        new = cls()
        memo[id(value)] = new
        for k, v in value.items():
            new[k] = _deepcopy(v, memo)
        return new
    return copy.deepcopy(value, memo)


def apply_plan(model: nn.Module, plan, *, inplace: bool = False, ops=None) -> nn.Module:
    """Rebuilds the pruned architecture that ``plan`` describes from ``model`` (the same
    architecture, unpruned: e.g. a fresh instance, so that the pruned ``state_dict`` loads
    into the result), and returns it. ``plan`` is a ``Plan``, its dict, or a JSON file path.

    A copy is pruned unless ``inplace=True``. Every weight, bias and BatchNorm statistic is
    gathered in one ``gather_channels`` call (``ops.gather_channels``; default the
    ``torch.ops.fpgm`` operator): a conv or linear weight pruned on both sides is gathered
    through its flattened ``[out * in, k]`` view with one combined index.
    """
    plan = _as_plan(plan)
    _check_architecture(model, plan)
    return _apply(model, plan, inplace, ops)


def _apply(model: nn.Module, plan: Plan, inplace: bool, ops) -> nn.Module:
    """``apply_plan`` of a plan known to fit ``model`` (``prune``'s own, just made from it)."""
    gather_channels = _gather_channels if ops is None else ops.gather_channels
    if not inplace:
        model = _copy_for_surgery(model, plan)
    modules = dict(model.named_modules())
    tensors, dims, indices, finish = [], [], [], []

    def gather(t: torch.Tensor, dim: int, idx: torch.Tensor):
        tensors.append(t.detach())
        dims.append(dim)
        indices.append(idx)
        return len(tensors) - 1

    for name, e in plan.modules.items():
        if e.get("type") in ("Parameter", "Tensor"):   # a layer scale pruned with its channels
            owner, _, attr = name.rpartition(".")
            t = getattr(modules.get(owner), attr, None)
            if not isinstance(t, torch.Tensor) or not isinstance(e.get("dim"), int) or \
                    not 0 <= e["dim"] < t.dim():
                raise ValueError(f"fpgm_ext.apply_plan: the plan prunes the tensor '{name}', which this "
                                 f"{type(model).__name__} does not have as planned")
            _check_size(name, e, "size", t.shape[e["dim"]])
            k = gather(t, e["dim"], _indices(e, "channels", t.shape[e["dim"]], name, t.device))

            def done(res, owner=modules.get(owner), attr=attr, k=k):
                old = getattr(owner, attr)
                setattr(owner, attr, nn.Parameter(res[k], requires_grad=old.requires_grad)
                        if isinstance(old, nn.Parameter) else res[k])
            finish.append(done)
            continue
        m = modules.get(name)
        if m is None:
            raise ValueError(f"fpgm_ext.apply_plan: the plan names module '{name}', which this "
                             f"{type(model).__name__} does not have")
        if type(m).__name__ != e.get("type"):
            raise ValueError(f"fpgm_ext.apply_plan: the plan does not fit this model: {name} is a "
                             f"{type(m).__name__}, the plan was made for a {e.get('type')}")
        if isinstance(m, (_CONV, nn.Linear)):
            conv = isinstance(m, _CONV)
            o, i = (m.out_channels, m.in_channels) if conv else (m.out_features, m.in_features)
            _check_size(name, e, "out_size", o)
            _check_size(name, e, "in_size", i)
            dev = m.weight.device
            out = _indices(e, "out", o, name, dev)
            inn = _indices(e, "in", i, name, dev)
            w = m.weight
            if conv and m.groups != 1 and e.get("groups") == m.groups and len(inn) < i:
                # the same local input channels kept in every conv group, their number kept
                per, G = i // m.groups, m.groups
                local = inn[:len(inn) // G] if len(inn) % G == 0 else None
                if local is None or not torch.equal(
                        inn, (torch.arange(G, device=dev)[:, None] * per + local[None, :]).reshape(-1)):
                    raise ValueError(f"fpgm_ext.apply_plan: {name} keeps input channels that are not the "
                                     f"same in each of its {G} groups")
                groups = G
                combined = (out[:, None] * per + local[None, :]).reshape(-1)
                k = gather(w.reshape(o * per, -1), 0, combined)
                shape = (len(out), len(local)) + tuple(w.shape[2:])
            elif conv and m.groups != 1:
                if len(inn) * m.groups % i:
                    raise ValueError(f"fpgm_ext.apply_plan: {name} keeps {len(inn)} of {i} input channels, "
                                     f"which is not a whole number of its {m.groups} groups")
                groups = len(inn) * m.groups // i
                if e.get("groups", groups) != groups:
                    raise ValueError(f"fpgm_ext.apply_plan: the plan's groups of {name} do not match its channels")
                k = gather(w, 0, out)
                shape = (len(out),) + tuple(w.shape[1:])
            else:
                groups = 1
                combined = (out[:, None] * i + inn[None, :]).reshape(-1)
                k = gather(w.reshape(o * i, -1), 0, combined)
                shape = (len(out), len(inn)) + tuple(w.shape[2:])
            kb = gather(m.bias, 0, out) if m.bias is not None else None
            extra = {}   # other per-filter tensors (a weight-standardised conv's gain)
            for attr in e.get("out_params", ()) if "out" in e else ():
                t = getattr(m, attr, None)
                if not isinstance(t, torch.Tensor) or t.shape[0] != o:
                    raise ValueError(f"fpgm_ext.apply_plan: the plan prunes {name}.{attr} with its "
                                     f"filters, but it is not a tensor of {o} filters")
                extra[attr] = (gather(t, 0, out), tuple(t.shape[1:]))

            def done(res, m=m, k=k, kb=kb, shape=shape, out=out, inn=inn, groups=groups, conv=conv,
                     extra=extra):
                m.weight = nn.Parameter(res[k].reshape(shape), requires_grad=m.weight.requires_grad)
                if kb is not None:
                    m.bias = nn.Parameter(res[kb], requires_grad=m.bias.requires_grad)
                for attr, (ke, rest) in extra.items():
                    old = getattr(m, attr)
                    new = res[ke].reshape((len(out),) + rest)
                    setattr(m, attr, nn.Parameter(new, requires_grad=old.requires_grad)
                            if isinstance(old, nn.Parameter) else new)
                if conv:
                    m.out_channels, m.in_channels, m.groups = len(out), len(inn), groups
                else:
                    m.out_features, m.in_features = len(out), len(inn)
            finish.append(done)
        elif isinstance(m, (_BN, nn.PReLU)) or is_frozen_bn(m):
            size = m.num_parameters if isinstance(m, nn.PReLU) else bn_channels(m)
            _check_size(name, e, "size", size)
            own = {a: getattr(m, a, None) for a in ("weight", "bias", "running_mean", "running_var")}
            own = {a: t for a, t in own.items() if isinstance(t, torch.Tensor)}
            if not own:
                raise ValueError(f"fpgm_ext.apply_plan: {name} has no per-channel tensors to prune")
            idx = _indices(e, "channels", size, name, next(iter(own.values())).device)
            keys = {attr: gather(t, 0, idx) for attr, t in own.items()}

            def done(res, m=m, keys=keys, n=len(idx)):
                for attr, k in keys.items():
                    old = getattr(m, attr)
                    if isinstance(old, nn.Parameter):
                        setattr(m, attr, nn.Parameter(res[k], requires_grad=old.requires_grad))
                    else:
                        setattr(m, attr, res[k])
                if isinstance(m, nn.PReLU):
                    m.num_parameters = n
                elif isinstance(m, _BN):
                    m.num_features = n
            finish.append(done)
        elif isinstance(m, nn.GroupNorm) and m.num_groups == 1:   # approximate: any channels
            _check_size(name, e, "size", m.num_channels)
            idx = _indices(e, "channels", m.num_channels, name,
                           m.weight.device if m.affine else torch.device("cpu"))
            keys = {a: gather(getattr(m, a), 0, idx) for a in ("weight", "bias")
                    if isinstance(getattr(m, a), torch.Tensor)}

            def done(res, m=m, keys=keys, n=len(idx)):
                for attr, k in keys.items():
                    old = getattr(m, attr)
                    setattr(m, attr, nn.Parameter(res[k], requires_grad=old.requires_grad))
                m.num_channels = n
            finish.append(done)
        elif isinstance(m, nn.LayerNorm):   # approximate (plans of prune(approximate=True))
            if len(m.normalized_shape) != 1:
                raise ValueError(f"fpgm_ext.apply_plan: {name} normalises over {tuple(m.normalized_shape)}, "
                                 "not one channel dimension")
            _check_size(name, e, "size", m.normalized_shape[0])
            own = {a: getattr(m, a) for a in ("weight", "bias") if isinstance(getattr(m, a, None), torch.Tensor)}
            idx = _indices(e, "channels", m.normalized_shape[0], name,
                           next(iter(own.values())).device if own else torch.device("cpu"))
            keys = {a: gather(t, 0, idx) for a, t in own.items()}

            def done(res, m=m, keys=keys, n=len(idx)):
                for attr, k in keys.items():
                    old = getattr(m, attr)
                    setattr(m, attr, nn.Parameter(res[k], requires_grad=old.requires_grad))
                m.normalized_shape = (n,)
            finish.append(done)
        elif isinstance(m, nn.GroupNorm):
            _check_size(name, e, "size", m.num_channels)
            per = m.num_channels // m.num_groups
            idx = _indices(e, "channels", m.num_channels, name,
                           m.weight.device if m.affine else torch.device("cpu"))
            whole = idx.reshape(-1, per) if len(idx) % per == 0 else None
            if whole is None or not bool(((whole[:, :1] % per == 0) &
                                          (whole == whole[:, :1] + torch.arange(per, device=idx.device))).all()):
                raise ValueError(f"fpgm_ext.apply_plan: the plan's channels of {name} are not whole "
                                 f"groups of its {m.num_groups} groups of {per}")
            keys = {a: gather(getattr(m, a), 0, idx) for a in ("weight", "bias")
                    if isinstance(getattr(m, a), torch.Tensor)}

            def done(res, m=m, keys=keys, n=len(idx), per=per):
                for attr, k in keys.items():
                    old = getattr(m, attr)
                    setattr(m, attr, nn.Parameter(res[k], requires_grad=old.requires_grad))
                m.num_channels, m.num_groups = n, n // per
            finish.append(done)
        elif isinstance(m, PadShortcut):
            _check_size(name, e, "in_size", m.in_channels)
            _check_size(name, e, "out_size", m.out_channels)
            dev = m.src.device
            keep_in = _indices(e, "in", m.in_channels, name, dev)
            keep_out = _indices(e, "out", m.out_channels, name, dev)
            new_in = torch.full((m.in_channels,), -1, dtype=torch.int64, device=dev)
            new_in[keep_in] = torch.arange(len(keep_in), device=dev)
            new_out = torch.full((m.out_channels,), -1, dtype=torch.int64, device=dev)
            new_out[keep_out] = torch.arange(len(keep_out), device=dev)
            src, dst = new_in[m.src], new_out[m.dst]
            both = (src >= 0) & (dst >= 0)
            m.src, m.dst = src[both].contiguous(), dst[both].contiguous()
            m.in_channels, m.out_channels = len(keep_in), len(keep_out)
        else:
            raise ValueError(f"fpgm_ext.apply_plan: the plan prunes {name}, a {type(m).__name__}, "
                             "which apply_plan does not know how to prune")
    results = gather_channels(tensors, dims, indices) if tensors else []
    for done in finish:
        done(results)
    if plan.graph:
        return _rewrite_graph(model, plan.graph)
    return model


class PrunedGraph(nn.Module):
    """A pruned model whose own code holds channel sizes (``x.split(self.width, 1)``),
    which pruning cannot change: it runs the model's traced code with the new sizes. fx
    bakes a forward's train / eval branches into a trace (timm's BatchNormAct passes
    ``training=self.training`` to ``F.batch_norm``; DropPath returns early in eval), so
    there is one trace per mode and ``forward`` runs the one of the current mode. Its
    submodules, parameters and buffers are the pruned model's own, under the same names
    (the same state_dict); the original class's other methods are not carried over."""

    def __init__(self, root: nn.Module, graphs: Dict[bool, torch.fx.GraphModule]):
        super().__init__()
        for name, child in root.named_children():
            self.add_module(name, child)
        for name, p in root.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in root.named_buffers(recurse=False):
            self.register_buffer(name, b, persistent=name not in root._non_persistent_buffers_set)
        self.__dict__["_graphs"] = graphs   # not submodules: they share this one's
        self.original_class = type(root).__name__
        self.train(root.training)

    def forward(self, *args, **kwargs):
        return self._graphs[self.training](*args, **kwargs)

    def extra_repr(self) -> str:
        return f"pruned {self.original_class}, its channel splits resized"


def _rewrite_graph(model: nn.Module, edits: Dict[str, Dict[str, Any]]) -> nn.Module:
    """The pruned model as a ``PrunedGraph``: its fx traces in train and in eval mode with
    the new sizes of its channel splits (a split's sizes, a narrow's or a channel slice's
    bounds). A split is found again by its place among the trace's split-like nodes
    (``graph.rules.split_like``); each edit checks the node holds the old sizes."""
    from .graph.heads import reshape_like
    from .graph.rules import split_like
    from .graph.tracing import _fx_trace

    flags = [(m, m.training) for m in model.modules()]
    graphs = {}
    try:
        for mode in (True, False):
            model.train(mode)
            gm = _fx_trace(model)
            splits = [n for n in gm.graph.nodes if split_like(n)]
            reshapes = [n for n in gm.graph.nodes if reshape_like(n)]
            for name, e in edits.items():
                k = e.get("index", -1)
                heads = e.get("op") in ("heads", "merge_heads", "channels")
                found = reshapes if heads else splits
                if not (0 <= k < len(found) and (_rewrite_heads(found[k], e) if heads else _rewrite_node(found[k], e))):
                    what = f"reshape of attention heads at node '{name}'" if heads else \
                        f"channel split at node '{name}' ({e.get('op')} of {e.get('was_sizes')})"
                    raise ValueError(
                        f"fpgm_ext.apply_plan: the plan does not fit this model: its {what} is not "
                        f"in the {'training' if mode else 'eval'}-mode trace of {type(model).__name__}")
            gm.recompile()
            graphs[mode] = gm
    finally:
        for m, flag in flags:
            m.training = flag
    return PrunedGraph(model, graphs)


def _rewrite_heads(n, e) -> bool:
    """Gives reshape node ``n`` the head count (``heads``) or the merged width of the kept
    heads (``merge_heads``) of edit ``e`` at its shape argument ``e["arg"]``; False if that
    argument is not the old value (``None``: a size read from a tensor at run time)."""
    path, args = e["arg"], list(n.args)
    if path[0] >= len(args):
        return False
    if len(path) == 1:
        old = args[path[0]]
    else:
        seq = args[path[0]]
        if not isinstance(seq, (tuple, list)) or path[1] >= len(seq):
            return False
        old = seq[path[1]]
    if (e["was"] is None) != isinstance(old, torch.fx.Node) or (e["was"] is not None and old != e["was"]):
        return False
    if len(path) == 1:
        args[path[0]] = e["size"]
    else:
        seq = list(args[path[0]])
        seq[path[1]] = e["size"]
        args[path[0]] = type(args[path[0]])(seq)
    n.args = tuple(args)
    return True


def _rewrite_node(n, e) -> bool:
    """Gives fx node ``n`` the sizes of edit ``e``; False if ``n`` is not the split the
    edit was made for (its constants do not give the edit's old sizes)."""
    from .graph.rules import piece_sizes

    args, kwargs = list(n.args), dict(n.kwargs)
    arg = lambda i, key, default=None: args[i] if len(args) > i else kwargs.get(key, default)  # noqa: E731
    name = n.target if n.op == "call_method" else getattr(n.target, "__name__", "")
    total = e["was_total"]
    if e["op"] == "slice":
        if n.op != "call_function" or n.target is not operator.getitem or not isinstance(args[1], tuple):
            return False
        idx = list(args[1])
        s = idx[1]
        if not isinstance(s, slice) or s.indices(total)[:2] != (e["was_starts"][0],
                                                              e["was_starts"][0] + e["was_sizes"][0]):
            return False
        idx[1] = slice(e["starts"][0], e["starts"][0] + e["sizes"][0], None)
        n.args = (args[0], tuple(idx))
        return True
    if e["op"] == "narrow":
        if name != "narrow" or [arg(2, "start"), arg(3, "length")] != [e["was_starts"][0], e["was_sizes"][0]]:
            return False
        n.args, n.kwargs = (args[0], arg(1, "dim"), e["starts"][0], e["sizes"][0]), {}
        return True
    if name in ("split", "split_with_sizes"):
        old = piece_sizes(arg(1, "split_size_or_sections", kwargs.get("split_size", kwargs.get("split_sizes"))),
                          total)
    elif name == "chunk":
        old = piece_sizes(arg(1, "chunks"), total, chunks=True)
    else:
        return False
    if old != e["was_sizes"]:
        return False
    dim = arg(2, "dim", 0)
    n.target = "split" if n.op == "call_method" else torch.split
    n.args, n.kwargs = (args[0], list(e["sizes"]), dim), {}
    return True


def pruned_masks(model: nn.Module, plan) -> Dict[str, torch.Tensor]:
    """The tensors that ``plan`` prunes, as masks for zeroing them in place instead:
    parameter name -> bool ``[size]`` over its first dimension, True where the channel is
    kept. Listed: the weight and bias of every conv and linear layer whose output
    channels are pruned, and of every BatchNorm and PReLU on pruned channels (nothing else:
    running statistics stay, as a zero channel normalises to zero with zero affine)."""
    plan = _as_plan(plan)
    modules = dict(model.named_modules())
    masks: Dict[str, torch.Tensor] = {}
    for name, e in plan.modules.items():
        if e.get("type") in ("Parameter", "Tensor"):   # a layer scale: its mask along its dim
            owner, _, attr = name.rpartition(".")
            t = getattr(modules.get(owner), attr, None)
            if not isinstance(t, torch.Tensor) or t.dim() <= e.get("dim", -1) or t.shape[e["dim"]] != e.get("size"):
                raise ValueError(f"fpgm_ext: the plan does not fit this model: it prunes the tensor '{name}'")
            keep = torch.zeros(e["size"], dtype=torch.bool)
            keep[torch.as_tensor(e["channels"], dtype=torch.int64)] = True
            d = e["dim"]
            masks[name] = (keep if d == 0 else keep.reshape((1,) * d + (-1,) + (1,) * (t.dim() - d - 1))).to(t.device)
            continue
        m = modules.get(name)
        if m is None:
            raise ValueError(f"fpgm_ext: the plan names module '{name}', which this "
                             f"{type(model).__name__} does not have")
        if isinstance(m, PadShortcut):
            continue
        key, size = ("out", "out_size") if "out_size" in e else ("channels", "size")
        if key not in e:
            continue
        for attr in ("weight", "bias"):
            p = getattr(m, attr, None)
            if not isinstance(p, torch.Tensor):
                continue
            if p.shape[0] != e[size]:
                raise ValueError(f"fpgm_ext: the plan does not fit this model: {name}.{attr} has "
                                 f"{p.shape[0]} channels, the plan was made for {e[size]}")
            keep = torch.zeros(e[size], dtype=torch.bool)
            keep[torch.as_tensor(e[key], dtype=torch.int64)] = True
            masks[f"{name}.{attr}" if name else attr] = keep.to(p.device)
    return masks


def zero_pruned(model: nn.Module, plan) -> nn.Module:
    """Zeroes, in place, the channels that ``plan`` prunes (the tensors of
    ``pruned_masks``): the masked model, whose outputs the physically pruned
    ``apply_plan(model, plan)`` reproduces. Returns ``model``."""
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    with torch.no_grad():
        for name, keep in pruned_masks(model, plan).items():
            t = params.get(name, buffers.get(name))
            t.masked_fill_(~keep.reshape((-1,) + (1,) * (t.dim() - 1)) if keep.dim() == 1 else ~keep, 0)
    return model
