"""Seeded random architectures for fuzzing ``fpgm_ext.prune`` by value (issue 19).

``make_model(seed)`` draws, from ``random.Random(seed)``, a small CNN / hybrid: a stem conv,
then 3 to 7 blocks of the kinds in ``KINDS`` (tests/random_blocks.py, random_layouts.py,
random_spellings.py, random_reshapes.py, random_attention.py, random_hybrid.py; the channel mixers the
analysis must refuse in random_mixers.py), each reading an earlier value (mostly the
latest, sometimes an older one: fan-out) or two (a merge), and one or two outputs (a
classifier head on the last value; maybe a second head, a feature map or a pooled
vector; a tuple or a dict). Widths 4 to 24 channels,
8x8 or 12x12 inputs: each model prunes in a fraction of a second. The weights are drawn
from the seed too (torch's global generator forked), the norm layers made non-trivial by
tests/test_prune.py's ``randomize``: the same seed gives the same model and input.

``check_model(seed, trace)`` prunes it at rate_dist 0.3 and compares the pruned model with
the original masked by value (tests/masking.py: the kept channels read off the pruned
weights, independently of the plan), output by output, relative to each output's scale,
in eval and in training mode.
"""
from __future__ import annotations

import copy
import random
import re
import traceback
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

import fpgm_ext
from masking import masked_original
from random_blocks import (Block, Concat, ConvChain, Depthwise, Grouped, Residual, Split,
                           SqueezeExcite)
from random_layouts import (ChannelsLastMLP, Gate, GroupNormBlock, LayerScale, MergeAdd,
                            MergeCat, Pool, TokenMLP, Upsample)
from random_mixers import (ChannelFlip, ChannelMatmul, ChannelPad, ChannelPerm, ChannelRepeat,
                           ChannelShuffle, ChannelStat, Head, SpatialAttention, TrainingBranch)
from random_reshapes import Broadcast, ChannelIndex, SpaceToDepth, SpatialCat
from random_attention import Attention, Radix
from random_hybrid import ScaleIndex, SqueezeLinear, TokenImage
from random_spellings import (FunctionalLayers, NormOnInput, PadShortcutResidual, ScalarOps,
                              SharedModule, SizeRead, SpatialMix)
from test_prune import randomize

RATE_DIST = 0.3
RTOL = 1e-4          # the largest difference allowed, relative to the output's largest value
FEATURES = ("fan_out", "several_outputs")   # what a model has beyond its blocks' kinds


@dataclass(frozen=True)
class Kind:
    build: Callable[..., Block]
    fits: Callable[[int, int], bool]
    weight: float = 1.0
    arity: int = 1


def _kind(cls, weight: float = 1.0, **fixed) -> Kind:
    return Kind(lambda *args: cls(*args, **fixed), cls.fits, weight, cls.ARITY)


# the channel-mixing blocks weigh less: each leaves its conv alone, and a model of
# nothing but them would prune nothing
KINDS: Dict[str, Kind] = {
    "conv_act": _kind(ConvChain), "residual_identity": _kind(Residual, project=False),
    "residual_projection": _kind(Residual, project=True), "concat": _kind(Concat),
    "split": _kind(Split), "depthwise": _kind(Depthwise), "grouped": _kind(Grouped),
    "squeeze_excitation": _kind(SqueezeExcite), "gate": _kind(Gate),
    "groupnorm": _kind(GroupNormBlock), "channels_last_mlp": _kind(ChannelsLastMLP),
    "token_mlp": _kind(TokenMLP), "layer_scale": _kind(LayerScale), "pool": _kind(Pool, 0.6),
    "upsample": _kind(Upsample, 0.6), "merge_add": _kind(MergeAdd), "merge_cat": _kind(MergeCat),
    "channel_stat": _kind(ChannelStat, 0.35), "channel_shuffle": _kind(ChannelShuffle, 0.35),
    "channel_pad": _kind(ChannelPad, 0.35), "channel_flip": _kind(ChannelFlip, 0.35),
    "channel_perm": _kind(ChannelPerm, 0.35), "channel_matmul": _kind(ChannelMatmul, 0.35),
    "channel_repeat": _kind(ChannelRepeat, 0.35), "spatial_attention": _kind(SpatialAttention, 0.35),
    "scalar_ops": _kind(ScalarOps, 0.7), "norm_on_input": _kind(NormOnInput),
    "functional_layers": _kind(FunctionalLayers), "shared_module": _kind(SharedModule),
    "spatial_mix": _kind(SpatialMix, 0.7), "broadcast": _kind(Broadcast),
    "space_to_depth": _kind(SpaceToDepth, 0.7), "spatial_cat": _kind(SpatialCat, 0.7),
    "channel_index": _kind(ChannelIndex), "attention": _kind(Attention), "radix": _kind(Radix),
    "size_read": _kind(SizeRead), "pad_shortcut": _kind(PadShortcutResidual),
    "training_branch": _kind(TrainingBranch, 0.35), "token_image": _kind(TokenImage),
    "layer_scale_index": _kind(ScaleIndex), "squeeze_linear": _kind(SqueezeLinear),
}


