"""fpgm_ext.prune on seeded random architectures (tests/random_arch.py), judged by value
against the original with the removed channels masked (tests/masking.py), with both
tracers: every model is pruned exactly or left alone, never wrong, never a crash (issue
19's safety net). The seeds cover every block kind, most models prune something, and
the judge catches a wrong pruning, so the test cannot pass vacuously.
``python -m bench.fuzz`` runs the same check over thousands of seeds."""
from functools import lru_cache

import pytest
import torch
from torch import nn

import fpgm_ext
from fpgm_ext.pruning import Plan, apply_plan
from random_arch import FEATURES, KINDS, RTOL, Outcome, Status, by_value_error, check_model, make_model
from test_prune import randomize

# more seeds than kinds: each kind is some seed's sure kind
SEEDS = list(range(42))
TRACES = ("fx", "export")


@lru_cache(maxsize=None)
def outcome(seed: int, trace: str) -> Outcome:
    """check_model, once per seed and tracer for all the tests here."""
    return check_model(seed, trace)


@pytest.mark.parametrize("trace", TRACES)
@pytest.mark.parametrize("seed", SEEDS)
def test_pruned_exactly_or_left_alone(seed, trace):
    o = outcome(seed, trace)
    assert o.ok, f"seed {seed}, trace={trace!r}: {o.status.name}: {o.detail}"


def test_the_seeds_hold_every_block_kind():
    seen = set().union(*(make_model(seed)[0].kinds for seed in SEEDS))
    assert not (set(KINDS) | set(FEATURES)) - seen


def test_most_models_prune_something():
    outcomes = [outcome(seed, trace) for seed in SEEDS for trace in TRACES]
    pruned = [o for o in outcomes if o.status is Status.EXACT and o.params_removed > 0]
    assert len(pruned) > 0.5 * len(outcomes)


def test_a_seed_gives_one_model():
    (a, x), (b, y) = make_model(7), make_model(7)
    assert torch.equal(x, y) and a.kinds == b.kinds
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert str(make_model(8)[0]) != str(a)


class ChannelMean(nn.Module):
    """conv's channels reach the output through their mean: none may go."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        return self.head(h), h.mean(1, keepdim=True)


def test_the_judge_catches_a_wrong_pruning():
    """Half of conv's channels removed against the analysis: one output is still right,
    the other is not, and by_value_error says so."""
    torch.manual_seed(0)
    model, x = randomize(ChannelMean()), torch.randn(2, 3, 8, 8)
    _, report = fpgm_ext.prune(model, x, rate_dist=0.5)
    assert "conv" not in report.plan.modules   # the analysis refuses
    keep = [0, 2, 4, 6]
    wrong = Plan(modules={"conv": {"type": "Conv2d", "out_size": 8, "in_size": 3, "out": keep},
                          "bn": {"type": "BatchNorm2d", "size": 8, "channels": keep},
                          "head": {"type": "Conv2d", "out_size": 6, "in_size": 8, "in": keep}})
    assert by_value_error(model, apply_plan(model, wrong), x) > 100 * RTOL
