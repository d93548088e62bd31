"""fpgm_ext.prune on torchvision models (weights=None, nothing downloaded), at 32x32:
the physically pruned model gives the outputs of the original with its pruned channels
zeroed, and passes torch.export.export and torch.jit.trace. Skipped without torchvision."""
import os

import pytest
import torch
from torch import nn

import fpgm_ext
from test_prune import assert_exact, assert_exports, randomize, run

torchvision = pytest.importorskip("torchvision")

if os.environ.get("FPGM_EXT_BACKEND") == "reference":
    pytest.skip("pruning logic is backend-independent; the torchvision models run once, on the "
                "default backend", allow_module_level=True)

X = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def vgg16_bn():
    """vgg16_bn with a narrower classifier (its 25088 x 4096 first layer alone is 400 MB):
    the features, the 7x7 average pool and the flatten of 49 features per channel into a
    Linear are torchvision's."""
    model = torchvision.models.vgg16_bn(weights=None)
    model.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 64), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(64, 64), nn.ReLU(True), nn.Dropout(), nn.Linear(64, 10))
    return model


MODELS = {
    "resnet18": lambda: torchvision.models.resnet18(weights=None, num_classes=10),
    "resnet50": lambda: torchvision.models.resnet50(weights=None, num_classes=10),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None, num_classes=10),
    "resnext50_32x4d": lambda: torchvision.models.resnext50_32x4d(weights=None, num_classes=10),
    "vgg16_bn": vgg16_bn,
    "densenet121": lambda: torchvision.models.densenet121(weights=None, num_classes=10),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_torchvision_exact_and_exportable(name):
    torch.manual_seed(0)
    model = randomize(MODELS[name]())
    pruned, report = fpgm_ext.prune(model, X, rate_dist=0.3, rate_norm=0.9, measure=False)
    assert report.tracer == "fx" and report.unsupported == []
    # only the classifier's output is left alone
    assert len(report.left_alone) == 1 and "model's output" in report.left_alone[0]["left_alone"]
    assert sum(p.numel() for p in pruned.parameters()) < 0.75 * sum(p.numel() for p in model.parameters())
    assert_exact(model, pruned, report.plan, X)
    assert_exports(pruned, X)


def test_grouped_and_depthwise_keep_whole_groups():
    pruned, _ = fpgm_ext.prune(torchvision.models.resnext50_32x4d(weights=None), X, rate_dist=0.4,
                               measure=False)
    conv = pruned.layer1[0].conv2
    assert conv.groups == 32 - int(32 * 0.4) and conv.in_channels == conv.out_channels == conv.groups * 4
    pruned, _ = fpgm_ext.prune(torchvision.models.mobilenet_v2(weights=None), X, rate_dist=0.4, measure=False)
    dw = pruned.features[2].conv[1][0]
    assert dw.groups == dw.in_channels == dw.out_channels == 96 - int(96 * 0.4)


def test_densenet_concat_offsets_and_round_trip(tmp_path):
    model = randomize(torchvision.models.densenet121(weights=None, num_classes=10))
    pruned, report = fpgm_ext.prune(model, X, rate_dist=0.4, round_to=4)
    # each dense layer's 32 new channels are pruned on their own: the consumers' inputs
    # are the kept channels of every concatenated piece, at their offsets
    layer = pruned.features.denseblock1.denselayer3
    assert layer.conv2.out_channels == 20
    assert layer.norm1.num_features == 40 + 2 * 20
    report.plan.save(tmp_path / "plan.json")
    rebuilt = fpgm_ext.apply_plan(torchvision.models.densenet121(weights=None, num_classes=10),
                                  tmp_path / "plan.json")
    rebuilt.load_state_dict(pruned.state_dict())
    torch.testing.assert_close(run(rebuilt, X), run(pruned, X))
    assert report.flops_after < report.flops_before
    assert {s.name for s in report.layers} >= {"features.conv0", "classifier"}
