"""Parity of distance_scores, distance_matrix and distance_scores_multi with the float64
oracle (scipy), on every backend: the registered op (compiled, or the fallback under
FPGM_EXT_BACKEND=reference) and the reference functions called directly."""
import numpy as np
import pytest
import torch

import fpgm_ext
from fpgm_ext import reference
from fpgm_ext.testing import avx512_kernels, devices, dtypes, metrics, random_filters, score_rtol

import oracle



def _portable(fn):
    def run(*args):
        with avx512_kernels(False):
            return fn(*args)
    return run


IMPLS = {
    "op": {
        "scores": lambda w, m: torch.ops.fpgm.distance_scores(w, m),
        "matrix": lambda w, m: torch.ops.fpgm.distance_matrix(w, m),
        "multi": lambda ws, m: torch.ops.fpgm.distance_scores_multi(ws, m),
    },
    # The compiled CPU kernels' portable paths (what CPUs without AVX-512 run); where this
    # CPU has AVX-512, "op" runs the AVX-512 kernels instead (csrc/cpu/avx512.h).
    "op_portable": {
        "scores": _portable(lambda w, m: torch.ops.fpgm.distance_scores(w, m)),
        "matrix": _portable(lambda w, m: torch.ops.fpgm.distance_matrix(w, m)),
        "multi": _portable(lambda ws, m: torch.ops.fpgm.distance_scores_multi(ws, m)),
    },
    "reference": {
        "scores": reference.distance_scores,
        "matrix": reference.distance_matrix,
        "multi": reference.distance_scores_multi,
    },
}

# From a single filter to realistic conv layers; N and D off the kernels' tile sizes.
SHAPES = [(1, 1), (1, 9), (5, 1), (2, 3), (7, 3, 1, 1), (16, 16, 3, 3), (33, 5, 7), (129, 65),
          (200, 37), (300, 9), (64, 3, 7, 7), (256, 128, 3, 3), (512, 4608)]
BIG = {(256, 128, 3, 3), (512, 4608)}


def assert_scores_close(got, weight, metric, rtol):
    ref = oracle.scores(weight, metric)
    assert got.shape == (weight.shape[0],)
    assert got.dtype == (torch.float64 if weight.dtype == torch.float64 else torch.float32)
    got = got.cpu().double().numpy()
    scale = np.abs(ref).max()
    if weight.shape[0] > 2:  # the ranking must be resolvable at this tolerance
        assert np.ptp(ref) > 10 * rtol * scale, "degenerate test data: scores nearly all equal"
    err = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)
    err[ref == 0] = np.abs(got[ref == 0])  # N = 1: a single filter scores exactly 0
    assert err.max() <= rtol, f"max relative error {err.max():.3g} > {rtol:g}"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_scores_float32(impl, device, metric, shape):
    w = random_filters(shape, device=device)
    if metric == "cos" and w[0].numel() == 1:  # 1-D filters: cosine distance is 0 or 2 by sign;
        w[::2] = w[::2].abs()                   # mixed signs keep the scores from all tying
        w[1::2] = -w[1::2].abs()
        w[-1:] = w[-1:].abs()
    assert_scores_close(IMPLS[impl]["scores"](w, metric), w, metric, score_rtol[torch.float32])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("dtype", dtypes, ids=str)
