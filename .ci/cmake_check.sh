#!/usr/bin/env bash
# Builds the operators with CMake (CMakeLists.txt), runs the C++ test with ctest, then
# loads the CMake-built library into Python (FPGM_EXT_LIBRARY) and checks one op.
#
#   .ci/cmake_check.sh [PYTHON]      PYTHON: the interpreter of a venv with torch (default
#                                    `python`); cmake/ctest/ninja next to it are preferred.
#
# Environment:
#   FPGM_EXT_CMAKE_BUILD_DIR   build directory (default ${TMPDIR:-/tmp}/fpgm-ext-cmake-check,
#                              wiped first so every run is a clean build)
#   FPGM_EXT_CMAKE_ARGS        extra configure arguments, e.g. "-DWITH_CUDA=ON"
#   FPGM_EXT_CMAKE_JOBS        parallel build jobs (default 2)
set -euo pipefail

PY_ARG="${1:-python}"
PY="$(command -v "$PY_ARG" || true)"
if [[ -z "$PY" ]]; then
  echo "cmake_check: Python interpreter '$PY_ARG' not found" >&2
  exit 2
fi
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${FPGM_EXT_CMAKE_BUILD_DIR:-${TMPDIR:-/tmp}/fpgm-ext-cmake-check}"
JOBS="${FPGM_EXT_CMAKE_JOBS:-2}"

# Tools installed in the venv (pip's cmake and ninja) come first; a venv's bin directory
# is where its interpreter lives (not resolving the symlink on purpose).
export PATH="$(dirname "$PY"):$PATH"
for tool in cmake ctest; do
  if ! command -v "$tool" >/dev/null; then
    echo "cmake_check: '$tool' not found (pip install cmake, or install it system-wide)" >&2
    exit 2
  fi
done
GENERATOR=()
if command -v ninja >/dev/null; then
  GENERATOR=(-G Ninja)
fi

TORCH_PREFIX="$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
echo "cmake_check: python  $PY"
echo "cmake_check: cmake   $(command -v cmake) ($(cmake --version | head -n1))"
echo "cmake_check: torch   $TORCH_PREFIX"
echo "cmake_check: build   $BUILD_DIR (${GENERATOR[*]:-default generator}, $JOBS jobs)"

case "$BUILD_DIR" in
  "$ROOT"|"$ROOT"/*) echo "cmake_check: refusing to build inside the repository" >&2; exit 2 ;;
esac
rm -rf "$BUILD_DIR"
mkdir -p "$BUILD_DIR"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# Word splitting of FPGM_EXT_CMAKE_ARGS is intended (several -D options).
# shellcheck disable=SC2206
EXTRA_ARGS=(${FPGM_EXT_CMAKE_ARGS:-})

t0="$(now)"
cmake -S "$ROOT" -B "$BUILD_DIR" "${GENERATOR[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" "${EXTRA_ARGS[@]}"
t1="$(now)"
cmake --build "$BUILD_DIR" --parallel "$JOBS"
t2="$(now)"
(cd "$BUILD_DIR" && ctest --output-on-failure)
t3="$(now)"

LIB="$BUILD_DIR/libfpgm_ext_ops.so"
if [[ ! -f "$LIB" ]]; then
  echo "cmake_check: $LIB was not built" >&2
  exit 1
fi

# From the repository root, `import fpgm_ext` imports the source tree (intended). With
# FPGM_EXT_LIBRARY set, fpgm_ext/_backend.py loads the CMake library and never imports the
# setup.py extension fpgm_ext/_C*.so, even where that one has been built.
(cd "$ROOT" && env -u FPGM_EXT_BACKEND FPGM_EXT_LIBRARY="$LIB" "$PY" - <<'EOF'
import os
import sys

import torch

import fpgm_ext

lib = os.environ["FPGM_EXT_LIBRARY"]
info = fpgm_ext.backend_info()
assert info["backend"] == "compiled", f"CMake library not loaded: {info['reason']}"
assert info["library"] == lib, f"loaded {info['library']}, expected {lib}"
assert info["build"]["build_system"] == "cmake", info["build"]
assert "fpgm_ext._C" not in sys.modules, "the setup.py extension was imported too"

torch.manual_seed(0)
w = torch.randn(64, 3, 3, 3)
got = torch.ops.fpgm.distance_scores(w, "l2")
f = w.reshape(64, -1)
# torch.cdist(F, F).sum(1), computed in float64 without the mm shortcut as the reference.
want = torch.cdist(f.double(), f.double(), compute_mode="donot_use_mm_for_euclid_dist").sum(1)
assert got.dtype == torch.float32 and got.shape == (64,), (got.dtype, got.shape)
torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)
print(f"cmake_check: python smoke check passed ({lib}, build {info['build']})")
EOF
)
t4="$(now)"

echo "cmake_check: configure $(elapsed "$t0" "$t1") s, build $(elapsed "$t1" "$t2") s," \
  "ctest $(elapsed "$t2" "$t3") s, python smoke $(elapsed "$t3" "$t4") s"
echo "cmake_check: OK"
