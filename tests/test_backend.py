"""Which backend serves the ops, and that it is the one it should be."""
import os
import subprocess
import sys

import torch

import fpgm_ext
from fpgm_ext import reference

FORCED_REFERENCE = os.environ.get("FPGM_EXT_BACKEND") == "reference"


def test_compiled_backend_in_use():
    """Fails if the compiled library silently fell back to the pure-PyTorch ops."""
    info = fpgm_ext.backend_info()
    if FORCED_REFERENCE:
        assert info["backend"] == "reference" and "FPGM_EXT_BACKEND" in info["reason"]
        return
    assert info["backend"] == "compiled", info["reason"]
    assert info["devices"]["cpu"] == "compiled"
    # The CPU kernel really is the C++ one, not a Python registration.
    table = torch._C._dispatch_dump_table("fpgm::distance_scores")
    cpu_line = next(line for line in table.splitlines() if line.startswith("CPU:"))
    assert "distance.cpp" in cpu_line, table


def test_build_info():
    info = fpgm_ext.backend_info()
    if info["backend"] != "compiled":
        return
    build = info["build"]
    assert build["torch_version"] == torch.__version__.split("+")[0]
    assert isinstance(build["with_cuda"], bool)
    assert build["openmp"], "built without OpenMP: at::parallel_for would run on one thread"
    assert set(build) >= {"cuda_version", "cuda_arch_list", "compiler", "build_system"}


def test_schemas_agree_with_reference():
    """csrc/ops.cpp and reference.SCHEMAS define the same operators."""
    for name, schema in reference.SCHEMAS.items():
        assert str(getattr(torch.ops.fpgm, name).default._schema) == "fpgm::" + schema


def _run(env_extra, code):
    env = {k: v for k, v in os.environ.items() if k != "FPGM_EXT_BACKEND"}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def test_failed_load_warns_once_and_falls_back():
    code = (
        "import torch, fpgm_ext\n"
        "info = fpgm_ext.backend_info()\n"
        "assert info['backend'] == 'reference', info\n"
        "assert 'compiled library not loaded' in info['reason'], info\n"
        "w = torch.randn(20, 3, 3, 3)\n"
        "torch.testing.assert_close(fpgm_ext.distance_scores(w), torch.cdist(w.flatten(1), w.flatten(1)).sum(1))\n"
        "print('OK')\n"
    )
    result = _run({"FPGM_EXT_LIBRARY": "/nonexistent/libfpgm_ext_ops.so"}, code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"
    assert result.stderr.count("using the pure-PyTorch fallback") == 1, result.stderr