class RandomNet(nn.Module):
    """Blocks applied in order, block k to the values ``wiring[k]`` (value 0 the input,
    value k + 1 block k's output); each head on one value; a tuple of outputs where there
    are several, or a dict of them (``as_dict``)."""

    def __init__(self, blocks: List[Block], wiring: List[Tuple[int, ...]], heads: List[Head],
                 head_inputs: List[int], as_dict: bool = False):
        super().__init__()
        self.as_dict = as_dict
        self.blocks, self.heads = nn.ModuleList(blocks), nn.ModuleList(heads)
        self.wiring, self.head_inputs = tuple(wiring), tuple(head_inputs)
        uses = Counter(i for ins in self.wiring for i in ins) + Counter(self.head_inputs)
        self.kinds = frozenset([b.kind for b in blocks] + ["fan_out"] * any(n > 1 for n in uses.values())
                               + ["several_outputs"] * (len(heads) > 1))

    def forward(self, x):
        values = [x]
        for block, inputs in zip(self.blocks, self.wiring):
            values.append(block(*[values[i] for i in inputs]))
        outs = tuple(head(values[i]) for head, i in zip(self.heads, self.head_inputs))
        if self.as_dict:
            return {f"out{k}": out for k, out in enumerate(outs)}
        return outs[0] if len(outs) == 1 else outs


@dataclass
class Value:
    c: int     # channels
    hw: int    # height and width


def _pick_input(rng: random.Random, values: List[Value]) -> int:
    """The latest value mostly, else an earlier one (never the input, value 0)."""
    last = len(values) - 1
    return last if last == 1 or rng.random() < 0.7 else rng.randint(1, last)


def _try_block(rng: random.Random, values: List[Value], name: str) -> Optional[Tuple[Block, Tuple[int, ...]]]:
    """A block of kind ``name`` on an earlier value (and a partner of its size, for a
    merge), or None where the value drawn does not fit it."""
    kind = KINDS[name]
    src = _pick_input(rng, values)
    v = values[src]
    if kind.arity == 1:
        return (kind.build(rng, v.c, v.hw), (src,)) if kind.fits(v.c, v.hw) else None
    partners = [i for i in range(1, len(values))
                if i != src and values[i].hw == v.hw and v.c + values[i].c <= 40]
    if not partners:
        return None
    other = rng.choice(partners)
    return kind.build(rng, v.c, values[other].c, v.hw), (src, other)


def _draw(rng: random.Random, in_ch: int, hw: int, must: str) -> RandomNet:
    """A stem, then 3 to 7 blocks: one of kind ``must`` as early as it fits, the others of
    kinds drawn by weight; then the heads."""
    names = sorted(KINDS)
    weights = [KINDS[n].weight for n in names]
    stem = ConvChain(rng, in_ch, hw)
    values = [Value(in_ch, hw), Value(stem.c_out, stem.hw_out)]
    blocks, wiring = [stem], [(0,)]
    for _ in range(rng.randint(3, 7)):
        drawn = _try_block(rng, values, must) if must else None
        must = must if drawn is None else ""
        while drawn is None:
            drawn = _try_block(rng, values, rng.choices(names, weights)[0])
        blocks.append(drawn[0])
        wiring.append(drawn[1])
        values.append(Value(drawn[0].c_out, drawn[0].hw_out))
    last = values[-1]
    heads, head_inputs = [Head(rng, last.c, last.hw)], [len(values) - 1]
    if rng.random() < 0.35:   # a second output: another head, or a value as it is
        i = rng.randint(1, len(values) - 1)
        heads.append(Head(rng, values[i].c, values[i].hw, features=rng.random() < 0.5))
        head_inputs.append(i)
    return RandomNet(blocks, wiring, heads, head_inputs, as_dict=rng.random() < 0.15)


