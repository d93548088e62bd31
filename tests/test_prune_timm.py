"""fpgm_ext.prune on timm models (pretrained=False, nothing downloaded) with default
settings: traced with torch.fx, where timm's norm layers call F.batch_norm on their own
tensors and token models apply their MLPs to [B, T, C]; each model pruned exactly (the outputs of the original with its pruned channels
zeroed, from the plan and, independently of it, by value: tests/masking.py) and by about
the uniform rate's reduction. Skipped without timm."""
import os

import pytest
import torch

import fpgm_ext
from masking import assert_exact_by_value
from test_prune import assert_exact, randomize

timm = pytest.importorskip("timm")

if os.environ.get("FPGM_EXT_BACKEND") == "reference":
    pytest.skip("pruning logic is backend-independent; the timm models run once, on the "
                "default backend", allow_module_level=True)

RATE = 0.3
IDEAL = 1 - (1 - RATE) ** 2   # a uniform rate removes about this much of a conv's weights

# model -> the smallest parameter reduction accepted, as a fraction of IDEAL
MODELS = {
    "efficientnet_b0": 0.9,        # BatchNormAct2d, squeeze-excitation, depthwise
    "mobilenetv3_large_100": 0.9,  # hard-swish, SE with hard-sigmoid gates
    "regnety_002": 0.85,           # grouped convs, SE
    "cspresnet50": 0.9,            # cross-stage partial: channel split (a graph rewrite) and cat
    "res2net50_26w_4s": 0.9,       # torch.split into scales, cat
    "mixnet_s": 0.85,              # mixed depthwise convs on split pieces
    "tf_mixnet_s": 0.85,           # "same" padding computed in Python (Conv2dSame, leaves)
    "dpn68": 0.85,                 # dual path: channel slices of a residual and a dense part
    "rexnet_100": 0.9,             # a residual added to a channel slice
    "dla34": 0.9,                  # aggregation by cat
    "vovnet39a": 0.9,              # one-shot aggregation
    "repvgg_a0": 0.9,              # parallel 3x3 / 1x1 / identity branches
    "lcnet_050": 0.9,
    "resnet50_gn": 0.85,           # GroupNormAct (F.group_norm): whole GN groups
    "ghostnet_100": 0.9,           # cat + conv shortcut: the shortcut's filters cut in two
    "skresnet18": 0.9,             # selective kernel: stack of paths, softmax over them, sum
    "resnest14d": 0.85,            # split attention: radix reshapes, a grouped conv per radix
    "vit_tiny_patch16_224": 0.35,  # token MLP hidden dims (the LayerNorm stream stays whole)
    "mixer_s16_224": 0.5,          # token-mixing and channel-mixing MLPs
    "mambaout_femto": 0.45,        # gated conv: channels-last split of the hidden dim, a gate on
                                   # a concatenation (the LayerNorm stream stays whole)
}
TOKENS = {"vit_tiny_patch16_224", "mixer_s16_224"}   # built at 64 x 64: 16 tokens


@pytest.mark.parametrize("name", sorted(MODELS))
def test_timm_model_pruned_exactly(name):
    kwargs = {"img_size": 64} if name in TOKENS else {}
    model = randomize(timm.create_model(name, pretrained=False, num_classes=10, **kwargs))
    head = model.get_classifier()
    if isinstance(head, torch.nn.Linear) and not head.weight.any():   # zero-initialised heads
        torch.nn.init.normal_(head.weight, std=0.1)
    size = 64 if name in TOKENS else 96
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    pruned, report = fpgm_ext.prune(model, x, rate_dist=RATE)
    assert report.tracer == "fx"
    assert report.params_reduction >= MODELS[name] * IDEAL, report.summary()
    for g in report.left_alone:
        assert g["left_alone"].strip()      # every group left alone says why
    assert_exact(model, pruned, report.plan, x)
    assert_exact_by_value(model, pruned, x)       # the masked original without the plan
