#!/usr/bin/env bash
# The prepared GPU check, for a machine with a GPU and torch already installed (H100/H200:
# torch 2.11 on Python 3.12, nvcc 13.0, no network). In a few minutes:
#   1. builds the extension from source with its CUDA kernels
#      (pip install --no-build-isolation --no-deps -e ., FPGM_EXT_CUDA=1,
#       TORCH_CUDA_ARCH_LIST=9.0) and checks the CUDA kernels are in it;
#   2. runs the CUDA tests (pytest -m cuda: the 'cuda' params of the parity tests and
#      tests/test_cuda.py);
#   3. with CuPy installed (else skipped, said in one line), tests the CuPy backend: its
#      NVRTC compile and parity tests (tests/test_cupy_backend.py), then the CUDA parity
#      tests of tests/test_distance.py and tests/test_gather.py once more with
#      FPGM_EXT_BACKEND=cupy, which puts the CuPy backend on the CUDA key of torch.ops.fpgm;
#   4. runs the GPU benchmarks (bench/gpu_bench.py, with its cupy/compiled column), whose
#      table is printed last.
# Exit status: non-zero if the build, a test or a benchmark's correctness check failed.
#
#   bash bench/gpu_check.sh         # on the GPU machine
#   bash bench/gpu_check.sh --dry   # anywhere, no GPU: syntax, and the benchmark logic on
#                                   # the CPU with tiny sizes; exits 0 when all is well
# Environment: PYTHON (default: .venv/bin/python if present, else python3), CUDA_HOME
# (default /usr/local/cuda), TORCH_CUDA_ARCH_LIST (default 9.0), MAX_JOBS (default nproc),
# OUT (a folder: when set, this script's whole output and the build, test and benchmark
# logs are also written there, so they come back from a remote run).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
step() { echo; echo "=== [$((SECONDS - start))s] $*"; }
LOGDIR="${OUT:-${TMPDIR:-/tmp}}"
if [[ -n "${OUT:-}" ]]; then
  mkdir -p "$OUT"
  exec > >(tee "$OUT/gpu_check.log") 2>&1
fi

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=$(command -v python3 || command -v python); fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # bench/gpu_bench.py imports fpgm_ext

# What the build and the tests need, said in one place before minutes go into a build:
# Python headers, ninja (parallel nvcc), pytest, numpy, scipy; cupy (optional) is reported only.
preflight() {
  "$PYTHON" - <<'PREFLIGHT'
import importlib.util, os, shutil, sys, sysconfig
missing = []
headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
if not os.path.exists(headers):
    missing.append(f"the Python headers ({headers}; e.g. apt install python3-dev)")
for module in ("torch", "pytest", "numpy", "scipy"):
    if importlib.util.find_spec(module) is None:
        missing.append(module)
if shutil.which("ninja") is None and importlib.util.find_spec("ninja") is None:
    missing.append("ninja (without it nvcc compiles the .cu files one by one)")
cupy = "absent (optional: pip install cupy-cuda13x for the CuPy backend column)"
if importlib.util.find_spec("cupy") is not None:
    try:
        import cupy as _cupy
        cupy = _cupy.__version__
    except Exception as exc:  # installed but broken (e.g. no CUDA libraries): said, not fatal
        cupy = f"present but not importable ({type(exc).__name__}: {exc})"
print("preflight: python", sys.version.split()[0], "| cupy", cupy)
if missing:
    print("MISSING: " + "; ".join(missing))
    sys.exit(1)
print("preflight: ok")
PREFLIGHT
}

if [[ "${1:-}" == "--dry" ]]; then
  step "dry run: preflight"
  preflight || exit 1
  step "dry run: syntax of this script and of the Python it runs"
  bash -n "$0" || exit 1
  "$PYTHON" - bench/gpu_bench.py tests/test_cuda.py $(ls tests/test_cupy_backend.py 2>/dev/null) <<'EOF' || exit 1
import ast, sys
for path in sys.argv[1:]:
    ast.parse(open(path).read(), path)
    print("ok", path)
