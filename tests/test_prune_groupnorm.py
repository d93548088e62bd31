"""GroupNorm in pruned models: whole GN groups go or stay (each group normalises over its
own channels, so removing whole groups leaves the others exact), num_groups shrinks with
them; GroupNorm(1, C), a LayerNorm over the channels, is left alone by name. Both tracers,
affine or not, the module and the functional spelling (timm's GroupNormAct)."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fpgm_ext
from fpgm_ext.pruning import apply_plan
from test_prune import assert_exact


class GNAct(nn.GroupNorm):
    """A GroupNorm calling F.group_norm on its own tensors, then an activation (timm's
    GroupNormAct)."""

    def forward(self, x):
        return F.silu(F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps))


class Net(nn.Module):
    """conv -> GN(8 groups) -> conv -> GN(4) with a residual block on the GN'd stream, and
    a cat of two GN'd spaces into a conv."""

    def __init__(self, affine=True, norm=nn.GroupNorm):
        super().__init__()
        self.c1, self.g1 = nn.Conv2d(3, 32, 3, padding=1), norm(8, 32, affine=affine)
        self.c2, self.g2 = nn.Conv2d(32, 48, 3, padding=1), norm(4, 48)
        self.c3, self.g3 = nn.Conv2d(48, 48, 3, padding=1), norm(4, 48)
        self.c4, self.g4 = nn.Conv2d(48, 16, 1), norm(4, 16)
        self.c5 = nn.Conv2d(64, 24, 1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.g1(self.c1(x)))
        y = torch.relu(self.g2(self.c2(x)))
        y = y + self.g3(self.c3(y))
        z = torch.cat([y, self.g4(self.c4(y))], 1)
        return self.fc(self.c5(z).mean((2, 3)))


def _randomize(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.GroupNorm) and m.affine:
            m.weight.data = torch.rand(m.num_channels, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_channels, generator=g) * 0.2
    return model.eval()


@pytest.mark.parametrize("trace", ["fx", "export"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("norm", [nn.GroupNorm, GNAct], ids=["module", "functional"])
def test_whole_groups_pruned_exactly(trace, affine, norm):
    if trace == "export" and not affine:
        pytest.skip("export spells a GroupNorm without affine with no tensor of its module")
    torch.manual_seed(0)
    model = _randomize(Net(affine, norm))
    x = torch.randn(2, 3, 12, 12)
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.3, trace=trace)
    assert_exact(model, pruned, report.plan, x)
    gns = {n: m for n, m in pruned.named_modules() if isinstance(m, nn.GroupNorm)}
    for name, m in gns.items():
        before = dict(model.named_modules())[name]
        per = before.num_channels // before.num_groups
        assert m.num_channels == m.num_groups * per          # whole groups went
        assert m.weight is None or m.weight.shape == (m.num_channels,)
    assert gns["g2"].num_channels < 48 and gns["g4"].num_channels < 16
    if norm is nn.GroupNorm or affine:
        assert gns["g1"].num_channels < 32
    else:   # F.group_norm without a tensor of its module: which module it is stays unknown
        assert any("unsupported op 'group_norm'" in g["left_alone"] for g in report.left_alone)


def test_one_group_is_left_alone_by_name():
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(1, 16), nn.Conv2d(16, 8, 1),
                          nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1))
    pruned, report = fpgm_ext.prune(model, torch.randn(1, 3, 8, 8), rate_dist=0.5)
    reasons = " ".join(g["left_alone"] for g in report.left_alone)
    assert "1 normalisation over all its channels (1): pruning changes its statistics" in reasons
    assert "approximate=True prunes it" in reasons
    assert pruned[1].num_channels == 16 and pruned[3].num_channels == 4


def test_plan_must_keep_whole_groups():
    model = _randomize(Net())
    x = torch.randn(1, 3, 8, 8)
    _, report = fpgm_ext.prune(model, x, rate_dist=0.3)
    plan = report.plan
    kept = plan.modules["g2"]["channels"]
    plan.modules["g2"]["channels"] = kept[1:]                 # a group cut in the middle
    with pytest.raises(ValueError, match="g2 are not whole groups of its 4 groups of 12"):
        apply_plan(model, plan)
