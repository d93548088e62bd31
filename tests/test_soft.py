"""fpgm_ext.SoftFPGM: against a direct implementation of the official code's mask and
gradient rules (pruning_cifar10.py of he-y/filter-pruning-geometric-median), the group
selection of fpgm_ext.prune, the zeroing and gradient masking, finalize(), options."""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fpgm_ext
import oracle


class Plain(nn.Module):
    """Convs without BatchNorm or bias, each its own group: the official rules (which mask
    conv weights only, layer by layer) apply unchanged."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.c2 = nn.Conv2d(16, 24, 3, padding=1, bias=False)
        self.c3 = nn.Conv2d(24, 20, 3, padding=1, stride=2, bias=False)
        self.fc = nn.Linear(20, 5)

    def forward(self, x):   # leaky: a zeroed filter still gets a gradient, which must be masked
        x = F.leaky_relu(self.c1(x), 0.1)
        x = F.leaky_relu(self.c2(x), 0.1)
        x = F.leaky_relu(self.c3(x), 0.1)
        return self.fc(x.mean((2, 3)))


class OfficialMask:
    """The official ``Mask``, written out: ``init_mask`` (norm codebook times distance
    codebook, i.e. ``oracle.official_select``), ``do_mask`` / ``do_similar_mask`` (weights
    times the mask) and ``do_grad_mask`` (gradients times the mask), for every conv."""

    def __init__(self, model, rate_dist, rate_norm):
        self.convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        self.rate_dist, self.rate_norm = rate_dist, rate_norm

    def init_mask(self):
        self.mat = {}
        for c in self.convs:
            mat = torch.ones(c.out_channels)
            mat[torch.from_numpy(oracle.official_select(c.weight.detach(), self.rate_dist, self.rate_norm))] = 0
            self.mat[c] = mat.view(-1, 1, 1, 1)

    def do_mask(self):
        for c in self.convs:
            c.weight.data = c.weight.data * self.mat[c]

    def do_grad_mask(self):
        for c in self.convs:
            c.weight.grad.data = c.weight.grad.data * self.mat[c]


def batches(seed=0, n=4, size=8, classes=5):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 8, 8, generator=g), torch.randint(0, classes, (size,), generator=g))
            for _ in range(n)]


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)


@pytest.mark.parametrize("rate_dist, rate_norm, every, keep_zero", [
    (0.4, 1.0, 1, False), (0.3, 0.9, 2, False), (0.4, 1.0, 1, True), (0.3, 0.9, 2, True)])
def test_matches_the_official_rules(rate_dist, rate_norm, every, keep_zero):
    torch.manual_seed(0)
    model0 = Plain()
    data = batches()
    epochs = 4

    # the official procedure
    ref = copy.deepcopy(model0)
    mask = OfficialMask(ref, rate_dist, rate_norm)
    mask.init_mask()
    mask.do_mask()
    opt = sgd(ref)
    for epoch in range(epochs):
        for x, y in data:
            loss = F.cross_entropy(ref(x), y)
            opt.zero_grad()
            loss.backward()
            mask.do_grad_mask()
            opt.step()
            if keep_zero:          # not official: SoftFPGM's default re-zeroes after each step
                mask.do_mask()
        if epoch % every == 0 or epoch == epochs - 1:
            mask.init_mask()
            mask.do_mask()

    # SoftFPGM: the user's loop plus one call per epoch
    ours = copy.deepcopy(model0)
    opt = sgd(ours)
    soft = fpgm_ext.SoftFPGM(ours, rate_dist, rate_norm, every=every, optimizer=opt, keep_zero=keep_zero,
                             example_inputs=data[0][0][:1])
    for epoch in range(epochs):
        for x, y in data:
            loss = F.cross_entropy(ours(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        soft.step()
    if (epochs - 1) % every:
        soft.select()              # the official code also selects after its last epoch
    assert soft.selections == 1 + len([e for e in range(epochs) if e % every == 0]) + bool((epochs - 1) % every)

    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
    for c in mask.convs:
        name = [n for n, m in ref.named_modules() if m is c][0]
        torch.testing.assert_close(soft.masks[f"{name}.weight"], mask.mat[c].flatten().bool())
    assert set(soft.masks) == {"c1.weight", "c2.weight", "c3.weight"}
    n = soft.masks["c2.weight"].numel()
    assert (~soft.masks["c2.weight"]).sum() == int(n * (1 - rate_norm)) + int(n * rate_dist)


def test_momentum_moves_masked_weights_unless_keep_zero():
    """With a zero gradient, momentum left from before a filter was masked moves it off
    zero (the official code's behaviour, keep_zero=False); keep_zero re-zeroes it."""
    data = batches(1)
    for keep_zero in (False, True):
        torch.manual_seed(0)
        model = Plain()
        opt = sgd(model)
        for x, y in data:     # some momentum first
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        soft = fpgm_ext.SoftFPGM(model, 0.4, optimizer=opt, keep_zero=keep_zero)
        for x, y in data:
            F.cross_entropy(model(x), y).backward()
            for name, keep in soft.masks.items():   # the gradient hook at work
                assert (dict(model.named_parameters())[name].grad[~keep] == 0).all()
            opt.step()
            opt.zero_grad()
        moved = max(dict(model.named_parameters())[n][~k].abs().max().item() for n, k in soft.masks.items())
        assert (moved > 0) == (not keep_zero)


def resnet8():
    torch.manual_seed(0)
    return fpgm_ext.models.cifar_resnet(8)


X = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
Y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(4))


