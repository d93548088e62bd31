"""gather_channels against index_select, on every backend."""
import pytest
import torch

from fpgm_ext import reference
from fpgm_ext.testing import devices

IMPLS = {"op": lambda *a: torch.ops.fpgm.gather_channels(*a), "reference": reference.gather_channels}

ALL_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
              torch.int8, torch.uint8, torch.bool, torch.complex64]


def _random(shape, dtype, device):
    if dtype == torch.bool:
        return torch.rand(shape, device=device) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype, device=device)
    if dtype.is_floating_point:
        return torch.randn(shape, device=device).to(dtype)
    return torch.randint(-100 if dtype.is_signed else 0, 100, shape, device=device).to(dtype)


def _check(impl, tensors, dims, indices):
    out = IMPLS[impl](tensors, dims, indices)
    assert len(out) == len(tensors)
    for o, t, d, i in zip(out, tensors, dims, indices):
        expected = t.index_select(d, i.long())
        assert o.is_contiguous() and o.dtype == t.dtype and o.device == t.device
        assert torch.equal(o, expected)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_gather_dtypes(impl, device, dtype):
    t = _random((12, 7, 3, 3), dtype, device)
    idx = torch.randperm(12, device=device)[:5]
    _check(impl, [t, t], [0, 1], [idx, idx[idx < 7]])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
def test_gather_prune_plan(impl, device):
    """One call doing a conv -> BN -> conv surgery: out channels, BN vectors, in channels."""
    keep = torch.tensor([0, 2, 3, 7, 9, 15], device=device)
    conv1, bias = torch.randn(16, 8, 3, 3, device=device), torch.randn(16, device=device)
    bn = [torch.randn(16, device=device) for _ in range(4)]
    conv2 = torch.randn(32, 16, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    linear = torch.randn(10, 16, device=device).t()  # non-contiguous [16, 10] view
    tensors = [conv1, bias, *bn, conv2, linear]
    dims = [0, 0, 0, 0, 0, 0, 1, -2]
    _check(impl, tensors, dims, [keep] * len(tensors))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("device", devices())
def test_gather_edge_cases(impl, device):
    t = torch.randn(5, 4, device=device)
    _check(impl, [t], [1], [torch.tensor([], dtype=torch.int64, device=device)])  # nothing kept
    _check(impl, [t], [0], [torch.tensor([4, 4, 0], device=device)])  # repeated indices
    _check(impl, [t], [-1], [torch.tensor([3, 1], dtype=torch.int32, device=device)])  # int32, dim -1
    _check(impl, [torch.randn(0, 6, device=device)], [1], [torch.tensor([1], device=device)])  # empty outer
    _check(impl, [torch.randn(3, 0, device=device)], [1],  # no channels, none asked for
           [torch.tensor([], dtype=torch.int64, device=device)])
    _check(impl, [torch.randn(7, device=device)], [0], [torch.randperm(7, device=device)])


@pytest.mark.parametrize("impl", IMPLS)
def test_gather_many_random(impl):
    g = torch.Generator().manual_seed(0)
    tensors, dims, indices = [], [], []
    for _ in range(40):
        rank = int(torch.randint(1, 5, (1,), generator=g))
        shape = torch.randint(1, 9, (rank,), generator=g).tolist()
        d = int(torch.randint(0, rank, (1,), generator=g))
        tensors.append(torch.randn(shape, generator=g))
        dims.append(d)
        k = int(torch.randint(0, shape[d] + 1, (1,), generator=g))
        indices.append(torch.randperm(shape[d], generator=g)[:k])
    _check(impl, tensors, dims, indices)


def test_gather_empty_call():
    import fpgm_ext
    assert fpgm_ext.gather_channels([], [], []) == []


# (dtype, inner elements): every block size the CPU kernel copies with a compiled size
# (1, 2, 4, 8, 16, 18, 36, 72, 100, 196 bytes) and some it copies with memcpy (3, 20, 4608*4).
BLOCKS = [(torch.uint8, 1), (torch.float16, 1), (torch.float32, 1), (torch.float64, 1),
          (torch.float32, 4), (torch.float16, 9), (torch.float32, 9), (torch.float64, 9),
          (torch.float32, 25), (torch.float32, 49), (torch.uint8, 3), (torch.float32, 5),
          (torch.float32, 4608)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype,inner", BLOCKS, ids=lambda v: str(v))
def test_gather_block_sizes(impl, dtype, inner):
    """Blocks of each size, gathered along a middle dimension of a tensor large enough that
    the parallel loop splits it in the middle of a row of kept channels."""
    outer = max(2, 400_000 // (inner * 50))
    t = _random((outer, 50, inner), dtype, "cpu")
    idx = torch.randperm(50)[:37]
    _check(impl, [t, t.reshape(outer * 50, inner)], [1, 0], [idx, torch.randperm(outer * 50)[:999]])
