// Row preparation of the CPU distance kernels (distance.cpp): each weight becomes a Layer,
// its rows flattened to [m, D] in the accumulation type, checked for NaN / Inf, and made
// ready for one of two paths:
// - the Gram path (l2, cos): rows centred when that is needed against cancellation (the
//   contract of ../accuracy.h), cos rows normalised and their zero rows set aside, squared
//   norms kept for the epilogue; on AVX-512 CPUs, the rows packed for gram::block;
// - the direct path (l1, and l2 / cos in few dimensions or small layers): the rows as they
//   are; on AVX-512 CPUs in few dimensions, also packed for pairs::small_block.
// Memory: the packed Gram path (AVX-512) never holds the prepared rows whole. Each panel of
// them is made from the weight's own rows (half and bfloat16 converted, centred rows
// centred) just before it is packed, and the close-pair fix-up makes the rows it needs the
// same way (prepared_row), by the same functions, so the values are the same bit for bit:
// such a layer holds its packed copy alone (and a contiguous copy of a strided weight).
// The other paths hold the prepared rows [m, D]: the weight itself where it is already of
// the compute type, contiguous, and used as it is.
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
#include "convert.h"
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

// Whether a layer of n filters of d elements takes the direct path (else the Gram path).
inline bool takes_direct_path(Metric metric, int64_t n, int64_t d) {
  return metric == Metric::L1 || d <= kDirectMaxD || n * n * d <= kDirectMaxWork;
}

// Whether a Gram-path layer makes its rows panel by panel (the packed kernel, AVX-512).
inline bool rows_from_source(bool direct) { return !direct && avx512_kernels(); }

// One layer prepared for the kernels: either the Gram path (l2, cos: Gram products and
// an epilogue) or the direct path (l1, and l2 / cos in few dimensions: a loop over
// |a - b| or (a - b)^2). For cos, zero rows are taken out (`index` maps the m remaining
// rows to the original ones): their distance to any other row is 1, by definition, and
// is added afterwards.
template <typename acc_t>
struct Layer {
  at::Tensor source;           // [n, D] contiguous: the weight's rows, in its own dtype where
                               // rows are made from it (rows_from_source), else in acc_t;
                               // released once `rows` are made from it
  at::Tensor rows;             // [m, D] contiguous acc_t: the prepared rows where they are
                               // held (unit rows for cos, centred where needed); undefined
                               // where prepared_row makes them from `source`
  std::vector<acc_t> centre;   // l2 rows made from source: row - centre; else empty
  std::vector<double> scale;   // cos rows made from source: row * scale[i] - mean
  std::vector<double> mean;
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

template <typename acc_t>
bool converts(const Layer<acc_t>& L) {  // whether source rows need converting to acc_t
  return L.source.scalar_type() != c10::CppTypeToScalarType<acc_t>::value;
}

// Row i of L.source as acc_t: in place where the source holds acc_t, else converted into
// buf (d elements).
template <typename acc_t>
const acc_t* source_row(const Layer<acc_t>& L, int64_t i, acc_t* buf) {
  if constexpr (std::is_same_v<acc_t, float>) {
    if (L.source.scalar_type() == at::kHalf) {
      to_float(L.source.template const_data_ptr<at::Half>() + i * L.d, L.d, buf);
      return buf;
    }
    if (L.source.scalar_type() == at::kBFloat16) {
      to_float(L.source.template const_data_ptr<at::BFloat16>() + i * L.d, L.d, buf);
      return buf;
    }
  }
  return L.source.template const_data_ptr<acc_t>() + i * L.d;
}

// Prepared row r made from its source row into out (d elements): l2, x - centre (one
// rounding); cos, x * scale - mean. tmp: d elements where the source is converted. Returns
// the row's squared norm (double).
template <typename acc_t>
double make_row(const Layer<acc_t>& L, int64_t r, acc_t* out, acc_t* tmp) {
  const int64_t i = L.index.empty() ? r : L.index[r];
  const acc_t* x = source_row(L, i, tmp);
  return L.scale.empty() ? simd::shift(x, L.centre.data(), out, L.d)
                         : simd::centre(x, L.scale[i], L.mean.data(), out, L.d);
}

// Prepared row r of L: in place where the rows are held, else made into buf (buf and tmp
// hold d elements each).
template <typename acc_t>
const acc_t* prepared_row(const Layer<acc_t>& L, int64_t r, acc_t* buf, acc_t* tmp) {
  if (L.rows.defined()) return L.rows.template const_data_ptr<acc_t>() + r * L.d;
  if (L.centre.empty() && L.scale.empty()) return source_row(L, r, buf);
  make_row(L, r, buf, tmp);
  return buf;
}

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

// The packed copy of L's prepared rows: straight from L.rows where they are held; else
// panel by panel, each panel's rows made from the source in a buffer of kPanel rows first
// (one panel per thread at a time: at most 16 x D floats). With norm2, the rows' squared
// norms from the packing pass; with sq, those of the centred rows from make_row.
template <typename acc_t>
at::Tensor pack_prepared(const Layer<acc_t>& L, double* norm2, double* sq) {
  const int64_t m = L.m, d = L.d;
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value);
  if (L.rows.defined()) return pack_rows(L.rows.template const_data_ptr<acc_t>(), m, d, options, norm2);
  constexpr int64_t P = gram::kPanel<acc_t>;
  at::Tensor packed = at::empty({gram::packed_size<acc_t>(m, d)}, options);
  acc_t* out = packed.template mutable_data_ptr<acc_t>();
  const bool centred = !L.centre.empty() || !L.scale.empty();
  at::parallel_for(0, (m + P - 1) / P, std::max<int64_t>(1, 32768 / P / d), [&](int64_t b, int64_t e) {
    std::vector<acc_t> panel(P * d), tmp(d);
    for (int64_t p = b; p < e; ++p) {
      const int64_t r0 = p * P, rows = std::min(P, m - r0);
      for (int64_t k = 0; k < rows; ++k) {
        acc_t* dst = panel.data() + k * d;
        if (centred) {
          const double s = make_row(L, r0 + k, dst, tmp.data());
          if (sq != nullptr) sq[r0 + k] = s;
        } else if (const acc_t* x = source_row(L, r0 + k, dst); x != dst) {
          std::copy(x, x + d, dst);
        }
      }
      gram::pack(panel.data(), rows, d, 0, 1, out + p * P * d, norm2 == nullptr ? nullptr : norm2 + r0);
    }
  });
  return packed;
}

