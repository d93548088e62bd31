"""The CUDA kernels (csrc/cuda/kernels/*.cuh) on the CPU, through the emulation of the CUDA
launch in tests/emulation (every block's threads as real threads, __syncthreads as a
barrier, __shared__ per block, atomics as std::atomic_ref), against the float64 oracle.

The same device code, host planning and launch sequence as csrc/cuda/*.cu; no GPU and no
torch headers needed, only a C++20 compiler. Sizes stay small: one OS thread per CUDA
thread. Odd sizes on purpose: N and D off the 64 x 16 tiles, N = 1, D = 1, many layers.
"""
from __future__ import annotations

import os

import zlib

import numpy as np
import pytest
import torch

from fpgm_ext.testing import metrics, random_filters, score_rtol

import emulation
import oracle

if os.environ.get("FPGM_EXT_BACKEND") == "reference":
    pytest.skip("the emulation runs the device code itself, whichever backend serves the ops; "
                "it runs once, on the default backend", allow_module_level=True)

pytestmark = pytest.mark.skipif(emulation.compiler() is None, reason="no C++ compiler")

NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
         torch.bfloat16: "bfloat16"}


@pytest.fixture(scope="session")
def emu(tmp_path_factory):
    return emulation.Emulator(emulation.build(tmp_path_factory.mktemp("fpgm_emu")))


def _gen(*key) -> torch.Generator:
    """A generator seeded by the test's parameters: the same data on every run."""
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


def _host(w: torch.Tensor) -> np.ndarray:
    """The op's view of a weight: rows [N, D], contiguous, in the input dtype's storage."""
    f = w.detach().reshape(w.shape[0], -1).contiguous()
    if f.dtype == torch.bfloat16:
        return f.view(torch.int16).numpy().view(np.uint16)
    return f.numpy()


def _scores(emu, weights, metric):
    return emu.distance([_host(w) for w in weights], metric, NAMES[weights[0].dtype])


def assert_scores_close(got, weight, metric, rtol):
    ref = oracle.scores(weight, metric)
    assert got.shape == (weight.shape[0],)
    assert got.dtype == (np.float64 if weight.dtype == torch.float64 else np.float32)
    got = got.astype(np.float64)
    if weight.shape[0] > 2:
        assert np.ptp(ref) > 10 * rtol * np.abs(ref).max(), "degenerate test data"
    err = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)
    err[ref == 0] = np.abs(got[ref == 0])
    assert err.max() <= rtol, f"max relative error {err.max():.3g} > {rtol:g}"


