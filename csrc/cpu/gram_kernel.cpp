// See gram_kernel.h. The functions that use AVX-512 carry the target attribute (the rest of
// the build stays baseline x86-64); callers check avx512_kernels() before any of them runs.
#include "gram_kernel.h"

#include <algorithm>

#include "../accuracy.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FPGM_GRAM_KERNEL 1
#include <immintrin.h>
#define FPGM_AVX512 __attribute__((target("avx512f")))
#define FPGM_AVX512_INLINE __attribute__((target("avx512f"), always_inline)) inline
#define FPGM_AVX512_STATIC __attribute__((target("avx512f"), always_inline)) static inline
#else
#define FPGM_GRAM_KERNEL 0
#endif

namespace fpgm::gram {

#if FPGM_GRAM_KERNEL
namespace {

constexpr int kRows = 8;       // rows of a micro-tile (broadcast from the packed A panel)
constexpr int kMaxPanels = 3;  // column panels of a micro-tile: 8 x 3 registers
constexpr int64_t kChunk = 256;  // k per pass: an 8-row A tile (at most 16 KiB) stays in L1
                                 // while the columns' panels stream from L2

// The AVX-512 operations the kernel needs, per element type.
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  using Reg = __m512;
  using Mask = __mmask16;
  FPGM_AVX512_STATIC Reg zero() { return _mm512_setzero_ps(); }
  FPGM_AVX512_STATIC Reg load(const float* p) { return _mm512_loadu_ps(p); }
  FPGM_AVX512_STATIC Reg set1(float v) { return _mm512_set1_ps(v); }
  FPGM_AVX512_STATIC Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_ps(a, b, c); }
  FPGM_AVX512_STATIC Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  FPGM_AVX512_STATIC Reg load(Mask m, const float* p) { return _mm512_maskz_loadu_ps(m, p); }
  FPGM_AVX512_STATIC void store(float* p, Mask m, Reg v) { _mm512_mask_storeu_ps(p, m, v); }
};
template <>
struct Vec<double> {
  using Reg = __m512d;
  using Mask = __mmask8;
  FPGM_AVX512_STATIC Reg zero() { return _mm512_setzero_pd(); }
  FPGM_AVX512_STATIC Reg load(const double* p) { return _mm512_loadu_pd(p); }
  FPGM_AVX512_STATIC Reg set1(double v) { return _mm512_set1_pd(v); }
  FPGM_AVX512_STATIC Reg fmadd(Reg a, Reg b, Reg c) { return _mm512_fmadd_pd(a, b, c); }
  FPGM_AVX512_STATIC Reg add(Reg a, Reg b) { return _mm512_add_pd(a, b); }
  FPGM_AVX512_STATIC Reg load(Mask m, const double* p) { return _mm512_maskz_loadu_pd(m, p); }
  FPGM_AVX512_STATIC void store(double* p, Mask m, Reg v) { _mm512_mask_storeu_pd(p, m, v); }
};

// The first n lanes of P (all of them for n >= P).
template <typename Mask, int64_t P>
inline Mask first_lanes(int64_t n) {
  return n >= P ? Mask((1u << P) - 1) : Mask((1u << n) - 1);
}

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

// One micro-tile: c[r, P t + l] (+)= sum_{k < kc} a[P k + r] b_t[P k + l], for r < rows,
// t < NP, P t + l < cols, P = kPanel<T>. a: the tile's rows in their packed panel;
// b_t = b + t * stride: consecutive column panels. Accumulates into c unless `first`.
template <typename T, int NP>
FPGM_AVX512 void micro_tile(const T* a, const T* b, int64_t stride, int64_t kc, int rows,
                            int64_t cols, T* c, int64_t ldc, bool first) {
  using V = Vec<T>;
  constexpr int64_t P = kPanel<T>;
  typename V::Reg acc[kRows][NP];
  for (int r = 0; r < kRows; ++r)
    for (int t = 0; t < NP; ++t) acc[r][t] = V::zero();
  for (int64_t k = 0; k < kc; ++k) {
    typename V::Reg bv[NP];
    for (int t = 0; t < NP; ++t) bv[t] = V::load(b + t * stride + k * P);
    for (int r = 0; r < kRows; ++r) {
      const typename V::Reg s = V::set1(a[k * P + r]);
      for (int t = 0; t < NP; ++t) acc[r][t] = V::fmadd(s, bv[t], acc[r][t]);
    }
  }
  for (int t = 0; t < NP; ++t) {
    const auto mask = first_lanes<typename V::Mask, P>(cols - P * t);
    for (int r = 0; r < kRows; ++r) {
      if (r >= rows) break;
      T* dst = c + r * ldc + P * t;
      typename V::Reg v = acc[r][t];
      if (!first) v = V::add(v, V::load(mask, dst));
      V::store(dst, mask, v);
    }
  }
}

