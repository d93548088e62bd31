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
// The integer arguments live in int64_t storage, below 2^31: a BLAS of 32-bit integers
// (LP64, as torch's MKL) reads their low half, one of 64-bit integers (ILP64) all of
// them, and both read the right value on a little-endian machine.
template <typename T, typename Gemm>
bool call(Gemm gemm, int64_t m, int64_t n, int64_t k, const T* a, const T* b, T* c) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  if (gemm == nullptr || !fits_int(m, n, k)) return false;
  const int64_t im = m, in = n, ik = k;
  const auto p = [](const int64_t& v) { return reinterpret_cast<const int*>(&v); };
  const T one = 1, zero = 0;
  gemm("T", "N", p(in), p(im), p(ik), &one, b, p(ik), a, p(ik), &zero, c, p(in));
  return true;
#else
  (void)gemm, (void)m, (void)n, (void)k, (void)a, (void)b, (void)c;
  return false;
#endif
}

}  // namespace

bool gemm_abt(int64_t m, int64_t n, int64_t k, const float* a, const float* b, float* c) {
  return call(sgemm_, m, n, k, a, b, c);
}

bool gemm_abt(int64_t m, int64_t n, int64_t k, const double* a, const double* b, double* c) {
  return call(dgemm_, m, n, k, a, b, c);
}

}  // namespace fpgm::blas
