"""fpgm_ext.integrations.torch_pruning.FPGMImportance, the FPGM importance for
Torch-Pruning's MetaPruner: on single-producer groups the pruner removes exactly the filters
fpgm_ext.select prunes; a group's score is the sum of its producers' float64 FPGM scores
(residual, depthwise, grouped, linear, transposed); a RegNetY (grouped convs) prunes and
runs. Skipped without torch-pruning (pip install "fpgm_ext[tp]")."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fpgm_ext

tp = pytest.importorskip("torch_pruning")

from fpgm_ext.integrations.torch_pruning import FPGMImportance, _filters  # noqa: E402

METRICS = ["l2", "l1", "cos"]


def scores(weight, metric="l2"):
    """The paper's score of each filter, in float64, as fpgm_ext.select computes it."""
    return fpgm_ext.distance_scores(weight.detach().flatten(1).double(), metric)


def randomized(model, seed=0):
    """Every parameter drawn afresh (no ties, BatchNorm affine not all ones)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return model.eval()


class Chain(nn.Module):
    """conv -> BN -> ReLU, three times, then a linear: every conv's out channels are a group
    of their own (one producer)."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32)
        self.c3, self.b3 = nn.Conv2d(32, 24, 3, padding=1), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        x = F.relu(self.b3(self.c3(x)))
        return self.fc(x.mean((2, 3)))


class Residual(nn.Module):
    """Two producers of one stream (stem and branch), a depthwise conv after it."""

    def __init__(self):
        super().__init__()
        self.stem, self.bs = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.branch, self.bb = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 12, 1)
        self.dw, self.bd = nn.Conv2d(12, 12, 3, padding=1, groups=12), nn.BatchNorm2d(12)
        self.head = nn.Conv2d(12, 4, 1)

    def forward(self, x):
        x = self.bs(self.stem(x))
        x = F.relu(x + self.bb(self.branch(F.relu(x))))
        x = F.relu(self.bd(self.dw(F.relu(self.expand(x)))))
        return self.head(x)


def graph(model, shape=(1, 3, 8, 8)):
    return tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(shape))


def full_group(DG, module, fn):
    n = module.out_channels if isinstance(module, nn.modules.conv._ConvNd) else module.out_features
    return DG.get_pruning_group(module, fn, list(range(n)))


def test_is_a_torch_pruning_importance():
    imp = FPGMImportance()
    assert isinstance(imp, tp.importance.Importance)
    assert "l2" in repr(imp)


@pytest.mark.parametrize("metric", METRICS)
def test_single_producer_groups_prune_as_select(metric):
    """MetaPruner with FPGMImportance removes from each conv exactly the filters
    fpgm_ext.select(weight, rate_dist=r) prunes. r = 0.25 makes TP's count
    (N - int(N * 0.75)) and select's (int(N * 0.25)) agree for N = 16, 32, 24."""
    model = randomized(Chain())
    convs = {"c1": model.c1, "c2": model.c2, "c3": model.c3}
    before = {n: (c.weight.detach().clone(), c.bias.detach().clone()) for n, c in convs.items()}
    expected = {n: fpgm_ext.select(w, rate_dist=0.25, metric=metric).keep for n, (w, _) in before.items()}

    x = torch.randn(2, 3, 8, 8)
    pruner = tp.pruner.MetaPruner(model, x, importance=FPGMImportance(metric), pruning_ratio=0.25,
                                  ignored_layers=[model.fc])
    pruner.step()

    kept_in = torch.arange(3)
    for n, conv in convs.items():
        w, b = before[n]
        # the kept filters, found by their (distinct, random) biases
        kept = (conv.bias.detach()[:, None] == b[None, :]).nonzero()[:, 1]
        assert kept.tolist() == expected[n].tolist(), n
        torch.testing.assert_close(conv.weight.detach(), w[kept][:, kept_in], rtol=0, atol=0)
        kept_in = kept
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize("metric", METRICS)
def test_single_layer_scores_and_order(metric):
    """The importance of a single-producer group is that layer's float64 FPGM score, in
    order: the pruner's smallest are select's pruned filters."""
    model = randomized(Chain())
    DG = graph(model)
    for conv in (model.c1, model.c2, model.c3):
        imp = FPGMImportance(metric)(full_group(DG, conv, tp.prune_conv_out_channels))
        ref = scores(conv.weight, metric)
        assert imp.dtype == torch.float64 and imp.shape == (conv.out_channels,)
        torch.testing.assert_close(imp, ref, rtol=1e-12, atol=0)
        assert torch.equal(torch.argsort(imp), torch.argsort(ref))
        n_prune = int(conv.out_channels * 0.4)
        pruned = torch.argsort(imp)[:n_prune].sort().values
        assert pruned.tolist() == fpgm_ext.select(conv.weight, rate_dist=0.4, metric=metric).prune.tolist()
    # a linear layer's rows
    imp = FPGMImportance(metric)(full_group(DG, model.fc, tp.prune_linear_out_channels))
    torch.testing.assert_close(imp, scores(model.fc.weight, metric), rtol=1e-12, atol=0)


def test_partial_indices_map_to_positions():
    """A group over some of a layer's channels: one importance per listed channel, in the
    order listed, each the filter's score in its whole layer."""
    model = randomized(Chain())
    DG = graph(model)
    idxs = [9, 2, 6]
    imp = FPGMImportance()(DG.get_pruning_group(model.c1, tp.prune_conv_out_channels, idxs))
    torch.testing.assert_close(imp, scores(model.c1.weight)[idxs], rtol=1e-12, atol=0)


