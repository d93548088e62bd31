"""BatchNorm frozen into buffers (torchvision's FrozenBatchNorm2d, the default of its
detection backbones) is pruned as a BatchNorm; any other tensor a forward computes from
module attributes while traced becomes a constant of the fx graph (``_tensor_constantN``),
which the pruned model's own code would recompute at the old size: its channels are left
alone, by name, and the constants are taken off the caller's model again."""
import pytest
import torch
from torch import nn

import fpgm_ext
from masking import assert_exact_by_value
from test_prune import randomize, run, zeroed


def _outputs(out):
    return list(out.values()) if isinstance(out, dict) else [out]


def test_torchvision_fpn_backbone_with_frozen_batch_norm():
    pytest.importorskip("torchvision")
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    model = randomize(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5)).eval()
    for m in model.modules():   # statistics that tell channels apart
        if isinstance(m, FrozenBatchNorm2d):
            for t in (m.weight, m.bias, m.running_mean):
                t.normal_()
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(1, 3, 64, 64)
    before = set(vars(model))
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.3)
    assert set(vars(model)) == before          # no trace constants left on the caller's model
    bn = pruned.body.bn1
    assert bn.weight.numel() == bn.running_var.numel() == pruned.body.conv1.out_channels < 64
    assert report.params_reduction > 0.4, report.summary()
    with torch.no_grad():
        outs = _outputs(pruned(x))
    assert len(outs) == 5 and all(o.shape[1] == 256 for o in outs)   # the FPN's width: its output
    ref, orig = _outputs(run(zeroed(model, report.plan), x)), _outputs(run(model, x))
    for got, want, was in zip(outs, ref, orig):   # each level equals the masked original's
        scale = float(want.abs().max())
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)
        assert float((was - want).abs().max()) > 1e-3 * scale


class ComputedScale(nn.Module):
    """A per-channel scale the forward computes from a buffer: fx bakes it into a constant."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 3, padding=1)
        self.register_buffer("log_scale", torch.randn(8))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.mid(x)) * self.log_scale.exp().view(1, -1, 1, 1)
        return self.head(x)


def test_trace_constant_keeps_its_channels():
    torch.manual_seed(0)
    model = ComputedScale().eval()
    x = torch.randn(2, 3, 8, 8)
    before = set(vars(model))
    pruned, report = fpgm_ext.prune(model, x, rate_dist=0.5)
    assert set(vars(model)) == before
    assert pruned.mid.out_channels == 8 and pruned.stem.out_channels == 4
    assert any("computes from its attributes" in g["left_alone"] for g in report.left_alone), report.summary()
    assert_exact_by_value(model, pruned, x)
