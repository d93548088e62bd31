"""Bad input raises a clear error naming the argument, on every backend; none crashes."""
import pytest
import torch

import fpgm_ext
from fpgm_ext import reference

OPS = {
    "op": {name: getattr(torch.ops.fpgm, name) for name in reference.OPS},
    "reference": reference.OPS,
}

W = torch.randn(8, 3, 3, 3)


def _nan(pos):
    w = torch.randn(8, 4)
    w[pos] = float("nan") if pos[1] % 2 else float("inf")
    return w


SCORE_CASES = [  # (args, exception, words the message must hold)
    ((torch.randint(0, 5, (8, 4)), "l2"), ValueError, ["weight", "torch.int64"]),
    ((torch.randint(0, 5, (8, 4), dtype=torch.int32), "l2"), ValueError, ["weight", "torch.int32"]),
    ((torch.randn(8, 4, dtype=torch.complex64), "l2"), ValueError, ["weight", "torch.complex64"]),
    ((torch.ones(8, 4, dtype=torch.bool), "l2"), ValueError, ["weight", "torch.bool"]),
    ((torch.tensor(3.0), "l2"), ValueError, ["weight", "rank"]),
    ((torch.randn(0, 4), "l2"), ValueError, ["weight", "N = 0"]),
    ((torch.randn(5, 0), "l2"), ValueError, ["weight", "D = 0"]),
    ((torch.randn(0), "l1"), ValueError, ["weight", "no elements"]),
    ((W, "l3"), ValueError, ["metric", "l3"]),
    ((W, "L2"), ValueError, ["metric"]),
    ((W, ""), ValueError, ["metric"]),
    ((_nan((3, 1)), "l2"), ValueError, ["weight", "NaN"]),
    ((_nan((0, 2)), "cos"), ValueError, ["weight", "Inf"]),
    ((_nan((7, 3)), "l1"), ValueError, ["weight", "NaN"]),
]


def _raises(fn, args, exc, words):
    with pytest.raises(exc) as info:
        fn(*args)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


@pytest.mark.parametrize("impl", OPS)
@pytest.mark.parametrize("op", ["distance_scores", "distance_matrix"])
@pytest.mark.parametrize("case", range(len(SCORE_CASES)))
def test_bad_weight(impl, op, case):
    args, exc, words = SCORE_CASES[case]
    _raises(OPS[impl][op], args, exc, words)


@pytest.mark.parametrize("impl", OPS)
@pytest.mark.parametrize("case", range(len(SCORE_CASES)))
def test_bad_weight_in_multi(impl, case):
    """The bad layer is named by its position in the list."""
    (bad, metric), exc, words = SCORE_CASES[case]
    good = torch.randn(6, 5).to(bad.dtype) if bad.dtype.is_floating_point else torch.randn(6, 5)
    words = ["weights[1]" if w == "weight" else w for w in words]
    if not bad.dtype.is_floating_point:
        words = ["weights[1]"]
    _raises(OPS[impl]["distance_scores_multi"], ([good, bad], metric), exc, words)


@pytest.mark.parametrize("impl", OPS)
@pytest.mark.parametrize("metric", ["l2", "l1", "cos"])
def test_multi_names_the_first_bad_layer(impl, metric):
    """Layers are prepared in parallel, largest first: the error still names the first bad
    layer in list order, whichever of them is large or small."""
    torch.manual_seed(0)
    layers = [torch.randn(n, d) for n, d in ((4, 3), (300, 600), (8, 5), (16, 9), (200, 700))]
    for bad in ([2, 4], [1, 3], [3, 4], [0, 1]):
        ws = [w.clone() for w in layers]
        for k in bad:
            ws[k][1, 2] = float("nan")
        _raises(OPS[impl]["distance_scores_multi"], (ws, metric), ValueError, [f"weights[{bad[0]}]", "NaN"])


@pytest.mark.parametrize("impl", OPS)
def test_multi_mixed_dtypes(impl):
    _raises(OPS[impl]["distance_scores_multi"], ([W, W.double()], "l2"), ValueError, ["weights[1]", "dtype"])


T = torch.randn(6, 4)
I = torch.tensor([0, 2])

GATHER_CASES = [
    (([T, T], [0], [I, I]), ValueError, ["same length"]),
    (([T], [0, 1], [I]), ValueError, ["same length"]),
    (([T], [0], []), ValueError, ["same length"]),
    (([T], [0], [torch.tensor([0, 6])]), IndexError, ["indices[0]", "6", "out of range"]),
    (([T, T], [0, 1], [I, torch.tensor([-1])]), IndexError, ["indices[1]", "-1"]),
    (([T], [0], [torch.tensor([0.0, 1.0])]), ValueError, ["indices[0]", "int64"]),
    (([T], [0], [torch.tensor([True])]), ValueError, ["indices[0]"]),
    (([T], [0], [torch.tensor([[0, 1]])]), ValueError, ["indices[0]", "1-D"]),
    (([T], [2], [I]), ValueError, ["dims[0]", "out of range"]),
    (([T], [-3], [I]), ValueError, ["dims[0]"]),
    (([torch.tensor(1.0)], [0], [I]), ValueError, ["tensors[0]", "rank"]),
    (([T, torch.randn(4, 0)], [0, -1], [I, torch.tensor([0])]), IndexError,
     ["indices[1]", "dimension 1", "size 0"]),
]


@pytest.mark.parametrize("impl", OPS)
@pytest.mark.parametrize("case", range(len(GATHER_CASES)))
def test_bad_gather(impl, case):
    args, exc, words = GATHER_CASES[case]
    _raises(OPS[impl]["gather_channels"], args, exc, words)


@pytest.mark.parametrize("impl", OPS)
def test_sparse_rejected(impl):
    # The dispatcher itself refuses a sparse tensor for the compiled op (no SparseCPU kernel).
    with pytest.raises((ValueError, NotImplementedError)):
        OPS[impl]["gather_channels"]([T.to_sparse()], [0], [I])
    with pytest.raises((ValueError, NotImplementedError)):
        OPS[impl]["distance_scores"](W.to_sparse(), "l2")


def test_public_api_errors():
    _raises(fpgm_ext.distance_scores, (torch.randn(4, 3), "euclid"), ValueError, ["metric"])
    _raises(fpgm_ext.gather_channels, ([], [0], []), ValueError, ["same length"])
    _raises(fpgm_ext.select, (torch.randint(0, 3, (8, 4)), 0.2), ValueError, ["weight"])


def test_errors_leave_the_interpreter_usable():
    for args, exc, _ in SCORE_CASES:
        with pytest.raises(exc):
            torch.ops.fpgm.distance_scores(*args)
    assert torch.ops.fpgm.distance_scores(W, "l2").shape == (8,)
