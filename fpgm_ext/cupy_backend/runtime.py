"""The CuPy runtime of the CuPy backend: modules loaded per device, occupancy, launches on
torch's current stream through the CUDA driver API (CuPy's bindings), tables copied from
pinned memory. Torch tensors are passed by address: no copy, no host synchronisation.
"""
from __future__ import annotations

import ctypes
import threading
from typing import Dict, Sequence, Tuple

import torch

from . import nvrtc


class CupyRuntime:
    """What ops.py needs from a GPU: kernels by name, resident blocks, launches, tables."""

    def __init__(self):
        import cupy  # noqa: F401  (the bindings below need the package initialised)
        from cupy.cuda import driver

        self._driver = driver
        self._lock = threading.Lock()
        self._modules: Dict[Tuple[int, Tuple[str, ...]], Dict[str, int]] = {}
        self._blocks: Dict[Tuple[int, int, int], int] = {}

    def device_guard(self, device: torch.device):
        return torch.cuda.device(device)

    def check_not_capturing(self, device: torch.device, op: str) -> None:
        # As the compiled backend: the table is copied from host memory at every call, which
        # a CUDA graph would replay from a buffer handed out again since.
        if torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"fpgm.{op}: cannot be captured in a CUDA graph (its work table is "
                               "copied from host memory at every call); call it outside the capture")

    def kernels(self, device: torch.device, names: Sequence[str]) -> Dict[str, int]:
        """CUfunction handles of the kernel instances `names` on `device`, compiled for its
        architecture (nvrtc.compile_kernels caches) and loaded once per device."""
        key = (device.index, tuple(sorted(set(names))))
        with self._lock:
            found = self._modules.get(key)
        if found is not None:
            return found
        major, minor = torch.cuda.get_device_capability(device)
        image = nvrtc.compile_kernels(key[1], major * 10 + minor)
        module = self._driver.moduleLoadData(image.data)  # into the current (device's) context
        functions = {name: self._driver.moduleGetFunction(module, image.lowered[name]) for name in key[1]}
        with self._lock:
            self._modules.setdefault(key, functions)
            return self._modules[key]

    def resident_blocks(self, device: torch.device, function: int, threads: int) -> int:
        """Blocks of `function` the device runs at once: blocks per SM (occupancy) x SMs."""
        key = (device.index, function, threads)
        if key not in self._blocks:
            per_sm = self._driver.occupancyMaxActiveBlocksPerMultiprocessor(function, threads, 0)
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            self._blocks[key] = sms * max(per_sm, 1)
        return self._blocks[key]

    def copy_table(self, dst: torch.Tensor, image: bytes) -> None:
        """dst (uint8, on the device) <- image, one asynchronous copy from pinned memory
        (torch's host allocator keeps the pinned block until the copy has run)."""
        host = torch.empty(len(image), dtype=torch.uint8, pin_memory=True)
        host.numpy()[:] = memoryview(image)
        dst.copy_(host, non_blocking=True)

    def launch(self, device: torch.device, function: int, blocks: int, threads: int,
               args: Sequence[bytes]) -> None:
        """function<<<blocks, threads, 0, torch's current stream>>>(args...), each argument
        given as the bytes of its value."""
        if not 0 < blocks < 2 ** 31:
            raise RuntimeError(f"fpgm: too much work for one launch ({blocks} blocks)")
        values = [ctypes.create_string_buffer(a, len(a)) for a in args]
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        stream = torch.cuda.current_stream(device).cuda_stream
        self._driver.launchKernel(function, blocks, 1, 1, threads, 1, 1, 0, stream,
                                  ctypes.addressof(params), 0)
