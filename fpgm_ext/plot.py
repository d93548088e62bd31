"""Plots of a :class:`~fpgm_ext.pruning.report.PruneReport` (``fpgm-ext prune --plot``).

matplotlib is optional (it comes with the ``bench`` extra): it is imported only when a plot
is drawn, and the figure is drawn on a ``Figure`` with the Agg canvas, so no pyplot state is
touched and a backend the caller chose stays as it is."""
from __future__ import annotations

import math
import os
from typing import List, Optional, Tuple

INSTALL_HINT = "pip install matplotlib (or pip install 'fpgm_ext[bench]')"
LABELS_PER_INCH = 3.6      # x labels at most; beyond that one layer in k is named
BEFORE_COLOUR = "#b9d3ee"  # light
AFTER_COLOUR = "#1f4e99"   # strong


class PlotUnavailable(ImportError):
    """matplotlib cannot be imported."""


def require_matplotlib() -> None:
    """Raise :class:`PlotUnavailable` (with the install command) unless matplotlib imports."""
    try:
        import matplotlib  # noqa: F401  (first: a submodule cached in sys.modules is not enough)
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError as exc:
        raise PlotUnavailable(f"plotting needs matplotlib ({exc}): {INSTALL_HINT}") from None


def check_plot_path(path) -> None:
    """Fail early on a path the plot cannot be written to: a missing folder or a file suffix
    matplotlib has no writer for. Needs matplotlib (call :func:`require_matplotlib` first)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = os.fspath(path)
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        raise ValueError(f"cannot write '{path}': no such folder '{folder}'")
    suffix = os.path.splitext(path)[1].lstrip(".").lower()
    formats = FigureCanvasAgg.get_supported_filetypes()
    if suffix and suffix not in formats:
        raise ValueError(f"cannot write '{path}': matplotlib does not write .{suffix} files "
                         f"(use one of {', '.join('.' + f for f in sorted(formats))})")


def _out_channels(text: str) -> int:
    return int(text.split("->")[-1])


def channel_counts(report) -> List[Tuple[str, int, int]]:
    """(layer, output channels before, after) for the report's conv/linear layers, in model
    order (the ``PadShortcut`` helpers are left out)."""
    return [(s.name, _out_channels(s.channels_before), _out_channels(s.channels_after))
            for s in report.layers if s.type != "PadShortcut"]


def plot_channels(report, path=None, title: Optional[str] = None):
    """Bar chart of the output channels of every conv/linear layer before and after pruning.

    Args:
        report: the ``PruneReport`` of :func:`fpgm_ext.prune`.
        path: where to save the figure (PNG, or any other suffix matplotlib writes: .svg,
            .pdf, ...); ``None`` to only return it.
        title: the title's first line (default: the model and the pruning rates); a second
            line gives the measured parameter and FLOPs reductions.

    Returns the ``matplotlib.figure.Figure``. Raises :class:`PlotUnavailable` (an
    ``ImportError``) without matplotlib.
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = channel_counts(report)
    if not rows:
        raise ValueError("the report has no conv/linear layers to plot")
    names = [r[0] for r in rows]
    before = [r[1] for r in rows]
    after = [r[2] for r in rows]
    n = len(rows)

    meta = getattr(report.plan, "meta", {}) or {}
    if title is None:
        title = f"{meta.get('model', 'model')}: FPGM"
        rates = [f"{k} {meta[k]:g}" for k in ("rate_dist", "rate_norm") if isinstance(meta.get(k), (int, float))]
        if rates:
            title += ", " + ", ".join(rates)
        if meta.get("metric"):
            title += f", metric {meta['metric']}"
    stats = [f"params -{100 * report.params_reduction:.1f} % "
             f"({report.params_before:,} -> {report.params_after:,})"]
    if report.flops_reduction is not None:
        stats.append(f"FLOPs -{100 * report.flops_reduction:.1f} % "
                     f"({report.flops_before:,} -> {report.flops_after:,})")

    width_in = min(max(6.0, 1.5 + 0.28 * n), 18.0)
    fig = Figure(figsize=(width_in, 5.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = list(range(n))
    w = 0.4
    ax.bar([x - w / 2 for x in xs], before, w, color=BEFORE_COLOUR, edgecolor="none",
           label=f"before ({sum(before):,} channels)")
    ax.bar([x + w / 2 for x in xs], after, w, color=AFTER_COLOUR, edgecolor="none",
           label=f"after ({sum(after):,} channels, {100 * sum(after) / max(sum(before), 1):.0f} % kept)")

    step = max(1, math.ceil(n / (LABELS_PER_INCH * width_in)))
    shown = xs[::step]
    ax.set_xticks(shown)
    ax.set_xticklabels([names[i] for i in shown], rotation=60, ha="right", rotation_mode="anchor",
                       fontsize=8 if n <= 30 else 7)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_xlabel("layer (model order)" + (f"; one label in {step}" if step > 1 else ""))
    ax.set_ylabel("output channels")
    ax.set_ylim(0, max(before) * 1.12)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="upper left", frameon=False, fontsize=9)
    ax.set_title(title + "\n" + ", ".join(stats), fontsize=10)
    if path is not None:
        fig.savefig(os.fspath(path), dpi=120)
    return fig