def make_model(seed: int) -> Tuple[nn.Module, torch.Tensor]:
    """The model of ``seed`` (in eval mode) and its example input [2, C, H, W]. The seed
    modulo the number of kinds names a kind the model holds (where it fits): any run of
    that many consecutive seeds holds every kind, the rare ones too."""
    rng = random.Random(seed)
    in_ch, hw = rng.choice((3, 4)), rng.choice((8, 12))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _draw(rng, in_ch, hw, must=sorted(KINDS)[seed % len(KINDS)])
    randomize(model, seed)
    x = torch.randn(2, in_ch, hw, hw, generator=torch.Generator().manual_seed(seed))
    return model.eval(), x


# ----------------------------------------------------------------------------- checking
class Status(Enum):
    EXACT = "exact"              # something pruned, equal to the masked original
    LEFT_ALONE = "left alone"    # nothing pruned
    WRONG = "wrong"              # differs from the masked original, or the pruned model fails
    CRASH = "crash"              # prune raised


@dataclass
class Outcome:
    seed: int
    trace: str
    status: Status
    error: float = float("nan")           # largest difference / largest output value
    params_removed: float = 0.0           # fraction of the parameters
    left_alone: List[str] = field(default_factory=list)   # reasons of the groups left alone
    detail: str = ""                      # the exception, for CRASH and WRONG
    kinds: frozenset = frozenset()

    @property
    def ok(self) -> bool:
        return self.status in (Status.EXACT, Status.LEFT_ALONE)


def _tensors(out) -> List[torch.Tensor]:
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _relative_error(outs: List[torch.Tensor], refs: List[torch.Tensor], mode: str) -> float:
    assert len(outs) == len(refs), f"{mode}: {len(outs)} outputs, the original has {len(refs)}"
    error = 0.0
    for k, (out, ref) in enumerate(zip(outs, refs)):
        assert out.shape == ref.shape, f"{mode}: output {k} of shape {tuple(out.shape)}, not {tuple(ref.shape)}"
        scale = float(ref.abs().max().clamp_min(1e-12))
        error = max(error, float((out - ref).abs().max()) / scale)
    return error


# the modules whose tensors tests/masking.py masks itself
_MASKED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.modules.batchnorm._BatchNorm,
                  nn.GroupNorm, nn.PReLU)


def _mask_members(original: nn.Module, masked: nn.Module, pruned: nn.Module) -> None:
    """Zeroes in ``masked`` the entries ``pruned`` removed from the per-channel tensors of
    other modules (a layer scale, a per-channel bias or buffer), found by value as
    tests/masking.py finds a norm's: a removed channel's own bias is zeroed with its
    filter, whatever module holds it (a bias added after the conv reaches a PadShortcut
    or an output as the conv's own bias would)."""
    owners = dict(original.named_modules())
    after = {**dict(pruned.named_parameters()), **dict(pruned.named_buffers())}
    target = {**dict(masked.named_parameters()), **dict(masked.named_buffers())}
    for name, t0 in [*original.named_parameters(), *original.named_buffers()]:
        t = after.get(name)
        if isinstance(owners[name.rpartition(".")[0]], _MASKED_LAYERS) or t is None or \
                not t0.is_floating_point() or t.dim() != t0.dim() or t.shape == t0.shape:
            continue
        dims = [d for d in range(t0.dim()) if t.shape[d] != t0.shape[d]]
        rows0 = t0.detach().movedim(dims[0], 0).reshape(t0.shape[dims[0]], -1)
        rows = t.detach().movedim(dims[0], 0).reshape(t.shape[dims[0]], -1)
        if len(dims) != 1 or torch.unique(rows0, dim=0).shape[0] != rows0.shape[0]:
            continue   # values that do not tell channels apart: zeroed or not, no matter
        hits = (rows[:, None, :] == rows0[None, :, :]).all(-1)
        assert bool((hits.sum(1) == 1).all()), f"{name}: a pruned entry is not one of the original's"
        drop = torch.ones(rows0.shape[0], dtype=torch.bool)
        drop[hits.float().argmax(1)] = False
        with torch.no_grad():
            target[name].movedim(dims[0], 0)[drop] = 0


