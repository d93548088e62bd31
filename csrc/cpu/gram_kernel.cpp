// See gram_kernel.h. The functions that use AVX-512 carry the target attribute (the rest of
// the build stays baseline x86-64); callers check avx512_kernels() before any of them runs.
#include "gram_kernel.h"

#include <algorithm>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FPGM_GRAM_KERNEL 1
#include <immintrin.h>
#define FPGM_AVX512 __attribute__((target("avx512f")))
#define FPGM_AVX512_INLINE __attribute__((target("avx512f"), always_inline)) inline
#else
#define FPGM_GRAM_KERNEL 0
#endif

namespace fpgm::gram {

#if FPGM_GRAM_KERNEL
namespace {

constexpr int kRows = 8;      // rows of a micro-tile (broadcast from the packed A panel)
constexpr int kMaxPanels = 3;  // column panels of a micro-tile: 8 x 48 entries, 24 registers
constexpr int64_t kChunk = 256;  // k per pass: an 8-row A tile (16 KiB) stays in L1 while the
                                 // columns' panels stream from L2

// In-register transpose of 16 x 16 floats (rows r[i] become columns).
FPGM_AVX512_INLINE void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int h = 0; h < 16; h += 8)
    for (int i = 0; i < 4; ++i) {
      t[h + i] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0x88);
      t[h + i + 4] = _mm512_shuffle_f32x4(r[h + i], r[h + i + 4], 0xdd);
    }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}

// One micro-tile: c[r, 16 t + l] (+)= sum_{k < kc} a[16 k + r] b_t[16 k + l], for r < rows,
// t < NP, 16 t + l < cols. a: the tile's rows in their packed panel; b_t = b + t * stride:
// consecutive column panels. Accumulates into c unless `first`.
template <int NP>
FPGM_AVX512 void micro_tile(const float* a, const float* b, int64_t stride, int64_t kc,
                            int rows, int64_t cols, float* c, int64_t ldc, bool first) {
  __m512 acc[kRows][NP];
  for (int r = 0; r < kRows; ++r)
    for (int t = 0; t < NP; ++t) acc[r][t] = _mm512_setzero_ps();
  for (int64_t k = 0; k < kc; ++k) {
    __m512 bv[NP];
    for (int t = 0; t < NP; ++t) bv[t] = _mm512_loadu_ps(b + t * stride + k * kPanel);
    for (int r = 0; r < kRows; ++r) {
      const __m512 s = _mm512_set1_ps(a[k * kPanel + r]);
      for (int t = 0; t < NP; ++t) acc[r][t] = _mm512_fmadd_ps(s, bv[t], acc[r][t]);
    }
  }
  for (int t = 0; t < NP; ++t) {
    const int64_t left = cols - 16 * t;
    const __mmask16 mask = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
    for (int r = 0; r < kRows; ++r) {
      if (r >= rows) break;
      float* dst = c + r * ldc + 16 * t;
      __m512 v = acc[r][t];
      if (!first) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, dst));
      _mm512_mask_storeu_ps(dst, mask, v);
    }
  }
}

}  // namespace

FPGM_AVX512 void pack(const float* x, int64_t m, int64_t d, int64_t p0, int64_t p1, float* packed,
                      double* norm2) {
  for (int64_t p = p0; p < p1; ++p) {
    float* dst = packed + p * d * kPanel;
    const int64_t rows = std::min<int64_t>(kPanel, m - p * kPanel);
    const float* src = x + p * kPanel * d;
    __m512d sum_lo = _mm512_setzero_pd(), sum_hi = _mm512_setzero_pd();  // rows 0-7, 8-15
    for (int64_t k0 = 0; k0 < d; k0 += 16) {
      const int64_t len = std::min<int64_t>(16, d - k0);
      const __mmask16 mask = len == 16 ? __mmask16(0xffff) : __mmask16((1u << len) - 1);
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(mask, src + i * d + k0) : _mm512_setzero_ps();
      transpose16(r);  // r[k]: column k0 + k of the 16 rows (zero past d)
      for (int64_t k = 0; k < len; ++k) {
        _mm512_storeu_ps(dst + (k0 + k) * kPanel, r[k]);
        if (norm2 != nullptr) {
          const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(r[k]));
          const __m512d hi = _mm512_cvtps_pd(
              _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(r[k]), 1)));
          sum_lo = _mm512_fmadd_pd(lo, lo, sum_lo);
          sum_hi = _mm512_fmadd_pd(hi, hi, sum_hi);
        }
      }
    }
    if (norm2 != nullptr) {
      alignas(64) double sums[16];
      _mm512_store_pd(sums, sum_lo);
      _mm512_store_pd(sums + 8, sum_hi);
      for (int64_t i = 0; i < rows; ++i) norm2[p * kPanel + i] = sums[i];
    }
  }
}

