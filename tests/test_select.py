"""select() against a direct implementation of the official two-stage procedure."""
import numpy as np
import pytest
import torch

import fpgm_ext

import oracle

SETTINGS = [  # (rate_dist, rate_norm): FPGM-only and mix settings of the paper and more
    (0.4, 1.0), (0.3, 1.0), (0.3, 0.9), (0.2, 0.7), (0.1, 0.5), (0.0, 0.8), (0.0, 1.0), (0.5, 0.9)]


@pytest.mark.parametrize("rate_dist,rate_norm", SETTINGS)
@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (64, 16, 3, 3), (10, 25), (100, 7), (257, 64, 1, 1)], ids=str)
@pytest.mark.parametrize("metric", ["l2", "l1", "cos"])
def test_select_matches_official(shape, rate_dist, rate_norm, metric):
    w = torch.randn(shape)
    w = w * torch.rand(shape[0], *([1] * (len(shape) - 1)))  # varied norms: the norm stage matters
    keep, prune = fpgm_ext.select(w, rate_dist, rate_norm, metric)
    expected = oracle.official_select(w, rate_dist, rate_norm, metric)
    assert np.array_equal(prune.numpy(), expected)
    n = shape[0]
    assert prune.numel() == int(n * (1 - rate_norm)) + int(n * rate_dist)
    assert keep.dtype == prune.dtype == torch.int64
    assert torch.equal(torch.cat([keep, prune]).sort().values, torch.arange(n))
    assert torch.equal(keep, keep.sort().values)


def test_select_near_duplicates_pruned_first():
    """Filters that the others can replace (copies near the centre) go first."""
    w = torch.randn(20, 50)
    centre = w.mean(0)
    w[[4, 11]] = centre + 1e-4 * torch.randn(2, 50)
    keep, prune = fpgm_ext.select(w, rate_dist=0.1)
    assert prune.tolist() == [4, 11]


def test_select_ties_break_by_lower_index(monkeypatch):
    # Equal norms (scaled basis vectors): the norm stage breaks ties by lower index.
    w = 3 * torch.eye(10)
    assert fpgm_ext.select(w, rate_dist=0.0, rate_norm=0.7).prune.tolist() == [0, 1, 2]
    # Equal scores: the distance stage too (scores forced equal, as kernels' rounding may
    # split a mathematical tie either way).
    monkeypatch.setattr(fpgm_ext.selection, "distance_scores", lambda rows, metric: torch.ones(rows.shape[0]))
    assert fpgm_ext.select(torch.randn(10, 4), rate_dist=0.3).prune.tolist() == [0, 1, 2]
    assert fpgm_ext.select(w, rate_dist=0.2, rate_norm=0.7).prune.tolist() == [0, 1, 2, 3, 4]


def test_select_floor_counts_as_official():
    w = torch.randn(10, 4)
    # int(10 * (1 - 0.9)) == 0 in floating point, as in the official code.
    assert fpgm_ext.select(w, rate_dist=0.0, rate_norm=0.9).prune.numel() == int(10 * (1 - 0.9))
    assert fpgm_ext.select(w, rate_dist=0.39).prune.numel() == 3


@pytest.mark.parametrize("kwargs,match", [
    (dict(rate_dist=1.0), "rate_dist"), (dict(rate_dist=-0.1), "rate_dist"),
    (dict(rate_dist=0.2, rate_norm=0.0), "rate_norm"), (dict(rate_dist=0.2, rate_norm=1.5), "rate_norm"),
    (dict(rate_dist=0.6, rate_norm=0.5), "at least one"), (dict(rate_dist=0.2, metric="l3"), "metric"),
])
def test_select_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fpgm_ext.select(torch.randn(10, 4), **kwargs)


def test_select_rejects_nan():
    w = torch.randn(10, 4)
    w[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        fpgm_ext.select(w, 0.3)
