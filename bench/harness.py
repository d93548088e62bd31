"""Timing and reporting infrastructure of the CPU benchmark scripts (bench/report.py,
bench/cpu_paths.py, bench/prune_report.py); no cases here, each script keeps its own.

- ``interleaved``: the methods of one case timed in turn, round by round, so a slow spell
  of a shared machine hits all of them and their ratios hold within one run;
- ``ms``, ``runs_note``, ``ratio``: how times and ratios are written in the tables;
- ``cpu_model``, ``cpu_flags``, ``machine_lines``: what a run was measured on;
- ``section_markers``, ``generated_note``, ``write_results``: each script owns one marked
  section of bench/RESULTS.md and rewrites only that one.

GPU timing (CUDA events, synchronisation) is not here: bench/gpu_bench.py keeps its own.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.benchmark import Timer

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


# ----------------------------------------------------------------------------- timing
@dataclass
class Timing:
    seconds: float  # median time of one call
    best: float     # fastest block, per call
    runs: int       # timed blocks
    number: int     # calls per block


def interleaved(methods: Dict[str, Callable[[], object]], rounds: int, block_s: float,
                slow_s: float = 0.25, slow_runs: int = 2,
                runs: Optional[Dict[str, int]] = None) -> Dict[str, Timing]:
    """Median seconds per call of each method, the methods timed in turn, round by round
    (the order rotating each round).

    A fast method runs blocks of calls of about ``block_s`` seconds through
    ``torch.utils.benchmark.Timer.timeit`` (which warms up before each block). A method
    whose first call takes ``slow_s`` or more is slow: Timer's warm-up would triple its
    cost, so its calls are timed one by one with ``time.perf_counter`` (the same threads),
    the first call counts, and it runs ``slow_runs`` calls in all, or ``runs[name]`` (more
    for a baseline that decides a target, fewer for the slowest)."""
    runs = runs or {}
    threads = torch.get_num_threads()
    samples: Dict[str, List[float]] = {}
    number: Dict[str, int] = {}
    cap: Dict[str, int] = {}
    timers: Dict[str, Optional[Timer]] = {}

    def call_once(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for k, fn in methods.items():
        first = call_once(fn)  # warm-up, and tells slow from fast
        if first >= slow_s:
            timers[k] = None
            samples[k], number[k], cap[k] = [first], 1, runs.get(k, slow_runs)
        else:
            timers[k] = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, description=k)
            once = timers[k].timeit(1).mean
            samples[k], number[k], cap[k] = [], max(1, int(block_s / max(once, 1e-7))), rounds
    names = list(methods)
    for r in range(max(cap.values())):
        for k in names[r % len(names):] + names[: r % len(names)]:
            if len(samples[k]) < cap[k]:
                t = timers[k]
                samples[k].append(call_once(methods[k]) if t is None else t.timeit(number[k]).mean)
    return {k: Timing(float(np.median(v)), min(v), len(v), number[k]) for k, v in samples.items()}


# ----------------------------------------------------------------------------- formatting
def ms(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def runs_note(t: Timing) -> str:
    """" (n runs)" after a slow method's time, whose median is of a few single calls."""
    return f" ({t.runs} run{'s' if t.runs > 1 else ''})" if t.number == 1 else ""


def ratio(slower: float, faster: float) -> str:
    """How many times ``faster`` fits in ``slower``: every "x" column of the tables."""
    return f"{slower / faster:.2f}x"


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> str:
    """The instruction sets that pick the kernels (and torch's), as far as /proc says."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return ", ".join(x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
                                     if x in flags)
    except OSError:
        pass
    return ""


def machine_lines(threads_note: str = "") -> List[str]:
    """Markdown list lines: CPU, threads, library versions, fpgm_ext's backend and build.
    ``threads_note`` says which methods run on fewer threads than torch's."""
    import scipy  # imported here: the baselines need it, the timing does not

    import fpgm_ext

    info = fpgm_ext.backend_info()
    build = info.get("build", {})
    return [
        f"- CPU: {cpu_model()} ({os.cpu_count()} logical CPUs; {cpu_flags() or 'flags unknown'})",
        f"- threads: torch.get_num_threads() = {torch.get_num_threads()}"
        + (f" ({threads_note})" if threads_note else ""),
        f"- torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, "
        f"Python {platform.python_version()}",
        f"- fpgm_ext {fpgm_ext.__version__}, backend: {info['backend']}"
        + (f" (compiler {build.get('compiler')}, OpenMP {build.get('openmp')}, {build.get('build_system')})"
           if build else ""),
    ]


# ----------------------------------------------------------------------------- RESULTS.md
def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def section_markers(name: str) -> Tuple[str, str]:
    """The HTML comments around a script's section of RESULTS.md (invisible when rendered)."""
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def generated_note(command: str, date: str) -> str:
    return (f"Generated by `{command}` on {date}; rerun it to update this section, "
            "do not edit it by hand.")


def write_results(text: str, begin: str, end: str, path: Path = RESULTS) -> None:
    """Replaces the text between the ``begin`` and ``end`` markers of ``path`` (the markers
    included; ``text`` brings its own), leaving every other section alone; appends the
    section when the markers are absent."""
    old = path.read_text() if path.exists() else "# fpgm_ext benchmark results\n"
    if begin in old and end in old and old.index(begin) < old.index(end):
        new = old[: old.index(begin)] + text + old[old.index(end) + len(end):]
    else:
        new = old.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(new)


def timing_parser(description: str, section: str, rounds: int) -> argparse.ArgumentParser:
    """The options every timing script shares: --write (its own section of RESULTS.md),
    --rounds and --block of ``interleaved``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--write", action="store_true", help=f"update the {section} section of {RESULTS}")
    p.add_argument("--rounds", type=int, default=rounds,
                   help=f"interleaved rounds per case (default {rounds})")
    p.add_argument("--block", type=float, default=0.05, help="seconds per timed block (default 0.05)")
    return p