SHAPES = [(1, 1), (1, 9), (5, 1), (2, 3), (7, 3, 1, 1), (16, 16, 3, 3), (33, 5, 7), (64, 16),
          (65, 17), (129, 65), (150, 37), (64, 3, 7, 7)]


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_scores_float32(emu, metric, shape):
    w = random_filters(shape, generator=_gen(shape))
    assert_scores_close(_scores(emu, [w], metric)[0], w, metric, score_rtol[torch.float32])


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape", [(1, 4), (37, 3, 3, 3), (130, 70)], ids=str)
def test_scores_dtypes(emu, metric, dtype, shape):
    """Half inputs are read as such (the host half types of the emulation) and
    accumulated in float32; float64 stays float64 throughout."""
    w = random_filters(shape, dtype=dtype, generator=_gen(shape))
    assert_scores_close(_scores(emu, [w], metric)[0], w, metric, score_rtol[dtype])


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("spread", [1e-3, 1e-5])
def test_scores_near_duplicates(emu, metric, spread):
    """Filters close to one another, and an exact copy: centring (in the preparation
    kernels) keeps |a|^2 + |b|^2 - 2ab from cancelling, and sq_i built from the Gram
    kernel's own chunk sums makes the copy's distance exactly 0."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(1, 288, generator=g) + spread * torch.randn(130, 288, generator=g)
    w[10] = w[3]
    assert_scores_close(_scores(emu, [w], metric)[0], w, metric, 1e-5)
    d = emu.distance([_host(w)], metric, "float32", matrix=True)[0]
    assert d[3, 10] == 0 and d[10, 3] == 0


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("order", ["interleaved", "blocked"])
@pytest.mark.parametrize("split", [False, True])
def test_scores_clustered(emu, metric, order, split):
    """Filters in tight clusters far from each other and from any common centre: pairs
    inside a cluster cancel in the Gram identity and must be recomputed directly
    (max relative score error about 2e-5 before), split-K pairs included."""
    g = torch.Generator().manual_seed(2)
    centres = 10 * torch.randn(4, 576, generator=g)
    w = centres.repeat(64, 1) if order == "interleaved" else centres.repeat_interleave(64, 0)
    w = w + 1e-3 * torch.randn(256, 576, generator=g)
    kwargs = {"target_blocks": 64} if split else {}
    got = emu.distance([_host(w)], metric, "float32", **kwargs)[0]
    assert_scores_close(got, w, metric, 1e-5)


@pytest.mark.parametrize("metric", ["l2", "cos"])
@pytest.mark.parametrize("matrix", [False, True])
def test_many_close_pairs_warp_recompute(emu, metric, matrix):
    """SoftFPGM re-scores layers with 30-40 % of the filters zeroed, and near-duplicates come
    in clusters: most pairs of a warp are close, several per lane, recomputed by the whole
    warp together (ballot, shuffles); pairs of two zero filters skip the recompute (l2:
    distance 0, cos: 1)."""
    g = _gen("softfpgm")
    w = torch.randn(150, 300, generator=g)
    w[torch.randperm(150, generator=g)[:55]] = 0          # 37 % zeroed filters
    w[100:130] = w[100] + 1e-4 * torch.randn(30, 300, generator=g)   # a tight cluster
    got = emu.distance([_host(w)], metric, "float32", matrix=matrix)[0]
    if matrix:
        ref = oracle.matrix(w, metric)
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())
    else:
        assert_scores_close(got, w, metric, 1e-5)


@pytest.mark.parametrize("metric", metrics)
def test_scores_zero_and_constant_rows(emu, metric):
    w = torch.randn(70, 27, generator=_gen("zero"))
    w[5] = 0
    w[17] = 0
    w[66] = 0  # a zero row in the second tile
    w[20] = 3.0
    assert_scores_close(_scores(emu, [w], metric)[0], w, metric, 1e-5)


@pytest.mark.parametrize("metric", metrics)
def test_scores_all_rows_zero(emu, metric):
    w = torch.zeros(5, 3)
    got = _scores(emu, [w], metric)[0]
    np.testing.assert_array_equal(got, oracle.scores(w, metric))  # cos: 4 each, else 0


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 3), (70, 1), (45, 2, 2, 4), (9, 4, 3, 3), (150, 70)], ids=str)
def test_matrix(emu, metric, dtype, shape):
    """Every entry against the oracle; D <= 16 takes the direct (a - b)^2 path, so close
    pairs in few dimensions stay exact too."""
    w = random_filters(shape, dtype=dtype, generator=_gen(shape))
    got = emu.distance([_host(w)], metric, NAMES[dtype], matrix=True)[0].astype(np.float64)
    ref = oracle.matrix(w, metric)
    tol = score_rtol[dtype]
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert np.array_equal(got, got.T) and (np.diag(got) == 0).all()  # every entry written


@pytest.mark.parametrize("metric", metrics)
def test_matrix_batched(emu, metric):
    """distance_matrix of [B, N, D]: B layers of one shape, one call."""
    w = torch.randn(4, 70, 20, generator=_gen("batched"))
    got = emu.distance([_host(w[b]) for b in range(4)], metric, "float32", matrix=True)
    for b in range(4):
        ref = oracle.matrix(w[b], metric)
        np.testing.assert_allclose(got[b], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


MULTI_SHAPES = [(16, 3, 3, 3), (1, 5), (32, 16, 3, 3), (66, 32, 1, 1), (7, 200), (64, 32, 3, 3),
                (10, 64), (129, 1), (3, 2), (65, 2, 3, 3), (1, 1), (40, 19)]


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=str)
def test_multi(emu, metric, dtype):
    """Many layers of different shapes in one call: each kernel launched once for all of
    them (the same launches as for a single layer), the tile kernel over every layer's
    upper-triangle tile pairs."""
    ws = [random_filters(s, dtype=dtype, layout="channels_last" if len(s) == 4 else "contiguous",
                         generator=_gen(s)) for s in MULTI_SHAPES]
    got = _scores(emu, ws, metric)
    launches = emu.launches()
    for g, w in zip(got, ws):
        assert_scores_close(g, w, metric, score_rtol[dtype])
    tiles = [(w.shape[0] + 63) // 64 for w in ws]
    rows = sum(w.shape[0] for w in ws)
    expected_blocks = [rows] + ([] if metric == "l1" else [sum((w[0].numel() + 31) // 32 for w in ws)])
    expected_blocks += [rows, sum(t * (t + 1) // 2 for t in tiles), (rows + 255) // 256]
    assert [b for b, _ in launches] == expected_blocks
    _scores(emu, ws[:1], metric)
    assert len(emu.launches()) == len(launches)  # one layer: as many launches as twelve


SPLIT_SHAPES = [(129, 650), (1, 300), (70, 9), (64, 200), (7, 3, 3, 3)]


@pytest.mark.parametrize("wave, items", [
    (264, 252),   # H100/H200: 132 SMs x 2 resident tile blocks: 7 parts, one wave (not 8: 288)
    (528, 288),   # 4 blocks per SM: 8 parts (kMaxSplit), one wave
    (128, 252),   # 36 pairs x 7 = 252 <= 2 waves of 128 (8 parts: 288, 3 waves)
    (36, 36),     # as many blocks as pairs: no split
    (0, 36),      # target 0: never split
])
def test_split_fills_whole_waves(emu, wave, items):
    """split-K is planned on the blocks the GPU holds at once (the launcher: resident tile
    blocks per SM from the occupancy API x SMs): the split that finishes in the fewest wave
    times, so the items fill whole waves or stop just under one."""
    plan = emu.plan([(512, 4608)], "l2", target_blocks=wave)   # 8 x 8 tiles: 36 pairs
    assert plan["items"] == items
    assert plan["split_pairs"] == (36 if items > 36 else 0)


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("matrix", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_split_k(emu, metric, matrix, dtype):
    """Few tile pairs for the GPU (target_blocks above their count): the columns of each
    pair are split over several blocks (at least 8 steps of 16 columns each; shorter
    layers stay whole), then added in order by split_finish_kernel."""
    ws = [random_filters(s, dtype=dtype, generator=_gen("split", s)) for s in SPLIT_SHAPES]
    ws[3][10] = ws[3][3]  # an exact duplicate inside a split layer
    got = emu.distance([_host(w) for w in ws], metric, NAMES[dtype], matrix=matrix, target_blocks=64)
    launches = emu.launches()
    pairs = 6 + 1 + 3 + 1 + 1
    parts = 6 * 5 + 1 * 2 + 1 * 1 + 1  # (129, 650): 41 steps -> 5 parts; (1, 300): 19 -> 2
    assert launches[-2 if matrix else -3][0] == parts - 1 + 3 + 1  # tile items: 30 + 2 + 3 + 1 + 1
    assert launches[-1 if matrix else -2][0] == 6 + 1  # split_finish_kernel: the split pairs
    tol = score_rtol[dtype]
    for g, w in zip(got, ws):
        if matrix:
            ref = oracle.matrix(w, metric)
            np.testing.assert_allclose(g, ref, rtol=tol, atol=tol * np.abs(ref).max())
            assert np.array_equal(g, g.T) and (np.diag(g) == 0).all()
        else:
            assert_scores_close(g, w, metric, tol)
    if matrix:
        assert got[3][3, 10] == 0
    assert pairs == 12


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("matrix", [False, True])
def test_nonfinite_gives_nan(emu, metric, matrix):
    """No exception from a GPU op (it would need a host sync): a layer holding NaN or
    Inf gets all-NaN scores (and matrix); the other layers of the call are unaffected."""
    g = _gen("nonfinite")
    good, nan, inf = torch.randn(70, 200, generator=g), torch.randn(70, 200, generator=g), torch.randn(5, 3, generator=g)
    nan[66, 4] = float("nan")
    inf[0, 0] = float("inf")
    # target_blocks: split-K for the 70-row layers, so both tile paths meet the NaN.
    got = emu.distance([_host(good), _host(nan), _host(inf)], metric, "float32", matrix=matrix,
                       target_blocks=64)
    assert np.isnan(got[1]).all() and np.isnan(got[2]).all()
    ref = oracle.matrix(good, metric) if matrix else oracle.scores(good, metric)
    np.testing.assert_allclose(got[0], ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def _random(shape, dtype, rng):
    if dtype == np.bool_:
        return rng.random(shape) > 0.5
    if np.issubdtype(dtype, np.complexfloating):
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(-100 if np.issubdtype(dtype, np.signedinteger) else 0, 100, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def _misaligned(a: np.ndarray, offset: int) -> np.ndarray:
    """A C-contiguous copy of a that starts `offset` bytes past a 64-byte boundary."""
    raw = np.zeros(a.nbytes + 64 + offset, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64 + offset
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


GATHER_DTYPES = [np.float32, np.float64, np.float16, np.int64, np.int32, np.int8, np.uint8,
                 np.bool_, np.complex64, np.complex128]


def test_gather_many(emu):
    """One launch for 40 tensors of every element size, ranks 1-4, any dim, int32 and int64
    indices (repeated, empty), aligned and misaligned addresses: words of 16, 8, 4, 2 and 1
    bytes all occur."""
    rng = np.random.default_rng(0)
    tensors, dims, indices = [], [], []
    for k in range(40):
        rank = int(rng.integers(1, 5))
        shape = [int(s) for s in rng.integers(1, 9, rank)]
        dim = int(rng.integers(0, rank))
        t = _random(shape, GATHER_DTYPES[k % len(GATHER_DTYPES)], rng)
        if k % 7 == 3:
            t = _misaligned(t, int(rng.integers(1, 16)))
        kept = int(rng.integers(0, shape[dim] + 2))
        idx = rng.integers(0, shape[dim], kept).astype(np.int64 if k % 2 else np.int32)
        tensors.append(t)
        dims.append(dim)
        indices.append(idx)
    outs, words = emu.gather(tensors, dims, indices)
    for o, t, d, i in zip(outs, tensors, dims, indices):
        np.testing.assert_array_equal(o, np.take(t, i, axis=d))
    assert set(words) == {1, 2, 4, 8, 16}
    assert len(emu.launches()) == 1


def test_gather_prune_plan(emu):
    """conv -> BN -> conv surgery in one call; large enough for several blocks per tensor."""
    rng = np.random.default_rng(1)
    keep = np.array([0, 2, 3, 7, 9, 15, 40, 63])
    conv1 = rng.standard_normal((64, 32, 3, 3)).astype(np.float32)
    bn = rng.standard_normal(64).astype(np.float32)
    conv2 = rng.standard_normal((128, 64, 3, 3)).astype(np.float32)
    nhwc = rng.standard_normal((128, 3, 3, 64)).astype(np.float16)  # channels_last storage
    tensors, dims = [conv1, bn, conv2, nhwc], [0, 0, 1, 3]
    outs, words = emu.gather(tensors, dims, [keep] * 4)
    for o, t, d in zip(outs, tensors, dims):
        np.testing.assert_array_equal(o, np.take(t, keep, axis=d))
    assert words == [16, 4, 4, 2]
    blocks = emu.launches()[0][0]
    assert blocks > len(tensors)


def test_gather_nothing_to_copy(emu):
    outs, _ = emu.gather([np.zeros((0, 3), np.float32), np.ones((4, 2), np.float32)], [1, 0],
                         [np.array([1], np.int64), np.array([], np.int64)])
    assert outs[0].shape == (0, 1) and outs[1].shape == (0, 2)
    assert emu.launches() == []  # no empty launch (an error on a GPU)


@pytest.mark.parametrize("bad", [6, -1])
def test_gather_index_out_of_range(emu, bad):
    """The device-side assertion fires (a GPU reports it at the next synchronisation);
    the index is clamped, so nothing outside the tensor is read."""
    t = np.arange(24, dtype=np.float32).reshape(6, 4)
    with pytest.raises(emulation.EmulationError, match=rf"indices\[1\] holds {bad}, out of range for size 6"):
        emu.gather([t, t], [0, 0], [np.array([0, 1]), np.array([2, bad, 3])])
