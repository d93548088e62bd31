// Row preparation of the CPU distance kernels (distance.cpp): each weight becomes a Layer,
// its rows flattened to [m, D] in the accumulation type, checked for NaN / Inf, and made
// ready for one of two paths:
// - the Gram path (l2, cos): rows centred when that is needed against cancellation (the
//   contract of ../accuracy.h), cos rows normalised and their zero rows set aside, squared
//   norms kept for the epilogue; on AVX-512 CPUs, the rows packed once for gram::block;
// - the direct path (l1, and l2 / cos in few dimensions or small layers): the rows as they
//   are; on AVX-512 CPUs in few dimensions, also packed for pairs::small_block.
// Included by distance.cpp only.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../accuracy.h"
#include "../checks.h"
#include "avx512.h"
#include "gram_kernel.h"
#include "pair_kernel.h"
#include "simd_loops.h"

namespace fpgm::cpu {

using accuracy::kCentreRatio;
using accuracy::kCentreRows;
using accuracy::kDirectMaxD;
constexpr int64_t kDirectMaxWork = 1 << 20;  // small layers (N^2 D up to this) take the
                                             // direct path too: there a BLAS call costs
                                             // more than it saves

// One layer prepared for the kernels: either the Gram path (l2, cos: Gram products and
// an epilogue) or the direct path (l1, and l2 / cos in few dimensions: a loop over
// |a - b| or (a - b)^2). For cos, zero rows are taken out (`index` maps the m remaining
// rows to the original ones): their distance to any other row is 1, by definition, and
// is added afterwards.
template <typename acc_t>
struct Layer {
  at::Tensor rows;             // [m, D] contiguous acc_t: the rows, unit rows for cos, and
                               // centred on the Gram path
  std::vector<acc_t> sq;       // Gram path: |row|^2 of the prepared rows
  std::vector<int64_t> index;  // cos with zero rows: original row of each prepared row
  at::Tensor packed;           // on AVX-512 CPUs, the Gram path and the float direct path
                               // in few dimensions: the rows packed for gram::block /
                               // pairs::small_block (uses_packed_rows); else undefined
  int64_t n = 0;               // filters of the layer
  int64_t m = 0;               // prepared rows (n less the zero rows for cos)
  int64_t d = 0;
  bool direct = false;
  bool pair_kernel = false;    // direct path, float, AVX-512, not packed: pairs::block
                               // (pair_kernel.h); decided once per layer (prepare)
};

// The packed copy of rows x[m, d] for gram::block, panels split over the threads; with
// norm2, the rows' squared norms from the same pass.
template <typename T>
at::Tensor pack_rows(const T* x, int64_t m, int64_t d, const at::TensorOptions& options,
                     double* norm2 = nullptr) {
  at::Tensor packed = at::empty({gram::packed_size<T>(m, d)}, options);
  T* out = packed.template mutable_data_ptr<T>();
  const int64_t panels = (m + gram::kPanel<T> - 1) / gram::kPanel<T>;
  at::parallel_for(0, panels, std::max<int64_t>(1, 32768 / gram::kPanel<T> / d),
                   [&](int64_t b, int64_t e) { gram::pack(x, m, d, b, e, out, norm2); });
  return packed;
}

// Whether layer L (prepared rows, float or double) takes a packed copy of its rows: the
// Gram path, and the float direct path in few dimensions (pairs::small_block).
template <typename acc_t>
bool uses_packed_rows(const Layer<acc_t>& L) {
  if (!avx512_kernels()) return false;
  return !L.direct || (std::is_same_v<acc_t, float> && L.d <= pairs::kSmallD);
}

// Converts one weight to prepared rows. Throws if it holds NaN or Inf.
template <typename acc_t>
Layer<acc_t> prepare_rows(const at::Tensor& weight, Metric metric, std::string_view op,
                          const std::string& name) {
  Layer<acc_t> L;
  L.n = weight.size(0);
  L.d = weight.numel() / L.n;
  const int64_t n = L.n, d = L.d;
  // ATen's own (vectorised) conversion; no copy for contiguous input of the compute type.
  at::Tensor x = weight.reshape({n, d}).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* xp = x.const_data_ptr<acc_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / d);
  L.direct = metric == Metric::L1 || d <= kDirectMaxD || n * n * d <= kDirectMaxWork;

