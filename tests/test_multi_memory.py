"""The compiled CPU kernels prepare and score a call's layers in batches of bounded memory
(csrc/cpu/distance_batches.h): a batch's rows are prepared, scored and released before
the next batch is prepared, and on AVX-512 CPUs the Gram path packs half and bfloat16 rows
panel by panel from the weight itself, never holding them whole in float32.

Here: many layers of mixed sizes and paths (direct and Gram, few dimensions, zero rows,
clusters, a common offset that makes l2 centre its rows, a strided layout), in every
dtype, with the budget forced down to one layer per batch and to batch boundaries in
between (``fpgm_ext.testing.batch_bytes``): the scores are within the accuracy contract
of a float64 computation (fpgm_ext.reference on the float64 values), within it of
per-layer ``distance_scores`` calls, and the same bit for bit whatever the budget. And the
memory itself, in a fresh process: a bfloat16 model's call adds a small part of the
weights' size, where one batch of all layers (the old behaviour) adds twice the weights
or more.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import fpgm_ext
from fpgm_ext import reference
from fpgm_ext.testing import avx512_kernels, batch_bytes, dtypes, metrics, random_filters, score_rtol

# (shape, kind): Gram-path layers (l2 centred for "offset"), near-duplicates, zero rows
# (cos sets them aside), a transposed layout, direct-path layers (small, few dimensions),
# and a single filter.
LAYERS = [((300, 600), "offset"), ((257, 1100), "plain"), ((96, 700), "cluster"),
          ((130, 32, 3, 3), "transposed"), ((520, 96), "zeros"), ((64, 20), "plain"),
          ((200, 12), "offset"), ((40, 30), "plain"), ((7, 3), "plain"), ((1, 50), "plain"),
          ((150, 70), "cluster")]
# From one layer per batch (1 byte) through boundaries between the layers to all of them in
# one batch (None: the default budget, 128 MiB or more).
BUDGETS = [1, 30_000, 200_000, 1_000_000, None]


def make_layers(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for shape, kind in LAYERS:
        if kind == "transposed":
            w = random_filters(shape, layout="transposed", generator=g)
        else:
            w = torch.randn(shape, generator=g)
        n, d = shape[0], w[0].numel()
        if kind == "offset":      # a common component 4x the spread: centring
            w = w + 4 * torch.randn(1, *shape[1:], generator=g)
        elif kind == "cluster":   # three tight clusters, an exact duplicate
            centres = 3 * torch.randn(3, d, generator=g)
            w = centres.repeat(n // 3 + 1, 1)[:n] + 1e-3 * torch.randn(n, d, generator=g)
            w[5] = w[2]
        elif kind == "zeros":
            w[::7] = 0
        out.append(w.to(dtype))
    return out


def assert_within(got, ref, rtol, what):
    """Relative error at most rtol (absolute where ref is 0: a single filter scores 0)."""
    got, ref = got.double(), ref.double()
    err = torch.where(ref == 0, got.abs(), (got - ref).abs() / ref.abs().clamp_min(1e-300)).max().item()
    assert err <= rtol, f"{what}: max relative error {err:.3g} > {rtol:g}"


@pytest.mark.parametrize("avx512", [True, False], ids=["avx512", "portable"])
@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("dtype", dtypes, ids=str)
def test_multi_batches(avx512, metric, dtype):
    ws = make_layers(dtype, seed=10 * metrics.index(metric) + dtypes.index(dtype))
    rtol = score_rtol[dtype]
    with avx512_kernels(avx512):
        runs = {}
        for budget in BUDGETS:
            with batch_bytes(budget):
                runs[budget] = fpgm_ext.distance_scores_multi(ws, metric)
        single = [fpgm_ext.distance_scores(w, metric) for w in ws]
    for k, w in enumerate(ws):
        ref = reference.distance_scores(w.double(), metric)
        for budget, scores in runs.items():
            assert scores[k].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
            assert torch.equal(scores[k], runs[None][k]), f"layer {k}: budget {budget} changed the scores"
        assert_within(runs[1][k], ref, rtol, f"layer {k} {LAYERS[k]} against float64")
        assert_within(single[k], ref, rtol, f"layer {k} alone against float64")
        assert_within(runs[1][k], single[k], 2 * rtol, f"layer {k}: multi against alone")


@pytest.mark.parametrize("avx512", [True, False], ids=["avx512", "portable"])
@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_matrix_batches(avx512, metric, dtype):
    """A batch of layers [B, N, D] through distance_matrix, one layer per batch and all at once."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, 300, 200, generator=g) + 3 * torch.randn(4, 1, 200, generator=g)
    w[1, ::5] = 0
    w = w.to(dtype)
    with avx512_kernels(avx512):
        with batch_bytes(1):
            tiny = fpgm_ext.distance_matrix(w, metric)
        whole = fpgm_ext.distance_matrix(w, metric)
    assert torch.equal(tiny, whole)
    for b in range(w.shape[0]):
        ref = reference.distance_matrix(w[b].double(), metric)
        tol = score_rtol[dtype] * ref.abs().max().item()
        torch.testing.assert_close(tiny[b].double(), ref, rtol=score_rtol[dtype], atol=tol)