FPGM_AVX512 void block(const float* packed, int64_t d, int64_t i0, int64_t ni, int64_t j0,
                       int64_t nj, bool upper, float* g) {
  const int64_t stride = d * kPanel;  // floats from one panel to the next
  for (int64_t k0 = 0; k0 < d; k0 += kChunk) {
    const int64_t kc = std::min(kChunk, d - k0);
    for (int64_t r = 0; r < ni; r += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, ni - r));
      const int64_t row = i0 + r;
      const float* a = packed + (row / kPanel) * stride + k0 * kPanel + row % kPanel;
      // Upper: the first column after the tile's first row, rounded down to its panel.
      int64_t c = 0;
      if (upper) c = std::max<int64_t>(0, row + 1 - j0) / kPanel * kPanel;
      for (; c < nj; c += kMaxPanels * kPanel) {
        const int64_t cols = std::min<int64_t>(kMaxPanels * kPanel, nj - c);
        const float* b = packed + (j0 + c) / kPanel * stride + k0 * kPanel;
        float* out = g + r * nj + c;
        switch ((cols + kPanel - 1) / kPanel) {
          case 3: micro_tile<3>(a, b, stride, kc, rows, cols, out, nj, k0 == 0); break;
          case 2: micro_tile<2>(a, b, stride, kc, rows, cols, out, nj, k0 == 0); break;
          default: micro_tile<1>(a, b, stride, kc, rows, cols, out, nj, k0 == 0); break;
        }
      }
    }
  }
}

FPGM_AVX512 double l2_epilogue(const float* g, float sq_i, const float* sq, double* colsum,
                               int64_t len, int64_t* close) {
  // Per entry, as simd::gram_d2: s = sq_i + sq_c, d^2 = s - 2g (2g exact: one rounding, FMA
  // or not), close when d^2 * 64 < s; d = sqrt(max(d^2, 0)), 0 for close pairs.
  const __m512 si = _mm512_set1_ps(sq_i), two = _mm512_set1_ps(2.0f),
               ratio = _mm512_set1_ps(64.0f), zero = _mm512_setzero_ps();
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();  // lanes 0-7 and 8-15
  int64_t n_close = 0;
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    const __m512 s = _mm512_add_ps(si, _mm512_loadu_ps(sq + k));
    const __m512 d2 = _mm512_sub_ps(s, _mm512_mul_ps(two, _mm512_loadu_ps(g + k)));
    const __mmask16 is_close = _mm512_cmp_ps_mask(_mm512_mul_ps(d2, ratio), s, _CMP_LT_OQ);
    const __m512 d = _mm512_maskz_sqrt_ps(~is_close, _mm512_max_ps(d2, zero));
    n_close += __builtin_popcount(is_close);
    const __m512d d_lo = _mm512_cvtps_pd(_mm512_castps512_ps256(d));
    const __m512d d_hi = _mm512_cvtps_pd(
        _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(d), 1)));
    _mm512_storeu_pd(colsum + k, _mm512_add_pd(_mm512_loadu_pd(colsum + k), d_lo));
    _mm512_storeu_pd(colsum + k + 8, _mm512_add_pd(_mm512_loadu_pd(colsum + k + 8), d_hi));
    lo = _mm512_add_pd(lo, d_lo);
    hi = _mm512_add_pd(hi, d_hi);
  }
  alignas(64) double lane[16];
  _mm512_store_pd(lane, lo);
  _mm512_store_pd(lane + 8, hi);
  double sum = 0.0;
  for (int l = 0; l < 16; ++l) sum += lane[l];
  for (; k < len; ++k) {  // the tail, entry by entry in the same order
    const float s = sq_i + sq[k];
    const float d2 = s - 2.0f * g[k];
    const bool c = d2 * 64.0f < s;
    const float d = c ? 0.0f : __builtin_sqrtf(std::max(d2, 0.0f));
    n_close += c;
    colsum[k] += static_cast<double>(d);
    sum += static_cast<double>(d);
  }
  *close = n_close;
  return sum;
}

#else  // no kernel in this build: avx512_kernels() is false, and the callers use BLAS

void pack(const float*, int64_t, int64_t, int64_t, int64_t, float*, double*) {}
void block(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, bool, float*) {}
double l2_epilogue(const float*, float, const float*, double*, int64_t, int64_t*) { return 0.0; }

#endif

}  // namespace fpgm::gram