EOF
  step "dry run: the benchmark logic on the CPU, tiny sizes"
  "$PYTHON" bench/gpu_bench.py --dry || exit 1
  exit 0
fi

step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
"$CUDA_HOME/bin/nvcc" --version | tail -n 1
"$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, \
'| CUDA', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"

step "preflight"
preflight || exit 1

step "build: pip install --no-build-isolation --no-deps -e . (FPGM_EXT_CUDA=1)"
log="$LOGDIR/fpgm_ext_gpu_build.$$.log"
if ! FPGM_EXT_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PYTHON" -m pip install -v --no-build-isolation --no-deps -e . >"$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" | tail -n 60
  echo "BUILD FAILED (log: $log)"
  exit 1
fi
sed -n '/fpgm_ext build configuration/,/sources/p' "$log" | head -n 8
grep -E "(distance|gather)\.cu.*(warning|error)" "$log" | head -n 10
"$PYTHON" -c "
import fpgm_ext, torch
info = fpgm_ext.backend_info()
print('backend:', info['devices'], '| arch list:', info['build'].get('cuda_arch_list'))
assert info['build'].get('with_cuda'), 'the library was built without its CUDA kernels'
assert torch._C._dispatch_has_kernel_for_dispatch_key('fpgm::distance_scores', 'CUDA')
" || { echo "CUDA KERNELS MISSING"; exit 1; }

step "CUDA tests: pytest tests -m cuda"
tests_rc=0
timeout 300 "$PYTHON" -m pytest tests -m cuda --ignore=tests/test_cupy_backend.py -q -p no:cacheprovider -rfE --tb=short \
  -o addopts="" --durations=5 >"$log.tests" 2>&1 || tests_rc=$?
tail -n 40 "$log.tests"

step "CuPy backend tests: tests/test_cupy_backend.py, then the CUDA parity tests with FPGM_EXT_BACKEND=cupy"
cupy_rc=0
if ! "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('cupy') is None)"; then
  echo "skipped: cupy is not installed (optional: pip install cupy-cuda13x)"
else
  timeout 150 "$PYTHON" -m pytest tests/test_cupy_backend.py -q -p no:cacheprovider -rfE --tb=short \
    -o addopts="" --durations=5 >"$log.cupy" 2>&1 || cupy_rc=$?
  tail -n 40 "$log.cupy"
  # Forced, the CuPy backend serves torch.ops.fpgm's CUDA key; if it cannot, fpgm_ext warns and
  # keeps the compiled kernels, and these tests would pass without testing it: checked first.
  echo "--- FPGM_EXT_BACKEND=cupy pytest -m cuda tests/test_distance.py tests/test_gather.py"
  if FPGM_EXT_BACKEND=cupy "$PYTHON" -c "
import fpgm_ext
served = fpgm_ext.backend_info()['devices']['cuda']
print('CUDA key served by:', served)
assert served.startswith('cupy'), 'FPGM_EXT_BACKEND=cupy did not put the CuPy backend on the CUDA key'
"; then
    dispatch_rc=0
    FPGM_EXT_BACKEND=cupy timeout 180 "$PYTHON" -m pytest tests/test_distance.py tests/test_gather.py -m cuda \
      -q -p no:cacheprovider -rfE --tb=short -o addopts="" --durations=5 >"$log.cupy_dispatch" 2>&1 || dispatch_rc=$?
    tail -n 40 "$log.cupy_dispatch"
  else
    dispatch_rc=1
  fi
  [[ $cupy_rc -ne 0 ]] || cupy_rc=$dispatch_rc
fi

step "GPU benchmarks: bench/gpu_bench.py"
bench_rc=0
timeout 240 "$PYTHON" bench/gpu_bench.py 2>&1 | tee "$LOGDIR/gpu_bench.txt"
bench_rc=${PIPESTATUS[0]}
echo "[$((SECONDS - start))s] tests rc=$tests_rc, cupy tests rc=$cupy_rc, bench rc=$bench_rc (table above)" >&2
[[ $tests_rc -eq 0 && $cupy_rc -eq 0 && $bench_rc -eq 0 ]]
