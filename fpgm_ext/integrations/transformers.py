"""Hugging Face transformers models pruned by FPGM without data: MLP channels and attention
heads (GQA-aware) of LLMs and encoders, found from the module structure (hf_blocks.py:
which blocks, what the surgery changes beyond the weights), selected, pruned and checked on
the model's own code like any other plan (../pruning/structure.py).

    pruned, report = prune(model, rate_dist=0.3)   # fpgm_ext.prune on random token ids
    save(pruned, "pruned_dir", report)   # AutoModelForCausalLM.from_pretrained("pruned_dir")
    model = load("pruned_dir")           # either way it was saved
    prune_pretrained("./model_dir", "./pruned_dir", rate_dist=0.3)   # the CLI's prune
"""
from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Union

import torch

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


def analyse(model, example_inputs, outputs, rate: float):
    """The analysis of the attention and MLP blocks ``model``'s modules spell, or None."""
    blocks, mlps = hf_blocks.find_attention(model), hf_blocks.find_mlps(model)
    if not blocks and not mlps:
        return None
    builder = StructureBuilder(model)
    hf_blocks.declare(builder, blocks, mlps, rate)
    return builder.analysis(outputs)


TWIN_LAYERS, TWIN_VOCAB, TWIN_MLP = 1, 256, 256
MLP_WIDTHS = ("intermediate_size", "n_inner", "ffn_dim")   # a config's MLP width, by its name


