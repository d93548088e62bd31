"""distance_scores needs no N x N buffer: for N=16384, D=64 float32 (a 1 GiB distance
matrix) the compiled CPU kernel's peak extra memory stays under 64 MB.

Measured in a fresh child process by the resident-set high-water mark (VmHWM of
/proc/self/status), which counts every page touched whatever the allocator caches; the
baseline is the current resident set (VmRSS) just before the call, so nothing the op
touches can hide under an earlier peak. A control, torch.cdist on the same input, shows
the measure sees the 1 GiB matrix, so the test can fail.

Also imported by bench/report.py (``peak_extra``) for the memory row of its table.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import fpgm_ext

N, D = 16384, 64
LIMIT_MB = 64
ROWS = 64  # rows of the result checked against a float64 cdist of the same rows

_CHILD = r"""
import json, sys
import torch
import fpgm_ext

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(key + " not in /proc/self/status")

what, n, d, rows = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = torch.Generator().manual_seed(0)
f = torch.randn(n, d, generator=g)
# warm up both paths on a small input: thread pools, lazy initialisation, dispatch caches
small = torch.randn(256, d, generator=g)
fpgm_ext.distance_scores(small)
torch.cdist(small, small).sum(1)

rss_before = status("VmRSS")
if what == "ours":
    out = fpgm_ext.distance_scores(f)
elif what == "cdist":
    out = torch.cdist(f, f).sum(1)
else:
    raise SystemExit("unknown op " + what)
hwm_after = status("VmHWM")

ref = torch.cdist(f[:rows].double(), f.double()).sum(1)
err = ((out[:rows].double() - ref).abs() / ref.abs()).max().item()
json.dump({"extra_bytes": hwm_after - rss_before, "rss_before": rss_before,
           "rel_err": err, "threads": torch.get_num_threads(),
           "backend": fpgm_ext.backend_info()["backend"]}, sys.stdout)
"""


def peak_extra(what: str, n: int = N, d: int = D, rows: int = ROWS, timeout: float = 120) -> dict:
    """Runs ``what`` ("ours": fpgm_ext.distance_scores, "cdist": torch.cdist(F, F).sum(1))
    on an [n, d] float32 input in a fresh interpreter; returns its peak extra resident
    bytes ("extra_bytes") and the largest relative error of the first ``rows`` scores
    against a float64 cdist ("rel_err")."""
    result = subprocess.run([sys.executable, "-c", _CHILD, what, str(n), str(d), str(rows)],
                            capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    if result.returncode != 0:
        raise RuntimeError(f"memory probe '{what}' failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


needs_compiled = pytest.mark.skipif(
    fpgm_ext.backend_info()["backend"] != "compiled",
    reason="the pure-PyTorch fallback builds the N x N matrix by design")
needs_procfs = pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                                  reason="needs Linux /proc/self/status (VmHWM, VmRSS)")


@needs_procfs
@needs_compiled
def test_distance_scores_allocates_no_n_by_n_buffer():
    ours = peak_extra("ours")
    control = peak_extra("cdist")
    mb = 1 << 20
    matrix = N * N * 4
    # The measure sees a 1 GiB matrix when there is one...
    assert control["extra_bytes"] > 0.9 * matrix, control
    # ...and ours has none.
    assert ours["extra_bytes"] < LIMIT_MB * mb, (
        f"distance_scores(N={N}, D={D}) raised the resident peak by "
        f"{ours['extra_bytes'] / mb:.1f} MB (limit {LIMIT_MB} MB; cdist: "
        f"{control['extra_bytes'] / mb:.0f} MB)")
    # ...and the scores are right (first rows against a float64 cdist).
    assert ours["rel_err"] < 1e-5, ours
    assert ours["backend"] == "compiled"
