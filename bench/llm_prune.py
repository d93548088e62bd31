"""Pruning a whole LLM on one machine: ``fpgm_ext.integrations.transformers.prune`` (MLP
channels and attention heads at rate_dist 0.3, in place) of Hugging Face models built from
real configs with random bfloat16 weights: the time of the whole prune and of its steps
(scoring and selection, the plan check on a small twin, the surgery), and the peak resident
memory beyond the model itself, at 1 and 2 threads.

    python -m bench.llm_prune            # print the table (a few minutes on 2 cores)
    python -m bench.llm_prune --write    # ...and replace the llm-prune section of bench/RESULTS.md

Each case runs in a fresh child process: the model is built on the meta device and given
random bfloat16 weights (normal, std 0.02; no float32 copy), the resident-set high-water
mark is reset (``/proc/self/clear_refs``), and one ``prune(model, 0.3, inplace=True,
measure=False)`` is timed. Peak extra memory is the high-water mark (VmHWM) after it less
the resident set (VmRSS) before it, over the model's bytes: the goal is under 0.3 (the
whole process under 1.3x the model). Needs transformers (``pip install fpgm_ext[hf]``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Sequence

if __package__ in (None, ""):  # python bench/llm_prune.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import generated_note, machine_lines, now_utc, section_markers, write_results

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = section_markers("llm-prune")
CONFIGS = {   # name -> (config class, its arguments)
    "Qwen2.5-0.5B": ("Qwen2Config", dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                                         num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                         tie_word_embeddings=True)),
    "Llama-style 1.2B": ("LlamaConfig", dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                                             num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                                             head_dim=64, tie_word_embeddings=True)),
}

_CHILD = r"""
import json, sys, time, logging
import torch, transformers
from fpgm_ext.integrations import transformers as ft

logging.disable(logging.WARNING)

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

config_cls, kwargs, threads = json.loads(sys.argv[1])
torch.set_num_threads(threads)
config = getattr(transformers, config_cls)(**kwargs)
arch = config_cls.replace("Config", "ForCausalLM")
with torch.device("meta"):
    model = getattr(transformers, arch)(config)
model = model.to_empty(device="cpu").to(torch.bfloat16)
model.tie_weights()   # (to_empty makes the tied embedding a tensor of its own)
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    for p in model.parameters():
        p.normal_(0, 0.02, generator=g)
model.model.rotary_emb.__init__(config)   # (its frequencies, as the model's own init makes them)
model.eval()
size = sum(p.numel() * p.element_size() for p in model.parameters())
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
rss = status("VmRSS")
t = time.perf_counter()
_, report = ft.prune(model, 0.3, inplace=True, measure=False)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "peak": status("VmHWM") - rss, "size": size,
                  "steps": report.timings, "params": [report.params_before, report.params_after],
                  "left_alone": len(report.left_alone)}))
"""


def run_case(name: str, threads: int) -> dict:
    cls, kwargs = CONFIGS[name]
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps([cls, kwargs, threads])], capture_output=True,
                         text=True, cwd=ROOT, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{name} at {threads} threads failed: {out.stderr.strip().splitlines()[-1]}")
    return {"model": name, "threads": threads, **json.loads(out.stdout.strip().splitlines()[-1])}


def table(rows: List[dict]) -> List[str]:
    lines = ["| model | weights | threads | prune | score and select | check (twin) | surgery | "
             "peak extra memory / weights | params removed |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        s = r["steps"]
        before, after = r["params"]
        lines.append(f"| {r['model']} | {r['size'] / 2**30:.2f} GiB | {r['threads']} | {r['seconds']:.1f} s | "
                     f"{s.get('score and select', 0):.1f} s | {s.get('eager check', 0):.1f} s | "
                     f"{s.get('surgery', 0):.1f} s | {r['peak'] / r['size']:.2f} | "
                     f"{100 * (1 - after / before):.1f} % |")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description="prune LLM-shaped transformers models: time and peak memory")
    p.add_argument("--models", help=f"comma-separated, of: {', '.join(CONFIGS)}")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--write", action="store_true", help="update the llm-prune section of bench/RESULTS.md")
    args = p.parse_args(argv)
    names = args.models.split(",") if args.models else list(CONFIGS)
    rows = []
    for name in names:
        for threads in (int(t) for t in args.threads.split(",")):
            rows.append(run_case(name, threads))
            print(table(rows[-1:])[-1], flush=True)
    lines = table(rows)
    print("\n".join(lines))
    if args.write:
        doc = (__doc__ or "").split("\n\n", 2)
        text = "\n".join([BEGIN, "## Pruning LLMs on one machine", "", generated_note(
            "python -m bench.llm_prune --write", now_utc()), "", *machine_lines(), "", doc[2].strip(), "",
            *lines, END])
        write_results(text, BEGIN, END)
        print("updated the llm-prune section of bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
