"""apply_plan's copy of the model (plan._deepcopy): the same copy as copy.deepcopy, with
the tensors the surgery replaces left out, and the input model untouched."""
import copy

import pytest
import torch
from torch import nn

from fpgm_ext.pruning.plan import _deepcopy


class Odd(nn.Module):
    """What a model may hold besides submodules: lists, dicts, a tied weight, a buffer,
    hooks, a custom __deepcopy__ submodule, an fx GraphModule, a tensor attribute."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 8)
        self.tied = nn.Linear(8, 8)
        self.tied.weight = self.head.weight
        self.splits = [4, 4]
        self.table = {"a": [1, 2], 3: "int key"}
        self.scale = torch.randn(8)
        self.register_buffer("offset", torch.randn(8))
        self.graph = torch.fx.symbolic_trace(nn.Sequential(nn.ReLU(), nn.Linear(8, 8)))
        self.calls = []
        self.conv.register_forward_hook(lambda m, i, o: None)

    def forward(self, x):
        y = self.bn(self.conv(x)).mean((2, 3)) * self.scale + self.offset
        return self.tied(self.graph(self.head(y)))


def _tensors(m):
    return {id(t) for t in list(m.parameters()) + list(m.buffers())} | {id(m.scale)}


@pytest.mark.parametrize("keep", [False, True])
def test_copy_equals_deepcopy(keep):
    torch.manual_seed(0)
    model = Odd().eval()
    memo = {id(model.conv.weight): model.conv.weight} if keep else {}
    ours, ref = _deepcopy(model, dict(memo)), copy.deepcopy(model, dict(memo))
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(ours(x), ref(x)) and torch.equal(ours(x), model(x))
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k
    shared = _tensors(ours) & _tensors(model)
    assert shared == ({id(model.conv.weight)} if keep else set())   # only what the memo holds
    assert ours.tied.weight is ours.head.weight                        # ties kept
    assert ours.splits == [4, 4] and ours.splits is not model.splits   # containers copied
    assert ours.table == model.table and ours.table["a"] is not model.table["a"]
    assert len(ours.conv._forward_hooks) == 1 and ours.conv._forward_hooks is not model.conv._forward_hooks
    assert isinstance(ours.graph, torch.fx.GraphModule) and ours.graph is not model.graph
    ours.splits.append(0)
    ours.bn.running_mean += 1
    assert model.splits == [4, 4] and not torch.equal(model.bn.running_mean, ours.bn.running_mean)
