"""Hugging Face transformers models pruned by FPGM without data: MLP channels and attention
heads (GQA-aware) of LLMs and encoders, found from the module structure (hf_blocks.py:
which blocks, what the surgery changes beyond the weights), selected, pruned and checked on
the model's own code like any other plan (../pruning/structure.py).

    pruned, report = fpgm_ext.prune(model, (input_ids,), rate_dist=0.3)
    save(pruned, "pruned_dir", report)      # from_pretrained loads it where the config can say it
"""
from __future__ import annotations

from collections.abc import Mapping

from ..pruning.families import Family
from ..pruning.outputs import Outputs
from ..pruning.structure import StructureBuilder
from . import hf_blocks


def without_cache(out):
    """A model's outputs but its key/value cache (``past_key_values``), whose heads are
    the pruned model's own."""
    if isinstance(out, Mapping):
        return {k: v for k, v in out.items() if k != "past_key_values"}
    return out


def analyse(model, example_inputs, outputs):
    """The analysis of the attention and MLP blocks ``model``'s modules spell, or None."""
    blocks, mlps = hf_blocks.find_attention(model), hf_blocks.find_mlps(model)
    if not blocks and not mlps:
        return None
    builder = StructureBuilder(model)
    hf_blocks.declare(builder, blocks, mlps)
    return builder.analysis(outputs)


FAMILY = Family(
    Outputs(without_cache, "transformers: the key/value cache is the pruned model's own (not compared)"),
    hf_blocks.refit, analyse)
