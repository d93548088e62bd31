"""Scoring every attention and MLP weight of an LLM in one ``distance_scores_multi`` call:
time, and peak memory beyond the weights, for bfloat16 weights shaped like real models.

    python -m bench.llm                               # this checkout alone
    python -m bench.llm --base /tmp/wt-base           # ...beside another checkout's build
    python -m bench.llm --base /tmp/wt-base --write   # ...and replace the llm section of
                                                      #    bench/RESULTS.md

Each case runs in a fresh child process with ``PYTHONPATH`` set to one checkout (its
in-place build of ``fpgm_ext._C``): the weights are drawn (random normal, std 0.02, in
their dtype, no float32 temporaries), a small call warms up the thread pool, the
resident-set high-water mark is reset (``/proc/self/clear_refs``), and one
``distance_scores_multi(weights, metric)`` call is timed. Peak extra memory is the
high-water mark (VmHWM) after the call less the resident set (VmRSS) before it: every page
the call touched, whatever the allocator caches. Each case runs ``--repeat`` times, the
checkouts alternating; the table gives the median time and the largest peak, and the
median CPU time of the process (all threads) beside the wall time: on a shared machine the
wall time moves with the other load. "same scores" compares the two checkouts' scores bit
for bit. The weights per transformer layer:
q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj as stored ([out, in], each
scored by its rows).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

if __package__ in (None, ""):  # python bench/llm.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
SECTION = "llm"
CONFIGS = {   # hidden, intermediate, transformer layers, q heads, kv heads, head dim
    "Qwen2.5-0.5B": (896, 4864, 24, 14, 2, 64),
    "Llama-style 1.2B": (2048, 8192, 16, 32, 8, 64),
}

_CHILD = r"""
import json, sys, time
import torch
import fpgm_ext

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(key)

shapes, dtype, metric, threads, save = json.loads(sys.argv[1])
torch.set_num_threads(threads)
dtype = getattr(torch, dtype)
g = torch.Generator().manual_seed(0)
weights = [torch.randn(s, generator=g, dtype=dtype).mul_(0.02) for s in shapes]
fpgm_ext.distance_scores_multi([torch.randn(64, 96, dtype=dtype)] * 4, metric)  # warm-up
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")   # the high-water mark restarts at the current resident set
rss = status("VmRSS")
start, cpu = time.perf_counter(), time.process_time()
scores = fpgm_ext.distance_scores_multi(weights, metric)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
peak = status("VmHWM")
if save:
    torch.save(scores, save)
json.dump({"seconds": seconds, "cpu": cpu, "extra": peak - rss, "rss": rss, "file": fpgm_ext.__file__,
           "weights": sum(w.numel() * w.element_size() for w in weights)}, sys.stdout)
"""


def layer_shapes(name: str) -> List[List[int]]:
    """The attention and MLP weights of every transformer layer of a config, as stored."""
    hidden, inter, layers, heads, kv, hd = CONFIGS[name]
    one = [[heads * hd, hidden], [kv * hd, hidden], [kv * hd, hidden], [hidden, heads * hd],
           [inter, hidden], [inter, hidden], [hidden, inter]]
    return one * layers


def run_child(checkout: Path, shapes, dtype: str, metric: str, threads: int,
              save: Optional[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([shapes, dtype, metric, threads, save])],
                         env=env, cwd=checkout, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"child failed ({checkout}):\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout)
    if not Path(result["file"]).resolve().is_relative_to(checkout.resolve()):
        raise RuntimeError(f"child imported {result['file']}, not the checkout {checkout}")
    return result


def measure(checkouts: Dict[str, Path], name: str, dtype: str, metric: str, threads: int,
            repeat: int) -> dict:
    """Per checkout: median seconds, largest peak extra bytes; and whether the scores agree."""
    shapes = layer_shapes(name)
    runs: Dict[str, List[dict]] = {k: [] for k in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        files = {k: os.path.join(tmp, f"{k}.pt") for k in checkouts}
        for r in range(repeat):
            for k, path in checkouts.items():   # alternating: a slow spell hits both
                runs[k].append(run_child(path, shapes, dtype, metric, threads, files[k] if r == 0 else None))
                print(f"  {name} {threads} thread(s) {k}: {runs[k][-1]['seconds']:.2f} s, "
                      f"peak extra {runs[k][-1]['extra'] / 2**20:.0f} MiB", flush=True)
        same = None
        if len(checkouts) == 2:
            import torch

            a, b = (torch.load(files[k]) for k in checkouts)
            same = all(torch.equal(x, y) for x, y in zip(a, b))
    row = {"model": name, "threads": threads, "weights": runs[next(iter(runs))][0]["weights"], "same": same}
    for k, rs in runs.items():
        row[k] = {"seconds": statistics.median(x["seconds"] for x in rs),
                  "cpu": statistics.median(x["cpu"] for x in rs),
                  "extra": max(x["extra"] for x in rs)}
    return row


def table(rows: List[dict], names: Sequence[str]) -> List[str]:
    head = "| model | weights | threads |"
    rule = "| --- | ---: | ---: |"
    for k in names:
        head += f" {k}: time | {k}: peak extra / weights |"
        rule += " ---: | ---: |"
    if len(names) == 2:
        head += " time after / before | CPU time after / before | same scores |"
        rule += " ---: | ---: | --- |"
    lines = [head, rule]
    for r in rows:
        line = f"| {r['model']} | {r['weights'] / 1e9:.2f} GB | {r['threads']} |"
        for k in names:
            line += f" {r[k]['seconds']:.2f} s | {r[k]['extra'] / r['weights']:.2f} |"
        if len(names) == 2:
            b, a = (r[k]["seconds"] for k in names)
            cb, ca = (r[k]["cpu"] for k in names)
            line += f" {a / b:.3f} | {ca / cb:.3f} | {'bit for bit' if r['same'] else 'no'} |"
        lines.append(line)
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="distance_scores_multi on LLM-shaped weights")
    p.add_argument("--base", type=Path, help="another checkout (built in place) to compare against")
    p.add_argument("--models", default=",".join(CONFIGS), help="comma-separated config names")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--metric", default="l2")
    p.add_argument("--repeat", type=int, default=2, help="runs per case and checkout (default 2)")
    p.add_argument("--write", action="store_true", help="update the llm section of bench/RESULTS.md")
    args = p.parse_args(argv)
    checkouts = {"before": args.base, "after": ROOT} if args.base else {"this": ROOT}
    rows = []
    for name in args.models.split(","):
        for threads in (int(t) for t in args.threads.split(",")):
            rows.append(measure(checkouts, name, args.dtype, args.metric, threads, args.repeat))
    lines = table(rows, list(checkouts))
    print("\n".join(lines))
    if args.write:
        from bench.harness import generated_note, machine_lines, now_utc, section_markers, write_results

        begin, end = section_markers(SECTION)
        command = "python -m bench.llm" + (" --base <checkout>" if args.base else "") + " --write"
        base = f"before: the checkout at {args.base}; after: this one. " if args.base else ""
        text = "\n".join([begin, "## LLM weights in one call: time and peak memory", "",
                          generated_note(command, now_utc()), "", *machine_lines(), "",
                          (__doc__ or "").split("\n\n", 2)[2].strip(), "",
                          f"{base}{args.dtype} weights, metric {args.metric}, {args.repeat} runs per case.",
                          "", *lines, end])
        write_results(text, begin, end)
        print("updated the llm section of bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
