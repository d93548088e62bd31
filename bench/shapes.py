"""Benchmark shapes: single layers, the conv weights of ResNet-56 (CIFAR) and ResNet-50
(ImageNet, torchvision layout), and a ResNet-50 physical-pruning plan for gather_channels.

Written out by hand so the benchmarks need no torchvision; the counts are asserted below.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple

import torch

Shape = Tuple[int, ...]

# Single layers of the targets, as (N, D): a ResNet-50 layer4 3x3 conv flattened
# (512 x 512*3*3) and a wide 1x1 conv (2048 x 512).
SCORE_SHAPES: List[Tuple[int, int]] = [(512, 4608), (2048, 512)]

# The scaling plot: D fixed (a 64-channel 3x3 conv), N from 64 to 4096.
SCALING_D = 576
SCALING_N = [64, 128, 256, 512, 1024, 2048, 4096]

# The memory test's shape: an N x N float32 matrix would be 1 GiB.
MEMORY_SHAPE = (16384, 64)


def resnet56_convs() -> List[Shape]:
    """The 55 conv weights [Cout, Cin, 3, 3] of the CIFAR ResNet-56 (He et al. 2016):
    a 3->16 stem, then 3 stages of 9 basic blocks (two 3x3 convs each) with 16, 32, 64
    channels; the shortcuts are option A (strided identity, zero padding), so no convs."""
    shapes: List[Shape] = [(16, 3, 3, 3)]
    cin = 16
    for width in (16, 32, 64):
        for _ in range(9):
            shapes.append((width, cin, 3, 3))
            shapes.append((width, width, 3, 3))
            cin = width
    return shapes


class Conv(NamedTuple):
    name: str
    shape: Shape  # [Cout, Cin, kh, kw]


def resnet50_layers() -> List[Conv]:
    """The 53 conv weights of torchvision's ResNet-50 in forward order: the 7x7 stem,
    16 bottlenecks (1x1 reduce, 3x3, 1x1 expand; expansion 4) in stages of 3, 4, 6, 3
    blocks, and the 1x1 downsample conv of each stage's first block."""
    convs = [Conv("conv1", (64, 3, 7, 7))]
    cin = 64
    for stage, (planes, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            convs.append(Conv(f"{p}.conv1", (planes, cin, 1, 1)))
            convs.append(Conv(f"{p}.conv2", (planes, planes, 3, 3)))
            convs.append(Conv(f"{p}.conv3", (planes * 4, planes, 1, 1)))
            if b == 0:
                convs.append(Conv(f"{p}.downsample.0", (planes * 4, cin, 1, 1)))
            cin = planes * 4
    return convs


def resnet50_convs() -> List[Shape]:
    return [c.shape for c in resnet50_layers()]


RESNET50_FC = (1000, 2048)


class Gather(NamedTuple):
    tensor: str   # which parameter or buffer
    shape: Shape
    dim: int      # 0: out-channels (weight rows, BN vectors); 1: in-channels of a consumer
    group: str    # the channel space whose kept indices this gather uses


def resnet50_prune_plan() -> Tuple[List[Gather], Dict[str, int]]:
    """Physical pruning of every conv of ResNet-50: for each conv, its weight's
    out-channels (dim 0), its BatchNorm's weight, bias, running_mean and running_var, and
    the in-channels (dim 1) of every conv (or the fc) that reads its output.

    Convs that feed one residual sum share one channel space (a "group"), so they are
    pruned with the same indices: the stem; per stage, the downsample conv and every
    block's conv3. Each block's conv1 and conv2 are groups of their own. Returns the
    gathers and each group's channel count; every gather reads the unpruned tensor."""
    convs = resnet50_layers()
    plan: List[Gather] = []
    channels: Dict[str, int] = {}
    producers: Dict[str, List[Conv]] = {}
    consumers: Dict[str, List[Tuple[str, Shape]]] = {}

    def group_of(c: Conv) -> str:
        parts = c.name.split(".")
        if c.name == "conv1":
            return "stem"
        if parts[-1] == "conv3" or parts[-2] == "downsample":
            return f"{parts[0]}.out"  # the residual stream of the stage
        return c.name

    stream = block_in = "stem"  # the group the next block reads from
    for c in convs:
        g = group_of(c)
        producers.setdefault(g, []).append(c)
        channels[g] = c.shape[0]
        parts = c.name.split(".")
        if c.name == "conv1":
            continue
        if parts[-1] == "conv1":
            src = block_in = stream
        elif parts[-2] == "downsample":  # listed after conv3, reads the block's input
            src = block_in
        elif parts[-1] == "conv2":
            src = ".".join(parts[:-1]) + ".conv1"
        else:  # conv3
            src = ".".join(parts[:-1]) + ".conv2"
        consumers.setdefault(src, []).append((c.name, c.shape))
        if parts[-1] == "conv3":
            stream = g
    consumers.setdefault(stream, []).append(("fc", RESNET50_FC))

    for g, convs_g in producers.items():
        for c in convs_g:
            plan.append(Gather(f"{c.name}.weight", c.shape, 0, g))
            bn = c.name.replace("conv", "bn") if "downsample" not in c.name else c.name[:-1] + "1"
            for v in ("weight", "bias", "running_mean", "running_var"):
                plan.append(Gather(f"{bn}.{v}", (c.shape[0],), 0, g))
        for name, shape in consumers[g]:
            plan.append(Gather(f"{name}.weight", shape, 1, g))
    return plan, channels


def make_prune_inputs(keep: float = 0.6, seed: int = 0):
    """Tensors, dims and int64 indices of the ResNet-50 prune plan (``keep`` of each
    group's channels kept, chosen at random, sorted), ready for gather_channels."""
    plan, channels = resnet50_prune_plan()
    g = torch.Generator().manual_seed(seed)
    kept = {name: torch.randperm(c, generator=g)[: int(c * keep)].sort().values
            for name, c in channels.items()}
    params: Dict[str, torch.Tensor] = {}  # a conv weight read twice is one tensor
    for p in plan:
        if p.tensor not in params:
            params[p.tensor] = torch.randn(p.shape, generator=g)
    tensors = [params[p.tensor] for p in plan]
    dims = [p.dim for p in plan]
    indices = [kept[p.group] for p in plan]
    return tensors, dims, indices


def flat(shape: Shape) -> Tuple[int, int]:
    n = shape[0]
    d = 1
    for s in shape[1:]:
        d *= s
    return n, d


def check() -> None:
    """The layer lists against known counts (used by bench/test_bench_cpu.py)."""
    r56, r50 = resnet56_convs(), resnet50_convs()
    assert len(r56) == 55 and len(r50) == 53, (len(r56), len(r50))
    # conv weight counts: torchvision resnet50 (25,557,032 parameters = 23,454,912 conv
    # + 53,120 BN + 2,049,000 fc); CIFAR ResNet-56 0.85 M parameters
    assert sum(torch.Size(s).numel() for s in r50) == 23_454_912
    assert sum(torch.Size(s).numel() for s in r56) == 848_304
    plan, channels = resnet50_prune_plan()
    out = [p for p in plan if p.dim == 0 and len(p.shape) == 4]
    bn = [p for p in plan if p.dim == 0 and len(p.shape) == 1]
    into = [p for p in plan if p.dim == 1]
    assert len(out) == 53 and len(bn) == 4 * 53, (len(out), len(bn))
    assert len(into) == 52 + 1  # every conv but the stem reads one group; plus the fc
    shapes = {}
    for p in plan:  # a gather's dim has its group's channel count
        assert p.shape[p.dim] == channels[p.group], p
        assert shapes.setdefault(p.tensor, p.shape) == p.shape, p


if __name__ == "__main__":
    r56, r50 = resnet56_convs(), resnet50_convs()
    print("resnet56:", len(r56), "convs,", sum(torch.Size(s).numel() for s in r56), "weights")
    print("resnet50:", len(r50), "convs,", sum(torch.Size(s).numel() for s in r50), "weights")
    plan, ch = resnet50_prune_plan()
    print("plan:", len(plan), "gathers,", len(ch), "groups,",
          sum(torch.Size(p.shape).numel() for p in plan), "elements read")
    for p in plan[:14]:
        print("  ", p)
