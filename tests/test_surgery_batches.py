"""The surgery gathers in calls of at most layers.base.BATCH_BYTES of source tensors, each
call's results put in place before the next (a large model pruned in place holds one
batch twice, not all of it): the same pruned model whatever the batch size."""
import torch

import fpgm_ext
from fpgm_ext.models import cifar_resnet
from fpgm_ext.pruning.layers import base

from test_prune import randomize


class CountingOps:
    def __init__(self):
        self.calls = []

    def distance_scores_multi(self, weights, metric):
        return fpgm_ext.distance_scores_multi(weights, metric)

    def gather_channels(self, tensors, dims, indices):
        self.calls.append((len(tensors), sum(t.numel() * t.element_size() for t in tensors)))
        return fpgm_ext.gather_channels(tensors, dims, indices)


def test_small_batches_give_the_same_model(monkeypatch):
    model = randomize(cifar_resnet(20))
    x = torch.randn(2, 3, 32, 32)
    one, whole = CountingOps(), CountingOps()
    reference, _ = fpgm_ext.prune(model, x, rate_dist=0.4, ops=one)
    monkeypatch.setattr(base, "BATCH_BYTES", 16 << 10)
    batched, _ = fpgm_ext.prune(model, x, rate_dist=0.4, ops=whole, inplace=False)
    assert len(one.calls) == 1 and len(whole.calls) > 10
    assert all(size <= 16 << 10 or count == 1 for count, size in whole.calls)   # (one larger tensor alone)
    ref, got = reference.state_dict(), batched.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    assert [m.out_channels for m in batched.modules() if isinstance(m, torch.nn.Conv2d)] == \
        [m.out_channels for m in reference.modules() if isinstance(m, torch.nn.Conv2d)]