@pytest.mark.parametrize("metric", METRICS)
def test_multi_producer_groups_sum_scores(metric):
    """Residual stream: stem + branch; depthwise: expand + dw (its [C, 1, k, k] filters)."""
    model = randomized(Residual())
    DG = graph(model)
    imp = FPGMImportance(metric)(full_group(DG, model.stem, tp.prune_conv_out_channels))
    ref = scores(model.stem.weight, metric) + scores(model.branch.weight, metric)
    torch.testing.assert_close(imp, ref, rtol=1e-12, atol=0)
    mean = FPGMImportance(metric, group_reduction="mean")(full_group(DG, model.branch, tp.prune_conv_out_channels))
    torch.testing.assert_close(mean, ref / 2, rtol=1e-12, atol=0)

    imp = FPGMImportance(metric)(full_group(DG, model.expand, tp.prune_conv_out_channels))
    ref = scores(model.expand.weight, metric) + scores(model.dw.weight, metric)
    torch.testing.assert_close(imp, ref, rtol=1e-12, atol=0)


def test_normalizer_keeps_order():
    model = randomized(Residual())
    group = full_group(graph(model), model.stem, tp.prune_conv_out_channels)
    raw = FPGMImportance()(group)
    for normalizer, scale in (("mean", raw.mean()), ("max", raw.max()), ("sum", raw.sum())):
        torch.testing.assert_close(FPGMImportance(normalizer=normalizer)(group), raw / scale)


def test_group_without_producer_is_skipped():
    """A BatchNorm on the input: its group has no conv or linear producing the channels."""
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 1)).eval()
    group = graph(model).get_pruning_group(model[0], tp.prune_batchnorm_out_channels, [0, 1, 2])
    assert FPGMImportance()(group) is None


def test_transposed_grouped_filters():
    """A ConvTranspose2d's output filter o (groups g) is weight[its group's inputs, o mod C_out/g]."""
    conv = nn.ConvTranspose2d(8, 6, 3, groups=2)
    w = conv.weight.detach()  # [8, 3, 3, 3]
    manual = torch.stack([w[(o // 3) * 4:(o // 3 + 1) * 4, o % 3].flatten() for o in range(6)])
    assert torch.equal(_filters(conv), manual)
    model = randomized(nn.Sequential(nn.Conv2d(3, 8, 1), conv, nn.Conv2d(6, 4, 1)))
    imp = FPGMImportance()(full_group(graph(model), model[1], tp.prune_conv_out_channels))
    torch.testing.assert_close(imp, fpgm_ext.distance_scores(_filters(model[1]).double()), rtol=1e-12, atol=0)


@pytest.mark.skipif(os.environ.get("FPGM_EXT_BACKEND") == "reference",
                    reason="pruning logic is backend-independent; the RegNet runs once, on the default backend")
def test_regnet_prunes_and_runs():
    """RegNetY (grouped convs, squeeze-excitation; Torch-Pruning 1.6.1's own FPGMImportance
    fails on it): MetaPruner prunes it and the pruned model runs. The grouped 3x3 conv's
    out channels are produced by the conv itself and by the squeeze-excitation's fc2
    (x * sigmoid(fc2)); their importance is the sum of the two layers' scores."""
    torchvision = pytest.importorskip("torchvision")
    model = randomized(torchvision.models.regnet_y_400mf())
    x = torch.randn(1, 3, 64, 64)
    before = sum(p.numel() for p in model.parameters())
    pruner = tp.pruner.MetaPruner(model, x, importance=FPGMImportance(), pruning_ratio=0.3,
                                  ignored_layers=[model.fc])

    block = model.trunk_output.block1[0].f
    assert block.b[0].groups > 1
    imp = FPGMImportance()(full_group(pruner.DG, block.b[0], tp.prune_conv_out_channels))
    ref = scores(block.b[0].weight) + scores(block.se.fc2.weight)
    torch.testing.assert_close(imp, ref, rtol=1e-12, atol=0)

    pruner.step()
    after = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 1000) and torch.isfinite(y).all()
    assert after < 0.8 * before
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown metric 'L2'"):
        FPGMImportance("L2")
    with pytest.raises(ValueError, match="group_reduction"):
        FPGMImportance(group_reduction="max")
    with pytest.raises(ValueError, match="normalizer"):
        FPGMImportance(normalizer="lamp")


def test_nan_weight_raises():
    model = randomized(Chain())
    DG = graph(model)
    with torch.no_grad():
        model.c2.weight[3, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="c2 contains NaN"):
        FPGMImportance()(full_group(DG, model.c2, tp.prune_conv_out_channels))


def test_import_error_names_the_extra(tmp_path):
    """Without torch-pruning the module says how to install it."""
    (tmp_path / "torch_pruning.py").write_text("raise ModuleNotFoundError('No module named torch_pruning')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    code = ("import fpgm_ext\n"
            "try:\n    import fpgm_ext.integrations.torch_pruning\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert "pip install 'fpgm_ext[tp]'" in out.stdout, out.stdout + out.stderr


@pytest.mark.cuda
def test_cuda_matches_cpu():
    model = randomized(Residual())
    group = full_group(graph(model), model.stem, tp.prune_conv_out_channels)
    cpu = FPGMImportance()(group)
    model.cuda()
    gpu = FPGMImportance()(group)
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-10, atol=0)
    assert torch.equal(torch.argsort(gpu.cpu()), torch.argsort(cpu))
