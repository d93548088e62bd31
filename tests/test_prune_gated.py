"""Gated MLPs on channels-last and token layouts (fx): a split or chunk of a Linear's
hidden dimension along the last dim (GLU, SwiGLU packed), a gate through a sigmoid, and
a gate on a concatenation of split pieces, one of them through a depthwise conv in
channels-first layout (MambaOut's gated conv). The pieces of one hidden dimension are
joined by the gate's product and pruned together; the pruned model is a PrunedGraph with
the new split sizes, exact by the plan and by value."""
import torch
from torch import nn
from torch.nn import functional as F

import fpgm_ext
from masking import assert_exact_by_value
from test_prune import assert_exact


class Glu(nn.Module):
    def __init__(self, c=16, hidden=24):
        super().__init__()
        self.embed = nn.Linear(10, c)
        self.fc1 = nn.Linear(c, 2 * hidden)
        self.fc2 = nn.Linear(hidden, c)
        self.fc3 = nn.Linear(c, 3 * 8)
        self.fc4 = nn.Linear(8, c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        x = self.embed(x)
        a, g = self.fc1(x).chunk(2, dim=-1)
        x = x + self.fc2(a * F.silu(g))
        p, q, r = torch.split(self.fc3(x), [8, 8, 8], dim=2)
        x = x + self.fc4(p * torch.sigmoid(q) + r)
        return self.head(x.mean(1))


class GatedConv(nn.Module):
    """MambaOut: fc1 split into a gate, an identity part and a part through a depthwise
    conv (permuted to channels-first and back), the gate times their concatenation."""

    def __init__(self, c=12, hidden=20, conv=8):
        super().__init__()
        self.embed = nn.Conv2d(3, c, 3, padding=1)
        self.split = [hidden, hidden - conv, conv]
        self.fc1 = nn.Linear(c, 2 * hidden)
        self.conv = nn.Conv2d(conv, conv, 3, padding=1, groups=conv)
        self.fc2 = nn.Linear(hidden, c)
        self.head = nn.Linear(c, 5)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)
        g, i, c = torch.split(self.fc1(x), self.split, dim=-1)
        c = self.conv(c.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.fc2(F.gelu(g) * torch.cat((i, c), dim=-1))
        return self.head(x.mean((1, 2)))


def _prune(model, x):
    torch.manual_seed(0)
    for p in model.parameters():
        nn.init.normal_(p, std=0.5)
    model.eval()
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.5)
    assert_exact(model, pruned, report.plan, x)
    assert_exact_by_value(model, pruned, x)
    return pruned, report


def test_glu_hidden_dims_pruned():
    pruned, report = _prune(Glu(), torch.randn(2, 7, 10))
    assert pruned.get_submodule("fc1").out_features == 24      # both halves, same units
    assert pruned.get_submodule("fc2").in_features == 12
    assert pruned.get_submodule("fc3").out_features == 12      # three pieces of 4
    assert pruned.get_submodule("fc4").in_features == 4
    assert not any("last-dimension" in g["left_alone"] for g in report.left_alone), report.summary()
    assert type(pruned).__name__ == "PrunedGraph"               # the splits' new sizes


def test_gate_on_a_concatenation_pruned():
    torch.manual_seed(0)
    pruned, report = _prune(GatedConv(), torch.randn(2, 3, 8, 8))
    fc1 = pruned.get_submodule("fc1").out_features
    conv = pruned.get_submodule("conv").out_channels
    assert fc1 == 20 and 0 < conv < 8, report.summary()
    assert pruned.get_submodule("fc2").in_features == 10
