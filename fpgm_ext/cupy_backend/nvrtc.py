"""The device code of csrc/cuda/kernels compiled at run time with NVRTC (through CuPy's
bindings): no CUDA toolkit needed, only CuPy and the NVRTC library its CUDA wheels bring.

The sources ship inside the package (``fpgm_ext/_device_code``, copied there by setup.py
from ``csrc/``); an in-place or editable checkout reads ``csrc/`` directly. A compiled
image is kept per (architecture, kernel instances) in memory and on disk, keyed by a hash
of the sources, the options and the NVRTC version, so a changed kernel never reuses a
stale image.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Sequence, Tuple

_PACKAGE = Path(__file__).resolve().parents[1]
# The translation unit: all device code, nothing host-only (distance_plan.cuh, launch code).
SOURCE = '#include "distance.cuh"\n#include "gather.cuh"\n'
_OPTIONS = ("-std=c++17",)


def kernels_dir() -> Path:
    """The folder holding distance.cuh and gather.cuh (with accuracy.h two levels up)."""
    for root in (_PACKAGE / "_device_code", _PACKAGE.parent / "csrc"):
        folder = root / "cuda" / "kernels"
        if (folder / "distance.cuh").is_file() and (root / "accuracy.h").is_file():
            return folder
    raise FileNotFoundError(
        "fpgm_ext: the CUDA kernel sources are missing (expected fpgm_ext/_device_code/cuda/kernels "
        "in an installed package, or csrc/cuda/kernels next to fpgm_ext in a checkout)")


def _source_files(folder: Path) -> Sequence[Path]:
    return [*sorted(folder.glob("*.cuh")), folder.parents[1] / "accuracy.h"]


def target(arch: int, supported: Sequence[int]) -> Tuple[str, str]:
    """(NVRTC architecture option, image kind) for a device of compute capability `arch`
    (e.g. 90): native code where this NVRTC knows the architecture, else PTX for the
    newest one it knows below it (the driver compiles that at load time)."""
    if arch in supported:
        return f"--gpu-architecture=sm_{arch}", "cubin"
    older = [a for a in supported if a <= arch]
    if not older:
        raise RuntimeError(f"fpgm_ext: NVRTC supports architectures {list(supported)}, none at or "
                           f"below this GPU's sm_{arch}")
    return f"--gpu-architecture=compute_{max(older)}", "ptx"


@dataclass(frozen=True)
class Image:
    """A compiled module: its bytes (cubin, or PTX ending in NUL) and each requested
    kernel's lowered (mangled) name."""
    data: bytes
    kind: str
    lowered: Dict[str, str]


def _cache_dir() -> Path:
    base = os.environ.get("FPGM_EXT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "fpgm_ext")
    return Path(base) / "nvrtc"


_memory: Dict[str, Image] = {}


def compile_kernels(names: Sequence[str], arch: int) -> Image:
    """The kernel instances `names` (C++ names, e.g. "fpgm::kernels::finalize_kernel<float>")
    compiled for compute capability `arch` (80 for sm_80). No GPU needed."""
    from cupy.cuda import nvrtc

    folder = kernels_dir()
    option, kind = target(arch, nvrtc.getSupportedArchs())
    options = [*_OPTIONS, option, f"-I{folder}"]
    names = sorted(set(names))
    digest = hashlib.sha256()
    for part in (SOURCE, repr(_OPTIONS), option, repr(nvrtc.getVersion()), *names):
        digest.update(part.encode() + b"\0")
    for path in _source_files(folder):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    key = digest.hexdigest()[:32]
    if key in _memory:
        return _memory[key]
    image = _load_cached(key) or _compile(nvrtc, names, options, kind)
    _store_cached(key, image)
    _memory[key] = image
    return image


def _compile(nvrtc, names: Sequence[str], options: Sequence[str], kind: str) -> Image:
    prog = nvrtc.createProgram(SOURCE, "fpgm_kernels.cu", [], [])
    try:
        for name in names:
            nvrtc.addNameExpression(prog, name)
        try:
            nvrtc.compileProgram(prog, list(options))
        except nvrtc.NVRTCError as exc:
            raise RuntimeError(f"fpgm_ext: NVRTC could not compile the CUDA kernels ({exc}) with "
                               f"{' '.join(options)}:\n{nvrtc.getProgramLog(prog)}") from None
        lowered = {name: nvrtc.getLoweredName(prog, name) for name in names}
        data = nvrtc.getCUBIN(prog) if kind == "cubin" else nvrtc.getPTX(prog)
    finally:
        nvrtc.destroyProgram(prog)
    if isinstance(data, str):
        data = data.encode()
    if kind == "ptx" and not data.endswith(b"\0"):
        data += b"\0"  # cuModuleLoadData reads PTX as a NUL-terminated string
    return Image(bytes(data), kind, lowered)


def _load_cached(key: str):
    folder = _cache_dir()
    try:
        meta = json.loads((folder / f"{key}.json").read_text())
        data = (folder / f"{key}.{meta['kind']}").read_bytes()
    except (OSError, ValueError, KeyError):
        return None
    if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
        return None  # a truncated or damaged file: compile again
    return Image(data, meta["kind"], dict(meta["lowered"]))


def _store_cached(key: str, image: Image) -> None:
    folder = _cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for suffix, payload in ((image.kind, image.data), ("json", json.dumps(
                {"kind": image.kind, "lowered": image.lowered,
                 "sha256": hashlib.sha256(image.data).hexdigest()}).encode())):
            tmp = folder / f"{key}.{suffix}.{os.getpid()}.tmp"
            tmp.write_bytes(payload)
            os.replace(tmp, folder / f"{key}.{suffix}")  # atomic: readers see whole files
    except OSError:
        pass  # a read-only home: the in-memory cache still holds it
