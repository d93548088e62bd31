"""GPU benchmarks of the fpgm CUDA kernels against their baselines, in one run (ratios).

    python bench/gpu_bench.py          # on a GPU: single large layers, the ResNet-50 stack
    python bench/gpu_bench.py --dry    # on the CPU, tiny sizes: the same logic, for CI

Cases (each checks its result against the baseline before timing it):
  - single layers (N=512, D=4608) and (N=2048, D=512), l2 / l1 / cos:
    ours `distance_scores` vs `torch.cdist(F, F).sum(1)` (l2, l1; cos: normalised rows,
    `(1 - U U^T).sum(1)`), float32; TF32 stays off (torch's default for matmul);
  - the 53 conv weights of ResNet-50 (shapes below, no torchvision), l2 / cos / l1:
    ours `distance_scores_multi` (one call) vs a per-layer loop of ours vs a per-layer
    loop of the cdist baseline;
  - gather_channels of a ResNet-50 pruning plan (conv out/in channels, BN vectors):
    ours (one launch) vs a loop of `index_select`.
CuPy column: on a GPU, each distance case also times the CuPy backend's same op called
directly (fpgm_ext.cupy_backend.ops, NVRTC-compiled from the same kernel sources), shown as
cupy/compiled = its time / ours, and checks it against the same reference (a mismatch fails
the run as ours does). "-" where CuPy is unusable (one line says why) and in --dry.
Timing: CUDA events around each call (a per-layer loop is timed as a whole, host gaps
included), warm-up runs first, the median of the repeats. Prints one table, last.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

Shape = Tuple[int, ...]


def resnet50_convs(width_divisor: int = 1) -> List[Shape]:
    """The 53 conv weights [Cout, Cin, kh, kw] of torchvision's ResNet-50, in forward
    order: the 7x7 stem, then 16 bottlenecks (1x1, 3x3, 1x1 with expansion 4) in stages
    of 3, 4, 6, 3 blocks, each stage's first block with its 1x1 downsample conv.
    width_divisor shrinks every channel count (tiny CPU dry runs)."""
    def c(v: int) -> int:
        return max(1, v // width_divisor)

    shapes: List[Shape] = [(c(64), 3, 7, 7)]
    cin = 64
    for planes, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        for b in range(blocks):
            shapes.append((c(planes), c(cin), 1, 1))
            shapes.append((c(planes), c(planes), 3, 3))
            shapes.append((c(planes * 4), c(planes), 1, 1))
            if b == 0:
                shapes.append((c(planes * 4), c(cin), 1, 1))
            cin = planes * 4
    return shapes


assert len(resnet50_convs()) == 53
assert sum(torch.Size(s).numel() for s in resnet50_convs()) == 23_454_912  # torchvision's count

SINGLE = [(512, 4608), (2048, 512)]
SINGLE_DRY = [(64, 72), (96, 16)]


def baseline_scores(f: torch.Tensor, metric: str) -> torch.Tensor:
    """What peers do: the full N x N matrix, then its row sums."""
    f = f.reshape(f.shape[0], -1)
    if metric == "cos":
        u = torch.nn.functional.normalize(f, dim=1)
        return (1 - u @ u.T).clamp_(0, 2).fill_diagonal_(0).sum(1)
    return torch.cdist(f, f, p=2.0 if metric == "l2" else 1.0).sum(1)


def median_ms(fn: Callable[[], object], device: str, warmup: int, repeat: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    if device == "cuda":
        torch.cuda.synchronize()
        for _ in range(repeat):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def max_rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.double().cpu(), ref.double().cpu()
    return ((got - ref).abs() / ref.abs().clamp_min(1e-30)).max().item()


def cupy_runtime(device: str) -> Optional[Callable[[], object]]:
    """What gives the CuPy backend's runtime, to call its ops directly (the dispatcher serves
    the compiled kernels here), or None; prints one line saying which and why."""
    import fpgm_ext
    from fpgm_ext import cupy_backend

    usable, why = cupy_backend.availability()
    if device != "cuda":
        usable, why = False, "dry run on the CPU, no GPU"
    served = fpgm_ext.backend_info()["devices"]["cuda"]
    if usable and not served.startswith("compiled"):  # e.g. FPGM_EXT_BACKEND=cupy
        why += f"; NOTE: 'ours' is not the compiled backend here but {served}"
    print(f"cupy column: {why}" if usable else f"cupy column: - ({why})")
    return cupy_backend.runtime if usable else None


def cupy_case(runtime: Optional[Callable[[], object]], case: str, fn: Callable[..., object],
              args: tuple, check: Callable[[object], float], device: str, warmup: int,
              repeat: int) -> Tuple[Optional[float], Optional[float]]:
    """(median ms, max rel err) of the CuPy backend's op `fn` on args, or (None, None)
    without CuPy. A failure is printed and counted as a mismatch, not raised: the compiled
    kernels' rows still get their table."""
    if runtime is None:
        return None, None
    try:
        rt = runtime()
        # The first call compiles the kernel instances with NVRTC (~1-3 s, then cached): it is
        # the untimed warm-up, and the result checked.
        err = check(fn(rt, *args))
        return median_ms(lambda: fn(rt, *args), device, warmup, repeat), err
    except Exception as exc:  # NVRTC, driver or CuPy errors come in various types
        print(f"cupy {case}: {type(exc).__name__}: {exc}")
        return None, float("inf")


