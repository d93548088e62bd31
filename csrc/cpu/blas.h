// The Gram products of the CPU kernels straight into the BLAS that torch itself uses,
// when torch exports it (`sgemm_` / `dgemm_`: MKL or OpenBLAS builds): a small product
// (a CIFAR ResNet's 64 x 576 layers) then costs no views and no dispatch, which
// `at::mm_out` spends per call. The symbols are weak: where torch does not export them,
// gemm_abt() returns false and the caller uses at::mm_out; the same BLAS either way.
#pragma once

#include <cstdint>

namespace fpgm::blas {

// c[m, n] = a[m, k] b[n, k]^T, all row-major and contiguous. False if no BLAS symbol.
bool gemm_abt(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c);
bool gemm_abt(int64_t m, int64_t n, int64_t k, const double* a, const double* b, double* c);

}  // namespace fpgm::blas
