"""The CUDA kernels of csrc/cuda/kernels/*.cuh, run on the CPU through cuda_emu.h.

`build(directory)` compiles shim.cpp (no torch headers, a few seconds) into a shared
library there; `Emulator(path)` calls it through ctypes with numpy arrays. A test
harness only: every CUDA thread is an OS thread, so keep the sizes small.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path
from typing import List, Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
KERNELS = HERE.parents[1] / "csrc" / "cuda" / "kernels"
SOURCES = [HERE / "shim.cpp", HERE / "cuda_emu.h", KERNELS.parents[1] / "accuracy.h", *sorted(KERNELS.glob("*.cuh"))]

METRICS = {"l2": 0, "l1": 1, "cos": 2}
# dtype name -> (code, numpy storage dtype of the input, numpy dtype of the result)
DTYPES = {
    "float32": (0, np.float32, np.float32),
    "float64": (1, np.float64, np.float64),
    "float16": (2, np.float16, np.float32),
    "bfloat16": (3, np.uint16, np.float32),  # raw bits: numpy has no bfloat16
}


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def build(directory: Path) -> Path:
    """Compiles the shim into directory/libfpgm_emu.so and returns its path."""
    out = Path(directory) / "libfpgm_emu.so"
    cmd = [compiler(), "-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", "-Wall",
           "-Wno-unknown-pragmas", f"-I{KERNELS}", str(HERE / "shim.cpp"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"emulation build failed: {' '.join(cmd)}\n{proc.stderr}")
    return out


def _ptrs(arrays) -> ctypes.Array:
    return (ctypes.c_void_p * len(arrays))(*[a.ctypes.data for a in arrays])


def _i64(values) -> ctypes.Array:
    return (ctypes.c_longlong * len(values))(*values)


class EmulationError(RuntimeError):
    pass


class EmuRuntime:
    """The runtime interface of fpgm_ext.cupy_backend.ops (see its runtime.CupyRuntime) on
    the emulation: the CuPy backend's own Python path (checks, the C++ plan, table and
    argument bytes, launches by name) runs on CPU tensors, every kernel launched by name.
    `wave`: the resident tile blocks it reports (plan_distance splits below it)."""

    def __init__(self, emulator: "Emulator", wave: int = 0):
        self.emu, self.wave = emulator, wave
        self.launched: List[tuple] = []  # (name, blocks, threads) of every launch

    def device_guard(self, device):
        import contextlib

        return contextlib.nullcontext()

    def check_not_capturing(self, device, op: str) -> None:
        pass

    def kernels(self, device, names):
        return {name: name for name in names}  # a handle is the name; the shim resolves it

    def resident_blocks(self, device, function, threads: int) -> int:
        return self.wave

    def copy_table(self, dst, image: bytes) -> None:
        import torch

        dst.copy_(torch.frombuffer(bytearray(image), dtype=torch.uint8))

    def launch(self, device, function: str, blocks: int, threads: int, args) -> None:
        values = [ctypes.create_string_buffer(a, len(a)) for a in args]
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        self.emu.lib.fpgm_emu_reset()
        self.launched.append((function, blocks, threads))
        self.emu._check(self.emu.lib.fpgm_emu_launch_named(function.encode(), ctypes.c_longlong(blocks),
                                                           threads, params))


class Emulator:
    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        lib.fpgm_emu_distance.restype = ctypes.c_int
        lib.fpgm_emu_gather.restype = ctypes.c_int
        lib.fpgm_emu_launches.restype = ctypes.c_int
        lib.fpgm_emu_last_error.restype = ctypes.c_char_p
        lib.fpgm_emu_launch_named.restype = ctypes.c_int
        self.lib = lib

    def _check(self, rc: int) -> None:
        if rc:
            raise EmulationError(self.lib.fpgm_emu_last_error().decode())

    def distance(self, rows: Sequence[np.ndarray], metric: str, dtype: str,
                 matrix: bool = False, target_blocks: int = 0) -> List[np.ndarray]:
        """Scores ([n] each) or distance matrices ([n, n]) of the layers rows[k] [n, d],
        all in one emulated call, as csrc/cuda/distance.cu runs them. Outputs start as
        NaN, so an entry the kernels forget to write fails the comparison.
        target_blocks: below this many tile pairs, columns are split (split-K), as the
        launcher does with 4 x the GPU's SM count; 0 never splits."""
        code, storage, result = DTYPES[dtype]
        rows = [np.ascontiguousarray(r.reshape(r.shape[0], -1), dtype=storage) for r in rows]
        outs = [np.full((r.shape[0], r.shape[0]) if matrix else (r.shape[0],), np.nan, dtype=result)
                for r in rows]
        rc = self.lib.fpgm_emu_distance(
            code, METRICS[metric], int(matrix), len(rows), _ptrs(rows),
            _i64([r.shape[0] for r in rows]), _i64([r.shape[1] for r in rows]), _ptrs(outs),
            ctypes.c_longlong(target_blocks))
        self._check(rc)
        return outs

    def gather(self, tensors: Sequence[np.ndarray], dims: Sequence[int],
               indices: Sequence[np.ndarray]):
        """[t.take(i, axis=d)] for every tensor in one emulated launch. Tensors must be
        C-contiguous (they may start at any address). Returns (outputs, word_bytes)."""
        outs, geometry = [], []
        for t, d, i in zip(tensors, dims, indices):
            assert t.flags.c_contiguous and i.dtype in (np.int64, np.int32) and i.ndim == 1
            shape = list(t.shape)
            outer = int(np.prod(shape[:d], dtype=np.int64))
            inner = int(np.prod(shape[d + 1:], dtype=np.int64))
            out_shape = shape[:d] + [i.shape[0]] + shape[d + 1:]
            outs.append(np.zeros(out_shape, dtype=t.dtype))
            geometry.append((outer, shape[d], i.shape[0], inner * t.itemsize))
        indices = [np.ascontiguousarray(i) for i in indices]
        words = (ctypes.c_int * len(tensors))()
        rc = self.lib.fpgm_emu_gather(
            len(tensors), _ptrs(tensors), _ptrs(outs), _ptrs(indices),
            (ctypes.c_int * len(tensors))(*[int(i.dtype == np.int64) for i in indices]),
            _i64([g[0] for g in geometry]), _i64([g[1] for g in geometry]),
            _i64([g[2] for g in geometry]), _i64([g[3] for g in geometry]), words)
        self._check(rc)
        return outs, list(words)

    def plan(self, shapes: Sequence[tuple], metric: str = "l2", acc_size: int = 4,
             target_blocks: int = 0) -> dict:
        """plan_distance's work table for layers of shapes [(n, d), ...], not run: the
        number of items, of split pairs and of their parts."""
        out = (ctypes.c_longlong * 3)()
        self.lib.fpgm_emu_plan(METRICS[metric], acc_size, len(shapes), _i64([n for n, _ in shapes]),
                               _i64([d for _, d in shapes]), ctypes.c_longlong(target_blocks), out)
        return {"items": out[0], "split_pairs": out[1], "parts": out[2]}

    def launches(self):
        """(blocks, threads) of every launch of the last call."""
        cap = 64
        blocks, threads = (ctypes.c_longlong * cap)(), (ctypes.c_int * cap)()
        n = self.lib.fpgm_emu_launches(blocks, threads, cap)
        return [(blocks[i], threads[i]) for i in range(min(n, cap))]
