// Argument checks of fpgm::gather_channels shared by every backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/core/TensorBody.h>
#include <c10/util/Exception.h>
#include <c10/util/irange.h>

#include <vector>

#include "checks.h"

namespace fpgm {

struct GatherArgs {
  std::vector<int64_t> dims;  // wrapped into [0, rank)
};

inline GatherArgs check_gather_args(at::TensorList tensors, at::IntArrayRef dims,
                                    at::TensorList indices) {
  TORCH_CHECK_VALUE(tensors.size() == dims.size() && tensors.size() == indices.size(),
                    "fpgm.gather_channels: tensors, dims and indices must have the same length, "
                    "got ", tensors.size(), ", ", dims.size(), " and ", indices.size());
  GatherArgs args;
  for (const auto k : c10::irange(tensors.size())) {
    const at::Tensor& t = tensors[k];
    const at::Tensor& idx = indices[k];
    TORCH_CHECK_VALUE(t.defined() && t.layout() == at::kStrided,
                      "fpgm.gather_channels: tensors[", k, "] must be a dense tensor");
    TORCH_CHECK_VALUE(t.dim() >= 1, "fpgm.gather_channels: tensors[", k,
                      "] must have rank >= 1, got a scalar");
    TORCH_CHECK_VALUE(dims[k] >= -t.dim() && dims[k] < t.dim(), "fpgm.gather_channels: dims[", k,
                      "] = ", dims[k], " is out of range for tensors[", k, "] of rank ", t.dim());
    TORCH_CHECK_VALUE(idx.defined() && (idx.scalar_type() == at::kLong || idx.scalar_type() == at::kInt),
                      "fpgm.gather_channels: indices[", k, "] must be an int64 or int32 tensor, got ",
                      idx.defined() ? dtype_name(idx.scalar_type()) : "undefined");
    TORCH_CHECK_VALUE(idx.dim() == 1, "fpgm.gather_channels: indices[", k,
                      "] must be 1-D, got shape ", idx.sizes());
    TORCH_CHECK_VALUE(idx.device() == t.device(), "fpgm.gather_channels: indices[", k, "] is on ",
                      idx.device(), " but tensors[", k, "] is on ", t.device());
    TORCH_CHECK_VALUE(t.device() == tensors[0].device(), "fpgm.gather_channels: tensors[", k,
                      "] is on ", t.device(), " but tensors[0] is on ", tensors[0].device());
    const int64_t dim = dims[k] < 0 ? dims[k] + t.dim() : dims[k];
    // Checked here, not by the kernels: with no channel to address, the CUDA kernel's
    // clamped read would still fall outside the source.
    TORCH_CHECK_INDEX(t.size(dim) > 0 || idx.numel() == 0, "fpgm.gather_channels: indices[", k,
                      "] holds ", idx.numel(), " indices but dimension ", dim, " of tensors[", k,
                      "] has size 0");
    args.dims.push_back(dim);
  }
  return args;
}

}  // namespace fpgm