template <typename T>
FPGM_AVX512 void block_impl(const T* packed, int64_t d, int64_t i0, int64_t ni, int64_t j0,
                            int64_t nj, bool upper, T* g) {
  constexpr int64_t P = kPanel<T>;
  const int64_t stride = d * P;  // elements from one panel to the next
  for (int64_t k0 = 0; k0 < d; k0 += kChunk) {
    const int64_t kc = std::min(kChunk, d - k0);
    for (int64_t r = 0; r < ni; r += kRows) {
      const int rows = static_cast<int>(std::min<int64_t>(kRows, ni - r));
      const int64_t row = i0 + r;
      const T* a = packed + (row / P) * stride + k0 * P + row % P;
      // Upper: the first column after the tile's first row, rounded down to its panel.
      int64_t c = 0;
      if (upper) c = std::max<int64_t>(0, row + 1 - j0) / P * P;
      for (; c < nj; c += kMaxPanels * P) {
        const int64_t cols = std::min<int64_t>(kMaxPanels * P, nj - c);
        const T* b = packed + (j0 + c) / P * stride + k0 * P;
        T* out = g + r * nj + c;
        switch ((cols + P - 1) / P) {
          case 3: micro_tile<T, 3>(a, b, stride, kc, rows, cols, out, nj, k0 == 0); break;
          case 2: micro_tile<T, 2>(a, b, stride, kc, rows, cols, out, nj, k0 == 0); break;
          default: micro_tile<T, 1>(a, b, stride, kc, rows, cols, out, nj, k0 == 0); break;
        }
      }
    }
  }
}

// In-register transpose of 8 x 8 doubles (rows r[i] become columns).
FPGM_AVX512_INLINE void transpose8(__m512d (&r)[8]) {
  __m512d t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm512_unpacklo_pd(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_pd(r[i], r[i + 1]);
  }
  for (int h = 0; h < 8; h += 4) {  // rows h .. h + 3
    u[h] = _mm512_shuffle_f64x2(t[h], t[h + 2], 0x88);      // columns 0, 4
    u[h + 1] = _mm512_shuffle_f64x2(t[h], t[h + 2], 0xdd);  // 2, 6
    u[h + 2] = _mm512_shuffle_f64x2(t[h + 1], t[h + 3], 0x88);  // 1, 5
    u[h + 3] = _mm512_shuffle_f64x2(t[h + 1], t[h + 3], 0xdd);  // 3, 7
  }
  const int col[4][2] = {{0, 4}, {2, 6}, {1, 5}, {3, 7}};
  for (int i = 0; i < 4; ++i) {
    r[col[i][0]] = _mm512_shuffle_f64x2(u[i], u[i + 4], 0x88);
    r[col[i][1]] = _mm512_shuffle_f64x2(u[i], u[i + 4], 0xdd);
  }
}

}  // namespace

