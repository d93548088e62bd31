"""torch.library.opcheck and torch.compile for every op (schema, fake kernel, dispatch)."""
import pytest
import torch

import fpgm_ext
from fpgm_ext.testing import devices


def samples(device):
    w4 = torch.randn(24, 8, 3, 3, device=device)
    yield torch.ops.fpgm.distance_scores.default, (w4, "l2")
    yield torch.ops.fpgm.distance_scores.default, (w4.to(torch.float16), "cos")
    yield torch.ops.fpgm.distance_scores.default, (torch.randn(9, 5, device=device, dtype=torch.float64), "l1")
    yield torch.ops.fpgm.distance_matrix.default, (w4, "l1")
    yield torch.ops.fpgm.distance_matrix.default, (torch.randn(3, 10, 4, device=device), "cos")
    yield torch.ops.fpgm.distance_scores_multi.default, ([w4, torch.randn(7, 11, device=device)], "l2")
    keep = torch.tensor([0, 3, 5], device=device)
    yield torch.ops.fpgm.gather_channels.default, (
        [w4, torch.randn(24, device=device), torch.randn(16, 24, 1, 1, device=device)], [0, 0, 1], [keep] * 3)


@pytest.mark.parametrize("device", devices())
def test_opcheck(device):
    for op, args in samples(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("device", devices())
def test_compile_fullgraph(device):
    def prune_step(weight, bn):
        scores = torch.ops.fpgm.distance_scores(weight, "l2")
        keep = torch.argsort(scores, descending=True)[:12].sort().values
        w, b = torch.ops.fpgm.gather_channels([weight, bn], [0, 0], [keep, keep])
        return scores, w, b

    weight, bn = torch.randn(24, 8, 3, 3, device=device), torch.randn(24, device=device)
    compiled = torch.compile(prune_step, fullgraph=True)
    for got, expected in zip(compiled(weight, bn), prune_step(weight, bn)):
        torch.testing.assert_close(got, expected)


def test_export():
    class Scorer(torch.nn.Module):
        def forward(self, w):
            return torch.ops.fpgm.distance_scores_multi([w, w[:5]], "cos")

    w = torch.randn(10, 4, 3)
    ep = torch.export.export(Scorer(), (w,))
    for got, expected in zip(ep.module()(w), Scorer()(w)):
        torch.testing.assert_close(got, expected)
    assert fpgm_ext.backend_info()["backend"] in ("compiled", "reference")
