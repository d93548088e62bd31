"""Certified float32 selection (fpgm_ext.certified): the float64 rule's picks from float32
scores, on adversarial layers, against a float64 selection and the scipy oracle."""
import math

import numpy as np
import pytest
import torch

import fpgm_ext
from fpgm_ext.certified import BOUND, CandidateScores, exact_scores, undecided_units
from fpgm_ext.selection import prune_order

import oracle

METRICS = ["l2", "l1", "cos"]


def float64_pick(w, n_cut, metric):
    """The float64 rule: the float64 kernel's scores, stable order, first n_cut."""
    rows = w.reshape(w.shape[0], -1).to(torch.float64)
    scores = fpgm_ext.distance_scores(rows, metric)
    return set(torch.argsort(scores, stable=True)[:n_cut].tolist())


def certified_pick(w, n_cut, metric):
    rows = w.reshape(w.shape[0], -1)
    cs = CandidateScores([rows], fpgm_ext.distance_scores(rows, metric), metric,
                         lambda rs: [fpgm_ext.distance_scores(rs[0], metric)])
    return set(torch.argsort(cs.for_cut(n_cut), stable=True)[:n_cut].tolist()), cs


def assert_same_choice(w, n_cut, metric):
    """The certified picks equal the float64 rule's, except between units whose exact
    (scipy float64) scores tie to 1e-12: those two rankings are float64 rounding apart."""
    got, cs = certified_pick(w, n_cut, metric)
    want = float64_pick(w, n_cut, metric)
    exact = oracle.scores(w, metric)
    tol = 1e-12 * max(np.abs(exact).max(), 1e-300)
    for picks in (got, want):   # each is a valid choice of the n_cut smallest exact scores
        inside = exact[sorted(picks)]
        outside = np.delete(exact, sorted(picks))
        assert len(picks) == n_cut
        assert inside.max() <= outside.min() + tol
    for i in got ^ want:   # where they differ, the scores tie at the cut
        assert abs(exact[i] - exact[sorted(want)].max()) <= tol or abs(exact[i] - exact[sorted(got)].max()) <= tol
    return got, want, cs


