// See pair_kernel.h. AVX-512 code carries the target attribute; the rest of the build
// stays baseline x86-64.
#include "pair_kernel.h"

#include <algorithm>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FPGM_PAIR_KERNEL 1
#include <immintrin.h>
#define FPGM_AVX512 __attribute__((target("avx512f")))
#define FPGM_AVX512_INLINE __attribute__((target("avx512f"), always_inline)) inline
#else
#define FPGM_PAIR_KERNEL 0
#endif

namespace fpgm::pairs {

#if FPGM_PAIR_KERNEL
namespace {

constexpr int kTile = 4;         // rows and columns of a tile: 16 accumulators
constexpr int64_t kChunk = 256;  // k per float sum (16 terms per lane), as simd::l1_rows

// The 16 lane sums of v[0..15], in order, as one vector: out[i] = sum of v[i]'s lanes.
FPGM_AVX512_INLINE __m512 reduce16(const __m512 (&v)[16]) {
  __m512 u[8], w[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit segment: [a0+a2, b0+b2, a1+a3, b1+b3]
    u[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                         _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per segment: the partial sums of four vectors
    const __m512d a = _mm512_castps_pd(u[2 * i]), b = _mm512_castps_pd(u[2 * i + 1]);
    w[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                         _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  // Add the four segments: w[i]'s total lands in segment i.
  const __m512 y0 = _mm512_add_ps(_mm512_shuffle_f32x4(w[0], w[1], 0x88),
                                  _mm512_shuffle_f32x4(w[0], w[1], 0xdd));
  const __m512 y1 = _mm512_add_ps(_mm512_shuffle_f32x4(w[2], w[3], 0x88),
                                  _mm512_shuffle_f32x4(w[2], w[3], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(y0, y1, 0x88), _mm512_shuffle_f32x4(y0, y1, 0xdd));
}

// One tile over k in [k0, k0 + kc): acc[4 r + c] = sum op(a_r, b_c) in float lanes, then
// reduced and added (in double) to dist[r * ld + c] for r < rows, c < cols.
template <bool kSquared>
FPGM_AVX512 void tile(const float* const (&a)[kTile], const float* const (&b)[kTile], int64_t k0,
                      int64_t kc, int rows, int cols, double* dist, int64_t ld) {
  __m512 acc[16];
  for (int i = 0; i < 16; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t k = k0; k < k0 + kc; k += 16) {
    const int64_t left = k0 + kc - k;
    const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
    __m512 av[kTile], bv[kTile];
    for (int r = 0; r < kTile; ++r) av[r] = _mm512_maskz_loadu_ps(mask, a[r] + k);
    for (int c = 0; c < kTile; ++c) bv[c] = _mm512_maskz_loadu_ps(mask, b[c] + k);
    for (int r = 0; r < kTile; ++r)
      for (int c = 0; c < kTile; ++c) {
        const __m512 diff = _mm512_sub_ps(av[r], bv[c]);
        acc[kTile * r + c] = kSquared ? _mm512_fmadd_ps(diff, diff, acc[kTile * r + c])
                                      : _mm512_add_ps(acc[kTile * r + c], _mm512_abs_ps(diff));
      }
  }
  alignas(64) float sums[16];
  _mm512_store_ps(sums, reduce16(acc));
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dist[r * ld + c] += static_cast<double>(sums[kTile * r + c]);
}

}  // namespace

FPGM_AVX512 void block(const float* rows, int64_t d, int64_t i0, int64_t ni, int64_t j0,
                       int64_t nj, bool squared, bool upper, double* dist) {
  for (int64_t k0 = 0; k0 < d; k0 += kChunk) {  // a chunk of the block's rows stays in L2
    const int64_t kc = std::min(kChunk, d - k0);
    for (int64_t r = 0; r < ni; r += kTile) {
      const int nr = static_cast<int>(std::min<int64_t>(kTile, ni - r));
      const float* a[kTile];
      for (int t = 0; t < kTile; ++t) a[t] = rows + (i0 + r + std::min(t, nr - 1)) * d;
      // Upper: from the tile holding the first column right of the tile's first row.
      int64_t c = upper ? std::max<int64_t>(0, i0 + r + 1 - j0) / kTile * kTile : 0;
      for (; c < nj; c += kTile) {
        const int nc = static_cast<int>(std::min<int64_t>(kTile, nj - c));
        const float* b[kTile];  // rows past the block repeat its last (results unused)
        for (int t = 0; t < kTile; ++t) b[t] = rows + (j0 + c + std::min(t, nc - 1)) * d;
        double* out = dist + r * nj + c;
        if (squared) tile<true>(a, b, k0, kc, nr, nc, out, nj);
        else tile<false>(a, b, k0, kc, nr, nc, out, nj);
      }
    }
  }
}

namespace {

// Rows a[0..3] (row-major, d floats) against the 16 packed columns at p (p[16 k + l] is
// column l's k-th value): dist[r * ld + l] = the distance of a_r and column l, for r < rows,
// l < cols.
template <Kind kKind>
FPGM_AVX512 void small_tile(const float* const (&a)[kTile], const float* p, int64_t d, int rows,
                            int cols, double* dist, int64_t ld) {
  __m512 acc[kTile];
  for (int r = 0; r < kTile; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t k = 0; k < d; ++k) {
    const __m512 col = _mm512_loadu_ps(p + 16 * k);
    for (int r = 0; r < kTile; ++r) {
      const __m512 diff = _mm512_sub_ps(_mm512_set1_ps(a[r][k]), col);
      acc[r] = kKind != Kind::L1 ? _mm512_fmadd_ps(diff, diff, acc[r])
                                 : _mm512_add_ps(acc[r], _mm512_abs_ps(diff));
    }
  }
  for (int r = 0; r < kTile; ++r) {
    if (kKind == Kind::L2) acc[r] = _mm512_sqrt_ps(acc[r]);
    if (kKind == Kind::Cos)  // unit rows: 1 - cos = |u - v|^2 / 2
      acc[r] = _mm512_min_ps(_mm512_mul_ps(acc[r], _mm512_set1_ps(0.5f)), _mm512_set1_ps(2.0f));
  }
  const __mmask8 lo = cols >= 8 ? __mmask8(0xff) : __mmask8((1u << cols) - 1);
  const __mmask8 hi = cols >= 16 ? __mmask8(0xff) : cols > 8 ? __mmask8((1u << (cols - 8)) - 1) : 0;
  for (int r = 0; r < rows; ++r) {
    _mm512_mask_storeu_pd(dist + r * ld, lo, _mm512_cvtps_pd(_mm512_castps512_ps256(acc[r])));
    _mm512_mask_storeu_pd(dist + r * ld + 8, hi, _mm512_cvtps_pd(_mm256_castpd_ps(
                                                     _mm512_extractf64x4_pd(_mm512_castps_pd(acc[r]), 1))));
  }
}

}  // namespace

FPGM_AVX512 void small_block(const float* rows, const float* packed, int64_t d, int64_t i0,
                             int64_t ni, int64_t j0, int64_t nj, Kind kind, bool upper,
                             double* dist) {
  for (int64_t r = 0; r < ni; r += kTile) {
    const int nr = static_cast<int>(std::min<int64_t>(kTile, ni - r));
    const float* a[kTile];
    for (int t = 0; t < kTile; ++t) a[t] = rows + (i0 + r + std::min(t, nr - 1)) * d;
    int64_t c = upper ? std::max<int64_t>(0, i0 + r + 1 - j0) / 16 * 16 : 0;
    for (; c < nj; c += 16) {
      const int nc = static_cast<int>(std::min<int64_t>(16, nj - c));
      const float* p = packed + (j0 + c) * d;  // its panel: 16 rows x d, k-major
      double* out = dist + r * nj + c;
      switch (kind) {
        case Kind::L1: small_tile<Kind::L1>(a, p, d, nr, nc, out, nj); break;
        case Kind::L2: small_tile<Kind::L2>(a, p, d, nr, nc, out, nj); break;
        case Kind::Cos: small_tile<Kind::Cos>(a, p, d, nr, nc, out, nj); break;
      }
    }
  }
}

#else  // no kernel in this build: avx512_kernels() is false, and the callers use simd_loops

void block(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, bool, bool, double*) {}
void small_block(const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t, Kind,
                 bool, double*) {}

#endif

}  // namespace fpgm::pairs