@pytest.mark.parametrize("metric", metrics)
def test_first_bad_layer_named_across_batches(metric):
    """Batches hold the layers of most work first, so a bad layer of lower index can sit in a
    later batch than another bad layer: the error still names the first in list order."""
    g = torch.Generator().manual_seed(0)
    layers = [torch.randn(n, d, generator=g) for n, d in ((4, 3), (300, 600), (8, 5), (16, 40), (200, 700))]
    for bad in ([2, 4], [1, 3], [3, 4], [0, 1], [4]):
        ws = [w.clone() for w in layers]
        for k in bad:
            ws[k][1, 2] = float("nan")
        for budget in (1, None):
            with batch_bytes(budget), pytest.raises(ValueError, match=rf"weights\[{bad[0]}\].*NaN"):
                fpgm_ext.distance_scores_multi(ws, metric)


def test_bad_budget_values_fall_back_to_the_default():
    ws = make_layers(torch.float32)
    want = fpgm_ext.distance_scores_multi(ws, "l2")
    for value in ("0", "-5", "abc", "12MB", ""):
        os.environ["FPGM_EXT_CPU_BATCH_BYTES"] = value
        try:
            got = fpgm_ext.distance_scores_multi(ws, "l2")
        finally:
            del os.environ["FPGM_EXT_CPU_BATCH_BYTES"]
        assert all(torch.equal(a, b) for a, b in zip(got, want))


# ----------------------------------------------------------------------------- memory
_CHILD = r"""
import json, sys
import torch
import fpgm_ext

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)

threads, layers, n, d = (int(a) for a in sys.argv[1:5])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
ws = [torch.randn(n, d, generator=g, dtype=torch.bfloat16) for _ in range(layers)]
fpgm_ext.distance_scores_multi(ws[:1], "l2")   # warm-up: thread pool, lazy initialisation
rss = status("VmRSS")
fpgm_ext.distance_scores_multi(ws, "l2")
json.dump({"extra": status("VmHWM") - rss, "weights": layers * n * d * 2,
           "file": fpgm_ext.__file__}, sys.stdout)
"""


def _peak_extra_ratio(threads, budget, avx512):
    """Peak extra resident memory of one call on 40 bfloat16 layers [1024, 768] (63 MB), in
    a fresh process (VmHWM after the call less VmRSS before it), over the weights' size."""
    env = dict(os.environ, FPGM_EXT_CPU_BATCH_BYTES=str(budget), FPGM_EXT_CPU_AVX512="1" if avx512 else "0",
               PYTHONPATH=os.pathsep.join(sys.path))
    out = subprocess.run([sys.executable, "-c", _CHILD, str(threads), "40", "1024", "768"],
                         env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    assert os.path.dirname(result["file"]) == os.path.dirname(fpgm_ext.__file__)
    return result["extra"] / result["weights"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.skipif(fpgm_ext.backend_info()["backend"] != "compiled", reason="the compiled CPU kernels' batches")
@pytest.mark.parametrize("avx512", [True, False], ids=["avx512", "portable"])
@pytest.mark.parametrize("threads", [1, 2])
def test_bfloat16_model_memory(threads, avx512):
    """Batches of 4 MiB keep the call under 0.3x the weights (the batch, the scores' partial
    sums, the allocator's slack); one batch of all layers, the control, costs 2x or more
    (float32 rows, or their packed copy, of every layer at once), so the measure sees it."""
    small = _peak_extra_ratio(threads, 4 << 20, avx512)
    whole = _peak_extra_ratio(threads, 1 << 40, avx512)
    assert whole >= 1.5, f"control: one batch of everything added only {whole:.2f}x the weights"
    assert small <= 0.3, f"batches of 4 MiB added {small:.2f}x the weights"


def test_certified_all_exact_in_runs(monkeypatch):
    """CandidateScores.all_exact converts a group's members to float64 a run at a time
    (certified._EXACT_BYTES), not all at once: the runs stay under the limit, and the sum
    is the float64 score of the whole group."""
    from fpgm_ext import certified

    g = torch.Generator().manual_seed(5)
    rows = [torch.randn(60, d, generator=g).bfloat16() for d in (40, 300, 50, 60, 45, 700)]
    approx = sum(s.double() for s in fpgm_ext.distance_scores_multi(rows, "l2"))
    runs = []

    def score_all(rs):
        assert all(r.dtype == torch.float64 for r in rs)
        runs.append([r.shape[1] for r in rs])
        return fpgm_ext.distance_scores_multi(rs, "l2")

    monkeypatch.setattr(certified, "_EXACT_BYTES", 8 * 60 * 100)   # 100 columns of float64 rows
    got = certified.CandidateScores(rows, approx, "l2", score_all).all_exact()
    assert runs == [[40], [300], [50], [60], [45], [700]]
    runs.clear()
    monkeypatch.setattr(certified, "_EXACT_BYTES", 8 * 60 * 400)
    other = certified.CandidateScores(rows, approx, "l2", score_all).all_exact()
    torch.testing.assert_close(other, got, rtol=1e-12, atol=0)   # (each call cuts its own items)
    assert runs == [[40, 300, 50], [60, 45], [700]]
    ref = sum(reference.distance_scores(r.double(), "l2") for r in rows)
    assert_within(got, ref, score_rtol[torch.float64], "all_exact in runs")