def train_steps(model, opt, steps=3):
    model.train()
    for _ in range(steps):
        F.cross_entropy(model(X), Y).backward()
        opt.step()
        opt.zero_grad()


def test_groups_zeroing_and_finalize():
    model = resnet8()
    opt = sgd(model)
    soft = fpgm_ext.SoftFPGM(model, rate_dist=0.4, optimizer=opt)
    train_steps(model, opt)
    soft.step()
    train_steps(model, opt)

    # the selection is prune()'s, group by group, on the same weights
    same = copy.deepcopy(model)
    plan = soft.select()
    _, report = fpgm_ext.prune(same, X[:1], rate_dist=0.4, measure=False)
    assert plan.modules == report.plan.modules and plan.groups == report.plan.groups

    # zeroed: the producers' filters and the BatchNorm affine of every pruned channel
    params = dict(model.named_parameters())
    assert {"conv1.weight", "bn1.weight", "bn1.bias", "layer3.0.conv2.weight", "layer3.0.bn2.bias"} <= set(soft.masks)
    for name, keep in soft.masks.items():
        assert (params[name][~keep] == 0).all() and 0 < keep.sum() < keep.numel(), name
    F.cross_entropy(model(X), Y).backward()
    for name, keep in soft.masks.items():
        assert (params[name].grad[~keep] == 0).all(), name
    opt.step()                      # momentum and weight decay: re-zeroed after the step
    for name, keep in soft.masks.items():
        assert (params[name][~keep] == 0).all(), name

    model.eval()
    pruned = soft.finalize()
    with torch.no_grad():
        want, got = model(X), pruned.eval()(X)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < 0.5 * sum(p.numel() for p in model.parameters())
    assert pruned.layer1[0].conv1.out_channels == 16 - int(16 * 0.4)
    with pytest.raises(RuntimeError, match="already finalized"):
        soft.step()


def test_any_optimizer_without_passing_it():
    """No optimizer given: the re-zeroing hooks every optimizer that steps a masked
    parameter; removed by finalize()."""
    from torch.optim.optimizer import _global_optimizer_post_hooks

    hooks_before = len(_global_optimizer_post_hooks)
    model = resnet8()
    soft = fpgm_ext.SoftFPGM(model, rate_dist=0.3, rate_norm=0.9)
    assert len(_global_optimizer_post_hooks) == hooks_before + 1
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    other = nn.Parameter(torch.ones(3))
    unrelated = torch.optim.SGD([other], lr=0.1)
    train_steps(model, opt)
    other.grad = torch.ones(3)
    unrelated.step()
    params = dict(model.named_parameters())
    for name, keep in soft.masks.items():
        assert (params[name][~keep] == 0).all(), name
    soft.finalize()
    assert len(_global_optimizer_post_hooks) == hooks_before


def test_every():
    model = resnet8()
    soft = fpgm_ext.SoftFPGM(model, rate_dist=0.4, every=3)
    assert [soft.step() for _ in range(7)] == [True, False, False, True, False, False, True]
    assert soft.selections == 4 and soft.epoch == 7
    assert soft.step(epoch=9) and soft.epoch == 10
    soft.remove()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(rate_dist=1.0), ValueError, "fpgm_ext.SoftFPGM: rate_dist must be in"),
    (dict(rate_dist=0.4, rate_norm=0.0), ValueError, "rate_norm must be in"),
    (dict(rate_dist=0.4, metric="l3"), ValueError, "unknown metric"),
    (dict(rate_dist=0.4, every=0), ValueError, "every must be an integer >= 1"),
    (dict(rate_dist=0.4, optimizer="sgd"), TypeError, "optimizer must be a torch.optim.Optimizer"),
    (dict(rate_dist=0.4, ignore="nope"), ValueError, "not a submodule"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        fpgm_ext.SoftFPGM(resnet8(), **kwargs)
