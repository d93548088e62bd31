"""Attention heads (fpgm_ext/pruning/graph/heads.py): whole heads pruned from the q / k / v
rows of the input projection(s) and the columns of the output projection, the reshapes'
head counts rewritten in the pruned model's graph (a PrunedGraph). Exact by the plan and,
independently, by value; patterns that do not keep heads apart are left alone by name."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import fpgm_ext
from fpgm_ext.pruning import PrunedGraph, apply_plan
from fpgm_ext.pruning.plan import Plan
from masking import assert_exact_by_value
from test_prune import assert_exact


class Attention(nn.Module):
    """timm's Attention, with the spellings it and its relatives use: one qkv Linear or
    q and kv Linears, unbind or indexing, LayerNorm on q and k, flatten or reshape back
    (a constant width or one read from the input's shape)."""

    def __init__(self, dim=48, heads=6, qk_norm=True, split_kv=False, merge="reshape", attend="sdpa"):
        super().__init__()
        self.heads, self.head_dim, self.split_kv, self.merge = heads, dim // heads, split_kv, merge
        self.attend = attend   # or spelled out: "manual", "masked" (a mask shared by the heads)
        self.softmax = nn.Softmax(dim=-1)
        self.drop = nn.Dropout(0.1)
        self.register_buffer("mask", torch.randn(7, 7))
        if split_kv:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(dim, 2 * dim)
        else:
            self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        if self.split_kv:
            q = self.q(x).reshape(B, N, self.heads, self.head_dim).transpose(1, 2)
            kv = self.kv(x).reshape(B, N, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            k, v = kv[0], kv[1]
        else:
            qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.attend == "sdpa":
            x = F.scaled_dot_product_attention(q, k, v)
        else:   # timm's non-fused path, DeiT's and most hand-written attention
            attn = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
            if self.attend == "masked":
                attn = self.softmax(attn + self.mask)
            else:
                attn = attn.softmax(dim=-1)
            x = torch.matmul(self.drop(attn), v)
        x = x.transpose(1, 2)
        if self.merge == "flatten":
            x = x.flatten(2)
        elif self.merge == "shape":
            x = x.reshape(B, N, C)
        else:
            x = x.reshape(B, N, self.heads * self.head_dim)
        return self.proj(x)


class Tokens(nn.Module):
    """Tokens in, a pooled head out: the heads are pruned, and so is the token stream
    (no LayerNorm on it: a residual sum of token layouts, a mean over the tokens)."""

    def __init__(self, **kw):
        super().__init__()
        self.embed = nn.Linear(10, 48)
        self.attn = Attention(**kw)
        self.head = nn.Linear(48, 5)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(x)
        return self.head(x.mean(1))

    def embed_qkv(self, x, heads=None):
        """The embedded tokens, and their q, k and v in heads as timm spells them (``heads``:
        the head count from the width, else the attention's own)."""
        a = self.attn
        x = self.embed(x)
        B, N, C = x.shape
        h = a.heads if heads is None else heads(C)
        q, k, v = a.qkv(x).reshape(B, N, 3, h, a.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return x, q, k, v


def _prune(model, x, rate=0.4):
    torch.manual_seed(0)
    result = fpgm_ext.prune(model, x, rate_dist=rate)
    return result.model, result.report


@pytest.mark.parametrize("kw", [{}, {"qk_norm": False}, {"split_kv": True}, {"merge": "flatten"},
                                {"merge": "shape"}, {"attend": "manual"}, {"attend": "masked", "split_kv": True}],
                         ids=["qkv", "no_qk_norm", "q_kv", "flatten", "shape", "manual", "manual_masked"])
def test_heads_pruned_exactly(kw):
    torch.manual_seed(0)
    model = Tokens(**kw).eval()
    x = torch.randn(2, 7, 10)
    pruned, report = _prune(model, x)
    assert isinstance(pruned, PrunedGraph)
    attn = pruned.get_submodule("attn")
    if kw.get("split_kv"):
        assert (attn.q.out_features, attn.kv.out_features) == (32, 64)   # 6 heads of 8 -> 4
    else:
        assert attn.qkv.out_features == 3 * 32
    assert attn.proj.in_features == 32 and attn.proj.out_features == pruned.embed.out_features < 48
    assert_exact(model, pruned, report.plan, x)
    assert_exact_by_value(model, pruned, x)
    pruned.train()   # the training-mode trace has the new head count too
    pruned(x)


def test_heads_plan_replays_on_a_fresh_instance(tmp_path):
    torch.manual_seed(0)
    model = Tokens().eval()
    x = torch.randn(2, 7, 10)
    pruned, report = _prune(model, x)
    path = tmp_path / "plan.json"
    report.plan.save(path)
    heads = {k: v for k, v in Plan.load(path).graph.items() if v["op"] in ("heads", "merge_heads")}
    assert sorted(v["op"] for v in heads.values()) == ["heads", "merge_heads"]
    torch.manual_seed(1)
    fresh = apply_plan(Tokens().eval(), path)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), pruned(x))


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "spelled_out"])
def test_timm_vit_heads(fused):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, depth=2).eval()
    for m in model.modules():   # timm's non-fused path: q @ k^T, its mask helpers, attn @ v
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused
    for p in model.parameters():   # timm zero-initialises the classifier: draw it
        if p.dim() == 2 and float(p.detach().abs().max()) == 0:
            nn.init.normal_(p.detach())
    x = torch.randn(2, 3, 32, 32)
    pruned, report = _prune(model, x, rate=0.34)   # 6 heads: 2 go
    for b in pruned.blocks:
        assert b.attn.qkv.out_features == 3 * 4 * 64 and b.attn.proj.in_features == 4 * 64
    assert_exact_by_value(model, pruned, x)