// Whether layer L (prepared rows, float or double) takes a packed copy of its rows: the
// Gram path, and the float direct path in few dimensions (pairs::small_block).
template <typename acc_t>
bool uses_packed_rows(const Layer<acc_t>& L) {
  if (!avx512_kernels()) return false;
  return !L.direct || (std::is_same_v<acc_t, float> && L.d <= pairs::kSmallD);
}

inline int64_t row_grain(int64_t d) { return std::max<int64_t>(1, 32768 / d); }

// Squared norms of the weight's rows (double): finiteness, unit rows (cos), and whether l2
// needs centring. Where the rows are packed as they are (l2, l1: uses_packed_rows), from the
// pass that packs them (into L.packed); cos rows change, and are packed later.
template <typename acc_t>
std::vector<double> row_norms(Layer<acc_t>& L, Metric metric) {
  std::vector<double> norm2(L.n);
  if (metric != Metric::Cos && uses_packed_rows(L)) {
    L.packed = pack_prepared(L, norm2.data(), nullptr);
    return norm2;
  }
  at::parallel_for(0, L.n, row_grain(L.d), [&](int64_t b, int64_t e) {
    std::vector<acc_t> buf(converts(L) ? L.d : 0);
    for (int64_t i = b; i < e; ++i) norm2[i] = simd::sum_squares(source_row(L, i, buf.data()), L.d);
  });
  return norm2;
}

// The centre: column means of up to kCentreRows evenly spaced rows of `src` (times scale:
// unit rows for cos), summed in row order (deterministic). Any common translation leaves
// every distance exact; the centre only has to sit near the rows' mean so that
// |a|^2 + |b|^2 - 2 a.b does not cancel, and the mean of 64 spread rows is within about
// spread / 8 of the full one, at a fraction of a pass over the weight.
template <typename acc_t>
std::vector<double> sampled_mean(const Layer<acc_t>& L, const std::vector<int64_t>& src,
                                 const std::vector<double>& scale) {
  const int64_t m = static_cast<int64_t>(src.size()), d = L.d;
  const int64_t count = std::min<int64_t>(m, kCentreRows);
  std::vector<int64_t> pick(count);
  std::vector<acc_t> buf(converts(L) ? count * d : 0);  // the picked rows, converted
  std::vector<const acc_t*> row(count);
  for (int64_t k = 0; k < count; ++k) {
    pick[k] = src[k * m / count];
    row[k] = source_row(L, pick[k], buf.data() + (buf.empty() ? 0 : k * d));
  }
  std::vector<double> mean(d, 0.0);
  at::parallel_for(0, d, 512, [&](int64_t b, int64_t e) {
    for (int64_t k = 0; k < count; ++k) simd::add_scaled(row[k] + b, scale[pick[k]], mean.data() + b, e - b);
    for (int64_t j = b; j < e; ++j) mean[j] /= static_cast<double>(std::max<int64_t>(count, 1));
  });
  return mean;
}

