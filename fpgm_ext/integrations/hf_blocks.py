"""The blocks of Hugging Face transformers models the pruner knows by their modules, and
what pruning them changes beyond the weights.

- Attention: ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj`` (Llama, Mistral, Qwen2/3,
  Gemma, HF ViT, ...) or ``out_proj`` (OPT, CLIP, SigLIP), DistilBERT's ``q_lin`` ...
  ``out_lin``, BERT's ``self.query`` / ``self.key`` / ``self.value`` / ``output.dense``,
  or a fused ``qkv_proj`` (Phi-3) or ``c_attn`` (GPT-2) with its output projection,
  with the head width as an attribute (``head_dim``, ``attention_head_size``). Without
  grouped key/value heads, whole heads go from q, k and v; with them (GQA), query heads go
  in equal numbers from every key/value group (its key/value head stays), so that
  ``num_key_value_groups`` stays a whole number. The output projection loses the columns.
- MLP: gated (``gate_proj`` and ``up_proj`` scored together, ``down_proj``'s columns; a fused
  ``gate_up_proj`` whose halves are chunked), or plain (``fc1`` / ``fc2``,
  BERT's ``intermediate.dense`` / ``output.dense``, GPT-2's ``c_fc`` / ``c_proj``,
  DistilBERT's ``lin1`` / ``lin2``).

The residual stream's width stays (RMSNorm / LayerNorm statistics over it would change).
After the surgery, ``refit`` sets the head counts the code reads (``num_heads``,
``num_key_value_groups``, ``all_head_size``, ...) and the config's sizes where every layer
ends alike (config.py of this package says when the config describes the model).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from torch import nn

from ..pruning.layers import Linear, handler_for
from ..pruning.structure import StructureBuilder

# (q, k, v, o) relative to the attention module, and where its head width is
ATTENTION = [(("q_proj", "k_proj", "v_proj", "o_proj"), ""),
             (("q_proj", "k_proj", "v_proj", "out_proj"), ""),          # OPT, CLIP, SigLIP, Whisper
             (("q_proj", "k_proj", "v_proj", "dense"), ""),             # Phi-1/2
             (("q_lin", "k_lin", "v_lin", "out_lin"), ""),              # DistilBERT
             (("self.query", "self.key", "self.value", "output.dense"), "self")]
FUSED_ATTENTION = [("qkv_proj", "o_proj"), ("c_attn", "c_proj")]
GATED_MLP = [("gate_proj", "up_proj", "down_proj")]
FUSED_GATED_MLP = [("gate_up_proj", "down_proj")]
PLAIN_MLP = [("fc1", "fc2"), ("intermediate.dense", "output.dense"), ("c_fc", "c_proj"), ("lin1", "lin2"),
             ("dense_h_to_4h", "dense_4h_to_h")]   # (GPT-NeoX, Falcon)
HEAD_WIDTH = ("head_dim", "attention_head_size")
UNPRUNED = "fpgm_ext_unpruned"   # the config's key for the unpruned model's config


@dataclass(frozen=True)
class Attention:
    name: str                 # the module whose attributes hold the head counts
    q: str                    # module names; for a fused projection q == k == v
    k: str
    v: str
    o: str
    head_dim: int
    heads: int
    kv_heads: int

    @property
    def fused(self) -> bool:
        return self.q == self.k

    @property
    def grouped(self) -> bool:   # GQA: query heads pruned within their key/value group
        return self.kv_heads < self.heads


@dataclass(frozen=True)
class Mlp:
    name: str
    producers: Tuple[str, ...]    # gate and up (or fc1); a fused gate_up: one, in halves
    consumer: str
    width: int
    fused: bool = False


def _linear(modules, name) -> Optional[nn.Module]:
    """A linear layer (``nn.Linear``, GPT-2's transposed ``Conv1D``, a registered one)."""
    m = modules.get(name)
    return m if m is not None and isinstance(handler_for(m), Linear) else None


def _out(m) -> int:
    return handler_for(m).channels(m).outputs


def _in(m) -> int:
    return handler_for(m).channels(m).inputs


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix and name else prefix or name


def _head_dim(module) -> Optional[int]:
    for attr in HEAD_WIDTH:
        v = getattr(module, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def find_attention(model: nn.Module) -> List[Attention]:
    modules = dict(model.named_modules())
    found = []
    for name, m in modules.items():
        for (q, k, v, o), where in ATTENTION:
            lin = [_linear(modules, _join(name, p)) for p in (q, k, v, o)]
            hd = _head_dim(modules.get(_join(name, where))) if all(lin) else None
            if hd and _out(lin[0]) % hd == 0 and _out(lin[1]) % hd == 0 and \
                    _out(lin[1]) == _out(lin[2]) and _in(lin[3]) == _out(lin[0]):
                heads, kv = _out(lin[0]) // hd, _out(lin[1]) // hd
                if heads % kv == 0:
                    found.append(Attention(_join(name, where), *(_join(name, p) for p in (q, k, v, o)), hd, heads, kv))
        for qkv, o in FUSED_ATTENTION:
            a, b = _linear(modules, _join(name, qkv)), _linear(modules, _join(name, o))
            hd = _head_dim(m)
            if a and b and hd and _in(b) % hd == 0:
                heads = _in(b) // hd
                kv = getattr(m, "num_key_value_heads", heads)   # (GPT-2: none, all heads are)
                if isinstance(kv, int) and kv > 0 and _out(a) == (heads + 2 * kv) * hd and heads % kv == 0:
                    n = _join(name, qkv)
                    found.append(Attention(name, n, n, n, _join(name, o), hd, heads, kv))
    return found


def find_mlps(model: nn.Module) -> List[Mlp]:
    modules = dict(model.named_modules())
    found = []
    for name, m in modules.items():
        for gate, up, down in GATED_MLP:
            g, u, d = (_linear(modules, _join(name, p)) for p in (gate, up, down))
            if g and u and d and _out(g) == _out(u) == _in(d):
                found.append(Mlp(name, (_join(name, gate), _join(name, up)), _join(name, down), _out(g)))
        for gate_up, down in FUSED_GATED_MLP:
            gu, d = _linear(modules, _join(name, gate_up)), _linear(modules, _join(name, down))
            if gu and d and _out(gu) == 2 * _in(d):
                found.append(Mlp(name, (_join(name, gate_up),), _join(name, down), _in(d), fused=True))
        for fc1, fc2 in PLAIN_MLP:
            a, b = _linear(modules, _join(name, fc1)), _linear(modules, _join(name, fc2))
            if a and b and _out(a) == _in(b) and _out(a) != _in(a):
                found.append(Mlp(name, (_join(name, fc1),), _join(name, fc2), _out(a)))
    return found


def by_kv_group(a: Attention, rate: float) -> bool:
    """Whether GQA heads go a whole key/value group at a time (its key and value heads with
    all its query heads) rather than query heads in equal numbers from every group: the
    way that removes nearer ``int(heads * rate)`` query heads at ``rate`` (per group on a
    tie, which keeps every key/value head)."""
    g = a.heads // a.kv_heads
    target = int(a.heads * rate)
    return abs(int(a.kv_heads * rate) * g - target) < abs(int(g * rate) * a.kv_heads - target)


def declare(builder: StructureBuilder, blocks: List[Attention], mlps: List[Mlp], rate: float) -> None:
    """The spaces and groups of the blocks found; GQA heads as ``by_kv_group`` says at
    ``rate`` (the rate_dist asked for)."""
    for a in blocks:
        hd, g = a.head_dim, a.heads // a.kv_heads
        q_at, k_at, v_at = (0, a.heads * hd, (a.heads + a.kv_heads) * hd) if a.fused else (0, 0, 0)
        if a.grouped and by_kv_group(a, rate):
            spaces = [builder.rows(a.q, a.heads * hd, q_at), builder.rows(a.k, a.kv_heads * hd, k_at),
                      builder.rows(a.v, a.kv_heads * hd, v_at)]
            builder.group(spaces, a.kv_heads)
            builder.reads(a.o, spaces[:1])
            continue
        if not a.grouped:
            spaces = [builder.rows(a.q, a.heads * hd, q_at), builder.rows(a.k, a.heads * hd, k_at),
                      builder.rows(a.v, a.heads * hd, v_at)]
            builder.group(spaces, a.heads)
            builder.reads(a.o, spaces[:1])
            continue
        pieces = [builder.rows(a.q, g * hd, q_at + j * g * hd) for j in range(a.kv_heads)]
        for s in pieces:
            builder.group([s], g)
        builder.reads(a.o, pieces)
        if a.fused:   # the projection's key and value rows, kept
            kv = [builder.rows(a.k, a.kv_heads * hd, k_at), builder.rows(a.v, a.kv_heads * hd, v_at)]
            builder.group(kv, 1, ["the key/value heads of grouped-query attention stay (its query heads go "
                                  "in equal numbers from every group)"])
        builder.equal(pieces, f"{a.name}'s key/value groups")
    for m in mlps:
        if m.fused:
            spaces = [builder.rows(m.producers[0], m.width, 0), builder.rows(m.producers[0], m.width, m.width)]
        else:
            spaces = [builder.rows(p, m.width) for p in m.producers]
        builder.group(spaces, m.width)
        builder.reads(m.consumer, spaces[:1])


def refit(model: nn.Module):
    """Before the surgery: the blocks. After it: each attention module's head counts and
    each MLP's width set from its pruned projections, and the config's where every block
    ends alike (else each attention module gets a config copy of its own, for code that
    reads its head count from the config, as Phi-3's does)."""
    blocks, mlps = find_attention(model), find_mlps(model)

    def after(pruned: nn.Module) -> None:
        modules = dict(pruned.named_modules())
        counts = [_refit_attention(modules, a) for a in blocks]
        widths = [_refit_mlp(modules, m) for m in mlps]
        _refit_config(pruned, modules, blocks, counts, widths)

    return after


def _refit_attention(modules: Dict[str, nn.Module], a: Attention) -> Tuple[int, int]:
    heads = _in(modules[a.o]) // a.head_dim
    qkv = _out(modules[a.q]) // a.head_dim
    kv = (qkv - heads) // 2 if a.fused else _out(modules[a.k]) // a.head_dim
    m = modules[a.name]
    _set(m, ("num_heads", "num_attention_heads"), heads)
    _set(m, ("num_key_value_heads",), kv)
    _set(m, ("num_key_value_groups",), heads // kv if kv else 0)
    _set(m, ("all_head_size", "split_size"), heads * a.head_dim)   # (GPT-2 splits its fused qkv by split_size)
    return heads, kv


def _refit_mlp(modules: Dict[str, nn.Module], m: Mlp) -> int:
    width = _in(modules[m.consumer])
    _set(modules[m.name], ("intermediate_size",), width)
    return width


def _set(module, names, value) -> None:
    for n in names:
        if isinstance(getattr(module, n, None), int) and not isinstance(getattr(module, n), bool):
            setattr(module, n, value)


def _refit_config(pruned, modules, blocks, counts, widths) -> None:
    config = getattr(pruned, "config", None)
    if config is None:
        return
    if not hasattr(config, UNPRUNED):   # what apply_plan starts from (transformers.save)
        setattr(config, UNPRUNED, config.to_dict())
    if len(set(counts)) == 1:
        (heads, kv), = set(counts)
        _set(config, ("num_attention_heads",), heads)
        _set(config, ("num_key_value_heads",), kv)
        config.head_dim = blocks[0].head_dim   # (most read it where it is given)
    elif counts:
        for a, (heads, kv) in zip(blocks, counts):
            m = modules[a.name]
            if getattr(m, "config", None) is config:
                m.config = copy.copy(config)
                _set(m.config, ("num_attention_heads",), heads)
                _set(m.config, ("num_key_value_heads",), kv)
    if len(set(widths)) == 1:
        _set(config, ("intermediate_size",), widths[0])
        if hasattr(config, "n_inner"):   # GPT-2's (None: 4 x the hidden size)
            config.n_inner = widths[0]