class PerHeadMask(Tokens):
    def __init__(self):
        super().__init__()
        self.register_buffer("bias", torch.randn(1, 6, 7, 7))   # a relative position bias

    def forward(self, x):
        x, q, k, v = self.embed_qkv(x)
        B, N, C = x.shape
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.bias).transpose(1, 2).reshape(B, N, C)
        return self.head((x + self.attn.proj(y)).mean(1))


class ManualPerHeadBias(PerHeadMask):
    def forward(self, x):
        x, q, k, v = self.embed_qkv(x)
        B, N, C = x.shape
        attn = (q @ k.transpose(-2, -1) + self.bias).softmax(-1)
        return self.head((x + self.attn.proj((attn @ v).transpose(1, 2).reshape(B, N, C))).mean(1))


class RuntimeHeads(Tokens):
    def forward(self, x):
        # the head count read from the input: no constant to rewrite
        x, q, k, v = self.embed_qkv(x, heads=lambda width: width // self.attn.head_dim)
        B, N, C = x.shape
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
        return self.head((x + self.attn.proj(y)).mean(1))


class HeadsMixed(Tokens):
    def forward(self, x):
        x, q, k, v = self.embed_qkv(x)
        y = F.scaled_dot_product_attention(q, k, v)
        y = y.sum(1)   # the heads summed: not separable
        return self.head((x + self.attn.proj(y.repeat(1, 1, self.attn.heads))).mean(1))


@pytest.mark.parametrize("cls,reason", [
    (PerHeadMask, "an attention mask per head"),
    (ManualPerHeadBias, "add on attention heads"),
    (RuntimeHeads, "a head count computed at run time"),
    (HeadsMixed, "on attention heads"),
])
def test_heads_left_alone_by_name(cls, reason):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(2, 7, 10)
    pruned, report = _prune(model, x)
    assert pruned.get_submodule("attn.qkv").out_features == 3 * 48
    assert any(reason in g["left_alone"] for g in report.left_alone), report.left_alone


class SplitThenHeads(nn.Module):
    """A channel split (a graph rewrite of its sizes) and attention heads (a rewrite of the
    head count) in one model: both edits in one plan."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.embed = nn.Linear(16, 48)
        self.attn = Attention()
        self.head = nn.Linear(48, 5)

    def forward(self, x):
        a, b = self.stem(x).split(8, dim=1)
        x = torch.cat([self.branch(a), b], dim=1).flatten(2).transpose(1, 2)
        x = self.embed(x)
        x = x + self.attn(x)
        return self.head(x.mean(1))


def test_split_and_heads_in_one_plan():
    torch.manual_seed(0)
    model = SplitThenHeads().eval()
    x = torch.randn(2, 3, 4, 4)
    pruned, report = _prune(model, x)
    ops = sorted({e["op"] for e in report.plan.graph.values()})
    assert "split" in ops and "heads" in ops and "merge_heads" in ops, ops
    assert_exact(model, pruned, report.plan, x)
    assert_exact_by_value(model, pruned, x)
