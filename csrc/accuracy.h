// The accuracy contract: the rules every backend applies so that its scores agree with
// float64 distances (docs/design.md, "The accuracy guard"). Written once, here, for the
// CPU kernels (csrc/cpu), the CUDA device code (csrc/cuda/kernels, also compiled by NVRTC
// and by the CPU emulation of the tests) and, mirrored, fpgm_ext/reference.py; the
// compiled library reports these values in its build info and
// tests/test_accuracy_contract.py checks that the reference uses the same.
//
// No torch or CUDA header (and no standard header for NVRTC): this file compiles wherever
// the kernels do. Host helpers are forced inline so that each SIMD clone of the CPU loops
// compiles them for its own instruction set.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FPGM_HOST_DEVICE __host__ __device__ __forceinline__
#else
#include <cmath>
#define FPGM_HOST_DEVICE inline __attribute__((always_inline))
#endif

namespace fpgm {
namespace accuracy {

// Close pairs. |a|^2 + |b|^2 - 2 a.b loses about (|a|^2 + |b|^2) / d^2 times the rounding
// of its operands: a pair whose d^2 is under 1 / kCloseRatio of |a|^2 + |b|^2 (filters in a
// tight cluster away from the centre, near-duplicates) is recomputed directly as
// sum (a - b)^2 (in float64 on CUDA and in the reference; on the CPU in the rows' type over
// chunks of 256 columns, the chunks added in float64).
constexpr double kCloseRatio = 64.0;

// Centring (CPU, l2): rows are translated by a centre, the column means of up to
// kCentreRows evenly spaced rows, only when |centre|^2 * kCentreRatio > mean |row|^2:
// 4x what the mean of 64 rows of zero-mean noise reaches (|row|^2 / 64), so noise does not
// trigger it. Any translation leaves distances exact; it only keeps the norms small.
// (cos rows are always centred after normalising; the CUDA kernels always centre.)
constexpr int kCentreRows = 64;
constexpr double kCentreRatio = 16.0;

// The direct path: l2 and cos with D up to this are computed from sum (a - b)^2, never by
// the Gram identity, which cancels for close pairs in few dimensions where centring
// cannot help. (l1 always takes it: no identity exists.)
constexpr int kDirectMaxD = 16;

// The same comparisons as std::max / std::min, so that the CPU loops vectorise as before
// and NaN propagates the same way on every backend.
template <typename T>
FPGM_HOST_DEVICE T max_of(T a, T b) {
  return a < b ? b : a;
}
template <typename T>
FPGM_HOST_DEVICE T min_of(T a, T b) {
  return b < a ? b : a;
}

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
template <typename T>
FPGM_HOST_DEVICE T square_root(T v) {
  return sqrt(v);  // CUDA's float and double overloads
}
#else
template <typename T>
FPGM_HOST_DEVICE T square_root(T v) {
  return std::sqrt(v);
}
#endif

// Whether a Gram-identity squared distance d2 = sum_sq - 2g has cancelled too far to be
// trusted. d2 * 64 is exact, so the test is bit-identical wherever it is evaluated.
template <typename T>
FPGM_HOST_DEVICE bool is_close_pair(T d2, T sum_sq) {
  return d2 * T(kCloseRatio) < sum_sq;
}

// l2 distance from a squared distance (negative rounding clamped to 0).
template <typename T>
FPGM_HOST_DEVICE T l2_from_d2(T d2) {
  return square_root(max_of(d2, T(0)));
}

// Cosine distance from the squared distance of two unit rows: 1 - cos(a, b) = |u - v|^2 / 2,
// clamped to [0, 2]. (A zero row is at distance 1 from every other row: the callers'.)
template <typename T>
FPGM_HOST_DEVICE T cos_from_d2(T d2) {
  return min_of(max_of(T(0.5) * d2, T(0)), T(2));
}

}  // namespace accuracy
}  // namespace fpgm
