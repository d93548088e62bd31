"""A plan applied to the wrong model, or read from a damaged file: a ValueError that names
the file, the module or the entry, never a model that fails at its first forward."""
import json

import pytest
import torch
from torch import nn

import fpgm_ext
from fpgm_ext.pruning import Plan

torchvision = pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def plan18():
    model = torchvision.models.resnet18(num_classes=10)
    return fpgm_ext.prune(model, torch.randn(1, 3, 32, 32), rate_dist=0.4, measure=False)[1].plan


def test_resnet18_plan_on_resnet34_names_the_first_mismatch(plan18):
    with pytest.raises(ValueError, match=r"does not fit this ResNet.*'layer1\.2\.conv1'"):
        fpgm_ext.apply_plan(torchvision.models.resnet34(num_classes=10), plan18)


def test_same_names_other_shapes(plan18):
    with pytest.raises(ValueError, match=r"'fc' is a Linear with weight \[100, 512\] here"):
        fpgm_ext.apply_plan(torchvision.models.resnet18(num_classes=100), plan18)


def test_fitting_model_and_old_plans(plan18, tmp_path):
    fresh = torchvision.models.resnet18(num_classes=10)
    assert fpgm_ext.apply_plan(fresh, plan18).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    old = json.loads(plan18.to_json())
    del old["meta"]["architecture"]                  # a plan written before fingerprints
    assert fpgm_ext.apply_plan(fresh, old).fc.in_features < 512


def test_truncated_file(plan18, tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(plan18.to_json()[:-200])
    with pytest.raises(ValueError, match=r"plan\.json is not a readable pruning plan"):
        fpgm_ext.apply_plan(torchvision.models.resnet18(num_classes=10), path)


@pytest.mark.parametrize("damage, match", [
    (lambda m: m["conv1"].update(out=[0, 1, "two"]), r"module 'conv1' is malformed: 'out'"),
    (lambda m: m["conv1"].update(out_size=-3), r"module 'conv1' is malformed: 'out_size'"),
    (lambda m: m["bn1"].pop("type"), r"module 'bn1' is malformed"),
])
def test_damaged_entries_name_the_entry_and_file(plan18, tmp_path, damage, match):
    d = json.loads(plan18.to_json())   # a copy: the fixture stays whole
    damage(d["modules"])
    path = tmp_path / "damaged.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=match + r".*damaged\.json"):
        Plan.load(path)


@pytest.mark.parametrize("indices, match", [([0, 70], "do not fit its size 64"),
                                            ([3, 1, 2], "not increasing"),
                                            ([1, 1, 2], "not increasing")])
def test_bad_indices_name_the_module(plan18, indices, match):
    d = json.loads(plan18.to_json())   # a copy: the fixture stays whole
    d["modules"]["conv1"]["out"] = indices
    with pytest.raises(ValueError, match=r"of conv1 " + match if "fit" in match else match):
        fpgm_ext.apply_plan(torchvision.models.resnet18(num_classes=10), d)


class Untraceable(nn.Module):
    """Data-dependent control flow: neither torch.fx nor torch.export can trace it."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        y = self.features(x).mean((2, 3))
        if int((y > 0).sum()) > 3:
            y = y * 2
        return self.head(y)


def test_untraceable_model_one_line_and_a_hint(capfd):
    with pytest.raises(fpgm_ext.pruning.TraceFailure) as info:
        fpgm_ext.prune(Untraceable(), torch.randn(1, 3, 8, 8))
    message = str(info.value)
    assert "\n" not in message and len(message) < 800
    assert "torch.fx failed" in message and "torch.export failed" in message
    assert "fpgm_ext.prune(model.features" in message
    assert info.value.export_error is not None and info.value.__cause__ is None
    err = capfd.readouterr().err
    assert len([line for line in err.splitlines() if "No CUDA runtime" not in line]) <= 2, err[:2000]
