"""``fpgm-ext demo``: soft FPGM pruning end to end on real data that needs no download.

A CIFAR-style ResNet-20 (the paper's architecture, its stem taking one channel) learns
scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes; 80/20 split,
stratified). Then soft FPGM pruning at 40 % (``SoftFPGM``: the pruned filters selected and
zeroed every epoch, their gradients masked), ``finalize()`` to a physically smaller model,
a short fine-tune, and a table of accuracy, parameters, measured FLOPs and CPU latency
before and after. Its figures and its time, measured over a few seeds on a stated machine, are in
bench/RESULTS.md's "demo" section (``python -m bench.demo --write``, which README.md quotes);
``Settings.quick()`` takes a few seconds (tests).
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class Settings:
    depth: int = 20
    rate_dist: float = 0.4
    rate_norm: float = 1.0
    epochs: int = 60           # training of the unpruned model
    prune_epochs: int = 40     # soft pruning (re-selection after every epoch)
    finetune_epochs: int = 20  # the physically pruned model
    batch_size: int = 64
    lr: float = 0.1
    prune_lr: float = 0.05
    finetune_lr: float = 0.01
    weight_decay: float = 5e-4
    latency_runs: int = 100
    seed: int = 0

    @classmethod
    def quick(cls) -> "Settings":
        return cls(depth=8, epochs=6, prune_epochs=2, finetune_epochs=2, latency_runs=5)


@dataclass
class Figures:
    accuracy: float            # % on the test split
    params: int
    flops: int                 # per image, measured with FlopCounterMode
    latency_1_ms: float        # median, batch of 1
    latency_test_ms: float     # median, the whole test split in one batch
    correct: int = 0           # test images classified right: accuracy moves by whole images


@dataclass
class DemoResult:
    settings: Dict
    before: Figures
    after: Figures
    masked_accuracy: float     # the soft-pruned (masked) model, before finalize
    pruned_accuracy: float     # the physically pruned model right after finalize
    max_abs_diff: float        # finalize() vs the masked model, logits on the test split
    channels: Dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    threads: int = 1
    test_images: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


# ---------------------------------------------------------------------------- data
def load_digits(seed: int):
    """scikit-learn's digits as tensors: train/test images [n, 1, 8, 8] in [0, 1], labels."""
    try:
        from sklearn.datasets import load_digits as sk_load
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise RuntimeError("fpgm-ext demo needs scikit-learn (pip install scikit-learn)") from exc
    d = sk_load()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    tr, te = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=d.target)
    tr, te = torch.tensor(tr), torch.tensor(te)
    return x[tr], y[tr], x[te], y[te]


class Normalize(nn.Module):
    def __init__(self, mean: float, std: float):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x):
        return (x - self.mean) / self.std


def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel each way (zero padding), per image."""
    n = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1))
    dx = torch.randint(0, 3, (n,), generator=g)
    dy = torch.randint(0, 3, (n,), generator=g)
    out = torch.empty_like(x)
    for i in range(3):
        for j in range(3):
            sel = ((dy == i) & (dx == j)).nonzero().flatten()
            if len(sel):
                out[sel] = padded[sel, :, i:i + 8, j:j + 8]
    return out


# --------------------------------------------------------------------------- model
def make_model(depth: int, mean: float, std: float) -> nn.Module:
    """The paper's CIFAR ResNet of ``depth`` with a one-channel stem, input normalised
    inside the model (so the pruned model is a drop-in replacement)."""
    from .models import cifar_resnet

    net = cifar_resnet(depth, num_classes=10)
    net.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
    nn.init.normal_(net.conv1.weight, 0.0, math.sqrt(2.0 / (9 * 16)))
    return nn.Sequential(Normalize(mean, std), net)


def sgd(model: nn.Module, lr: float, wd: float) -> torch.optim.SGD:
    """The official recipe's optimiser: SGD, momentum 0.9, Nesterov, weight decay."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd, nesterov=True)