def by_value_error(model: nn.Module, pruned: nn.Module, x: torch.Tensor) -> float:
    """The largest difference between ``pruned`` and the original masked by value
    (tests/masking.py, and ``_mask_members``), over the outputs, each relative to its
    largest value, in eval mode and then in training mode (BatchNorm on the batch's
    statistics; a pruned model keeps the original's branches on ``self.training``; run on
    a copy, whose running statistics that updates). Raises AssertionError where the
    outputs do not match in number or shape, or a pruned tensor is not a part of the
    original's."""
    masked = masked_original(model, pruned)
    _mask_members(model, masked, pruned)
    pruned = copy.deepcopy(pruned)
    error = 0.0
    with torch.no_grad():
        for training in (False, True):
            masked.train(training)
            pruned.train(training)
            mode = "training mode" if training else "eval mode"
            try:
                outs = _tensors(pruned(x))
            except Exception as exc:   # (said with the mode it fails in)
                raise AssertionError(f"the pruned model fails in {mode}: {type(exc).__name__}: {exc}") from exc
            error = max(error, _relative_error(outs, _tensors(masked(x)), mode))
    return error


def _exception(exc: BaseException) -> str:
    """The exception and the innermost frame that raised it (not for the judge's own
    AssertionErrors, which say what failed)."""
    frame = traceback.extract_tb(exc.__traceback__)[-1] \
        if exc.__traceback__ and not isinstance(exc, AssertionError) else None
    where = f" [{frame.filename.rpartition('/')[2]}:{frame.lineno} {frame.name}]" if frame else ""
    return f"{type(exc).__name__}: {str(exc).strip()}{where}"


def check_model(seed: int, trace: str, rate_dist: float = RATE_DIST) -> Outcome:
    """Prune the model of ``seed`` with ``trace`` and judge the result by value."""
    model, x = make_model(seed)
    with torch.no_grad():
        model(x)   # a generated model that fails is the generator's bug: raised, not judged
    out = Outcome(seed, trace, Status.CRASH, kinds=model.kinds)
    try:
        pruned, report = fpgm_ext.prune(model, x, rate_dist=rate_dist, trace=trace)
    except Exception as exc:   # every generated model is valid: any exception is a crash
        out.detail = _exception(exc)
        return out
    out.params_removed = report.params_reduction
    out.left_alone = [r.strip() for g in report.left_alone for r in g["left_alone"].split(";")]
    pruned_any = any(g["kept"] is not None for g in report.groups)
    try:
        out.error = by_value_error(model, pruned, x)
    except Exception as exc:   # the pruned model fails, or does not fit the original
        out.status, out.detail = Status.WRONG, _exception(exc)
        return out
    if out.error > RTOL:
        out.status = Status.WRONG
        out.detail = f"differs from the masked original by {out.error:.2e} of the output"
    else:
        out.status = Status.EXACT if pruned_any else Status.LEFT_ALONE
    return out


_NAMES = [(re.compile(r"\s*\(node [^)]*\)"), ""),                 # "(node flip_1)"
          (re.compile(r"\bnode '?[\w.]+'?"), "node"),                # "at node mean_2"
          (re.compile(r"\b(blocks|heads)\.[\w.]+"), "<module>"),     # module names
          (re.compile(r"\b[a-z_]+_\d+\b"), "<node>")]                # remaining node names


def normalise_reason(reason: str) -> str:
    """A reason for leaving a group alone without the node and module names it holds, so
    that the reasons of different models aggregate."""
    for pattern, repl in _NAMES:
        reason = pattern.sub(repl, reason)
    return reason.strip()
