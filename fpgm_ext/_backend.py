"""Loads the compiled operators, or registers the pure-PyTorch ones under the same names.

Order: FPGM_EXT_BACKEND=reference forces the fallback; FPGM_EXT_LIBRARY=/path/lib.so loads
a library built by CMake; otherwise the extension module fpgm_ext._C. A failed load warns
once and falls back; it never raises at import.
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
            if build.get("with_cuda"):
                _state["cuda"] = "compiled (CUDA kernels in the library)"
            else:
                # A CPU-only build still serves CUDA tensors, through the reference kernels.
                _register_reference(["CUDA"])
                _state["cuda"] = "reference (library built without CUDA kernels)"
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
