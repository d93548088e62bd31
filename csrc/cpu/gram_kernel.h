// The Gram products of the l2 / cos path on AVX-512 CPUs: our own register-blocked kernel
// on one packed copy of the rows, instead of one BLAS call per block. A BLAS call packs
// both operands again on every call and reaches only 0.5-0.65 of its large-GEMM rate on the
// 32-64 row blocks near the diagonal of the triangle (bench/NOTES.md); here the
// rows are packed once per layer, and the triangle is covered tile by tile, down to 8 rows
// x one panel next to the diagonal. float32 and float64 (the pruner's scores).
//
// Callers check avx512_kernels() (avx512.h) first.
//
// Exactness: each entry is one dot product in the input's precision, k in increasing
// order, fused multiply-adds (what sgemm / dgemm do), no reassociation beyond BLAS's own.
#pragma once

#include <cstdint>

namespace fpgm::gram {

// Rows per packed panel: one AVX-512 register of the type (16 floats, 8 doubles).
template <typename T>
constexpr int64_t kPanel = 64 / sizeof(T);

// Elements of the packed copy of m rows of length d: whole panels, the last zero-padded.
template <typename T>
inline int64_t packed_size(int64_t m, int64_t d) {
  return (m + kPanel<T> - 1) / kPanel<T> * kPanel<T> * d;
}

// Packs panels [p0, p1) of x[m, d] (row-major), P = kPanel<T>:
// packed[(p * d + k) * P + r] = x[P p + r, k], zero for rows past m. Panels are independent:
// callers split them over threads. With norm2, also norm2[i] = sum_k x[i, k]^2 in double
// (k in order) for the rows packed: the one pass over the weight that the l2 path needs.
void pack(const float* x, int64_t m, int64_t d, int64_t p0, int64_t p1, float* packed,
          double* norm2 = nullptr);
void pack(const double* x, int64_t m, int64_t d, int64_t p0, int64_t p1, double* packed,
          double* norm2 = nullptr);

// g[r * nj + c] = <row i0 + r, row j0 + c> for r < ni, c < nj, from the packed rows; i0 and
// j0 multiples of kPanel<T>. With `upper`, only the entries with j0 + c > i0 + r are
// needed: tiles wholly on or below the diagonal are skipped and their entries left unset.
void block(const float* packed, int64_t d, int64_t i0, int64_t ni, int64_t j0, int64_t nj,
           bool upper, float* g);
void block(const double* packed, int64_t d, int64_t i0, int64_t ni, int64_t j0, int64_t nj,
           bool upper, double* g);

// simd::l2_epilogue (same arguments, same result bit for bit: the same float operations,
// the same close-pair test, double sums in the same lanes), written with AVX-512
// intrinsics: GCC leaves that loop scalar (a branch per entry), 5-6x slower.
double l2_epilogue(const float* g, float sq_i, const float* sq, double* colsum, int64_t len,
                   int64_t* close);

}  // namespace fpgm::gram
