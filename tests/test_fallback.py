"""The whole suite once more with the pure-PyTorch backend registered as torch.ops.fpgm
(FPGM_EXT_BACKEND=reference): parity, opcheck, torch.compile and bad input, in a fresh
interpreter, since one process can hold only one registration of the fpgm namespace."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(os.environ.get("FPGM_EXT_BACKEND") == "reference", reason="already the fallback run")
def test_suite_on_reference_backend():
    env = dict(os.environ, FPGM_EXT_BACKEND="reference")
    env.pop("FPGM_EXT_LIBRARY", None)
    cmd = [sys.executable, "-m", "pytest", HERE, "-q", "-p", "no:cacheprovider", "-x",
           "--ignore", os.path.join(HERE, "test_fallback.py")]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    tail = "\n".join(result.stdout.splitlines()[-15:])
    assert result.returncode == 0, tail + result.stderr[-2000:]
    assert " passed" in tail and "failed" not in tail, tail