def twin(model, example_inputs):
    """(a model of ``model``'s class from its config with ``TWIN_LAYERS`` layers, a
    ``TWIN_VOCAB`` vocabulary and MLPs ``TWIN_MLP`` wide, float32, random weights (its
    attention as the model's: heads and their width); the example inputs with token ids
    folded into it), on which a large model's plans are checked (../pruning/twin.py), or
    None where the config does not say its layers or the model cannot be built so."""
    config = copy.deepcopy(getattr(model, "config", None))
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int):
        return None
    config.num_hidden_layers = min(layers, TWIN_LAYERS)
    for key in MLP_WIDTHS:   # (the widths the MLP code reads are the same whatever their size)
        if isinstance(getattr(config, key, None), int) and getattr(config, key) > TWIN_MLP:
            setattr(config, key, TWIN_MLP)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:config.num_hidden_layers]
    vocab = getattr(config, "vocab_size", None)
    small = min(vocab, TWIN_VOCAB) if isinstance(vocab, int) else None
    if small is not None:
        config.vocab_size = small
        for key in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id"):
            if isinstance(getattr(config, key, None), int) and getattr(config, key) >= small:
                setattr(config, key, small - 1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            made = type(model)(config).to(torch.float32).eval()
    except Exception:   # noqa: BLE001 - no twin: the model itself is checked
        return None
    inputs = tuple(x % small if small is not None and isinstance(x, torch.Tensor) and not x.is_floating_point()
                   else x for x in example_inputs)
    return made, inputs





def example_inputs(model, tokens: int = 16, seed: int = 0) -> tuple:
    """Inputs to prune ``model`` on: ``tokens`` random token ids, or a random image of the
    config's size for a vision model (``main_input_name == "pixel_values"``)."""
    g = torch.Generator().manual_seed(seed)
    config = model.config
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        size = getattr(config, "image_size", 224)
        return (torch.randn(1, getattr(config, "num_channels", 3), size, size, generator=g),)
    return (torch.randint(0, getattr(config, "vocab_size", 2), (1, tokens), generator=g),)


def prune(model, rate_dist: float = 0.3, heads: bool = True, **options):
    """``fpgm_ext.prune(model, example_inputs(model), rate_dist, **options)``: the MLP
    channels and attention heads of a transformers model, without data (the inputs only
    run the checks). ``inplace=True`` prunes ``model`` itself, with no second copy.
    ``heads=False`` leaves the attention whole: the MLPs alone, which every config can say
    (Llama's insists on ``hidden_size % num_attention_heads == 0``; BERT and GPT-2 derive
    the head width from the hidden size), so plain ``from_pretrained`` loads the result."""
    from .. import prune as _prune

    if not heads:
        ignore = options.pop("ignore", ())
        ignore = [ignore] if isinstance(ignore, str) else list(ignore)
        options["ignore"] = ignore + [a.name for a in hf_blocks.find_attention(model)]
    return _prune(model, example_inputs(model), rate_dist=rate_dist, **options)


def prune_pretrained(source: Union[str, Path], out: Union[str, Path], rate_dist: float = 0.3, heads: bool = True,
                     **options):
    """A local model directory pruned into ``out`` (``fpgm-ext prune SOURCE --out OUT``):
    loaded, pruned in place (``heads``: as ``prune``), saved by ``save``; returns the report."""
    model = load(source)
    _, report = prune(model, rate_dist, heads, inplace=True, **options)
    save(model, out, report)
    return report


PLAN_FILE = "fpgm_plan.json"
WEIGHTS_FILE = "model.safetensors"


def describes(model) -> bool:
    """Whether ``model.config`` builds ``model``'s architecture: every tensor's shape that of
    a model made from the config (on the meta device: nothing allocated), which the config's
    own validation accepts. True where every layer was pruned alike, the model's code takes
    its head width from ``head_dim`` and the config does not insist on ``hidden_size``
    being a multiple of the head count (Llama's does)."""
    config = copy.deepcopy(model.config)
    try:
        if hasattr(config, "validate"):   # transformers' own checks (Llama: hidden % heads == 0)
            config.validate()
        with torch.device("meta"):
            fresh = type(model)(config)
    except Exception:   # noqa: BLE001 - a config the model class refuses does not describe it
        return False
    want = {k: v.shape for k, v in model.state_dict().items()}
    return want == {k: v.shape for k, v in fresh.state_dict().items()}


def save(model, directory: Union[str, Path], report=None) -> str:
    """Saves the pruned ``model`` to ``directory`` and says how: ``"config"`` where its
    config describes it (``describes``): ``save_pretrained``, and plain ``from_pretrained``
    loads it without this package; else ``"plan"``: the unpruned model's config, the plan
    (``report.plan``, needed then) and the pruned weights, which ``load`` rebuilds with
    ``apply_plan`` on ``from_config``."""
    directory = Path(directory)
    if describes(model):
        model.save_pretrained(directory)
        return "config"
    if report is None:
        raise ValueError("fpgm_ext: the config cannot describe this pruned model (its layers differ in size, or "
                         "its code derives the head width from the hidden size): pass the prune's report, "
                         "whose plan rebuilds it")
    unpruned = getattr(model.config, hf_blocks.UNPRUNED, None) or model.config.to_dict()
    config = type(model.config).from_dict(unpruned)
    config.architectures = [type(model).__name__]
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(directory)
    report.plan.save(directory / PLAN_FILE)
    from safetensors.torch import save_model

    save_model(model, str(directory / WEIGHTS_FILE))   # (tied embeddings stored once)
    return "plan"


def load(directory: Union[str, Path], **from_pretrained):
    """A model saved by ``save``: ``from_pretrained`` where its config describes it, else the
    unpruned architecture from its config, rebuilt by the plan, and the pruned weights."""
    import transformers

    from ..pruning import apply_plan

    directory = Path(directory)
    config = transformers.AutoConfig.from_pretrained(directory)
    cls = getattr(transformers, (config.architectures or [""])[0], None)
    if cls is None:
        raise ValueError(f"fpgm_ext: {directory}/config.json names no transformers architecture")
    if not (directory / PLAN_FILE).exists():
        return cls.from_pretrained(directory, **from_pretrained)
    from safetensors.torch import load_model

    model = apply_plan(cls(config), json.loads((directory / PLAN_FILE).read_text()), inplace=True)
    load_model(model, str(directory / WEIGHTS_FILE))
    return model.eval()


def _saved(model, directory, report) -> str:
    how = save(model, directory, report)
    return "from_pretrained(path)" if how == "config" else "fpgm_ext.integrations.transformers.load(path)"


FAMILY = Family(
    Outputs(without_cache, "transformers: the key/value cache is the pruned model's own (not compared)"),
    hf_blocks.refit, analyse, twin, _saved)