@pytest.mark.parametrize("shape", [(1, 4), (37, 3, 3, 3), (130, 200)], ids=str)
def test_scores_dtypes(impl, device, metric, dtype, shape):
    w = random_filters(shape, dtype=dtype, device=device)
    assert_scores_close(IMPLS[impl]["scores"](w, metric), w, metric, score_rtol[dtype])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("layout", ["channels_last", "transposed", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_scores_layouts(impl, device, metric, layout, dtype):
    w = random_filters((70, 16, 3, 3), dtype=dtype, device=device, layout=layout)
    assert not w.is_contiguous()
    assert_scores_close(IMPLS[impl]["scores"](w, metric), w, metric, score_rtol[dtype])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("spread", [1e-3, 1e-5])
def test_scores_near_duplicates(impl, device, metric, spread):
    """The case FPGM exists for: filters close to one another (and exact copies), where
    |a|^2 + |b|^2 - 2ab cancels unless the kernel guards against it."""
    base = torch.randn(1, 1152)
    w = base + spread * torch.randn(300, 1152)
    w[10] = w[3]  # an exact duplicate
    w = w.to(device)
    assert_scores_close(IMPLS[impl]["scores"](w, metric), w, metric, 1e-5)


def clustered(order, n=512, d=1152, clusters=4, spread=1e-3):
    """Filters in tight clusters far from each other and from any common centre, the
    clusters interleaved row by row or in blocks."""
    centres = 10 * torch.randn(clusters, d)
    if order == "interleaved":
        w = centres.repeat(n // clusters, 1)
    else:
        w = centres.repeat_interleave(n // clusters, 0)
    return w + spread * torch.randn(n, d)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("order", ["interleaved", "blocked"])
def test_scores_clustered(impl, device, metric, order):
    """No one centre brings every filter near the origin: a pair inside a cluster has
    |a - b|^2 some 1e-8 of |a|^2 + |b|^2 after centring, and the Gram identity alone
    would lose it (max relative score error 2e-5 to 6e-5 before the kernels recomputed
    such pairs directly)."""
    torch.manual_seed(1)
    w = clustered(order).to(device)
    assert_scores_close(IMPLS[impl]["scores"](w, metric), w, metric, 1e-5)
    small = clustered(order, n=96, d=700, clusters=3).to(device)
    for got, layer in zip(IMPLS[impl]["multi"]([w, small], metric), [w, small]):
        assert_scores_close(got, layer, metric, 1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", metrics)
def test_scores_zero_and_constant_rows(impl, device, metric):
    w = torch.randn(40, 27)
    w[5] = 0
    w[17] = 0
    w[20] = 3.0
    w = w.to(device)
    assert_scores_close(IMPLS[impl]["scores"](w, metric), w, metric, 1e-5)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 3), (9, 4, 3, 3), (150, 70), (300, 2304)], ids=str)
def test_matrix(impl, device, metric, dtype, shape):
    w = random_filters(shape, dtype=dtype, device=device)
    got = IMPLS[impl]["matrix"](w, metric)
    n = shape[0]
    assert got.shape == (n, n)
    ref = oracle.matrix(w, metric)
    got = got.cpu().double().numpy()
    tol = score_rtol[dtype]
    # Per element: relative, and absolute against the largest distance (a tiny distance
    # between close filters cannot be relative-exact in float32).
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert np.array_equal(got, got.T) and (np.diag(got) == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", metrics)
def test_matrix_batched(impl, device, metric):
    w = torch.randn(4, 50, 20, device=device)
    got = IMPLS[impl]["matrix"](w, metric)
    assert got.shape == (4, 50, 50)
    for b in range(4):
        ref = oracle.matrix(w[b], metric)
        np.testing.assert_allclose(got[b].cpu().double().numpy(), ref, rtol=1e-5,
                                   atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_multi(impl, device, metric, dtype):
    """Many layers of different shapes (a small CNN's worth) in one call."""
    shapes = [(16, 3, 3, 3), (1, 5), (32, 16, 3, 3), (130, 32, 1, 1), (7, 200), (64, 32, 3, 3),
              (10, 64), (129, 1)]
    ws = [random_filters(s, dtype=dtype, device=device, layout="channels_last" if len(s) == 4 else "contiguous")
          for s in shapes]
    got = IMPLS[impl]["multi"](ws, metric)
    assert isinstance(got, (list, tuple)) and len(got) == len(ws)
    for g, w in zip(got, ws):
        assert_scores_close(g, w, metric, score_rtol[dtype])


def test_multi_empty_list():
    assert fpgm_ext.distance_scores_multi([]) == []
    assert fpgm_ext.reference.distance_scores_multi([]) == []
    with pytest.raises(ValueError, match="metric"):
        fpgm_ext.distance_scores_multi([], "l3")


# Gram-path shapes around the packed kernel's tiles (8 x 48 entries, 16-row panels, items
# of 128 rows x 512 columns): N off every multiple, several row blocks and column items.
GRAM_EDGES = [(47, 1000), (129, 100), (263, 17), (161, 257), (1030, 33)]


@pytest.mark.parametrize("impl", ["op", "op_portable"])
@pytest.mark.parametrize("shape", GRAM_EDGES, ids=str)
def test_gram_edges(impl, shape):
    w = random_filters(shape)
    assert_scores_close(IMPLS[impl]["scores"](w, "l2"), w, "l2", score_rtol[torch.float32])
    for metric in ("l2", "cos"):
        got = IMPLS[impl]["matrix"](w, metric)
        np.testing.assert_allclose(got.numpy(), oracle.matrix(w, metric), rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("avx512", [True, False])
def test_scores_deterministic(avx512):
    """The same scores on every run (no dependence on scheduling), and within rounding of
    each other on any number of threads (which decides how large blocks are cut)."""
    torch.manual_seed(0)
    old = torch.get_num_threads()
    with avx512_kernels(avx512):
        try:
            for w in (torch.randn(700, 300), torch.randn(1100, 2100), torch.randn(300, 20)):
                results = {}
                for threads in (1, max(2, old), 3):
                    torch.set_num_threads(threads)
                    runs = [[torch.ops.fpgm.distance_scores(w, m) for m in metrics] for _ in range(3)]
                    for run in runs[1:]:
                        assert all(torch.equal(a, b) for a, b in zip(runs[0], run))
                    results[threads] = runs[0]
                for a, b in zip(results[1], results[3]):
                    torch.testing.assert_close(a, b, rtol=1e-6, atol=0)
        finally:
            torch.set_num_threads(old)


def test_public_api_detaches():
    conv = torch.nn.Conv2d(8, 24, 3)
    s = fpgm_ext.distance_scores(conv.weight)
    assert not s.requires_grad
    assert_scores_close(s, conv.weight, "l2", 1e-5)
    assert_scores_close(fpgm_ext.distance_scores_multi([conv.weight])[0], conv.weight, "l2", 1e-5)
    m = fpgm_ext.distance_matrix(conv.weight, "cos")
    np.testing.assert_allclose(m.numpy(), oracle.matrix(conv.weight, "cos"), rtol=1e-5, atol=1e-6)