  // Squared row norms: finiteness, unit rows (cos), and whether l2 needs centring. The
  // packed kernel's l2 path takes them from the pass that packs the rows.
  std::vector<double> norm2(n);
  if (metric != Metric::Cos && uses_packed_rows(L))  // (cos rows change: packed by prepare)
    L.packed = pack_rows(xp, n, d, x.options(), norm2.data());
  if (!L.packed.defined()) {
    at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) norm2[i] = simd::sum_squares(xp + i * d, d);
    });
  }
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(std::isfinite(norm2[i]), nonfinite_message(op, name));
  if (metric != Metric::Cos && L.direct) {
    L.rows = x;
    L.m = n;
    return L;
  }

  std::vector<int64_t> src;  // prepared row -> original row
  std::vector<double> scale(n, 1.0);
  for (int64_t i = 0; i < n; ++i) {
    if (metric == Metric::Cos) {
      if (norm2[i] == 0.0) continue;
      scale[i] = 1.0 / std::sqrt(norm2[i]);
    }
    src.push_back(i);
  }
  L.m = static_cast<int64_t>(src.size());
  if (L.m < n) L.index = src;
  const int64_t m = L.m;
  // The centre: column means of up to kCentreRows evenly spaced (unit) rows, summed in row
  // order (deterministic). Any common translation leaves every distance exact; the centre
  // only has to sit near the rows' mean so that |a|^2 + |b|^2 - 2 a.b does not cancel, and
  // the mean of 64 spread rows is within about spread / 8 of the full one, at a fraction of
  // a pass over the weight. None on the direct path, which needs no centring.
  std::vector<double> mean(d, 0.0);
  if (!L.direct) {
    const int64_t count = std::min<int64_t>(m, kCentreRows);
    std::vector<int64_t> pick(count);
    for (int64_t k = 0; k < count; ++k) pick[k] = src[k * m / count];
    at::parallel_for(0, d, 512, [&](int64_t b, int64_t e) {
      for (int64_t r : pick) simd::add_scaled(xp + r * d + b, scale[r], mean.data() + b, e - b);
      for (int64_t k = b; k < e; ++k) mean[k] /= static_cast<double>(std::max<int64_t>(count, 1));
    });
  }
  if (metric == Metric::L2) {
    // Centring shrinks |a|^2 + |b|^2 by about |centre|^2 each: where that is under 1/16 of
    // the mean squared norm (weights of mean near zero, as most trained layers), it gains
    // nothing the close-pair check does not already guarantee; the rows are used as they
    // are, no copy.
    double centre_sq = 0.0, mean_norm2 = 0.0;
    for (int64_t k = 0; k < d; ++k) centre_sq += mean[k] * mean[k];
    for (int64_t i = 0; i < n; ++i) mean_norm2 += norm2[i];
    if (centre_sq * kCentreRatio <= mean_norm2 / static_cast<double>(n)) {
      L.rows = x;
      L.sq.assign(n, 0);
      for (int64_t i = 0; i < n; ++i) L.sq[i] = static_cast<acc_t>(norm2[i]);
      return L;
    }
  }
  L.rows = at::empty({m, d}, x.options());
  L.packed = at::Tensor();  // packs the new rows (prepare)
  acc_t* out = L.rows.template mutable_data_ptr<acc_t>();
  L.sq.resize(m);
  std::vector<double> sq(m);
  if (metric == Metric::L2) {
    // Unscaled rows: x - centre in acc_t, one rounding, as exact as rounding the
    // difference taken in double, at a fraction of the cost.
    std::vector<acc_t> centre(mean.begin(), mean.end());
    at::parallel_for(0, m, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) sq[r] = simd::shift(xp + r * d, centre.data(), out + r * d, d);
    });
  } else {
    at::parallel_for(0, m, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        sq[r] = simd::centre(xp + src[r] * d, scale[src[r]], mean.data(), out + r * d, d);
    });
  }
  for (int64_t r = 0; r < m; ++r) {
    TORCH_CHECK_VALUE(std::isfinite(sq[r]), nonfinite_message(op, name));
    L.sq[r] = static_cast<acc_t>(sq[r]);
  }
  return L;
}

// prepare_rows, and on AVX-512 CPUs the packed copy of the rows (uses_packed_rows).
template <typename acc_t>
Layer<acc_t> prepare(const at::Tensor& weight, Metric metric, std::string_view op,
                     const std::string& name) {
  Layer<acc_t> L = prepare_rows<acc_t>(weight, metric, op, name);
  if (!L.packed.defined() && L.m > 0 && uses_packed_rows(L))
    L.packed = pack_rows(L.rows.template const_data_ptr<acc_t>(), L.m, L.d, L.rows.options());
  L.pair_kernel = std::is_same_v<acc_t, float> && L.direct && !L.packed.defined() &&
                  avx512_kernels();
  return L;
}

}  // namespace fpgm::cpu
