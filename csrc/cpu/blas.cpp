// See blas.h.
#include "blas.h"

#include <climits>

extern "C" {
// Fortran BLAS, as torch's libtorch_cpu exports them (weak: absent symbols are null).
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace fpgm::blas {
namespace {

bool fits_int(int64_t m, int64_t n, int64_t k) {
  return m > 0 && n > 0 && k > 0 && m <= INT_MAX && n <= INT_MAX && k <= INT_MAX;
}

// Row-major c[m, n] = a[m, k] b[n, k]^T is column-major c^T[n, m] = (b^T)^T[n, k] a^T[k, m]:
// transa = 'T' on b (column-major k x n, ld k), transb = 'N' on a (column-major k x m).
template <typename T, typename Gemm>
bool call(Gemm gemm, int64_t m, int64_t n, int64_t k, const T* a, const T* b, T* c) {
  if (gemm == nullptr || !fits_int(m, n, k)) return false;
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const T one = 1, zero = 0;
  gemm("T", "N", &in, &im, &ik, &one, b, &ik, a, &ik, &zero, c, &in);
  return true;
}

}  // namespace

bool gemm_abt(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
  return call(sgemm_, m, n, k, a, b, c);
}

bool gemm_abt(int64_t m, int64_t n, int64_t k, const double* a, const double* b, double* c) {
  return call(dgemm_, m, n, k, a, b, c);
}

}  // namespace fpgm::blas