def prune_plan(shapes: List[Shape], device: str, keep: float = 0.6, seed: int = 0):
    """A gather_channels call of the size of a real pruning: each conv's weight along its
    out-channels, its BN's four vectors, and the weight along its in-channels."""
    g = torch.Generator().manual_seed(seed)
    tensors, dims, indices = [], [], []
    for s in shapes:
        w = torch.randn(s, generator=g).to(device)
        out_keep = torch.randperm(s[0], generator=g)[: max(1, int(s[0] * keep))].sort().values.to(device)
        in_keep = torch.randperm(s[1], generator=g)[: max(1, int(s[1] * keep))].sort().values.to(device)
        tensors += [w] + [torch.randn(s[0], generator=g).to(device) for _ in range(4)] + [w]
        dims += [0, 0, 0, 0, 0, 1]
        indices += [out_keep] * 5 + [in_keep]
    return tensors, dims, indices


def run(device: str, dry: bool, repeat: int, warmup: int) -> List[Dict[str, object]]:
    import fpgm_ext
    from fpgm_ext.cupy_backend import ops as cupy_ops  # imports no CuPy: dry runs check the names

    ops = torch.ops.fpgm
    rows: List[Dict[str, object]] = []
    gen = torch.Generator().manual_seed(0)
    cupy = cupy_runtime(device)

    def add(case: str, ours: float, base: float, loop: Optional[float], err: float,
            base_name: str, cupy_res: Tuple[Optional[float], Optional[float]] = (None, None)) -> None:
        rows.append(dict(case=case, ours=ours, base=base, loop=loop, err=err, base_name=base_name,
                         cupy=cupy_res[0], cupy_err=cupy_res[1]))

    # Single large layers.
    for n, d in (SINGLE_DRY if dry else SINGLE):
        f = torch.randn(n, d, generator=gen).to(device)
        for metric in ("l2", "l1", "cos"):
            case = f"{metric} N={n} D={d}"
            ref = baseline_scores(f.double(), metric)
            got = ops.distance_scores(f, metric)
            err = max_rel_err(got, ref)
            ours = median_ms(lambda: ops.distance_scores(f, metric), device, warmup, repeat)
            base = median_ms(lambda: baseline_scores(f, metric), device, warmup, repeat)
            cp = cupy_case(cupy, case, cupy_ops.distance_scores, (f, metric), lambda g: max_rel_err(g, ref),
                           device, warmup, repeat)
            add(case, ours, base, None, err, "cdist(F,F).sum(1)" if metric != "cos" else "(1-UU^T).sum(1)", cp)

    # The whole ResNet-50 conv stack.
    shapes = resnet50_convs(16 if dry else 1)
    ws = [(torch.randn(s, generator=gen) * 0.05).to(device) for s in shapes]
    for metric in ("l2", "cos", "l1"):
        case = f"{metric} ResNet-50 ({len(ws)} convs)"
        refs = [baseline_scores(w.double(), metric) for w in ws]

        def check(got: List[torch.Tensor]) -> float:
            return max(max_rel_err(g, r) for g, r in zip(got, refs))

        err = check(ops.distance_scores_multi(ws, metric))
        ours = median_ms(lambda: ops.distance_scores_multi(ws, metric), device, warmup, repeat)
        loop = median_ms(lambda: [ops.distance_scores(w, metric) for w in ws], device, warmup, repeat)
        base = median_ms(lambda: [baseline_scores(w, metric) for w in ws], device, warmup, repeat)
        cp = cupy_case(cupy, case, cupy_ops.distance_scores_multi, (ws, metric), check, device, warmup, repeat)
        add(case, ours, base, loop, err, "loop of baseline", cp)

    # Physical pruning of ResNet-50 in one gather.
    tensors, dims, indices = prune_plan(shapes, device)
    got = ops.gather_channels(tensors, dims, indices)
    ok = all(torch.equal(o, t.index_select(dm, i)) for o, t, dm, i in zip(got, tensors, dims, indices))
    ours = median_ms(lambda: ops.gather_channels(tensors, dims, indices), device, warmup, repeat)
    base = median_ms(lambda: [t.index_select(dm, i).contiguous() for t, dm, i in zip(tensors, dims, indices)],
                     device, warmup, repeat)
    add(f"gather ResNet-50 ({len(tensors)} t)", ours, base, None, 0.0 if ok else float("inf"),
        "index_select loop")

    info = fpgm_ext.backend_info()
    print(f"backend: {info['devices']['cuda' if device == 'cuda' else 'cpu']}")
    return rows


