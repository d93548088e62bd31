"""prune(outputs=...): the outputs left out of the selection may lose channels; the ones
selected are the masked original's by value, fx and torch.export, eval and training."""
import pytest
import torch
from torch import nn

import fpgm_ext
from fpgm_ext.pruning import zero_pruned
from fpgm_ext.pruning.families import outputs_for
from fpgm_ext.pruning.outputs import ALL, Outputs


class Backbone(nn.Module):
    """Returns its head's logits and, as Ultralytics' heads do, the feature maps it read."""

    def __init__(self, width=24):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.mid = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2)
        self.head = nn.Conv2d(2 * width, 5, 1)

    def forward(self, x):
        f1 = torch.relu(self.bn(self.stem(x)))
        f2 = torch.relu(self.mid(f1))
        logits = self.head(f2).mean((2, 3))
        return {"logits": logits, "feats": [f1, f2]} if self.training else (logits, {"feats": [f1, f2]})


def _pick(out):
    return out["logits"] if isinstance(out, dict) else out[0]


def _randomised(model):
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p))
        model.bn.running_mean.normal_()
        model.bn.running_var.uniform_(0.5, 2)
    return model.eval()


@pytest.mark.parametrize("trace", ["fx", "export"])
def test_unselected_outputs_lose_channels_selected_are_exact(trace):
    torch.manual_seed(0)
    model = _randomised(Backbone())
    x = torch.randn(2, 3, 16, 16)
    kept, report = fpgm_ext.prune(model, x, rate_dist=0.3, trace=trace, outputs=_pick)
    assert "outputs= selects" in report.summary()
    assert kept.stem.out_channels < 24 and kept.mid.out_channels < 48   # feats no longer freeze them
    masked = zero_pruned(model, report.plan)
    for training in (False, True):
        kept.train(training)
        masked.train(training)
        with torch.no_grad():
            got, want = _pick(kept(x)), _pick(masked(x))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    model.eval()
    with torch.no_grad():
        feats = kept.eval()(x)[1]["feats"]
    assert [f.shape[1] for f in feats] == [kept.stem.out_channels, kept.mid.out_channels]


@pytest.mark.parametrize("trace", ["fx", "export"])
def test_all_outputs_by_default(trace):
    model = _randomised(Backbone())
    _, report = fpgm_ext.prune(model, torch.randn(2, 3, 16, 16), rate_dist=0.3, trace=trace)
    assert all(g["kept"] is None for g in report.groups)   # every conv reaches an output
    assert sum("reaches the model's output" in g["left_alone"] for g in report.left_alone) == 3


def test_selection_reads_structure_not_values():
    out = (torch.zeros(1), {"feats": [torch.ones(2), torch.ones(3)], "boxes": torch.zeros(4)})
    keep = Outputs(lambda o: (o[0], o[1]["boxes"]))
    assert [t.numel() for t in keep.kept(out)] == [1, 4]
    assert len(ALL.kept(out)) == 4
    with pytest.raises(TypeError, match="must pick parts"):
        Outputs(lambda o: o[0] * 2).kept(out)
    with pytest.raises(TypeError, match="takes a function"):
        outputs_for(nn.Linear(2, 2), select="logits")