FPGM_AVX512 void pack(const float* x, int64_t m, int64_t d, int64_t p0, int64_t p1, float* packed,
                      double* norm2) {
  for (int64_t p = p0; p < p1; ++p) {
    float* dst = packed + p * d * kPanel<float>;
    const int64_t rows = std::min<int64_t>(kPanel<float>, m - p * kPanel<float>);
    const float* src = x + p * kPanel<float> * d;
    __m512d sum_lo = _mm512_setzero_pd(), sum_hi = _mm512_setzero_pd();  // rows 0-7, 8-15
    for (int64_t k0 = 0; k0 < d; k0 += 16) {
      const int64_t len = std::min<int64_t>(16, d - k0);
      const __mmask16 mask = first_lanes<__mmask16, 16>(len);
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_ps(mask, src + i * d + k0) : _mm512_setzero_ps();
      transpose16(r);  // r[k]: column k0 + k of the 16 rows (zero past d)
      for (int64_t k = 0; k < len; ++k) {
        _mm512_storeu_ps(dst + (k0 + k) * kPanel<float>, r[k]);
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
      for (int64_t i = 0; i < rows; ++i) norm2[p * kPanel<float> + i] = sums[i];
    }
  }
}

FPGM_AVX512 void pack(const double* x, int64_t m, int64_t d, int64_t p0, int64_t p1,
                      double* packed, double* norm2) {
  constexpr int64_t P = kPanel<double>;
  for (int64_t p = p0; p < p1; ++p) {
    double* dst = packed + p * d * P;
    const int64_t rows = std::min<int64_t>(P, m - p * P);
    const double* src = x + p * P * d;
    __m512d sum = _mm512_setzero_pd();
    for (int64_t k0 = 0; k0 < d; k0 += P) {
      const int64_t len = std::min<int64_t>(P, d - k0);
      const __mmask8 mask = first_lanes<__mmask8, P>(len);
      __m512d r[8];
      for (int i = 0; i < 8; ++i)
        r[i] = i < rows ? _mm512_maskz_loadu_pd(mask, src + i * d + k0) : _mm512_setzero_pd();
      transpose8(r);  // r[k]: column k0 + k of the 8 rows (zero past d)
      for (int64_t k = 0; k < len; ++k) {
        _mm512_storeu_pd(dst + (k0 + k) * P, r[k]);
        if (norm2 != nullptr) sum = _mm512_fmadd_pd(r[k], r[k], sum);
      }
    }
    if (norm2 != nullptr) {
      alignas(64) double sums[8];
      _mm512_store_pd(sums, sum);
      for (int64_t i = 0; i < rows; ++i) norm2[p * P + i] = sums[i];
    }
  }
}

void block(const float* packed, int64_t d, int64_t i0, int64_t ni, int64_t j0, int64_t nj,
           bool upper, float* g) {
  block_impl(packed, d, i0, ni, j0, nj, upper, g);
}

void block(const double* packed, int64_t d, int64_t i0, int64_t ni, int64_t j0, int64_t nj,
           bool upper, double* g) {
  block_impl(packed, d, i0, ni, j0, nj, upper, g);
}

FPGM_AVX512 double l2_epilogue(const float* g, float sq_i, const float* sq, double* colsum,
                               int64_t len, int64_t* close) {
  // Per entry, as simd::gram_d2: s = sq_i + sq_c, d^2 = s - 2g (2g exact: one rounding, FMA
  // or not), close when d^2 * kCloseRatio < s; d = sqrt(max(d^2, 0)), 0 for close pairs.
  const __m512 si = _mm512_set1_ps(sq_i), two = _mm512_set1_ps(2.0f),
               ratio = _mm512_set1_ps(static_cast<float>(accuracy::kCloseRatio)),
               zero = _mm512_setzero_ps();
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
    const bool c = accuracy::is_close_pair(d2, s);
    const float d = c ? 0.0f : accuracy::l2_from_d2(d2);
    n_close += c;
    colsum[k] += static_cast<double>(d);
    sum += static_cast<double>(d);
  }
  *close = n_close;
  return sum;
}

#else  // no kernel in this build: avx512_kernels() is false, and the callers use BLAS

void pack(const float*, int64_t, int64_t, int64_t, int64_t, float*, double*) {}
void pack(const double*, int64_t, int64_t, int64_t, int64_t, double*, double*) {}
void block(const float*, int64_t, int64_t, int64_t, int64_t, int64_t, bool, float*) {}
void block(const double*, int64_t, int64_t, int64_t, int64_t, int64_t, bool, double*) {}
double l2_epilogue(const float*, float, const float*, double*, int64_t, int64_t*) { return 0.0; }

#endif

}  // namespace fpgm::gram
