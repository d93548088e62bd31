"""The CuPy backend: the CUDA kernels of csrc/cuda/kernels compiled with NVRTC on first use
and launched through CuPy, for an fpgm_ext built without its CUDA kernels (no nvcc at
install time). It serves the CUDA key of the four ops; fpgm_ext._backend decides when.

    nvrtc.py    sources, NVRTC compilation, image cache
    runtime.py  CuPy driver calls: modules, occupancy, launches on torch's stream
    ops.py      the ops: checks, allocations, the C++ plan (fpgm_ext._C.plans), launches
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Tuple

from . import ops

OPS = ("distance_scores", "distance_matrix", "distance_scores_multi", "gather_channels")


def availability() -> Tuple[bool, str]:
    """(usable, why): CuPy importable with its NVRTC, the kernel sources found, and the
    C++ planner present in fpgm_ext._C. Imports CuPy (a fraction of a second) but touches
    no GPU."""
    if importlib.util.find_spec("cupy") is None:
        return False, "CuPy is not installed (pip install fpgm_ext[cupy])"
    if os.environ.get("FPGM_EXT_LIBRARY"):
        return False, ("the CuPy backend plans through fpgm_ext._C, and FPGM_EXT_LIBRARY loads a "
                       "library without it")
    try:
        from .. import _C

        _C.plans  # noqa: B018
    except (ImportError, AttributeError) as exc:
        return False, f"the CuPy backend plans through fpgm_ext._C, which is not usable here ({exc})"
    try:
        import cupy
        from cupy.cuda import nvrtc as cupy_nvrtc

        version = ".".join(map(str, cupy_nvrtc.getVersion()))
    except Exception as exc:  # ImportError, a missing libnvrtc (CuPy raises various types)
        return False, f"CuPy cannot run NVRTC: {type(exc).__name__}: {exc}"
    try:
        from . import nvrtc

        folder = nvrtc.kernels_dir()
    except FileNotFoundError as exc:
        return False, str(exc)
    return True, (f"CuPy {cupy.__version__} compiles the kernels of {folder} with NVRTC {version} "
                  "on first use")


@functools.cache
def runtime():
    from .runtime import CupyRuntime

    return CupyRuntime()


def _bind(name):
    fn = getattr(ops, name)

    def kernel(*args):
        return fn(runtime(), *args)

    kernel.__name__ = kernel.__qualname__ = f"{name}_cupy"
    return kernel


def implementations():
    """{op name: its CUDA kernel} for torch.library registration."""
    return {name: _bind(name) for name in OPS}
