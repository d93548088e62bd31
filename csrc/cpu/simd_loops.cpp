// See simd_loops.h. Plain loops over fixed-width lanes: GCC vectorises each clone for its
// instruction set. Needs -fno-math-errno (std::sqrt would otherwise stay scalar).
#include "simd_loops.h"

#include "../accuracy.h"

#include <algorithm>
#include <cmath>
#include <limits>

// Every helper is forced inline so that each target clone compiles it for its own ISA
// (an out-of-line helper would be compiled once, for the baseline).
#define FPGM_INLINE inline __attribute__((always_inline))

namespace fpgm::simd {
namespace {

constexpr int kLanes = 16;

template <typename T>
FPGM_INLINE double sum_lanes(const T (&lane)[kLanes]) {
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += static_cast<double>(lane[l]);
  return s;
}

template <typename T>
FPGM_INLINE void add_scaled_impl(const T* x, double scale, double* out, int64_t len) {
  for (int64_t k = 0; k < len; ++k) out[k] += static_cast<double>(x[k]) * scale;
}

template <typename T>
FPGM_INLINE double sum_squares_impl(const T* x, int64_t len) {
  double lane[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double v = static_cast<double>(x[k + l]);
      lane[l] += v * v;
    }
  double s = sum_lanes(lane);
  for (; k < len; ++k) s += static_cast<double>(x[k]) * static_cast<double>(x[k]);
  return s;
}

template <typename T>
FPGM_INLINE double centre_impl(const T* __restrict x, double scale, const double* __restrict mean,
                                T* __restrict out, int64_t len) {
  double lane[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const T v = static_cast<T>(static_cast<double>(x[k + l]) * scale - mean[k + l]);
      out[k + l] = v;
      lane[l] += static_cast<double>(v) * static_cast<double>(v);
    }
  double s = sum_lanes(lane);
  for (; k < len; ++k) {
    const T v = static_cast<T>(static_cast<double>(x[k]) * scale - mean[k]);
    out[k] = v;
    s += static_cast<double>(v) * static_cast<double>(v);
  }
  return s;
}

template <typename T>
FPGM_INLINE double shift_impl(const T* __restrict x, const T* __restrict c, T* __restrict out,
                               int64_t len) {
  double lane[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const T v = x[k + l] - c[k + l];
      out[k + l] = v;
      lane[l] += static_cast<double>(v) * static_cast<double>(v);
    }
  double s = sum_lanes(lane);
  for (; k < len; ++k) {
    const T v = x[k] - c[k];
    out[k] = v;
    s += static_cast<double>(v) * static_cast<double>(v);
  }
  return s;
}

template <typename T>
FPGM_INLINE double centred_norm2_impl(const T* x, double scale, const double* mean, int64_t len) {
  double lane[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double v = static_cast<double>(x[k + l]) * scale - mean[k + l];
      lane[l] += v * v;
    }
  double s = sum_lanes(lane);
  for (; k < len; ++k) {
    const double v = static_cast<double>(x[k]) * scale - mean[k];
    s += v * v;
  }
  return s;
}

template <typename T>
FPGM_INLINE T l2_of(T d2) {
  return accuracy::l2_from_d2(d2);
}
template <typename T>
FPGM_INLINE T cos_of(T d2) {
  return accuracy::cos_from_d2(d2);
}

// The squared distance of a Gram entry and whether it is close (accuracy::is_close_pair).
// Evaluated bit-identically wherever it is inlined, vectorised or not, contracted to an
// FMA or not (2g and d^2 * 64 are exact, so s - 2g rounds once either way): the caller's
// fix-up pass finds exactly the pairs the epilogue left out.
template <typename T>
FPGM_INLINE T gram_d2(T g, T sq_i, T sq_c, bool* close) {
  const T s = sq_i + sq_c;
  const T d2 = s - T(2) * g;
  *close = accuracy::is_close_pair(d2, s);
  return d2;
}

template <typename T, typename F>
FPGM_INLINE double epilogue_impl(const T* __restrict g, T sq_i, const T* __restrict sq,
                                 double* __restrict colsum, int64_t len,
                                 int64_t* close_pairs, F dist) {
  double lane[kLanes] = {};
  int64_t close_lane[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes) {
    // Separate loops: GCC vectorises each (all in one loop, it left every entry scalar, a
    // branch around each sqrt).
    T d[kLanes];
    int is_close[kLanes];
    for (int l = 0; l < kLanes; ++l) {
      bool close;
      const T d2 = gram_d2(g[k + l], sq_i, sq[k + l], &close);
      const T v = dist(d2);
      is_close[l] = close;
      d[l] = close ? T(0) : v;
    }
    for (int l = 0; l < kLanes; ++l) colsum[k + l] += static_cast<double>(d[l]);
    for (int l = 0; l < kLanes; ++l) lane[l] += static_cast<double>(d[l]);
    for (int l = 0; l < kLanes; ++l) close_lane[l] += is_close[l];
  }
  double s = sum_lanes(lane);
  int64_t n_close = 0;
  for (int l = 0; l < kLanes; ++l) n_close += close_lane[l];
  for (; k < len; ++k) {
    bool close;
    const T d2 = gram_d2(g[k], sq_i, sq[k], &close);
    const T d = close ? T(0) : dist(d2);
    n_close += close;
    colsum[k] += static_cast<double>(d);
    s += static_cast<double>(d);
  }
  *close_pairs = n_close;
  return s;
}

template <typename T, typename F>
FPGM_INLINE int64_t epilogue_store_impl(const T* __restrict g, T sq_i, const T* __restrict sq,
                                        T* __restrict out, int64_t len, F dist) {
  int64_t n_close = 0;
  for (int64_t k = 0; k < len; ++k) {
    bool close;
    const T d2 = gram_d2(g[k], sq_i, sq[k], &close);
    const T v = dist(d2);  // unconditionally, then a select: vectorises
    out[k] = close ? T(0) : v;
    n_close += close;
  }
  return n_close;
}

struct AbsDiff {
  template <typename T>
  FPGM_INLINE T operator()(T a, T b) const { return std::abs(a - b); }
};
struct SquaredDiff {
  template <typename T>
  FPGM_INLINE T operator()(T a, T b) const { return (a - b) * (a - b); }
};

// Four rows of b against one row of a: each load of a serves four accumulators.
template <typename T, typename Op>
FPGM_INLINE void diff_rows_impl(const T* a, const T* b, int64_t ldb, int64_t nb, int64_t len, double* acc,
                           Op op) {
  int64_t c = 0;
  for (; c + 4 <= nb; c += 4) {
    const T* b0 = b + c * ldb;
    const T* b1 = b0 + ldb;
    const T* b2 = b1 + ldb;
    const T* b3 = b2 + ldb;
    T l0[kLanes] = {}, l1[kLanes] = {}, l2[kLanes] = {}, l3[kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= len; k += kLanes)
      for (int l = 0; l < kLanes; ++l) {
        const T v = a[k + l];
        l0[l] += op(v, b0[k + l]);
        l1[l] += op(v, b1[k + l]);
        l2[l] += op(v, b2[k + l]);
        l3[l] += op(v, b3[k + l]);
      }
    double s0 = sum_lanes(l0), s1 = sum_lanes(l1), s2 = sum_lanes(l2), s3 = sum_lanes(l3);
    for (; k < len; ++k) {
      s0 += op(static_cast<double>(a[k]), static_cast<double>(b0[k]));
      s1 += op(static_cast<double>(a[k]), static_cast<double>(b1[k]));
      s2 += op(static_cast<double>(a[k]), static_cast<double>(b2[k]));
      s3 += op(static_cast<double>(a[k]), static_cast<double>(b3[k]));
    }
    acc[c] += s0;
    acc[c + 1] += s1;
    acc[c + 2] += s2;
    acc[c + 3] += s3;
  }
  for (; c < nb; ++c) {
    const T* bc = b + c * ldb;
    T lane[kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= len; k += kLanes)
      for (int l = 0; l < kLanes; ++l) lane[l] += op(a[k + l], bc[k + l]);
    double s = sum_lanes(lane);
    for (; k < len; ++k) s += op(static_cast<double>(a[k]), static_cast<double>(bc[k]));
    acc[c] += s;
  }
}

}  // namespace

#define FPGM_DEFINE_LOOPS(T)                                                                   \
  FPGM_SIMD_CLONES void add_scaled(const T* x, double scale, double* out, int64_t len) {      \
    add_scaled_impl(x, scale, out, len);                                                       \
  }                                                                                            \
  FPGM_SIMD_CLONES double sum_squares(const T* x, int64_t len) {                              \
    return sum_squares_impl(x, len);                                                           \
  }                                                                                            \
  FPGM_SIMD_CLONES double centre(const T* x, double scale, const double* mean, T* out,        \
                                 int64_t len) {                                                \
    return centre_impl(x, scale, mean, out, len);                                              \
  }                                                                                            \
  FPGM_SIMD_CLONES double shift(const T* x, const T* c, T* out, int64_t len) {               \
    return shift_impl(x, c, out, len);                                                         \
  }                                                                                            \
  FPGM_SIMD_CLONES double centred_norm2(const T* x, double scale, const double* mean,       \
                                        int64_t len) {                                         \
    return centred_norm2_impl(x, scale, mean, len);                                            \
  }                                                                                            \
  FPGM_SIMD_CLONES double l2_epilogue(const T* g, T sq_i, const T* sq, double* colsum,        \
                                      int64_t len, int64_t* close) {                           \
    return epilogue_impl(g, sq_i, sq, colsum, len, close, l2_of<T>);                           \
  }                                                                                            \
  FPGM_SIMD_CLONES double cos_epilogue(const T* g, T sq_i, const T* sq, double* colsum,       \
                                       int64_t len, int64_t* close) {                          \
    return epilogue_impl(g, sq_i, sq, colsum, len, close, cos_of<T>);                          \
  }                                                                                            \
  FPGM_SIMD_CLONES int64_t l2_epilogue_store(const T* g, T sq_i, const T* sq, T* out,         \
                                             int64_t len) {                                    \
    return epilogue_store_impl(g, sq_i, sq, out, len, l2_of<T>);                               \
  }                                                                                            \
  FPGM_SIMD_CLONES int64_t cos_epilogue_store(const T* g, T sq_i, const T* sq, T* out,        \
                                              int64_t len) {                                   \
    return epilogue_store_impl(g, sq_i, sq, out, len, cos_of<T>);                              \
  }                                                                                            \
  FPGM_SIMD_CLONES bool is_close(T g, T sq_i, T sq_c) {                                        \
    bool close;                                                                                \
    gram_d2(g, sq_i, sq_c, &close);                                                            \
    return close;                                                                              \
  }                                                                                            \
  FPGM_SIMD_CLONES void l1_rows(const T* a, const T* b, int64_t ldb, int64_t nb, int64_t len, \
                                double* acc) {                                                 \
    diff_rows_impl(a, b, ldb, nb, len, acc, AbsDiff{});                                        \
  }                                                                                            \
  FPGM_SIMD_CLONES void sqdiff_rows(const T* a, const T* b, int64_t ldb, int64_t nb,           \
                                    int64_t len, double* acc) {                                \
    diff_rows_impl(a, b, ldb, nb, len, acc, SquaredDiff{});                                    \
  }

FPGM_SIMD_CLONES double sum_and_add(const double* __restrict x, double* __restrict colsum,
                                    int64_t len) {
  double lane[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= len; k += kLanes) {
    for (int l = 0; l < kLanes; ++l) colsum[k + l] += x[k + l];
    for (int l = 0; l < kLanes; ++l) lane[l] += x[k + l];
  }
  double s = sum_lanes(lane);
  for (; k < len; ++k) {
    colsum[k] += x[k];
    s += x[k];
  }
  return s;
}

FPGM_DEFINE_LOOPS(float)
FPGM_DEFINE_LOOPS(double)

#undef FPGM_DEFINE_LOOPS

}  // namespace fpgm::simd
