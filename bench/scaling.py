"""The time-vs-N plot of the CPU report: seconds per call of each way of computing l2
scores against the number of filters N at D = shapes.SCALING_D, drawn with matplotlib
(optional: without it there is no plot, and the report's table does not need one).

Called by bench/report.py (``plot_scaling``), which writes the PNG next to RESULTS.md.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict

import torch

import fpgm_ext
from bench import baselines as B
from bench import shapes as S
from bench.harness import interleaved

PLOT = Path(__file__).resolve().parent / "scaling.png"
FLOOR = "work floor (F @ F.T / 2)"


def scaling(rounds: int, block_s: float, scipy_max_n: int, loop_max_n: int) -> Dict[str, Dict[int, float]]:
    """Seconds per call of each l2 method against N at D = SCALING_D (the best of the
    runs: the plot shows how time grows with N, which a busy spell would hide). scipy and
    the per-filter loops stop at ``scipy_max_n`` and ``loop_max_n``, being slow."""
    d = S.SCALING_D
    series: Dict[str, Dict[int, float]] = {}
    for n in S.SCALING_N:
        f = torch.randn(n, d, generator=torch.Generator().manual_seed(0))
        fn = f.numpy()
        methods = {
            "fpgm_ext.distance_scores": lambda: fpgm_ext.distance_scores(f),
            "torch.cdist(F, F).sum(1)": lambda: B.torch_cdist(f),
            "F @ F.T": lambda: B.gram(f),
        }
        if n <= scipy_max_n:
            methods["scipy cdist float64 (official)"] = lambda: B.scipy_official(f)
        if n <= loop_max_n:
            methods["per-filter loop, torch (NNI)"] = lambda: B.nni_loop(f)
            methods["per-filter loop, numpy (PaddleSlim)"] = lambda: B.paddleslim_loop(fn)
        # half the report's rounds and blocks: seven shapes, and only the best run counts
        t = interleaved(methods, max(3, rounds // 2), block_s / 2, slow_runs=1)
        for k, v in t.items():
            series.setdefault(k, {})[n] = v.best
        series.setdefault(FLOOR, {})[n] = t["F @ F.T"].best / 2
    return series


def plot(series: Dict[str, Dict[int, float]], machine: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for name, pts in series.items():
        ns = sorted(pts)
        style = dict(linestyle="--", color="gray") if name.startswith("work floor") else {}
        if name.startswith("fpgm_ext"):
            style = dict(linewidth=2.5, color="black")
        ax.plot(ns, [pts[n] * 1e3 for n in ns], marker="o", markersize=4, label=name, **style)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("N (filters)")
    ax.set_ylabel("time per call, best of runs (ms)")
    ax.set_title(f"FPGM l2 scores, D = {S.SCALING_D}, float32\n{machine}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_scaling(path: Path, machine: str, rounds: int, block_s: float,
                 scipy_max_n: int, loop_max_n: int) -> bool:
    """Measures and writes the plot to ``path``; False, measuring nothing, when matplotlib
    is not installed (the caller says so)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    plot(scaling(rounds, block_s, scipy_max_n, loop_max_n), machine, path)
    return True
