#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <string_view>
#include <vector>

namespace fpgm {

// Cosine FPGM scores of each weight in closed form, O(N D) instead of O(N^2 D).
// `name` names the argument in errors ("weights" + "[k]" when indexed).
std::vector<at::Tensor> cos_scores_cpu(at::TensorList weights, std::string_view op,
                                       const std::string& name, bool indexed);

}  // namespace fpgm
