"""The four fpgm ops on a GPU runtime (runtime.CupyRuntime; the tests also run them on
the CPU emulation): the same checks, allocations, plan and launches as the compiled CUDA
launchers of csrc/cuda/*.cu. The plan comes from fpgm_ext._C.plans, the one C++ planner
of both backends; only the kernels' names and the argument bytes cross into Python.
"""
from __future__ import annotations

import struct
from typing import List, Sequence

import torch

from .._checks import (
    check_gather_args,
    check_metric,
    check_weight,
    check_weights,
    is_layer_batch,
    result_dtype,
)

# Input element types as the device code spells them under NVRTC (common.cuh).
SCALARS = {torch.float32: "float", torch.float64: "double",
           torch.float16: "fpgm::kernels::rtc_half", torch.bfloat16: "fpgm::kernels::rtc_bfloat16"}


def _plans():
    from .. import _C

    return _C.plans


def _rows(w: torch.Tensor) -> torch.Tensor:
    """[N, ...] -> contiguous rows [N, D] (a copy on the stream when needed)."""
    return w.reshape(w.shape[0], -1).contiguous()


def _run(runtime, xs: Sequence[torch.Tensor], outs: Sequence[torch.Tensor], metric: str,
         matrix: bool) -> None:
    plans = _plans()
    device, dtype = xs[0].device, xs[0].dtype
    acc, acc_size = ("double", 8) if dtype == torch.float64 else ("float", 4)
    m = plans.METRICS[metric]
    names = plans.kernel_names(SCALARS[dtype], acc, m, matrix)
    kernels = runtime.kernels(device, list(names.values()))
    wave = runtime.resident_blocks(device, kernels[names["tile"]], plans.TILE_THREADS)
    plan = plans.plan_distance([x.shape[0] for x in xs], [x.shape[1] for x in xs], acc_size, m, wave)
    image = plan.table([x.data_ptr() for x in xs], [o.data_ptr() for o in outs])
    workspace = torch.empty(plan.total_bytes, dtype=torch.uint8, device=device)
    runtime.copy_table(workspace[: plan.table_bytes], image)
    args = plan.args(workspace.data_ptr(), m, acc_size)
    for kind, blocks, threads in plan.steps(m, matrix):
        runtime.launch(device, kernels[names[kind]], blocks, threads, [args])


def distance_scores(runtime, weight: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    check_metric("distance_scores", metric)
    check_weight("distance_scores", "weight", weight)
    with runtime.device_guard(weight.device):
        runtime.check_not_capturing(weight.device, "distance_scores")
        out = torch.empty(weight.shape[0], dtype=result_dtype(weight.dtype), device=weight.device)
        _run(runtime, [_rows(weight)], [out], metric, False)
    return out


def distance_scores_multi(runtime, weights: Sequence[torch.Tensor], metric: str = "l2") -> List[torch.Tensor]:
    check_metric("distance_scores_multi", metric)
    if len(weights) == 0:
        return []
    check_weights("distance_scores_multi", weights)
    device = weights[0].device
    with runtime.device_guard(device):
        runtime.check_not_capturing(device, "distance_scores_multi")
        xs = [_rows(w) for w in weights]
        outs = [torch.empty(w.shape[0], dtype=result_dtype(w.dtype), device=device) for w in weights]
        _run(runtime, xs, outs, metric, False)
    return outs


def distance_matrix(runtime, weight: torch.Tensor, metric: str = "l2") -> torch.Tensor:
    check_metric("distance_matrix", metric)
    check_weight("distance_matrix", "weight", weight)
    dtype = result_dtype(weight.dtype)
    with runtime.device_guard(weight.device):
        runtime.check_not_capturing(weight.device, "distance_matrix")
        if not is_layer_batch(weight):
            n = weight.shape[0]
            out = torch.empty(n, n, dtype=dtype, device=weight.device)
            _run(runtime, [_rows(weight)], [out], metric, True)
            return out
        x = weight.contiguous()
        b, n = x.shape[0], x.shape[1]
        out = torch.empty(b, n, n, dtype=dtype, device=weight.device)
        _run(runtime, list(x.unbind(0)), list(out.unbind(0)), metric, True)
    return out


def gather_channels(runtime, tensors: Sequence[torch.Tensor], dims: Sequence[int],
                    indices: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    wrapped = check_gather_args(tensors, dims, indices)
    if len(tensors) == 0:
        return []
    plans = _plans()
    device = tensors[0].device
    with runtime.device_guard(device):
        runtime.check_not_capturing(device, "gather_channels")
        rows, outs, keep_alive = [], [], []
        for t, dim, idx in zip(tensors, wrapped, indices):
            src, index = t.contiguous(), idx.contiguous()  # int64 or int32, read as such
            shape = list(src.shape)
            channels, kept = shape[dim], index.numel()
            shape[dim] = kept
            out = torch.empty(shape, dtype=src.dtype, device=device)
            outer = inner = 1
            for s in src.shape[:dim]:
                outer *= s
            for s in src.shape[dim + 1:]:
                inner *= s
            rows.append((src.data_ptr(), out.data_ptr(), index.data_ptr(), index.dtype == torch.int64,
                         outer, channels, kept, inner * src.element_size()))
            # The launch is queued after this loop: a contiguous copy dropped here could be
            # handed out again (e.g. as a later output) before the kernel reads it.
            keep_alive += [src, index]
            outs.append(out)
        image, blocks, _ = plans.plan_gather(rows)
        if blocks == 0:
            return outs  # nothing to copy (and no empty launch)
        kernel = runtime.kernels(device, [plans.GATHER_KERNEL])[plans.GATHER_KERNEL]
        table = torch.empty(len(image), dtype=torch.uint8, device=device)
        runtime.copy_table(table, image)
        runtime.launch(device, kernel, blocks, plans.GATHER_THREADS,
                       [struct.pack("=Q", table.data_ptr()), struct.pack("=i", len(rows))])
    return outs
