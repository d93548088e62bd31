"""The CuPy backend (fpgm_ext.cupy_backend), without a GPU and on one.

- NVRTC: every kernel instance the backend can request compiles for sm_80 and sm_90
  (skipped only where CuPy is absent), the PTX fallback, the image cache, the sources as
  installed (setup.py's build_py copy) and in the sdist.
- The plan: fpgm_ext._C.plans, the one C++ planner, as the backend sees it.
- The backend's own Python path (checks, plan, table and argument bytes, launches by
  name) run on CPU tensors through the emulation of tests/emulation, against the float64
  oracle: everything but the CuPy driver calls.
- backend_info() naming CuPy, forced and not, and a broken CuPy falling back.
- On a GPU (marked cuda): the backend against the CPU and the compiled CUDA backend.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import emulation
import numpy as np
import oracle
import pytest
import torch

import fpgm_ext
from fpgm_ext.testing import metrics, random_filters, score_rtol

ROOT = Path(__file__).resolve().parents[1]
HAVE_CUPY = importlib.util.find_spec("cupy") is not None
needs_cupy = pytest.mark.skipif(not HAVE_CUPY, reason="CuPy is not installed")
# The planner lives in fpgm_ext._C: without the compiled module (the reference backend, a
# library loaded by FPGM_EXT_LIBRARY) there is nothing to plan with.
COMPILED = (fpgm_ext.backend_info()["backend"] == "compiled" and not os.environ.get("FPGM_EXT_LIBRARY"))
needs_planner = pytest.mark.skipif(not COMPILED, reason="needs fpgm_ext._C (the compiled module)")
# Packaging does not depend on the backend: checked once, not again in the fallback rerun.
once = pytest.mark.skipif(os.environ.get("FPGM_EXT_BACKEND") == "reference", reason="checked on the default run")

from fpgm_ext.cupy_backend.ops import SCALARS  # noqa: E402  (the element types as NVRTC spells them)


def _plans():
    from fpgm_ext import _C

    return _C.plans


def _all_instances():
    """Every kernel name the backend can request: 4 input types x (l1 or not) x (matrix or
    not), and gather."""
    plans = _plans()
    names = {plans.GATHER_KERNEL}
    for dtype, scalar in SCALARS.items():
        acc = "double" if dtype == torch.float64 else "float"
        for metric in ("l2", "l1", "cos"):
            for matrix in (False, True):
                names.update(plans.kernel_names(scalar, acc, plans.METRICS[metric], matrix).values())
    return sorted(names)


def _gen(*key) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(repr(key).encode()))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    from fpgm_ext.cupy_backend import nvrtc

    monkeypatch.setenv("FPGM_EXT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(nvrtc, "_memory", {})
    return tmp_path / "cache" / "nvrtc"


# ---------------------------------------------------------------- NVRTC


@needs_cupy
@needs_planner
@pytest.mark.parametrize("arch", [80, 90])
def test_every_instance_compiles_with_nvrtc(arch, cache_dir):
    from fpgm_ext.cupy_backend import nvrtc

    names = _all_instances()
    # 3 row kernels x 4 input types, tile and split_finish x 2 acc x (l1, matrix), finalize
    # x 2 acc, gather.
    assert len(names) == 3 * 4 + 2 * 2 * 4 + 2 + 1
    image = nvrtc.compile_kernels(names, arch)
    assert image.kind == "cubin" and image.data[:4] == b"\x7fELF"
    assert sorted(image.lowered) == names
    assert all(v.startswith("_Z") for v in image.lowered.values())
    assert len(set(image.lowered.values())) == len(names)


def test_architecture_choice():
    from fpgm_ext.cupy_backend.nvrtc import target

    assert target(90, [75, 80, 90, 100]) == ("--gpu-architecture=sm_90", "cubin")
    # A GPU newer than this NVRTC knows: PTX for the newest older architecture.
    assert target(95, [75, 80, 90]) == ("--gpu-architecture=compute_90", "ptx")
    with pytest.raises(RuntimeError, match="none at or below this GPU's sm_70"):
        target(70, [75, 80])


@needs_cupy
@needs_planner
def test_ptx_fallback_compiles(cache_dir):
    from cupy.cuda import nvrtc as cupy_nvrtc

    from fpgm_ext.cupy_backend import nvrtc

    supported = cupy_nvrtc.getSupportedArchs()
    unknown = next(a for a in range(max(supported) - 1, 0, -1) if a not in supported and a > min(supported))
    image = nvrtc.compile_kernels([_plans().GATHER_KERNEL, "fpgm::kernels::finalize_kernel<float>"], unknown)
    assert image.kind == "ptx" and image.data.endswith(b"\0") and b".entry" in image.data


@needs_cupy
@needs_planner
def test_image_cache(cache_dir, monkeypatch):
    from fpgm_ext.cupy_backend import nvrtc

    names = ["fpgm::kernels::finalize_kernel<double>"]
    first = nvrtc.compile_kernels(names, 90)
    assert len(list(cache_dir.glob("*.cubin"))) == 1
    assert nvrtc.compile_kernels(names, 90) is first  # in memory
    monkeypatch.setattr(nvrtc, "_memory", {})
    compiled = []
    real = nvrtc._compile
    monkeypatch.setattr(nvrtc, "_compile", lambda *a: compiled.append(1) or real(*a))
    assert nvrtc.compile_kernels(names, 90) == first and not compiled  # from disk
    # A damaged file is compiled again, never loaded.
    cubin = next(cache_dir.glob("*.cubin"))
    cubin.write_bytes(cubin.read_bytes()[:100])
    monkeypatch.setattr(nvrtc, "_memory", {})
    assert nvrtc.compile_kernels(names, 90) == first and compiled == [1]


@once
def test_sources_ship_in_the_package(tmp_path):
    """setup.py's build_py (what a wheel holds) copies the device code into the package
    with its relative layout; the backend finds it there before any checkout."""
    env = dict(os.environ, FPGM_EXT_CUDA="0")
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "-d", str(tmp_path)], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    shipped = tmp_path / "fpgm_ext" / "_device_code"
    kernels = sorted(p.name for p in (ROOT / "csrc" / "cuda" / "kernels").glob("*.cuh"))
    assert sorted(p.name for p in (shipped / "cuda" / "kernels").glob("*.cuh")) == kernels
    assert (shipped / "accuracy.h").read_bytes() == (ROOT / "csrc" / "accuracy.h").read_bytes()
    from fpgm_ext.cupy_backend import nvrtc

    original = nvrtc._PACKAGE
    try:
        nvrtc._PACKAGE = tmp_path / "fpgm_ext"
        assert nvrtc.kernels_dir() == shipped / "cuda" / "kernels"
        if HAVE_CUPY and COMPILED:
            nvrtc._memory.clear()
            os.environ["FPGM_EXT_CACHE_DIR"] = str(tmp_path / "cache")
            image = nvrtc.compile_kernels([_plans().GATHER_KERNEL], 90)
            assert image.kind == "cubin"
    finally:
        nvrtc._PACKAGE = original
        os.environ.pop("FPGM_EXT_CACHE_DIR", None)


@once
def test_sdist_ships_device_code(tmp_path):
    env = dict(os.environ, FPGM_EXT_CUDA="0")
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=ROOT, env=env,
                   check=True, capture_output=True)
    (archive,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {"/".join(n.split("/")[1:]) for n in tar.getnames()}
    for path in [*(ROOT / "csrc" / "cuda" / "kernels").glob("*.cuh"), ROOT / "csrc" / "accuracy.h",
                 ROOT / "csrc" / "device_plans.cpp"]:
        assert str(path.relative_to(ROOT)) in names


# ---------------------------------------------------------------- the plan


@needs_planner
@pytest.mark.parametrize("metric", ["l2", "l1", "cos"])
@pytest.mark.parametrize("matrix", [False, True])
def test_plan_steps(metric, matrix):
    plans = _plans()
    m = plans.METRICS[metric]
    names = plans.kernel_names("float", "float", m, matrix)
    # One layer with few filters and long rows: split-K on a GPU of 264 resident tile blocks.
    plan = plans.plan_distance([100, 7], [4608, 3], 4, m, 264)
    steps = plan.steps(m, matrix)
    kinds = [k for k, _, _ in steps]
    expected = ["row_stats"] + (["column_mean"] if metric != "l1" else []) + ["prepare_rows", "tile"]
    expected += ["split_finish"] + ([] if matrix else ["finalize"])
    assert kinds == expected and all(k in names for k in kinds)
    # The 100-filter layer's 3 tile pairs are split; the short-rowed one is not.
    assert plan.pairs == 3 and plan.parts > plan.pairs and plan.items == plan.parts + 1
    assert {k: (b, t) for k, b, t in steps}["row_stats"] == (107, 128)
    unsplit = plans.plan_distance([100, 7], [4608, 3], 4, m, 0)
    assert unsplit.pairs == 0 and "split_finish" not in [k for k, _, _ in unsplit.steps(m, matrix)]
    assert len(plan.table([1, 2], [3, 4])) == plan.table_bytes <= plan.total_bytes
    assert len(plan.args(4096, m, 4)) == plans.DISTANCE_ARGS_BYTES


@needs_planner
def test_plan_rejects_bad_input():
    plans = _plans()
    with pytest.raises(ValueError, match="n, d >= 1"):
        plans.plan_distance([3, 0], [4, 4], 4, 0)
    with pytest.raises(ValueError, match="one length"):
        plans.plan_distance([3], [4, 4], 4, 0)
    with pytest.raises(ValueError, match="unknown metric"):
        plans.plan_distance([3], [4], 4, 7)
    with pytest.raises(ValueError, match="acc_size"):
        plans.plan_distance([3], [4], 2, 0)
    with pytest.raises(ValueError, match="one input and one output"):
        plans.plan_distance([3, 2], [4, 4], 4, 0).table([1], [2])


# ------------------------------------------- the backend's Python path, emulated


@pytest.fixture(scope="module")
def emu_runtime(tmp_path_factory):
    if not COMPILED:
        pytest.skip("needs fpgm_ext._C (the compiled module)")
    if emulation.compiler() is None:
        pytest.skip("no C++ compiler")
    return emulation.EmuRuntime(emulation.Emulator(emulation.build(tmp_path_factory.mktemp("emu"))))


def _check_scores(got, weight, metric):
    ref = oracle.scores(weight, metric)
    assert got.dtype == (torch.float64 if weight.dtype == torch.float64 else torch.float32)
    got = got.double().numpy()
    err = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)
    rtol = score_rtol[weight.dtype]
    assert err.max() <= rtol, f"max relative error {err.max():.3g} > {rtol:g}"


@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("wave", [0, 64])
def test_scores_through_the_backend_path(emu_runtime, metric, dtype, wave):
    from fpgm_ext.cupy_backend import ops

    # wave 64: the one tile pair of this layer (D = 288, 18 steps of 16 columns) is split
    # in two (split-K, at least 8 steps a part).
    emu_runtime.wave = wave
    w = random_filters((40, 8, 6, 6), dtype=dtype, generator=_gen(metric, dtype, wave))
    emu_runtime.launched.clear()
    _check_scores(ops.distance_scores(emu_runtime, w, metric), w, metric)
    launched = [name for name, _, _ in emu_runtime.launched]
    assert ("split_finish" in " ".join(launched)) == (wave > 0)
    assert launched[0].startswith(f"fpgm::kernels::row_stats_kernel<{SCALARS[dtype]}, ")


@pytest.mark.parametrize("metric", metrics)
def test_multi_and_matrix_through_the_backend_path(emu_runtime, metric):
    from fpgm_ext.cupy_backend import ops

    emu_runtime.wave = 0
    layers = [random_filters(s, generator=_gen(metric, s)) for s in [(9, 4, 3, 3), (70, 20), (1, 5), (3, 2)]]
    for got, w in zip(ops.distance_scores_multi(emu_runtime, layers, metric), layers):
        _check_scores(got, w, metric)
    w = layers[1]
    ref = oracle.matrix(w, metric)
    got = ops.distance_matrix(emu_runtime, w, metric).double().numpy()
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    batch = random_filters((3, 17, 6), dtype=torch.float64, generator=_gen(metric, "batch"))
    got = ops.distance_matrix(emu_runtime, batch, metric)
    assert got.shape == (3, 17, 17) and got.dtype == torch.float64
    for b in range(3):
        ref = oracle.matrix(batch[b], metric)
        assert np.abs(got[b].numpy() - ref).max() <= 1e-12 * np.abs(ref).max()
    assert ops.distance_scores_multi(emu_runtime, [], metric) == []


def test_non_contiguous_and_nan_through_the_backend_path(emu_runtime):
    from fpgm_ext.cupy_backend import ops

    emu_runtime.wave = 0
    w = random_filters((30, 8, 3, 3), layout="channels_last", generator=_gen("nc"))
    _check_scores(ops.distance_scores(emu_runtime, w, "l2"), w, "l2")
    t = random_filters((12, 20), generator=_gen("t")).t()  # [20, 12], not contiguous
    _check_scores(ops.distance_scores(emu_runtime, t, "l1"), t, "l1")
    bad = random_filters((10, 4), generator=_gen("nan"))
    bad[3, 1] = float("nan")
    good = random_filters((6, 4), generator=_gen("good"))
    out = ops.distance_scores_multi(emu_runtime, [bad, good], "l2")
    assert torch.isnan(out[0]).all() and torch.isfinite(out[1]).all()  # as the compiled CUDA backend


def test_gather_through_the_backend_path(emu_runtime):
    from fpgm_ext.cupy_backend import ops

    g = _gen("gather")
    tensors = [torch.randn(8, 5, 3, 3, generator=g), torch.randn(8, generator=g).double(),
               torch.randn(4, 8, 2, generator=g).half(), torch.randn(6, 8, generator=g).t(),
               torch.randn(0, 3, generator=g)]
    dims = [0, 0, 1, -1, 1]
    indices = [torch.tensor([7, 0, 3]), torch.tensor([1, 1, 6], dtype=torch.int32),
               torch.tensor([5, 2]), torch.tensor([0, 5]), torch.tensor([2, 0])]
    got = ops.gather_channels(emu_runtime, tensors, dims, indices)
    for out, t, d, i in zip(got, tensors, dims, indices):
        assert torch.equal(out, t.index_select(d, i.long()))
    assert ops.gather_channels(emu_runtime, [], [], []) == []
    emu_runtime.launched.clear()
    empty = ops.gather_channels(emu_runtime, [torch.randn(4, 3)], [0], [torch.tensor([], dtype=torch.long)])
    assert empty[0].shape == (0, 3) and emu_runtime.launched == []  # no empty launch


@pytest.mark.parametrize("call", [
    lambda ops, rt: ops.distance_scores(rt, torch.zeros(3, 4, dtype=torch.int32), "l2"),
    lambda ops, rt: ops.distance_scores(rt, torch.randn(0, 4), "l2"),
    lambda ops, rt: ops.distance_scores(rt, torch.randn(3, 4), "l3"),
    lambda ops, rt: ops.distance_scores_multi(rt, [torch.randn(3, 4), torch.randn(3, 4).double()], "l2"),
    lambda ops, rt: ops.gather_channels(rt, [torch.randn(3, 4)], [2], [torch.tensor([0])]),
    lambda ops, rt: ops.gather_channels(rt, [torch.randn(0, 4)], [0], [torch.tensor([0])]),
])
def test_bad_input_fails_as_the_compiled_ops(emu_runtime, call):
    """The backend runs the shared checks: the same exception type and message as the
    compiled CPU op on the same input."""
    from fpgm_ext.cupy_backend import ops

    class Same:
        def __getattr__(self, name):
            return lambda rt, *args: getattr(torch.ops.fpgm, name)(*args)

    with pytest.raises(Exception) as ours:
        call(ops, emu_runtime)
    with pytest.raises(Exception) as compiled:
        call(Same(), emu_runtime)
    assert isinstance(ours.value, (ValueError, IndexError))
    assert isinstance(compiled.value, type(ours.value)) and str(ours.value) in str(compiled.value)


# ---------------------------------------------------------------- backend_info


def _devices_in_subprocess(tmp_path, **env):
    code = "import json, fpgm_ext; print(json.dumps(fpgm_ext.backend_info()['devices']))"
    proc = subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, env={**os.environ, **env}, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@needs_cupy
@needs_planner
def test_backend_info_names_cupy(tmp_path):
    devices, _ = _devices_in_subprocess(tmp_path, FPGM_EXT_BACKEND="cupy")
    assert devices["cpu"] == "compiled"
    assert devices["cuda"].startswith("cupy (forced by FPGM_EXT_BACKEND=cupy; CuPy ")
    devices, _ = _devices_in_subprocess(tmp_path)
    if fpgm_ext.backend_info()["build"].get("with_cuda"):
        assert devices["cuda"].startswith("compiled")
    else:  # a CPU-only build (FPGM_EXT_CUDA=0) with CuPy: CUDA is served by CuPy
        assert devices["cuda"].startswith("cupy (library built without CUDA kernels; CuPy ")


@needs_planner
def test_broken_cupy_falls_back_with_a_reason(tmp_path):
    fake = tmp_path / "fake" / "cupy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('libcudart.so.13: cannot open shared object')\n")
    path = f"{fake.parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"
    devices, stderr = _devices_in_subprocess(tmp_path, FPGM_EXT_BACKEND="cupy", PYTHONPATH=path)
    assert "CuPy cannot run NVRTC: ImportError: libcudart.so.13" in devices["cuda"]
    assert not devices["cuda"].startswith("cupy")
    assert "FPGM_EXT_BACKEND=cupy, but CuPy cannot run NVRTC" in stderr


# ---------------------------------------------------------------- on a GPU


@needs_cupy
@needs_planner
@pytest.mark.cuda
@pytest.mark.parametrize("metric", metrics)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_gpu_parity_with_cpu_and_compiled(metric, dtype):
    from fpgm_ext import cupy_backend
    from fpgm_ext.cupy_backend import ops

    rt = cupy_backend.runtime()
    g = _gen("gpu", metric, dtype)
    layers = [random_filters(s, dtype=dtype, generator=g) for s in [(64, 64, 3, 3), (512, 4608), (10, 3)]]
    cuda = [w.cuda() for w in layers]
    got = ops.distance_scores_multi(rt, cuda, metric)
    for out, w in zip(got, layers):
        _check_scores(out.cpu(), w, metric)
        cpu = torch.ops.fpgm.distance_scores(w, metric).double()
        assert torch.allclose(out.cpu().double(), cpu, rtol=score_rtol[dtype], atol=0)
    if fpgm_ext.backend_info()["build"].get("with_cuda"):
        compiled = torch.ops.fpgm.distance_scores_multi(cuda, metric)
        for a, b in zip(got, compiled):
            assert torch.allclose(a.double(), b.double(), rtol=1e-6 if dtype != torch.float64 else 1e-12)
    m = ops.distance_matrix(rt, cuda[2], metric).cpu().double().numpy()
    ref = oracle.matrix(layers[2], metric)
    assert np.abs(m - ref).max() <= 1e-5 * np.abs(ref).max()
    idx = torch.tensor([5, 1, 2], device="cuda")
    (out,) = ops.gather_channels(rt, [cuda[0]], [1], [idx])
    assert torch.equal(out, cuda[0].index_select(1, idx))
    torch.cuda.synchronize()
