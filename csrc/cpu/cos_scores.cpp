// Cosine scores need no pairwise work. With u_i the unit rows (zero rows set aside) and
// v_i = u_i - mean(u), 1 - cos(a_i, a_j) = |u_i - u_j|^2 / 2 = |v_i - v_j|^2 / 2, and as
// sum_j v_j = 0,
//     g_i = sum_j |v_i - v_j|^2 / 2 = (m |v_i|^2 + sum_j |v_j|^2) / 2        (m rows)
// a sum of non-negative terms, computed in float64: no cancellation, near-duplicate
// filters included. A zero row is at distance 1 from every other row (the contract), so
// each of the z zero rows adds 1 to every score, and scores N - 1 itself.
#include "cos_scores.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "../checks.h"
#include "simd_loops.h"

namespace fpgm {
namespace {

template <typename acc_t>
at::Tensor cos_scores_one(const at::Tensor& weight, std::string_view op, const std::string& name) {
  const int64_t n = weight.size(0), d = weight.numel() / n;
  const at::Tensor x = weight.reshape({n, d}).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* xp = x.template const_data_ptr<acc_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / d);

  std::vector<double> scale(n);  // 1 / |row|, 0 for a zero row
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const double s = simd::sum_squares(xp + i * d, d);
      scale[i] = !std::isfinite(s) ? std::nan("") : s > 0 ? 1.0 / std::sqrt(s) : 0.0;
    }
  });
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(!std::isnan(scale[i]), nonfinite_message(op, name));
    m += scale[i] > 0;
  }
  // Mean of the unit rows, summed in row order (deterministic).
  std::vector<double> mean(d, 0.0);
  at::parallel_for(0, d, 512, [&](int64_t b, int64_t e) {
    for (int64_t i = 0; i < n; ++i)
      if (scale[i] > 0) simd::add_scaled(xp + i * d + b, scale[i], mean.data() + b, e - b);
    for (int64_t k = b; k < e; ++k) mean[k] /= static_cast<double>(std::max<int64_t>(m, 1));
  });
  std::vector<double> v2(n, 0.0);
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      if (scale[i] > 0) v2[i] = simd::centred_norm2(xp + i * d, scale[i], mean.data(), d);
  });
  double total = 0.0;
  for (int64_t i = 0; i < n; ++i) total += v2[i];
  const double zeros = static_cast<double>(n - m);
  at::Tensor out = at::empty({n}, x.options());
  acc_t* o = out.template mutable_data_ptr<acc_t>();
  for (int64_t i = 0; i < n; ++i)
    o[i] = static_cast<acc_t>(scale[i] > 0 ? 0.5 * (m * v2[i] + total) + zeros
                                           : static_cast<double>(n - 1));
  return out;
}

}  // namespace

std::vector<at::Tensor> cos_scores_cpu(at::TensorList weights, std::string_view op,
                                       const std::string& name, bool indexed) {
  std::vector<at::Tensor> out;
  for (size_t k = 0; k < weights.size(); ++k) {
    const std::string arg = indexed ? name + "[" + std::to_string(k) + "]" : name;
    out.push_back(weights[k].scalar_type() == at::kDouble
                      ? cos_scores_one<double>(weights[k], op, arg)
                      : cos_scores_one<float>(weights[k], op, arg));
  }
  return out;
}

}  // namespace fpgm
