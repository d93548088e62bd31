"""CUDA-only checks of the compiled CUDA kernels (csrc/cuda): current stream, no host
synchronisation, one launch for a whole model, NaN/Inf and index-range behaviour, parity
on large layers and a ResNet-50 stack. Parity on every shape, dtype and layout is in
test_distance.py / test_gather.py (their 'cuda' params); all of this skips without a GPU.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import fpgm_ext
from fpgm_ext.testing import metrics

import oracle

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resnet50_convs():
    """The 53 conv weight shapes of ResNet-50, as bench/gpu_bench.py writes them out."""
    spec = importlib.util.spec_from_file_location("fpgm_gpu_bench", os.path.join(ROOT, "bench", "gpu_bench.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.resnet50_convs()


@pytest.fixture(scope="module", autouse=True)
def compiled_cuda():
    if not fpgm_ext.backend_info()["build"].get("with_cuda"):
        pytest.skip("fpgm_ext was built without its CUDA kernels (the fallback serves CUDA)")


def _ops(device="cuda"):
    """Inputs for one call of every op: a conv weight, three layers, kept indices."""
    g = torch.Generator(device="cpu").manual_seed(0)
    w = torch.randn(300, 64, 3, 3, generator=g).to(device)
    layers = [torch.randn(n, d, generator=g).to(device) for n, d in [(64, 27), (130, 576), (7, 1)]]
    keep = torch.tensor([0, 3, 5, 7], device=device)
    return w, layers, keep


def _call_all(w, layers, keep):
    return [
        torch.ops.fpgm.distance_scores(w, "l2"),
        torch.ops.fpgm.distance_matrix(w, "cos"),
        *torch.ops.fpgm.distance_scores_multi(layers, "l1"),
        *torch.ops.fpgm.gather_channels([w, layers[1]], [0, 1], [keep, keep]),
    ]


def test_current_stream():
    """Inputs written on a side stream after a long sleep: an op that launched anywhere
    but the current stream would read them before they exist."""
    w, layers, keep = _ops()
    expected = _call_all(w * 2, [x * 2 for x in layers], keep)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time before the inputs are written
        w2, layers2 = w * 2, [x * 2 for x in layers]
        got = _call_all(w2, layers2, keep)
    torch.cuda.current_stream().wait_stream(side)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_no_host_sync():
    """The ops return while the GPU is still busy: none of them waits for the device."""
    w, layers, keep = _ops()
    _call_all(w, layers, keep)  # warm-up: pinned host blocks, module loading
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a synchronising torch call inside an op raises
    try:
        torch.cuda._sleep(1_000_000_000)  # ~0.5 s
        start = time.perf_counter()
        out = _call_all(w, layers, keep)
        elapsed = time.perf_counter() - start
        busy = not torch.cuda.current_stream().query()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert busy, "the device finished before the ops returned: something synchronised"
    assert elapsed < 0.2, f"the ops took {elapsed:.3f} s on the host: something waited for the GPU"
    assert all(torch.isfinite(o.float()).all() for o in out)


def _kernel_names(fn):
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if not names:
        pytest.skip("the profiler recorded no CUDA activity (no CUPTI)")
    return names


@pytest.mark.parametrize("metric", metrics)
def test_multi_is_one_launch_per_kernel(metric):
    """53 layers of different N and D: each fpgm kernel launched once, whatever the count."""
    ws = [torch.randn(s, device="cuda") for s in resnet50_convs()]
    torch.ops.fpgm.distance_scores_multi(ws, metric)  # warm-up
    names = [n for n in _kernel_names(lambda: torch.ops.fpgm.distance_scores_multi(ws, metric))
             if "fpgm" in n]
    expected = {"row_stats_kernel", "prepare_rows_kernel", "tile_kernel", "finalize_kernel"}
    if metric != "l1":
        expected.add("column_mean_kernel")
    for kernel in expected:
        assert sum(kernel in n for n in names) == 1, (kernel, names)
    assert len(names) == len(expected), names


def test_gather_is_one_launch():
    ts = [torch.randn(s, device="cuda") for s in [(64, 32, 3, 3), (64,), (128, 64, 3, 3), (10, 64)]]
    keep = torch.arange(0, 32, 2, device="cuda")
    names = _kernel_names(lambda: torch.ops.fpgm.gather_channels(ts, [0, 0, 1, 1], [keep] * 4))
    assert sum("gather_kernel" in n for n in names) == 1, names


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("matrix", [False, True])
def test_nonfinite_gives_nan(metric, matrix):
    """No exception on the GPU (raising would need a host sync): a layer holding NaN or
    Inf comes back all NaN; the other layers of the call are unaffected."""
    good = torch.randn(70, 9, device="cuda")
    bad = torch.randn(70, 9, device="cuda")
    bad[66, 4] = float("nan")
    inf = torch.randn(5, 3, device="cuda")
    inf[0, 0] = float("inf")
    if matrix:
        got = [torch.ops.fpgm.distance_matrix(x, metric) for x in (good, bad, inf)]
        ref = oracle.matrix(good, metric)
    else:
        got = torch.ops.fpgm.distance_scores_multi([good, bad, inf], metric)
        ref = oracle.scores(good, metric)
    assert torch.isnan(got[1]).all() and torch.isnan(got[2]).all()
    np.testing.assert_allclose(got[0].cpu().double().numpy(), ref, rtol=1e-5,
                               atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("op", ["scores", "multi", "matrix", "gather"])
def test_graph_capture_refused(op):
    """The work table is copied from pinned host memory at every call, which a CUDA graph
    would replay from a reused buffer: capturing an op is refused with a clear error."""
    w = torch.randn(64, 27, device="cuda")
    calls = {"scores": lambda: fpgm_ext.distance_scores(w),
             "multi": lambda: fpgm_ext.distance_scores_multi([w, w]),
             "matrix": lambda: fpgm_ext.distance_matrix(w),
             "gather": lambda: fpgm_ext.gather_channels([w], [0], [torch.arange(3, device="cuda")])}
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="cannot be captured in a CUDA graph"):
        with torch.cuda.graph(graph):
            calls[op]()
    assert fpgm_ext.distance_scores(w).isfinite().all()  # the device is still usable


def test_gather_index_out_of_range_asserts():
    """A device-side assertion (as torch's index_select on CUDA); it poisons the CUDA
    context, hence the subprocess."""
    code = ("import sys, torch, fpgm_ext\n"
            "if not fpgm_ext.backend_info()['build'].get('with_cuda'): sys.exit(3)\n"
            "t = torch.randn(6, 4, device='cuda')\n"
            "torch.ops.fpgm.gather_channels([t], [0], [torch.tensor([0, 6], device='cuda')])\n"
            "torch.cuda.synchronize()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode not in (0, 3), (proc.returncode, proc.stderr[-2000:])
    assert "device-side assert" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("shape", [(512, 4608), (2048, 512), (1000, 1)], ids=str)
def test_large_layers(metric, shape):
    w = torch.randn(shape, device="cuda")
    got = torch.ops.fpgm.distance_scores(w, metric)
    ref = _torch_scores64(w, metric)
    err = ((got.double() - ref).abs() / ref.abs()).max().item()
    assert err <= 1e-5, f"max relative error {err:.3g}"


def _torch_scores64(w, metric):
    """An independent reference on the GPU: torch in float64 (cdist for l2/l1, unit rows
    for cos)."""
    f = w.reshape(w.shape[0], -1).double()
    if metric == "cos":
        u = torch.nn.functional.normalize(f, dim=1)
        d = (1 - u @ u.T).clamp(0, 2)
    else:
        d = torch.cdist(f, f, p=2 if metric == "l2" else 1)
    d.fill_diagonal_(0)
    return d.sum(1)


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_resnet50_multi(metric, dtype):
    """The whole ResNet-50 conv stack in one call equals per-layer references."""
    ws = [(torch.randn(s, device="cuda") * 0.05).to(dtype) for s in resnet50_convs()]
    got = torch.ops.fpgm.distance_scores_multi(ws, metric)
    for g, w in zip(got, ws):
        ref = _torch_scores64(w, metric)
        assert g.dtype == torch.float32 and g.shape == ref.shape
        err = ((g.double() - ref).abs() / ref.abs()).max().item()
        assert err <= 1e-5, f"{tuple(w.shape)}: max relative error {err:.3g}"


def test_scores_repeatable():
    """float64 atomics: repeated runs agree to float64 rounding (float32 scores almost
    always bit-identical)."""
    w = torch.randn(2048, 512, device="cuda")
    a = torch.ops.fpgm.distance_scores(w.double(), "l2")
    b = torch.ops.fpgm.distance_scores(w.double(), "l2")
    torch.testing.assert_close(a, b, rtol=1e-13, atol=0)
