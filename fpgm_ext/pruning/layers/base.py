"""What every layer handler is and shares: the ``Layer`` base class (one per layer kind:
how its module joins the channel analysis, its plan entry, its surgery, its masks, its
size after pruning), the ``Surgery`` batch that gathers all tensors of a plan in one
``gather_channels`` call, and the checks of a plan entry against a module."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from ..rule import Rule


@dataclass(frozen=True)
class Channels:
    """A layer's channel counts: input channels, output channels, conv groups."""
    inputs: int
    outputs: int
    groups: int = 1


@dataclass(frozen=True)
class LayerCall:
    """What a functional or aten call of a layer's op says of the layer it computes (None:
    the call does not say): conv or GN groups, whether a norm has a weight, a LayerNorm's
    shape, the rank of a conv's weight."""
    groups: Optional[int] = None
    affine: Optional[bool] = None
    normalized_shape: Optional[Tuple[int, ...]] = None
    weight_rank: Optional[int] = None


# Source bytes gathered per gather_channels call: one call for most models; a large model
# pruned in place holds the old and the new tensors of one such batch at a time, not of all.
BATCH_BYTES = 256 << 20


class Surgery:
    """The tensors a plan replaces, gathered in ``gather_channels`` calls: ``gather``
    registers one (tensor, dim, kept indices) and returns its key, ``then`` a step that
    puts results into the model once they exist (``keys``: the results it reads)."""

    def __init__(self):
        self.tensors: List[Optional[torch.Tensor]] = []
        self.dims: List[int] = []
        self.indices: List[torch.Tensor] = []
        self.steps: List[Tuple[Tuple[int, ...], Callable[[List[torch.Tensor]], None]]] = []

    def gather(self, t: torch.Tensor, dim: int, idx: torch.Tensor) -> int:
        self.tensors.append(t.detach())
        self.dims.append(dim)
        self.indices.append(idx)
        return len(self.tensors) - 1

    def then(self, step: Callable[[List[torch.Tensor]], None], keys: Tuple[int, ...] = ()) -> None:
        self.steps.append((tuple(keys), step))

    def gather_into(self, owner: nn.Module, attr: str, dim: int, idx: torch.Tensor,
                    shape: Optional[Tuple[int, ...]] = None, source: Optional[torch.Tensor] = None) -> None:
        """``owner.attr`` replaced by its gathered tensor (reshaped to ``shape``); the
        gather reads ``source`` (a view of the tensor) where one is given."""
        key = self.gather(getattr(owner, attr) if source is None else source, dim, idx)
        self.then(lambda res: replace_tensor(owner, attr, res[key] if shape is None else res[key].reshape(shape)),
                  (key,))

    def run(self, gather_channels) -> None:
        """The gathers, in calls of at most ``BATCH_BYTES`` of sources, each call's results
        put in place (and the batch's references dropped) before the next call."""
        results: List[Optional[torch.Tensor]] = [None] * len(self.tensors)
        pending = self.steps
        for chunk in self._chunks():
            out = gather_channels([self.tensors[k] for k in chunk], [self.dims[k] for k in chunk],
                                  [self.indices[k] for k in chunk])
            for k, r in zip(chunk, out):
                results[k], self.tensors[k] = r, None
            pending = self._run_ready(pending, results, final=False)
        self._run_ready(pending, results, final=True)

    def _chunks(self) -> List[List[int]]:
        chunks: List[List[int]] = []
        size = BATCH_BYTES
        for k, t in enumerate(self.tensors):
            nbytes = t.numel() * t.element_size()
            if size + nbytes > BATCH_BYTES and (not chunks or chunks[-1]):
                chunks.append([])
                size = 0
            chunks[-1].append(k)
            size += nbytes
        return chunks

    @staticmethod
    def _run_ready(steps, results, final: bool):
        """Runs the steps whose results exist (their results then dropped), and in the
        ``final`` pass those that read none (sizes set after every tensor is in place);
        returns the rest."""
        waiting = []
        for keys, step in steps:
            if (keys or final) and all(results[k] is not None for k in keys):
                step(results)
                for k in keys:
                    results[k] = None
            else:
                waiting.append((keys, step))
        return waiting


def replace_tensor(owner: nn.Module, attr: str, new: torch.Tensor) -> None:
    """``owner.attr = new``, a Parameter with the old one's ``requires_grad`` where the old
    tensor was a Parameter, a plain tensor (a buffer) otherwise."""
    old = getattr(owner, attr)
    setattr(owner, attr, nn.Parameter(new, requires_grad=old.requires_grad)
            if isinstance(old, nn.Parameter) else new)