def layer(kind, n, d, gen):
    w = torch.randn(n, d, generator=gen)
    if kind == "random":
        return w
    if kind == "duplicates":          # pairs and a triple of exact copies
        w[n // 2:n // 2 + 4] = w[:4]
        w[-1] = w[0]
        return w
    if kind == "near_duplicates":     # copies a float32 ulp or two apart
        w[n // 2:] = w[:n - n // 2] * (1 + 2e-7 * torch.randn(n - n // 2, d, generator=gen))
        return w
    if kind == "clustered":           # tight clusters far from the origin
        centres = 10 * torch.randn(4, d, generator=gen)
        return centres[torch.arange(n) % 4] + 1e-3 * w
    if kind == "equal_scores":        # a scaled basis: every pairwise distance is the same
        return 3.0 * torch.eye(n, d)
    if kind == "mirrored":            # +x and -x pairs: scores tie in pairs
        w[n // 2:] = -w[:n - n // 2]
        return w
    raise ValueError(kind)


KINDS = ["random", "duplicates", "near_duplicates", "clustered", "equal_scores", "mirrored"]


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n,d", [(40, 40), (96, 300), (200, 9)])
def test_certified_equals_float64_rule(kind, metric, n, d):
    gen = torch.Generator().manual_seed(hash((kind, metric, n, d)) % 2**31)
    w = layer(kind, n, d, gen)
    for rate in (0.1, 0.4, 0.7):
        assert_same_choice(w, int(n * rate), metric)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("metric", METRICS)
def test_certified_half_inputs(dtype, metric):
    gen = torch.Generator().manual_seed(7)
    w = layer("near_duplicates", 64, 72, gen).to(dtype)
    assert_same_choice(w, 25, metric)


def test_random_layer_needs_few_float64_rows():
    """On a realistic layer only the units at the cut are recomputed (the point of it)."""
    w = torch.randn(256, 1152)
    got, want, cs = assert_same_choice(w, 102, "l2")
    assert got == want
    assert cs.recomputed < 256 // 8


def test_all_equal_scores_fall_back_to_the_float64_kernel():
    w = 2.0 * torch.eye(48, 48)
    got, want, cs = assert_same_choice(w, 20, "l2")
    assert got == want   # both from the float64 kernel's scores (equal but for the last bits)
    assert cs.recomputed == 48


def test_float64_rows_are_used_as_they_are():
    w = torch.randn(30, 20, dtype=torch.float64)
    got, cs = certified_pick(w, 12, "l2")
    assert got == float64_pick(w, 12, "l2") and cs.recomputed == 0


@pytest.mark.parametrize("metric", METRICS)
def test_exact_scores_match_the_oracle(metric):
    gen = torch.Generator().manual_seed(3)
    w = layer("clustered", 70, 33, gen)
    w[5] = 0   # a zero row (cos: at distance 1 from every other)
    idx = torch.tensor([0, 5, 17, 69])
    got = exact_scores([w, 2 * w], idx, metric, chunk_bytes=16 * 33 * 8)  # chunks of 16 rows.numpy()
    want = oracle.scores(w, metric)[idx.numpy()] + oracle.scores(2 * w, metric)[idx.numpy()]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_undecided_units_brute_force():
    """Against every ranking the bounds allow: a unit called surely in (out) is in (out) of
    the n_cut smallest for random exact values inside the bounds; undecided ones vary."""
    gen = torch.Generator().manual_seed(11)
    for _ in range(200):
        n = int(torch.randint(2, 12, (1,), generator=gen))
        approx = torch.randint(0, 6, (n,), generator=gen).double()
        bound = torch.rand(n, generator=gen, dtype=torch.float64) * 1.5
        n_cut = int(torch.randint(1, n, (1,), generator=gen))
        undecided, surely_in = undecided_units(approx, bound, n_cut)
        surely_out = ~(undecided | surely_in)
        assert int(surely_in.sum()) <= n_cut <= n - int(surely_out.sum())
        for _ in range(20):
            exact = approx + (2 * torch.rand(n, generator=gen, dtype=torch.float64) - 1) * bound
            picked = torch.zeros(n, dtype=torch.bool)
            picked[torch.argsort(exact, stable=True)[:n_cut]] = True
            assert bool(picked[surely_in].all()) and not bool(picked[surely_out].any())


def test_non_finite_scores_decide_nothing():
    approx = torch.tensor([1.0, math.inf, 2.0, 3.0], dtype=torch.float64)
    undecided, surely_in = undecided_units(approx, BOUND * approx.abs(), 2)
    assert bool(undecided.all()) and not bool(surely_in.any())


def test_cut_reuses_known_scores():
    """The target search asks for several cuts of one layer: float64 rows are computed once."""
    w = torch.randn(128, 200)
    rows = w.reshape(128, -1)
    cs = CandidateScores([rows], fpgm_ext.distance_scores(rows), "l2",
                         lambda rs: [fpgm_ext.distance_scores(rs[0])])
    exact = fpgm_ext.distance_scores(rows.double())
    for n_cut in (10, 50, 50, 90, 10):
        order = prune_order(torch.arange(128), 0, torch.arange(128), cs.for_cut(n_cut))
        assert set(order[:n_cut].tolist()) == set(torch.argsort(exact, stable=True)[:n_cut].tolist())
    first = cs.recomputed
    cs.for_cut(50)
    assert cs.recomputed == first


@pytest.mark.parametrize("metric", METRICS)
def test_float32_ties_resolved_in_float64(metric):
    """Two filters an ulp apart in a few weights, the cut between them: their float32 scores
    tie (or misorder), their float64 scores do not. The certified pick is the float64 one
    every time; the plain float32 pick is wrong on some of these layers (the test bites)."""
    wrong_in_float32 = 0
    for seed in range(12):
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(64, 100, generator=gen)
        w[40] = w[3]
        w[40, :5] = torch.nextafter(w[40, :5], torch.tensor(math.inf))
        s64 = fpgm_ext.distance_scores(w.double(), metric)
        n_cut = int((s64 < s64[[3, 40]].min()).sum()) + 1
        got, want, _ = assert_same_choice(w, n_cut, metric)
        assert got == want
        s32 = fpgm_ext.distance_scores(w, metric)
        wrong_in_float32 += set(torch.argsort(s32, stable=True)[:n_cut].tolist()) != want
    assert wrong_in_float32 > 0


@pytest.mark.parametrize("metric", METRICS)
def test_scores_at_the_edge_of_the_contract(metric):
    """A backend whose scores are off by up to the accuracy contract (1e-5 relative, the
    kernels do 100x better) still yields the float64 picks: the scores of a wide layer lie
    closer than that near the cut, so the unrefined noisy order is wrong (the test bites)."""
    gen = torch.Generator().manual_seed(5)
    rows = torch.randn(400, 2000, generator=gen)
    rows /= rows.norm(dim=1, keepdim=True)   # equal norms: scores spread by the angles only
    exact = fpgm_ext.distance_scores(rows.double(), metric)
    noisy = exact * (1 + 1e-5 * (2 * torch.rand(400, generator=gen, dtype=torch.float64) - 1))
    wrong = 0
    for n_cut in (40, 120, 160, 200, 280):
        want = set(torch.argsort(exact, stable=True)[:n_cut].tolist())
        cs = CandidateScores([rows], noisy, metric, lambda rs: [fpgm_ext.distance_scores(rs[0], metric)])
        assert set(torch.argsort(cs.for_cut(n_cut), stable=True)[:n_cut].tolist()) == want
        wrong += set(torch.argsort(noisy, stable=True)[:n_cut].tolist()) != want
    assert wrong > 0