def cupy_cells(r: Dict[str, object]) -> str:
    """The 'cupy/compiled' and 'cupy err' cells of a row, "-" where CuPy did not run."""
    ratio = f"{r['cupy'] / r['ours']:12.2f}x" if r["cupy"] is not None else f"{'-':>13s}"
    err = f"{r['cupy_err']:8.1e}" if r["cupy_err"] is not None else f"{'-':>8s}"
    return f"{ratio} {err}"


def table(rows: List[Dict[str, object]], device: str) -> str:
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (dry run)"
    head = (f"{'case':26s} {'ours ms':>9s} {'baseline ms':>12s} {'speedup':>8s}  {'baseline':17s} "
            f"{'our loop ms':>11s} {'1-call':>7s} {'rel err':>8s} {'cupy/compiled':>13s} {'cupy err':>8s}")
    out = [f"fpgm_ext on {name}, torch {torch.__version__}: median ms; speedup = baseline / ours; "
           f"1-call = our per-layer loop / our one call; cupy/compiled = the CuPy backend's op / ours",
           head, "-" * len(head)]
    for r in rows:
        loop = f"{r['loop']:11.3f} {r['loop'] / r['ours']:6.2f}x" if r["loop"] is not None else f"{'-':>11s} {'-':>7s}"
        out.append(f"{r['case']:26s} {r['ours']:9.3f} {r['base']:12.3f} {r['base'] / r['ours']:7.2f}x  "
                   f"{r['base_name']:17s} {loop} {r['err']:8.1e} {cupy_cells(r)}")
    return "\n".join(out)


def mismatches(rows: List[Dict[str, object]], tol: float = 1e-4) -> List[str]:
    """The cases whose result (ours, or the CuPy backend's where it ran) is off."""
    bad = [r["case"] for r in rows if not r["err"] <= tol]
    return bad + [f"{r['case']} (cupy)" for r in rows if r["cupy_err"] is not None and not r["cupy_err"] <= tol]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry", action="store_true", help="CPU, tiny sizes (no GPU needed)")
    parser.add_argument("--repeat", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    args = parser.parse_args()
    if args.dry:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
        torch.backends.cuda.matmul.allow_tf32 = False  # the baselines in true float32 too
        torch.backends.cudnn.allow_tf32 = False
    else:
        raise SystemExit("gpu_bench.py: no CUDA device (use --dry for the CPU dry run)")
    repeat = args.repeat or (2 if args.dry else 20)
    warmup = args.warmup or (1 if args.dry else 3)
    rows = run(device, args.dry, repeat, warmup)
    bad = mismatches(rows)
    print(table(rows, device))
    if bad:
        print("RESULT MISMATCH:", ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
