"""Devices, dtypes and tolerances for the tests (pytorch_scatter style)."""
import contextlib
import os

import torch

dtypes = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
metrics = ["l2", "l1", "cos"]

# Relative error allowed on scores against a float64 oracle evaluated on the very values
# the op received (half inputs are rounded before the oracle sees them), so only the
# kernel's own arithmetic counts: float32 accumulation for every input but float64.
score_rtol = {torch.float16: 1e-5, torch.bfloat16: 1e-5, torch.float32: 1e-5, torch.float64: 1e-10}


def devices():
    """The devices to test; CUDA is a pytest param marked `cuda` (skipped without a GPU)."""
    import pytest

    return ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def random_filters(shape, dtype=torch.float32, device="cpu", layout="contiguous", generator=None):
    """Fresh random filters [N, ...] in the given memory layout:
    contiguous, channels_last (4-D only), transposed (non-contiguous), strided (a slice)."""
    shape = tuple(shape)

    def randn(s):
        return torch.randn(s, generator=generator).to(device=device, dtype=dtype)

    if layout == "contiguous":
        return randn(shape)
    if layout == "channels_last":
        return randn(shape).contiguous(memory_format=torch.channels_last)
    if layout == "transposed":  # every dimension reversed in memory
        return randn(shape[::-1]).permute(*reversed(range(len(shape))))
    if layout == "strided":  # every other filter of a larger tensor
        return randn((shape[0] * 2,) + shape[1:])[::2]
    raise ValueError(f"unknown layout {layout!r}")


@contextlib.contextmanager
def _environment(name, value):
    """Sets (or with None, removes) one environment variable for the duration."""
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def avx512_kernels(enabled):
    """Turns the compiled CPU kernels written for AVX-512 (packed Gram products, pair loops)
    off or on for the duration; off, the portable paths run (BLAS products, loops compiled
    per instruction set), as on a CPU without AVX-512. The library reads the variable
    FPGM_EXT_CPU_AVX512 on every call."""
    with _environment("FPGM_EXT_CPU_AVX512", "1" if enabled else "0"):
        yield


@contextlib.contextmanager
def batch_bytes(budget):
    """Sets the compiled CPU kernels' memory budget for the duration: the bytes of prepared
    rows one batch of a call's layers may hold (csrc/cpu/distance_batches.h; None: the
    default). A call prepares and scores its layers a batch at a time; a small budget forces
    many batches, down to one layer each (budget 1). The library reads the variable
    FPGM_EXT_CPU_BATCH_BYTES on every call."""
    with _environment("FPGM_EXT_CPU_BATCH_BYTES", None if budget is None else str(int(budget))):
        yield