def train(model, opt, x, y, epochs, batch, g, bar, on_epoch: Optional[Callable[[], object]] = None) -> None:
    """``epochs`` epochs of shuffled mini-batches with random shifts, the learning rate on a
    cosine from its initial value to 0; ``on_epoch()`` after each epoch."""
    steps = epochs * math.ceil(len(y) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    epochs_bar = bar(range(epochs))
    for _ in epochs_bar:
        model.train()
        perm = torch.randperm(len(y), generator=g)
        total, seen = 0.0, 0
        for i in range(0, len(y), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(model(shift(x[idx], g)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
        if hasattr(epochs_bar, "set_postfix"):
            epochs_bar.set_postfix(loss=f"{total / seen:.3f}")
        if on_epoch is not None:
            on_epoch()


@torch.no_grad()
def logits(model, x) -> torch.Tensor:
    model.eval()
    return model(x)


def accuracy(model, x, y) -> float:
    return 100.0 * hits(model, x, y).float().mean().item()


def hits(model, x, y) -> torch.Tensor:
    """Per test image, whether ``model`` classifies it right."""
    return logits(model, x).argmax(1) == y


@torch.inference_mode()
def latencies_ms(models: Dict[str, nn.Module], x: torch.Tensor, runs: int, bar) -> Dict[str, float]:
    """Median time of one forward of each model on ``x``, the models timed in turn, run by
    run (so that a slow spell of a shared machine hits all of them alike)."""
    for m in models.values():
        m.eval()
        for _ in range(3):
            m(x)
    times: Dict[str, list] = {k: [] for k in models}
    for _ in bar(range(runs)):
        for k, m in models.items():
            t = time.perf_counter()
            m(x)
            times[k].append(time.perf_counter() - t)
    return {k: 1e3 * sorted(v)[len(v) // 2] for k, v in times.items()}


def figures(model, x_test, y_test) -> Figures:
    from .pruning.flops import measure

    m = measure(model, (x_test[:1],))
    right = hits(model, x_test, y_test)
    return Figures(accuracy=100.0 * right.float().mean().item(), params=m.params, flops=m.flops,
                   latency_1_ms=float("nan"), latency_test_ms=float("nan"), correct=int(right.sum()))


# ----------------------------------------------------------------------------- job
def run(settings: Optional[Settings] = None, progress: bool = True, log=print) -> DemoResult:
    """The whole demo; returns its figures (``DemoResult``) after printing the table."""
    from tqdm.auto import tqdm

    from .soft import SoftFPGM

    s = settings or Settings()
    t_start = time.perf_counter()
    torch.manual_seed(s.seed)
    g = torch.Generator().manual_seed(s.seed)

    def bar(desc):
        return lambda it: tqdm(it, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)

    x_tr, y_tr, x_te, y_te = load_digits(s.seed)
    mean, std = x_tr.mean().item(), x_tr.std().item()
    model = make_model(s.depth, mean, std)
    log(f"fpgm-ext demo: ResNet-{s.depth} (CIFAR-style) on scikit-learn digits, {len(y_tr)} train / "
        f"{len(y_te)} test images (8x8); soft FPGM {100 * s.rate_dist:.0f} %"
        + (f", rate_norm {s.rate_norm}" if s.rate_norm < 1 else "")
        + f"; torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

    train(model, sgd(model, s.lr, s.weight_decay), x_tr, y_tr, s.epochs, s.batch_size, g,
          bar(f"1/3 train ResNet-{s.depth}"))
    before = figures(model, x_te, y_te)
    log(f"  trained:      test accuracy {before.accuracy:.2f} %")

    # soft FPGM: the training loop unchanged, plus SoftFPGM and one call per epoch
    soft_model = copy.deepcopy(model)
    opt = sgd(soft_model, s.prune_lr, s.weight_decay)
    soft = SoftFPGM(soft_model, rate_dist=s.rate_dist, rate_norm=s.rate_norm, optimizer=opt,
                    example_inputs=x_te[:1])
    log(f"  soft FPGM:    {soft}; accuracy just after the first zeroing "
        f"{accuracy(soft_model, x_te, y_te):.2f} %")
    train(soft_model, opt, x_tr, y_tr, s.prune_epochs, s.batch_size, g,
          bar(f"2/3 soft FPGM {100 * s.rate_dist:.0f} %"), on_epoch=soft.step)
    masked_acc = accuracy(soft_model, x_te, y_te)
    pruned = soft.finalize()
    diff = (logits(pruned, x_te) - logits(soft_model, x_te)).abs().max().item()
    pruned_acc = accuracy(pruned, x_te, y_te)
    log(f"  soft-pruned:  masked model {masked_acc:.2f} %, finalized (physically pruned) "
        f"{pruned_acc:.2f} %, max |logit difference| {diff:.2e}")

    train(pruned, sgd(pruned, s.finetune_lr, s.weight_decay), x_tr, y_tr, s.finetune_epochs, s.batch_size,
          g, bar("3/3 fine-tune the pruned model"))
    after = figures(pruned, x_te, y_te)
    for x, key in ((x_te[:1], "latency_1_ms"), (x_te, "latency_test_ms")):
        t = latencies_ms({"before": model, "after": pruned}, x, s.latency_runs,
                         bar(f"latency, batch {len(x)}, before and after in turn"))
        setattr(before, key, t["before"])
        setattr(after, key, t["after"])

    channels = {}
    for (name, a), (_, b) in zip(model.named_modules(), pruned.named_modules()):
        if isinstance(a, nn.Conv2d):
            channels[name] = f"{a.out_channels} -> {b.out_channels}"
    result = DemoResult(settings=asdict(s), before=before, after=after, masked_accuracy=masked_acc,
                        pruned_accuracy=pruned_acc, max_abs_diff=diff, channels=channels,
                        seconds=time.perf_counter() - t_start, threads=torch.get_num_threads(),
                        test_images=len(y_te))
    log("")
    log(table(result))
    return result


def table(r: DemoResult) -> str:
    """The before / after table and a line on how it was measured (what the demo prints)."""
    return "\n".join(table_rows(r) + ["", trailer(r)])


def accuracy_text(f: Figures, test_images: int) -> str:
    """``98.89 % (356/360)``: the percentage and the whole images it stands for."""
    return f"{f.accuracy:.2f} % ({f.correct}/{test_images})"


def table_rows(r: DemoResult) -> List[str]:
    """The Markdown table of the figures before and after pruning."""
    b, a = r.before, r.after
    return ["| | before (unpruned) | after (pruned, fine-tuned) | change |",
            "| --- | ---: | ---: | ---: |",
            f"| test accuracy | {accuracy_text(b, r.test_images)} | {accuracy_text(a, r.test_images)} | "
            f"{a.accuracy - b.accuracy:+.2f} points |",
            f"| parameters | {b.params:,} | {a.params:,} | {100 * (a.params / b.params - 1):+.1f} % |",
            f"| FLOPs per image (measured) | {b.flops:,} | {a.flops:,} | {100 * (a.flops / b.flops - 1):+.1f} % |",
            f"| CPU latency, batch 1 | {b.latency_1_ms:.3f} ms | {a.latency_1_ms:.3f} ms | "
            f"speed-up {b.latency_1_ms / a.latency_1_ms:.2f}x |",
            f"| CPU latency, test split in one batch | {b.latency_test_ms:.2f} ms | {a.latency_test_ms:.2f} ms | "
            f"speed-up {b.latency_test_ms / a.latency_test_ms:.2f}x |"]


def trailer(r: DemoResult) -> str:
    """Channels kept, how FLOPs and latency are measured, threads and the demo's total time."""
    convs = list(r.channels.values())
    kept = sum(int(v.split(" -> ")[1]) for v in convs)
    total = sum(int(v.split(" -> ")[0]) for v in convs)
    return (f"conv channels kept: {kept} of {total}; FLOPs measured with FlopCounterMode "
            f"(2 per multiply-add); latency: median of {r.settings['latency_runs']} runs, the two "
            f"models in turn, on {r.threads} CPU threads; total time {r.seconds:.0f} s")
