"""Argument checks shared by every backend, the fake kernels, ``select`` and the pruner.

The op checks and their messages match csrc/checks.h and csrc/gather_checks.h, so every
backend fails alike (docs/design.md, op contracts). This module is a leaf: it imports
nothing from the package.
"""
from __future__ import annotations

import difflib
import math
from typing import List, Sequence, Tuple

import torch
from torch import nn

METRICS = ("l2", "l1", "cos")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_metric(op: str, metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"fpgm.{op}: unknown metric '{metric}' (expected 'l2', 'l1' or 'cos')")


def check_weight(op: str, name: str, w: torch.Tensor) -> None:
    if w.layout != torch.strided:
        raise ValueError(f"fpgm.{op}: {name} must be a dense (strided) tensor, got layout {w.layout}")
    if w.dtype not in _FLOATS:
        raise ValueError(f"fpgm.{op}: {name} must be float16, bfloat16, float32 or float64, got {w.dtype}")
    if w.dim() < 1:
        raise ValueError(f"fpgm.{op}: {name} must have rank >= 1 ([N, ...] filters), got shape {list(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"fpgm.{op}: {name} has no elements (N = 0 or D = 0), shape {list(w.shape)}")


def check_weights(op: str, weights: Sequence[torch.Tensor]) -> None:
    """The layers of a multi-layer call: each a valid weight, all of one dtype and on one
    device (csrc/checks.h)."""
    for k, w in enumerate(weights):
        check_weight(op, f"weights[{k}]", w)
        if w.dtype != weights[0].dtype:
            raise ValueError(f"fpgm.{op}: weights[{k}] has dtype {w.dtype} but weights[0] "
                             f"has {weights[0].dtype}; all layers must share one dtype")
        if w.device != weights[0].device:
            raise ValueError(f"fpgm.{op}: weights[{k}] is on {w.device} but weights[0] is on "
                             f"{weights[0].device}")


def result_dtype(dtype: torch.dtype) -> torch.dtype:
    """Scores and matrices come back float64 for float64 input, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def is_layer_batch(weight: torch.Tensor) -> bool:
    """distance_matrix's one shape rule: a rank-3 weight is a batch [B, N, D] of B layers of
    N filters (-> [B, N, N]); any other rank is one layer [N, ...] (-> [N, N])."""
    return weight.dim() == 3


def matrix_shape(weight: torch.Tensor) -> Tuple[int, ...]:
    """The shape of ``distance_matrix(weight)``."""
    if is_layer_batch(weight):
        return (weight.shape[0], weight.shape[1], weight.shape[1])
    return (weight.shape[0],) * 2


def check_gather_args(tensors, dims, indices) -> List[int]:
    """Checks of csrc/gather_checks.h; returns the dims wrapped into [0, rank)."""
    if not (len(tensors) == len(dims) == len(indices)):
        raise ValueError("fpgm.gather_channels: tensors, dims and indices must have the same length, "
                         f"got {len(tensors)}, {len(dims)} and {len(indices)}")
    wrapped = []
    for k, (t, dim, idx) in enumerate(zip(tensors, dims, indices)):
        if t.layout != torch.strided:
            raise ValueError(f"fpgm.gather_channels: tensors[{k}] must be a dense tensor")
        if t.dim() < 1:
            raise ValueError(f"fpgm.gather_channels: tensors[{k}] must have rank >= 1, got a scalar")
        if not -t.dim() <= dim < t.dim():
            raise ValueError(f"fpgm.gather_channels: dims[{k}] = {dim} is out of range for tensors[{k}] "
                             f"of rank {t.dim()}")
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"fpgm.gather_channels: indices[{k}] must be an int64 or int32 tensor, got {idx.dtype}")
        if idx.dim() != 1:
            raise ValueError(f"fpgm.gather_channels: indices[{k}] must be 1-D, got shape {list(idx.shape)}")
        if idx.device != t.device:
            raise ValueError(f"fpgm.gather_channels: indices[{k}] is on {idx.device} but tensors[{k}] is on "
                             f"{t.device}")
        if t.device != tensors[0].device:
            raise ValueError(f"fpgm.gather_channels: tensors[{k}] is on {t.device} but tensors[0] is on "
                             f"{tensors[0].device}")
        if t.shape[dim % t.dim()] == 0 and idx.numel() > 0:
            raise IndexError(f"fpgm.gather_channels: indices[{k}] holds {idx.numel()} indices but dimension "
                             f"{dim % t.dim()} of tensors[{k}] has size 0")
        wrapped.append(dim % t.dim())
    return wrapped


def check_rates(prefix: str, rate_dist, rate_norm, *, strict: bool = False) -> None:
    """rate_dist in [0, 1), rate_norm in (0, 1]; messages start with ``prefix`` (e.g.
    "fpgm.select"). ``strict`` (the pruner's form): also rejects anything but a number
    (bools and NaN too) and explains rate_norm in its message."""
    if strict:
        for name, value in (("rate_dist", rate_dist), ("rate_norm", rate_norm)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                raise ValueError(f"{prefix}: {name} must be a number, got {value!r}")
    if not 0.0 <= rate_dist < 1.0:
        raise ValueError(f"{prefix}: rate_dist must be in [0, 1), got {rate_dist}")
    if not 0.0 < rate_norm <= 1.0:
        hint = " (1 - rate_norm is the fraction pruned by norm; 1 means none)" if strict else ""
        raise ValueError(f"{prefix}: rate_norm must be in (0, 1], got {rate_norm}{hint}")


def check_prune_args(model, example_inputs, rate_dist, rate_norm, metric, ignore, min_channels, round_to,
                     trace):
    """The arguments of ``prune`` / ``make_plan`` (and ``SoftFPGM``, which renames the
    messages' "fpgm_ext.prune:"). Returns ``example_inputs`` as a tuple (or None) and
    ``ignore`` as a list."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fpgm_ext.prune: model must be a torch.nn.Module, got {type(model).__name__}")
    check_rates("fpgm_ext.prune", rate_dist, rate_norm, strict=True)
    check_metric("prune", metric)
    for name, value in (("min_channels", min_channels), ("round_to", round_to)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"fpgm_ext.prune: {name} must be an integer >= 1, got {value!r}")
    if trace not in ("auto", "fx", "export"):
        raise ValueError(f"fpgm_ext.prune: trace must be 'auto', 'fx' or 'export', got {trace!r}")
    if isinstance(ignore, str):
        ignore = [ignore]
    ignore = list(ignore)
    names = dict(model.named_modules())
    for n in ignore:
        if not isinstance(n, str) or n not in names or n == "":
            close = difflib.get_close_matches(str(n), [k for k in names if k], n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"fpgm_ext.prune: ignore names {n!r}, which is not a submodule of "
                             f"{type(model).__name__}{hint}")
    if example_inputs is not None:
        if isinstance(example_inputs, torch.Tensor):
            example_inputs = (example_inputs,)
        elif not isinstance(example_inputs, (tuple, list)):
            raise TypeError("fpgm_ext.prune: example_inputs must be a tensor or a tuple of positional "
                            f"inputs, got {type(example_inputs).__name__}")
        example_inputs = tuple(example_inputs)
    elif trace == "export":
        raise ValueError("fpgm_ext.prune: trace='export' needs example_inputs")
    return example_inputs, ignore
