// Input validation shared by every backend, so the errors read the same everywhere.
// Every message starts with "fpgm.<op>:" and names the argument at fault.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <string>
#include <string_view>

namespace fpgm {

enum class Metric { L2, L1, Cos };

// "torch.int64", as Python spells a dtype, so messages read the same from every backend.
inline std::string dtype_name(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

inline Metric parse_metric(std::string_view op, std::string_view metric) {
  if (metric == "l2") return Metric::L2;
  if (metric == "l1") return Metric::L1;
  if (metric == "cos") return Metric::Cos;
  TORCH_CHECK_VALUE(false, "fpgm.", op, ": unknown metric '", metric,
                    "' (expected 'l2', 'l1' or 'cos')");
}

// A filter bank: floating point, rank >= min_rank, N > 0 filters of D > 0 elements.
inline void check_weight(std::string_view op, const std::string& name, const at::Tensor& w,
                         int64_t min_rank = 1) {
  TORCH_CHECK_VALUE(w.defined(), "fpgm.", op, ": ", name, " is undefined");
  TORCH_CHECK_VALUE(w.layout() == at::kStrided, "fpgm.", op, ": ", name,
                    " must be a dense (strided) tensor, got layout ", w.layout());
  const auto t = w.scalar_type();
  TORCH_CHECK_VALUE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                    "fpgm.", op, ": ", name,
                    " must be float16, bfloat16, float32 or float64, got ", dtype_name(t));
  TORCH_CHECK_VALUE(w.dim() >= min_rank, "fpgm.", op, ": ", name, " must have rank >= ",
                    min_rank, " ([N, ...] filters), got shape ", w.sizes());
  TORCH_CHECK_VALUE(w.numel() > 0, "fpgm.", op, ": ", name,
                    " has no elements (N = 0 or D = 0), shape ", w.sizes());
}

// The layers of distance_scores_multi: each a filter bank (named weights[k]), all of one
// dtype and on one device.
inline void check_weights(at::TensorList weights) {
  for (size_t k = 0; k < weights.size(); ++k) {
    const std::string arg = "weights[" + std::to_string(k) + "]";
    check_weight("distance_scores_multi", arg, weights[k]);
    TORCH_CHECK_VALUE(weights[k].scalar_type() == weights[0].scalar_type(),
                      "fpgm.distance_scores_multi: ", arg, " has dtype ",
                      dtype_name(weights[k].scalar_type()), " but weights[0] has ",
                      dtype_name(weights[0].scalar_type()), "; all layers must share one dtype");
    TORCH_CHECK_VALUE(weights[k].device() == weights[0].device(),
                      "fpgm.distance_scores_multi: ", arg, " is on ", weights[k].device(),
                      " but weights[0] is on ", weights[0].device());
  }
}

// distance_matrix: a [B, N, D] weight is a batch of B layers (result [B, N, N]); any other
// rank is one layer [N, ...] (result [N, N]). fpgm_ext/_checks.py holds the same rule for
// the reference and fake kernels.
inline bool is_layer_batch(const at::Tensor& weight) { return weight.dim() == 3; }

inline std::string nonfinite_message(std::string_view op, const std::string& name) {
  return "fpgm." + std::string(op) + ": " + name +
         " contains NaN or Inf; FPGM scores would be meaningless";
}

}  // namespace fpgm
