"""The figures of ``fpgm-ext demo`` (fpgm_ext/demo.py) over a few seeds: the ones README.md quotes.

    python -m bench.demo                  # run the demo once per seed (0, 1, 2), print the figures
    python -m bench.demo --write          # ...and rewrite the demo section of bench/RESULTS.md and
                                          #    README.md's demo block (between its demo markers)
    python -m bench.demo --seeds 0,1,2,3,4

Each seed runs the whole demo with its default settings, the seeds one after another in one
process; seed k draws the 80/20 split of scikit-learn's 1,797 digits, the initial weights and
the batches (``fpgm-ext demo --seed k`` reruns one). The accuracy is over the test split's
images, so it moves by whole images; float results differ between CPUs, and so do the
fine-tuned weights, which is why the spread over seeds is stated beside the default seed's
figures. FLOPs are measured with FlopCounterMode (2 per multiply-add); latency is the median
of the demo's ``latency_runs`` forward passes, the unpruned and pruned models in turn; the
time is the demo's own total (the last line it prints), training included.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

if __package__ in (None, ""):  # python bench/demo.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.harness import (RESULTS, cpu_model, generated_note, machine_lines, now_utc,
                           section_markers, write_results)
from fpgm_ext import demo
from fpgm_ext.demo import DemoResult

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = section_markers("demo")  # the same markers in bench/RESULTS.md and README.md
COMMAND = "python -m bench.demo --write"
DEFAULT_SEED = demo.Settings().seed   # what `fpgm-ext demo` runs: the table README quotes
SUMMARY_START = f"Measured by `{COMMAND}`"  # how tests/test_readme_figures.py finds the summary


@dataclass
class Machine:
    """What the figures were measured on, as the summary names it."""
    cpu: str
    logical_cpus: int
    threads: int
    date: str

    @classmethod
    def here(cls) -> "Machine":
        return cls(cpu_model(), os.cpu_count() or 1, torch.get_num_threads(), now_utc())


@dataclass
class Spread:
    """The lowest and highest value of one figure over the seeds."""
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        return cls(min(values), max(values))

    def text(self, digits: int = 0) -> str:
        low, high = f"{self.low:.{digits}f}", f"{self.high:.{digits}f}"
        return low if low == high else f"{low}-{high}"


# ----------------------------------------------------------------------------- running
def run_seeds(seeds: Sequence[int], quick: bool) -> List[DemoResult]:
    """The demo once per seed, quietly; one line per seed on stdout."""
    results = []
    for seed in seeds:
        settings = demo.Settings.quick() if quick else demo.Settings()
        settings.seed = seed
        r = demo.run(settings, progress=False, log=lambda *_: None)
        print(f"seed {seed}: accuracy {demo.accuracy_text(r.before, r.test_images)} -> "
              f"{demo.accuracy_text(r.after, r.test_images)}, {r.seconds:.0f} s", flush=True)
        results.append(r)
    return results


def default_run(results: Sequence[DemoResult]) -> DemoResult:
    """The run of the default seed (the first run where the seeds leave it out)."""
    return next((r for r in results if r.settings["seed"] == DEFAULT_SEED), results[0])


# ----------------------------------------------------------------------------- text
def summary(results: Sequence[DemoResult], machine: Machine) -> str:
    """One paragraph, in RESULTS.md and README.md alike: the machine, the spread, the time."""
    head = default_run(results)
    n = head.test_images
    seeds = ", ".join(str(r.settings["seed"]) for r in results)
    before = Spread.of([r.before.correct for r in results])
    after = Spread.of([r.after.correct for r in results])
    after_pct = Spread.of([r.after.accuracy for r in results])
    seconds = Spread.of([r.seconds for r in results])
    return (f"{SUMMARY_START} on {machine.date}: {machine.cpu}, {machine.logical_cpus} logical CPUs, "
            f"{machine.threads} torch threads. The table is seed {head.settings['seed']}, what "
            f"`fpgm-ext demo` runs by default: accuracy after pruning "
            f"{demo.accuracy_text(head.after, n)}. Over seeds {seeds} (each its own split, initial "
            f"weights and batches) the {n} test images were classified right {before.text()}/{n} "
            f"before pruning and {after.text()}/{n} after ({after_pct.text(2)} %); float results "
            f"differ between CPUs, and so do the fine-tuned weights: expect a run elsewhere within "
            f"about that spread. The demo's total time (its last line) was {head.seconds:.0f} s "
            f"with seed {head.settings['seed']}, {seconds.text()} s over the seeds.")


def seed_rows(results: Sequence[DemoResult]) -> List[str]:
    """Every seed's figures, one row each."""
    lines = ["| seed | accuracy before | accuracy after (pruned, fine-tuned) | masked / finalized, "
             "before fine-tuning | parameters after | FLOPs after | latency batch 1, before -> after "
             "| latency test split, before -> after | total time |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        b, a, n = r.before, r.after, r.test_images
        lines.append(f"| {r.settings['seed']} | {demo.accuracy_text(b, n)} | {demo.accuracy_text(a, n)} | "
                     f"{r.masked_accuracy:.2f} % / {r.pruned_accuracy:.2f} % | {a.params:,} | "
                     f"{a.flops:,} | {b.latency_1_ms:.3f} -> {a.latency_1_ms:.3f} ms | "
                     f"{b.latency_test_ms:.2f} -> {a.latency_test_ms:.2f} ms | {r.seconds:.0f} s |")
    return lines


def results_section(results: Sequence[DemoResult], machine: Machine) -> str:
    """The demo section of bench/RESULTS.md, its markers included."""
    head = default_run(results)
    doc = (__doc__ or "").split("\n\n", 2)[2].strip()
    return "\n".join([
        BEGIN, "## The demo: `fpgm-ext demo` over seeds", "",
        generated_note(COMMAND, machine.date), "", *machine_lines(), "", doc, "",
        summary(results, machine), "",
        f"### Seed {head.settings['seed']}, the default (quoted in README.md)", "",
        *demo.table_rows(head), "", demo.trailer(head), "",
        "### Every seed", "", *seed_rows(results), END])


def readme_block(results: Sequence[DemoResult], machine: Machine) -> str:
    """README.md's demo block, its markers included: the default seed's table and the summary,
    the same lines as in the RESULTS.md section."""
    return "\n".join([
        BEGIN, "", *demo.table_rows(default_run(results)), "", summary(results, machine), "",
        f"Every seed's figures: bench/RESULTS.md, section \"demo\"; `{COMMAND}` rewrites that "
        "section and this block together.", "", END])


def write(results: Sequence[DemoResult], machine: Machine,
          results_path: Path = RESULTS, readme_path: Path = README) -> None:
    """Rewrites the demo section of RESULTS.md and the demo block of README.md. README.md
    must hold the markers already: the block belongs in its quickstart, not at its end."""
    text = readme_path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme_path} has no {BEGIN} ... {END} block to rewrite")
    write_results(results_section(results, machine), BEGIN, END, results_path)
    write_results(readme_block(results, machine), BEGIN, END, readme_path)


# ----------------------------------------------------------------------------- main
def parse_seeds(text: str) -> List[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be integers like 0,1,2, got '{text}'") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.demo",
                                description="fpgm-ext demo over a few seeds: the figures README.md quotes")
    p.add_argument("--seeds", type=parse_seeds, default=[0, 1, 2], help="default 0,1,2")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--quick", action="store_true", help="the demo's quick settings (a smoke test)")
    p.add_argument("--write", action="store_true",
                   help="rewrite the demo section of bench/RESULTS.md and README.md's demo block")
    args = p.parse_args(argv)
    if args.write and (args.quick or DEFAULT_SEED not in args.seeds):
        p.error(f"--write records the full demo and its default seed {DEFAULT_SEED}: "
                "no --quick, and --seeds must include it")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = run_seeds(args.seeds, args.quick)
    machine = Machine.here()
    print("\n" + results_section(results, machine))
    print(f"\n{len(results)} seeds in {time.perf_counter() - start:.0f} s")
    if args.write:
        write(results, machine)
        print(f"updated the demo section of {RESULTS} and the demo block of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
