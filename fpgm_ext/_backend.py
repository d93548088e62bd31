"""Loads the compiled operators, or registers the pure-PyTorch ones under the same names.

Order: FPGM_EXT_BACKEND=reference forces the fallback; FPGM_EXT_LIBRARY=/path/lib.so loads
a library built by CMake; otherwise the extension module fpgm_ext._C. A failed load warns
once and falls back; it never raises at import.

CUDA tensors: the library's CUDA kernels when it has them; else the same kernels compiled
at run time by the CuPy backend (fpgm_ext.cupy_backend) when CuPy is installed; else the
reference kernels. FPGM_EXT_BACKEND=cupy puts the CuPy backend on the CUDA key even over
compiled kernels (to compare the two on a GPU).
"""
from __future__ import annotations

import ctypes
import json
import os
import warnings

import torch

from . import reference

_state = {"backend": None, "library": None, "reason": "", "build": {}, "cuda": ""}
_libs = []  # torch.library.Library objects must stay alive for their registrations


def _register_reference(keys):
    """Registers the reference kernels for the given dispatch keys (defining the schemas
    first when no compiled library did)."""
    if not _namespace_exists():
        lib = torch.library.Library("fpgm", "DEF")
        for schema in reference.SCHEMAS.values():
            lib.define(schema)
        _libs.append(lib)
    lib = torch.library.Library("fpgm", "IMPL")
    for name, fn in reference.OPS.items():
        for key in keys:
            lib.impl(name, fn, key)
    _libs.append(lib)


def _namespace_exists() -> bool:
    try:
        torch.ops.fpgm.distance_scores  # noqa: B018
        return True
    except (AttributeError, RuntimeError):
        return False


def _register_cupy(why_not_compiled: str) -> str:
    """Serves the CUDA key with the CuPy backend if it can; returns why it does or not."""
    from . import cupy_backend

    ok, why = cupy_backend.availability()
    if not ok:
        return why
    lib = torch.library.Library("fpgm", "IMPL")
    for name, fn in cupy_backend.implementations().items():
        lib.impl(name, fn, "CUDA")
    _libs.append(lib)
    _state["cuda"] = f"cupy ({why_not_compiled}; {why})"
    return ""


def _load_compiled():
    path = os.environ.get("FPGM_EXT_LIBRARY")
    if path:
        torch.ops.load_library(path)
        info = ctypes.CDLL(path).fpgm_ext_build_info
        info.restype = ctypes.c_char_p
        return path, json.loads(info().decode())
    from . import _C  # registers the ops as a side effect of loading the library

    return _C.__file__, json.loads(_C.build_info_json())


def load() -> None:
    if _state["backend"] is not None:
        return
    if os.environ.get("FPGM_EXT_BACKEND", "") == "reference":
        _register_reference(["CPU", "CUDA"])
        _state.update(backend="reference", reason="forced by FPGM_EXT_BACKEND=reference",
                      cuda="reference (forced by FPGM_EXT_BACKEND=reference)")
    else:
        try:
            library, build = _load_compiled()
        except Exception as exc:  # ImportError, OSError, RuntimeError from a bad build
            reason = f"compiled library not loaded: {type(exc).__name__}: {exc}"
            warnings.warn(f"fpgm_ext: {reason}; using the pure-PyTorch fallback", RuntimeWarning,
                          stacklevel=3)
            _register_reference(["CPU", "CUDA"])
            _state.update(backend="reference", reason=reason, cuda="reference (" + reason + ")")
        else:
            _state.update(backend="compiled", library=library, build=build,
                          reason=f"loaded {library}")
            forced = os.environ.get("FPGM_EXT_BACKEND", "") == "cupy"
            if build.get("with_cuda") and not forced:
                _state["cuda"] = "compiled (CUDA kernels in the library)"
            else:
                why_not = ("forced by FPGM_EXT_BACKEND=cupy" if forced
                           else "library built without CUDA kernels")
                why_no_cupy = _register_cupy(why_not)
                if why_no_cupy and forced:
                    warnings.warn(f"fpgm_ext: FPGM_EXT_BACKEND=cupy, but {why_no_cupy}", RuntimeWarning,
                                  stacklevel=3)
                if why_no_cupy and build.get("with_cuda"):
                    _state["cuda"] = f"compiled (CUDA kernels in the library; not CuPy: {why_no_cupy})"
                elif why_no_cupy:
                    # A CPU-only build still serves CUDA tensors, through the reference kernels.
                    _register_reference(["CUDA"])
                    _state["cuda"] = f"reference (library built without CUDA kernels; {why_no_cupy})"
    from . import _fake  # noqa: F401  (fake kernels for every op, whichever backend)


def backend_info() -> dict:
    """Which backend serves each device and why, plus the build configuration."""
    load()
    return {
        "backend": _state["backend"],
        "devices": {
            "cpu": _state["backend"],
            "cuda": _state["cuda"] + ("" if torch.cuda.is_available() else "; no CUDA device present"),
        },
        "reason": _state["reason"],
        "library": _state["library"],
        "build": dict(_state["build"]),
    }
