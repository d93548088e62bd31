"""pytest-benchmark suites on the CPU: fpgm_ext against the ways FPGM scores are computed
elsewhere (docs/design.md, "The algorithm": peers), in groups that share one input.

    pytest bench/ --benchmark-only                   # everything (a few minutes on 2 cores)
    pytest bench/ --benchmark-only -k "scores and l2"
    pytest bench/ --benchmark-only --benchmark-group-by=group --benchmark-sort=mean

Each benchmark first checks its result against fpgm_ext's (so a baseline that computes
something else cannot win), then times it. The slow baselines (scipy float64, the
per-filter loops) run a fixed, small number of rounds. The ratio table with targets is
``python -m bench.report``.
"""
import numpy as np
import pytest
import torch

import fpgm_ext
from bench import baselines as B
from bench import shapes as S

METRICS = ["l2", "l1", "cos"]
SLOW = {"scipy", "nni_loop", "paddleslim_loop"}
SLOW_ROUNDS = 2


def _inputs(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _score_impls(metric):
    """name -> (callable on F, result converter to float64 numpy)."""
    impls = {
        "fpgm_ext": lambda f: fpgm_ext.distance_scores(f, metric),
        "torch": lambda f: B.torch_baseline(f, metric),   # cdist, or normalise + Gram for cos
        "scipy": lambda f: B.scipy_official(f, metric),
    }
    if metric in ("l2", "l1"):
        impls["nni_loop"] = lambda f: B.nni_loop(f, metric)
        impls["paddleslim_loop"] = lambda f: B.paddleslim_loop(f.numpy(), metric)
    return impls


def _np(x):
    return x.detach().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def _run(benchmark, fn, slow):
    if slow:
        return benchmark.pedantic(fn, rounds=SLOW_ROUNDS, iterations=1, warmup_rounds=0)
    return benchmark(fn)


def test_shapes_are_resnets():
    S.check()


SCORE_CASES = [(m, n, d, impl) for (n, d) in S.SCORE_SHAPES for m in METRICS
               for impl in _score_impls(m)]


@pytest.mark.parametrize("metric,n,d,impl", SCORE_CASES,
                         ids=[f"{m}-{n}x{d}-{i}" for m, n, d, i in SCORE_CASES])
def test_scores(benchmark, metric, n, d, impl):
    benchmark.group = f"scores {metric} N={n} D={d}"
    f = _inputs(n, d)
    fn = _score_impls(metric)[impl]
    ours = _np(fpgm_ext.distance_scores(f, metric))
    got = _np(fn(f))
    np.testing.assert_allclose(got, ours, rtol=1e-3 if metric == "cos" else 1e-4)
    _run(benchmark, lambda: fn(f), impl in SLOW)


@pytest.mark.parametrize("n,d", S.SCORE_SHAPES, ids=[f"{n}x{d}" for n, d in S.SCORE_SHAPES])
def test_scores_gram_floor(benchmark, n, d):
    """F @ F.T on the same input: the machine's matrix rate (the l2/cos floor is half)."""
    benchmark.group = f"scores l2 N={n} D={d}"
    benchmark.extra_info["flop"] = 2 * n * n * d
    f = _inputs(n, d)
    benchmark(B.gram, f)


MODELS = {"resnet56": S.resnet56_convs, "resnet50": S.resnet50_convs}
MULTI_IMPLS = {
    "fpgm_ext": lambda ws: fpgm_ext.distance_scores_multi(ws),
    "torch_cdist_loop": lambda ws: B.cdist_per_layer(ws),
    "scipy": lambda ws: [B.scipy_official(B.flatten(w)) for w in ws],
    "nni_loop": lambda ws: [B.nni_loop(w) for w in ws],
}
# The per-filter loop over all of ResNet-50 takes minutes (about 150 s on 2 cores): ResNet-56 only.
MULTI_CASES = [(m, i) for m in MODELS for i in MULTI_IMPLS
               if not (m == "resnet50" and i == "nni_loop")]


@pytest.mark.parametrize("model,impl", MULTI_CASES, ids=[f"{m}-{i}" for m, i in MULTI_CASES])
def test_multi(benchmark, model, impl):
    benchmark.group = f"distance_scores_multi {model} ({len(MODELS[model]())} convs)"
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(s, generator=g) for s in MODELS[model]()]
    fn = MULTI_IMPLS[impl]
    ours = fpgm_ext.distance_scores_multi(ws)
    for a, b in zip(fn(ws), ours):
        np.testing.assert_allclose(_np(a), _np(b), rtol=1e-4)
    slow = impl in SLOW and model == "resnet50"
    if slow:
        benchmark.pedantic(fn, args=(ws,), rounds=1, iterations=1, warmup_rounds=0)
    else:
        benchmark(fn, ws)


@pytest.mark.parametrize("impl", ["fpgm_ext", "index_select_loop"])
def test_gather_resnet50_plan(benchmark, impl):
    tensors, dims, indices = S.make_prune_inputs()
    benchmark.group = f"gather_channels resnet50 prune plan ({len(tensors)} tensors, 60% kept)"
    fn = fpgm_ext.gather_channels if impl == "fpgm_ext" else B.index_select_loop
    for a, b in zip(fn(tensors, dims, indices), B.index_select_loop(tensors, dims, indices)):
        assert a.is_contiguous() and torch.equal(a, b)
    benchmark(fn, tensors, dims, indices)


def test_report_replaces_only_its_section(tmp_path):
    """bench/report.py --write rewrites the text between its markers and nothing else
    (through bench/harness.py's writer, which every script's --write uses)."""
    from bench.harness import write_results
    from bench.report import BEGIN, END

    path = tmp_path / "RESULTS.md"
    write_results(f"{BEGIN}\nfirst\n{END}", BEGIN, END, path)  # no file yet: created with the section
    text = path.read_text()
    assert text.startswith("# ") and "first" in text
    path.write_text(text + "\n## Pruning report\n\nkept by another script\n")
    write_results(f"{BEGIN}\nsecond\n{END}", BEGIN, END, path)
    text = path.read_text()
    assert "second" in text and "first" not in text
    assert "kept by another script" in text and text.count(BEGIN) == 1 == text.count(END)