// L.rows [m, D] made from the source (make_row), in parallel; sq[r] their squared norms.
template <typename acc_t>
at::Tensor make_rows(const Layer<acc_t>& L, double* sq) {
  at::Tensor rows = at::empty({L.m, L.d}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* out = rows.template mutable_data_ptr<acc_t>();
  at::parallel_for(0, L.m, row_grain(L.d), [&](int64_t b, int64_t e) {
    std::vector<acc_t> tmp(converts(L) ? L.d : 0);
    for (int64_t r = b; r < e; ++r) sq[r] = make_row(L, r, out + r * L.d, tmp.data());
  });
  return rows;
}

// The Gram path's (and cos's) changed rows: l2 centred by `mean` (rounded once to acc_t),
// cos scaled to unit rows less `mean`; made panel by panel into the packed copy on the
// packed Gram path, else held in L.rows. Throws if a row overflows.
template <typename acc_t>
void transform_rows(Layer<acc_t>& L, Metric metric, std::vector<double> scale,
                    std::vector<double> mean, std::string_view op, const std::string& name) {
  if (metric == Metric::L2) L.centre.assign(mean.begin(), mean.end());
  else L.scale = std::move(scale), L.mean = std::move(mean);
  L.rows = at::Tensor();
  L.packed = at::Tensor();
  std::vector<double> sq(L.m);
  if (!rows_from_source(L.direct)) {
    L.rows = make_rows(L, sq.data());
    L.source = at::Tensor();  // the rows are held: nothing reads the source any more
  } else if (L.m > 0) {
    L.packed = pack_prepared(L, nullptr, sq.data());
  }
  L.sq.resize(L.m);
  for (int64_t r = 0; r < L.m; ++r) {
    TORCH_CHECK_VALUE(std::isfinite(sq[r]), nonfinite_message(op, name));
    L.sq[r] = static_cast<acc_t>(sq[r]);
  }
}

// Converts one weight to prepared rows. Throws if it holds NaN or Inf.
template <typename acc_t>
Layer<acc_t> prepare_rows(const at::Tensor& weight, Metric metric, std::string_view op,
                          const std::string& name) {
  Layer<acc_t> L;
  L.n = L.m = weight.size(0);
  L.d = weight.numel() / L.n;
  const int64_t n = L.n, d = L.d;
  L.direct = takes_direct_path(metric, n, d);
  // The weight's rows: its own dtype where rows are made from them panel by panel, else
  // converted by ATen (vectorised). No copy for contiguous input of that type.
  const at::Tensor x = weight.reshape({n, d});
  L.source = (rows_from_source(L.direct) ? x : x.to(c10::CppTypeToScalarType<acc_t>::value)).contiguous();
  if (!converts(L)) L.rows = L.source;

  const std::vector<double> norm2 = row_norms(L, metric);
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(std::isfinite(norm2[i]), nonfinite_message(op, name));
  if (metric != Metric::Cos && L.direct) return L;

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
  // None on the direct path, which needs no centring (cos: unit rows less zero).
  std::vector<double> mean = L.direct ? std::vector<double>(d, 0.0) : sampled_mean(L, src, scale);
  if (L.m < n) L.index = src;
  if (metric == Metric::L2) {
    // Centring shrinks |a|^2 + |b|^2 by about |centre|^2 each: where that is under 1/16 of
    // the mean squared norm (weights of mean near zero, as most trained layers), it gains
    // nothing the close-pair check does not already guarantee; the rows are used as they
    // are, no copy.
    double centre_sq = 0.0, mean_norm2 = 0.0;
    for (int64_t k = 0; k < d; ++k) centre_sq += mean[k] * mean[k];
    for (int64_t i = 0; i < n; ++i) mean_norm2 += norm2[i];
    if (centre_sq * kCentreRatio <= mean_norm2 / static_cast<double>(n)) {
      L.sq.assign(norm2.begin(), norm2.end());
      return L;
    }
  }
  transform_rows(L, metric, std::move(scale), std::move(mean), op, name);
  return L;
}

// prepare_rows, and on AVX-512 CPUs the packed copy of the rows (uses_packed_rows).
template <typename acc_t>
Layer<acc_t> prepare(const at::Tensor& weight, Metric metric, std::string_view op,
                     const std::string& name) {
  Layer<acc_t> L = prepare_rows<acc_t>(weight, metric, op, name);
  if (!L.packed.defined() && L.m > 0 && uses_packed_rows(L))
    L.packed = pack_prepared(L, nullptr, nullptr);
  L.pair_kernel = std::is_same_v<acc_t, float> && L.direct && !L.packed.defined() &&
                  avx512_kernels();
  return L;
}

}  // namespace fpgm::cpu
