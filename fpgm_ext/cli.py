"""The ``fpgm-ext`` command line (also ``python -m fpgm_ext``).

    fpgm-ext demo [--quick]                  soft FPGM end to end on scikit-learn's digits
    fpgm-ext prune MODEL [--rate-dist 0.4]   prune a model, print the per-layer table, save it
                                             (--target-flops 0.5: the rate that removes half the FLOPs)
                                             (--plot channels.png: channels before/after per layer)
    fpgm-ext bench [ARGS...]                 the benchmark report of the source checkout's bench/
    fpgm-ext info                            backends, build configuration, devices

An error (unknown model, unreadable file, bad rate) prints one line and exits non-zero;
FPGM_EXT_DEBUG=1 shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .cli_models import CliError, _first_line, attention_modules, example_input, load_model, save_pruned

PROG = "fpgm-ext"


class _Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, not usage + message
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ------------------------------------------------------------------- argument types
def _rate(lo_open: bool, hi_open: bool, lo: float = 0.0, hi: float = 1.0):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got '{text}'") from None
        ok = (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
        if not ok:
            rng = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise argparse.ArgumentTypeError(f"must be in {rng}, got {text}")
        return v
    return parse


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got '{text}'") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _shape(text: str) -> List[int]:
    try:
        dims = [int(t) for t in re.split(r"[,x ]+", text.strip()) if t]
    except ValueError:
        dims = []
    if len(dims) < 2 or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"must be positive integers like 1,3,224,224, got '{text}'")
    return dims


# ------------------------------------------------------------------------ commands
def cmd_demo(args) -> int:
    import torch

    from . import demo

    if args.threads:
        torch.set_num_threads(args.threads)
    s = demo.Settings.quick() if args.quick else demo.Settings()
    for field in ("depth", "epochs", "prune_epochs", "finetune_epochs", "rate_dist", "rate_norm", "seed"):
        v = getattr(args, field)
        if v is not None:
            setattr(s, field, v)
    if (s.depth - 2) % 6:
        raise CliError(f"--depth must be 6n + 2 (8, 20, 32, 56, ...), got {s.depth}")
    result = demo.run(s, progress=not args.no_progress)
    if args.json:
        Path(args.json).write_text(result.to_json())
    return 0


def cmd_prune(args) -> int:
    import torch

    import fpgm_ext

    if args.plot:   # before any work: a missing matplotlib or an unwritable path fails fast
        from . import plot

        try:
            plot.require_matplotlib()
        except plot.PlotUnavailable:
            raise CliError(f"--plot needs matplotlib: {plot.INSTALL_HINT}") from None
        try:
            plot.check_plot_path(args.plot)
        except ValueError as exc:
            raise CliError(f"--plot: {exc}") from None
    model, shape, what = load_model(args.model, args.num_classes)
    shape = args.input_shape or shape
    if shape is None:
        shape = [1, 3, 224, 224]
    torch.manual_seed(args.seed)
    x = example_input(model, shape)
    model.eval()
    try:
        pruned, report = fpgm_ext.prune(model, x, rate_dist=args.rate_dist, rate_norm=args.rate_norm,
                                        metric=args.metric, ignore=list(args.ignore or ()) + (
                                            attention_modules(model) if args.no_heads else []),
                                        prune_residual=not args.no_residual, min_channels=args.min_channels,
                                        round_to=args.round_to, target_flops=args.target_flops,
                                        target_params=args.target_params, approximate=args.approximate)
    except RuntimeError as exc:
        msg = _first_line(exc)
        if "shape" in msg or "size" in msg or "expected" in msg.lower():
            msg += f" (the model was run on an input of shape {list(shape)}; set --input-shape)"
        raise CliError(msg) from None
    rate_dist = report.plan.meta["rate_dist"]   # the rate found, with a target
    print(f"{what}, input {list(shape)}, rate_dist {rate_dist:g}, rate_norm {args.rate_norm}, "
          f"metric {args.metric}\n")
    print(report.to_markdown(layers=True))
    if args.out:
        print("\n" + save_pruned(pruned, args.out, report))
    if args.plan:
        report.plan.save(args.plan)
        print(f"saved the plan to {args.plan} (fpgm_ext.apply_plan(fresh_model, path))")
    if args.plot:
        plot.plot_channels(report, args.plot, title=f"{what}: FPGM rate_dist {rate_dist:.3g}, "
                           f"rate_norm {args.rate_norm:g}, metric {args.metric}")
        print(f"saved the channel plot to {args.plot}")
    return 0


def source_root() -> Path:
    """The checkout that holds this package (its parent folder)."""
    return Path(__file__).resolve().parent.parent


def bench_dir() -> Path:
    d = source_root() / "bench"
    if not (d / "report.py").is_file() or not (d / "__init__.py").is_file():
        raise CliError(f"no benchmark suite at {d}: bench/ ships with the source checkout, not the "
                       "installed package; run fpgm-ext bench from an editable install of a clone "
                       "(pip install --no-build-isolation -e .)")
    return d


def cmd_bench(args) -> int:
    d = bench_dir()
    rest = [a for a in args.args if a != "--"]
    if not args.no_write and "--write" not in rest:
        rest.append("--write")
    cmd = [sys.executable, "-m", "bench.report", *rest]
    print(f"{PROG} bench: {' '.join(cmd[1:])} (in {d.parent})", flush=True)
    return subprocess.call(cmd, cwd=str(d.parent))


def cmd_info(args) -> int:
    import torch

    import fpgm_ext

    info = fpgm_ext.backend_info()
    if args.json:
        info = dict(info, version=fpgm_ext.__version__, torch=torch.__version__)
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"fpgm_ext {fpgm_ext.__version__} ({Path(fpgm_ext.__file__).parent})")
    print(f"torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'}), Python "
          f"{platform.python_version()}, {platform.platform()}")
    print(f"backend: {info['backend']} ({info['reason']})")
    for dev, how in info["devices"].items():
        print(f"  {dev}: {how}")
    print(f"CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}")
    else:
        print("GPU: none visible")
    if info["build"]:
        print("build configuration:")
        for k, v in info["build"].items():
            print(f"  {k}: {v}")
    try:
        bench = str(bench_dir())
    except CliError:
        bench = "absent (not a source checkout)"
    print(f"bench/: {bench}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="FPGM filter pruning (He et al., CVPR 2019): compiled "
                "torch.ops.fpgm operators, soft pruning and physical pruning.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    d = sub.add_parser("demo", help="train, soft-prune at 40 %%, finalize and fine-tune a CIFAR-style "
                       "ResNet on scikit-learn's digits; print before/after figures",
                       description="Soft FPGM pruning end to end on scikit-learn's bundled handwritten "
                       "digits (real data, no download). Its figures and time on a stated machine: "
                       "bench/RESULTS.md, section 'demo' (python -m bench.demo --write).")
    d.add_argument("--quick", action="store_true", help="a few seconds: ResNet-8, a few epochs (tests)")
    d.add_argument("--depth", type=int, help="ResNet depth, 6n + 2 (default 20; 8 with --quick)")
    d.add_argument("--epochs", type=_positive_int, help="training epochs before pruning")
    d.add_argument("--prune-epochs", type=_positive_int, help="soft pruning epochs")
    d.add_argument("--finetune-epochs", type=_positive_int,
                   help="fine-tuning epochs of the pruned model")
    d.add_argument("--rate-dist", type=_rate(False, True), help="default 0.4")
    d.add_argument("--rate-norm", type=_rate(True, False), help="default 1.0")
    d.add_argument("--seed", type=int)
    d.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    d.add_argument("--no-progress", action="store_true", help="no progress bars")
    d.add_argument("--json", metavar="PATH", help="also write the figures as JSON")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("prune", help="FPGM-prune a model physically; print the per-layer table",
                       description="Prune MODEL: a built-in (cifar_resnet20/32/44/56/110), a torchvision "
                       "model name (untrained weights), or a .pt file holding a whole model "
                       "(torch.save(model, path); loaded with weights_only=False, so only open files "
                       "you trust).")
    r.add_argument("model", metavar="MODEL")
    r.add_argument("--rate-dist", type=_rate(False, True), default=0.4,
                   help="fraction pruned by distance (default 0.4)")
    r.add_argument("--rate-norm", type=_rate(True, False), default=1.0,
                   help="fraction kept by the norm stage (default 1.0: none pruned by norm)")
    target = r.add_mutually_exclusive_group()
    target.add_argument("--target-flops", type=_rate(True, True), metavar="FRACTION",
                        help="instead of --rate-dist: the fraction of the FLOPs to remove (e.g. 0.5); "
                             "the uniform rate that reaches it is searched")
    target.add_argument("--target-params", type=_rate(True, True), metavar="FRACTION",
                        help="likewise, the fraction of the parameters to remove")
    r.add_argument("--metric", choices=["l2", "l1", "cos"], default="l2")
    r.add_argument("--input-shape", type=_shape, metavar="N,C,H,W",
                   help="example input (default 1,3,32,32 for the built-ins, else 1,3,224,224)")
    r.add_argument("--num-classes", type=_positive_int, help="for built-in/torchvision models")
    r.add_argument("--ignore", action="append", metavar="MODULE", help="leave this module whole (repeatable)")
    r.add_argument("--no-residual", action="store_true", help="leave residual streams whole")
    r.add_argument("--no-heads", action="store_true",
                   help="transformers: leave attention heads whole (MLPs only, which every config can say)")
    r.add_argument("--approximate", action="store_true",
                   help="also prune channels under a LayerNorm (or GroupNorm(1, C)) over all of them, whose "
                        "statistics change: reported per group with the measured output difference")
    r.add_argument("--min-channels", type=_positive_int, default=1)
    r.add_argument("--round-to", type=_positive_int, default=1)
    r.add_argument("--seed", type=int, default=0, help="seed of the example input")
    r.add_argument("--out", metavar="PRUNED.pt", help="save the pruned model (the whole module)")
    r.add_argument("--plan", metavar="PLAN.json", help="save the pruning plan")
    r.add_argument("--plot", metavar="PATH", help="save a bar chart of the output channels per layer, "
                   "before and after (PNG, or .svg/.pdf; needs matplotlib: pip install 'fpgm_ext[bench]')")
    r.set_defaults(func=cmd_prune)

    b = sub.add_parser("bench", help="run the CPU benchmark report of bench/ (source checkout only)",
                       description="Runs python -m bench.report from the source checkout: prints its table, "
                       "writes bench/scaling.png and the cpu-bench section of bench/RESULTS.md. Further "
                       "arguments go to bench.report (e.g. --rounds 3 --plot out.png).")
    b.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    b.set_defaults(func=cmd_bench, passthrough=True)

    i = sub.add_parser("info", help="backends, build configuration, devices")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)
    return p


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fpgm_ext")
    except Exception:
        return "0.1.0"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.args = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:   # one clear line, no traceback
        if os.environ.get("FPGM_EXT_DEBUG"):
            raise
        msg = _first_line(exc)
        if not isinstance(exc, (CliError, ValueError, TypeError)):
            msg = f"{type(exc).__name__}: {msg}"
        print(f"{PROG} {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