def own_tensors(m: nn.Module, attrs) -> Dict[str, torch.Tensor]:
    """The attributes among ``attrs`` that ``m`` holds as tensors (an affine-less norm has
    no weight; a BatchNorm without running statistics none of those)."""
    return {a: t for a in attrs if isinstance(t := getattr(m, a, None), torch.Tensor)}


def kept_indices(entry: Dict[str, Any], key: str, size: int, name: str, device) -> torch.Tensor:
    """The plan entry's kept indices under ``key`` (all ``size`` when it has none),
    checked: in range, increasing, not empty."""
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


def check_size(name: str, entry: Dict[str, Any], key: str, actual: int) -> None:
    want = entry.get(key)
    if want is not None and want != actual:
        raise ValueError(f"fpgm_ext.apply_plan: the plan does not fit this model: {name} has {key} "
                         f"{actual}, the plan was made for {want}")


def keep_mask(size: int, kept, device) -> torch.Tensor:
    """A bool ``[size]``, True at the kept indices."""
    keep = torch.zeros(size, dtype=torch.bool)
    keep[torch.as_tensor(kept, dtype=torch.int64)] = True
    return keep.to(device)


class Layer:
    """How the pruner treats one kind of layer. A handler is registered for a module type
    (``register_layer``); the pruner asks it, and nothing else, about modules of that type.

    ``rule`` names the channel rule of the analysis the layer follows (graph/rules.py:
    "conv", "linear", "bn", "gn", "ln", "prelu", "shortcut", "constant_pad")."""
    rule: Optional[Rule] = None

    def analyse(self, A, node, name: str, m: nn.Module, x):
        """The layout of the module's output, the module recorded in the analysis ``A``
        (graph/analyzer.py) by the rule's method. ``x``: what is known of its input."""
        raise NotImplementedError

    def computes(self, m: nn.Module, call: LayerCall) -> bool:
        """Whether a call of this kind's op with ``call``'s arguments on ``m``'s own
        tensors computes what ``m`` does (a subclass calling ``F.batch_norm`` from its
        forward), so that the call follows ``m``'s rule."""
        return True

    def channels(self, m: nn.Module) -> Optional[Channels]:
        """Input and output channels of a layer that makes channels (conv, linear,
        shortcut: the report's layer table); None for the others."""
        return None

    def plan_entry(self, use, out: Optional[List[int]], inn: Optional[List[int]]) -> Optional[Dict[str, Any]]:
        """The plan's entry of the module: ``out`` its kept output channels (None: all),
        ``inn`` its kept input channels or, for a per-channel layer, its kept channels
        (None: all). None when nothing of it is pruned."""
        raise NotImplementedError

    def replaced(self, m: nn.Module) -> Tuple[str, ...]:
        """The attributes the surgery replaces by gathered tensors (not copied first)."""
        return ()

    def surgery(self, name: str, m: nn.Module, entry: Dict[str, Any], batch: Surgery) -> None:
        """Registers the module's tensors in ``batch`` and the steps that resize it."""
        raise ValueError(f"fpgm_ext.apply_plan: the plan prunes {name}, a {type(m).__name__}, "
                         "which apply_plan does not know how to prune")

    def masks(self, name: str, m: nn.Module, entry: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """attribute -> bool mask over its first dimension (True: kept) of the tensors that
        zeroing the pruned channels in place zeroes (``pruned_masks``)."""
        return {}

    def filters(self, m: nn.Module) -> torch.Tensor:
        """The weight with one filter per row along dim 0 (a view): what FPGM scores."""
        return m.weight

    def input_masks(self, name: str, m: nn.Module, entry: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """attribute -> bool mask of the tensor's own shape (True: kept) over the pruned
        input channels, for the masked model (``zero_pruned``): a consumer whose pruned
        inputs are not zero there (an attention head's output, when its key and value stay)."""
        return {}

    def weight_size_after(self, m: nn.Module, entry: Dict[str, Any]) -> Optional[int]:
        """``weight.numel()`` once ``entry`` is applied (FLOPs of a conv or linear layer scale by it)."""
        return None

    def params_removed(self, m: nn.Module, entry: Dict[str, Any]) -> int:
        """How many parameters applying ``entry`` removes (the target search's count)."""
        return 0


def affine_masks(name: str, m: nn.Module, key: str, size_key: str, entry) -> Dict[str, torch.Tensor]:
    """Masks of ``weight`` and ``bias`` over the entry's kept indices under ``key``."""
    if key not in entry:
        return {}
    masks = {}
    for attr, p in own_tensors(m, ("weight", "bias")).items():
        if p.shape[0] != entry[size_key]:
            raise ValueError(f"fpgm_ext: the plan does not fit this model: {name}.{attr} has "
                             f"{p.shape[0]} channels, the plan was made for {entry[size_key]}")
        masks[attr] = keep_mask(entry[size_key], entry[key], p.device)
    return masks
