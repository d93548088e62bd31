"""Hugging Face transformers (skipped without it; tiny random configs, nothing downloaded):
MLP channels and attention heads (GQA-aware) pruned at rate_dist=0.3, the pruned model
equal by value to the original with the pruned channels masked, the configs' sizes
refit, saved and reloaded (plain ``from_pretrained`` where the config can describe the
model, else ``load`` through the plan), and greedy generation with the KV cache giving the
masked original's tokens."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")

import fpgm_ext  # noqa: E402
from fpgm_ext.integrations import transformers as ft  # noqa: E402
from fpgm_ext.pruning import zero_pruned  # noqa: E402

from masking import masked_original  # noqa: E402

RATE = 0.3
VOCAB, HIDDEN, MLP, LAYERS = 96, 64, 160, 2


def _decoder(kind, heads, kv):
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                  num_attention_heads=heads, num_key_value_heads=kv, pad_token_id=0, bos_token_id=1,
                  eos_token_id=2)
    config = getattr(transformers, f"{kind}Config")(**common)
    return getattr(transformers, f"{kind}ForCausalLM")(config)


DECODERS = [("Llama", 8, 2), ("Qwen2", 8, 4), ("Qwen3", 8, 2), ("Mistral", 4, 4), ("Phi3", 8, 2)]


def _heads_after(heads, kv):
    """What the pruner should leave: query heads in equal numbers from every key/value
    group, or whole groups, whichever removes nearer int(heads * RATE) (hf_blocks)."""
    g = heads // kv
    target = int(heads * RATE)
    whole = int(kv * RATE) * g
    per_group = int(g * RATE) * kv
    if abs(whole - target) < abs(per_group - target):
        return heads - whole, kv - int(kv * RATE)
    return heads - per_group, kv if g > 1 else heads - per_group


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("kind,heads,kv", DECODERS)
def test_decoder_prunes_mlp_and_heads_exactly(kind, heads, kv, tmp_path):
    model = _decoder(kind, heads, kv).eval()
    ids = torch.randint(3, VOCAB, (2, 10))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = fpgm_ext.prune(model, (ids,), rate_dist=RATE)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.config.num_attention_heads == heads and model.config.intermediate_size == MLP
    want_heads, want_kv = _heads_after(heads, kv)
    head_dim = model.model.layers[0].self_attn.head_dim
    for layer in pruned.model.layers:
        o, down = layer.self_attn.o_proj, layer.mlp.down_proj
        assert down.in_features == MLP - int(MLP * RATE)
        assert o.in_features == want_heads * head_dim
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (want_heads, want_kv)
    assert pruned.config.intermediate_size == MLP - int(MLP * RATE)
    masked = zero_pruned(copy.deepcopy(model), report.plan)
    by_value = masked_original(model, pruned)   # (independent of the plan)
    with torch.no_grad():
        got = pruned(ids).logits
        for ref in (masked(ids).logits, by_value(ids).logits):
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    how = ft.save(pruned, tmp_path / "pruned", report)
    reloaded = type(model).from_pretrained(tmp_path / "pruned") if how == "config" else ft.load(tmp_path / "pruned")
    prompt = ids[:1]
    greedy = dict(max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(reloaded.eval().generate(prompt, **greedy), masked.generate(prompt, **greedy))
    assert how == ("config" if ft.describes(pruned) else "plan")


def test_config_route_loads_without_this_package(tmp_path):
    """Qwen2's config holds head_dim and does not insist on hidden % heads: save_pretrained,
    and transformers alone reloads the pruned sizes."""
    model = _decoder("Qwen2", 8, 2).eval()
    pruned, report = fpgm_ext.prune(model, (torch.randint(3, VOCAB, (1, 8)),), rate_dist=RATE)
    assert ft.save(pruned, tmp_path, report) == "config"
    config = transformers.AutoConfig.from_pretrained(tmp_path)
    assert (config.num_attention_heads, config.intermediate_size) == (pruned.config.num_attention_heads,
                                                                     pruned.config.intermediate_size)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert sum(p.numel() for p in reloaded.parameters()) == report.params_after


@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_encoders_prune_exactly(kind, tmp_path):
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                         num_attention_heads=8, intermediate_size=MLP)
        model, x = transformers.BertModel(config).eval(), torch.randint(0, VOCAB, (2, 10))
    else:
        config = transformers.ViTConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=8,
                                        intermediate_size=MLP, image_size=32, patch_size=8, num_labels=5)
        model, x = transformers.ViTForImageClassification(config).eval(), torch.randn(2, 3, 32, 32)
    pruned, report = fpgm_ext.prune(model, (x,), rate_dist=RATE)
    assert all(g["kept"] is not None for g in report.groups)   # every head group and MLP
    masked = zero_pruned(copy.deepcopy(model), report.plan)
    with torch.no_grad():
        got, want = pruned(x), masked(x)
    key = "logits" if kind == "vit" else "last_hidden_state"
    torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5)
    how = ft.save(pruned, tmp_path, report)
    reloaded = type(model).from_pretrained(tmp_path) if how == "config" else ft.load(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(x)[key], got[key])


def test_a_layer_pruned_alone_saves_through_the_plan(tmp_path):
    """ignore= leaves one layer whole: the layers differ, the config cannot say it."""
    model = _decoder("Qwen2", 8, 2).eval()
    ids = torch.randint(3, VOCAB, (1, 8))
    pruned, report = fpgm_ext.prune(model, (ids,), rate_dist=RATE, ignore=["model.layers.0"])
    assert pruned.model.layers[0].mlp.down_proj.in_features == MLP
    assert pruned.model.layers[1].mlp.down_proj.in_features < MLP
    assert not ft.describes(pruned)
    with pytest.raises(ValueError, match="pass the prune's report"):
        ft.save(pruned, tmp_path / "x")
    assert ft.save(pruned, tmp_path / "y", report) == "plan"
    with torch.no_grad():
        torch.testing.assert_close(ft.load(tmp_path / "y")(ids).logits, pruned(ids).logits)


def test_gpt2_conv1d_heads_and_mlp(tmp_path):
    """GPT-2 stores its linear layers transposed (Conv1D) and fuses q, k and v, split by
    ``split_size``: heads and MLP channels go, the model equals its masked original, and
    its head width comes from the hidden size, so it saves through the plan."""
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=8, n_inner=MLP,
                                     bos_token_id=1, eos_token_id=2)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(3, VOCAB, (2, 10))
    pruned, report = fpgm_ext.prune(model, (ids,), rate_dist=RATE)
    block = pruned.transformer.h[0]
    assert block.attn.num_heads == 8 - int(8 * RATE) and block.attn.c_attn.nf == 3 * block.attn.num_heads * 8
    assert block.mlp.c_fc.nf == MLP - int(MLP * RATE) and pruned.config.n_inner == block.mlp.c_fc.nf
    masked = zero_pruned(copy.deepcopy(model), report.plan)
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, masked(ids).logits, rtol=1e-4, atol=1e-5)
    assert ft.save(pruned, tmp_path, report) == "plan"
    greedy = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(ft.load(tmp_path).generate(ids[:1], **greedy), masked.generate(ids[:1], **greedy))


def test_cli_prunes_a_local_model_directory(tmp_path):
    from fpgm_ext import cli

    model = _decoder("Qwen2", 8, 2)
    model.save_pretrained(tmp_path / "model")
    assert cli.main(["prune", str(tmp_path / "model"), "--rate-dist", "0.3", "--out", str(tmp_path / "pruned")]) == 0
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert reloaded.config.intermediate_size == MLP - int(MLP * RATE)
    assert sum(p.numel() for p in reloaded.parameters()) < sum(p.numel() for p in model.parameters())


def test_large_models_are_checked_on_a_small_twin(monkeypatch):
    """Above twin.TWIN_ABOVE parameters the plan is checked on a 1-layer, small-vocabulary
    model of the same class (no float64 copies of the model): same result where the code
    takes the pruning, and the groups refused where it does not (here: head counts not
    refit after the surgery, so eager attention repeats the key/value heads by a stale
    count)."""
    from fpgm_ext.pruning import families, twin

    model = _decoder("Llama", 8, 2).eval()
    assert model.config.num_hidden_layers == LAYERS > ft.TWIN_LAYERS   # (the twin keeps fewer)
    ids = torch.randint(3, VOCAB, (1, 10))
    small, report_small = fpgm_ext.prune(model, (ids,), rate_dist=RATE)
    built = []
    real_twin = ft.FAMILY.twin
    monkeypatch.setattr(twin, "TWIN_ABOVE", 0)
    monkeypatch.setattr(ft, "FAMILY", families.Family(ft.FAMILY.outputs, ft.FAMILY.refit, ft.FAMILY.analyse,
                                                       lambda m, x: built.append(1) or real_twin(m, x)))
    pruned, report = fpgm_ext.prune(model, (ids,), rate_dist=RATE)
    assert built and report.plan.groups == report_small.plan.groups
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids).logits, small(ids).logits)
    stale = families.Family(ft.FAMILY.outputs, lambda m: (lambda pruned: None), ft.FAMILY.analyse, real_twin)
    monkeypatch.setattr(ft, "FAMILY", stale)
    model.config._attn_implementation = "eager"
    _, refused = fpgm_ext.prune(model, (ids,), rate_dist=RATE)
    heads = [g for g in refused.groups if "q_proj" in g["producers"][0]]
    assert heads and all(g["kept"] is None and "built small to check them" in g["left_alone"] for g in heads)


def test_prune_pretrained_is_the_cli_in_python(tmp_path):
    model = _decoder("Mistral", 8, 2)
    model.save_pretrained(tmp_path / "model")
    report = ft.prune_pretrained(tmp_path / "model", tmp_path / "pruned", rate_dist=RATE)
    assert report.params_after < report.params_before
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert sum(p.numel() for p in reloaded.parameters()) == report.params_after


OTHERS = {   # architectures no issue names, spelled like those above (tiny random configs)
    "Gemma": ("GemmaForCausalLM", "GemmaConfig", dict(num_key_value_heads=1, head_dim=16)),
    "OPT": ("OPTForCausalLM", "OPTConfig", dict(ffn_dim=MLP, word_embed_proj_dim=HIDDEN)),
    "Phi": ("PhiForCausalLM", "PhiConfig", {}),
    "Olmo": ("OlmoForCausalLM", "OlmoConfig", {}),
    "GPTNeoX": ("GPTNeoXForCausalLM", "GPTNeoXConfig", {}),
    "DistilBert": ("DistilBertModel", "DistilBertConfig", dict(dim=HIDDEN, hidden_dim=MLP, n_layers=LAYERS, n_heads=4)),
    "CLIPText": ("CLIPTextModel", "CLIPTextConfig", {}),
}


@pytest.mark.parametrize("name", sorted(OTHERS))
def test_other_architectures_prune_exactly(name):
    model_cls, config_cls, extra = OTHERS[name]
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS,
                  num_attention_heads=4)
    config_type = getattr(transformers, config_cls)
    config = config_type(**{**{k: v for k, v in common.items() if k in config_type().to_dict()}, **extra})
    model = getattr(transformers, model_cls)(config).eval()
    ids = torch.randint(3, VOCAB, (2, 10))
    pruned, report = fpgm_ext.prune(model, (ids,), rate_dist=RATE)
    assert report.tracer == "structure" and report.params_after < report.params_before
    masked = zero_pruned(copy.deepcopy(model), report.plan)
    key = "logits" if "ForCausalLM" in model_cls else "last_hidden_state"
    with torch.no_grad():
        torch.testing.assert_close(pruned(ids)[key], masked(ids)[key], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["Llama", "GPT2"])
def test_mlp_only_loads_with_plain_from_pretrained(kind, tmp_path):
    """heads=False: the configs that cannot say pruned heads (Llama's validation, GPT-2's head
    width from the hidden size) say pruned MLPs."""
    if kind == "Llama":
        model = _decoder("Llama", 8, 2).eval()
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=8, n_inner=MLP, bos_token_id=1,
            eos_token_id=2)).eval()
    pruned, report = ft.prune(model, RATE, heads=False)
    assert all(g["kept"] is None for g in report.groups if "attn" in g["producers"][0])
    assert ft.save(pruned, tmp_path, report) == "config"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, VOCAB, (1, 8))
    masked = zero_pruned(copy.deepcopy(model), report.plan)
    greedy = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        assert torch.equal(reloaded.generate(ids, **greedy), masked.generate(ids, **greedy))
