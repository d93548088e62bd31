// CUDA kernel of fpgm::gather_channels: out[k] = tensors[k].index_select(dims[k], indices[k])
// for every tensor of the call in ONE launch (a descriptor table, multi-tensor-apply
// style; 16-byte words where alignment allows). Device code: kernels/gather.cuh.
//
// Launched on torch's current stream under a device guard; no host synchronisation. The
// descriptor table goes to the device with one asynchronous copy from pinned memory.
//
// Index range: checked on the device, as torch's index_select on CUDA does: an index out
// of range trips CUDA_KERNEL_ASSERT ("device-side assert triggered", reported by the next
// synchronising call; the CUDA context is then unusable, as with any device assert). The
// kernel clamps the index too, so it never reads outside the source. The CPU backend,
// which can look at the indices for free, raises IndexError instead.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <climits>
#include <cstring>
#include <vector>

#include "../gather_checks.h"
#include "runtime.h"

#ifdef CUDA_KERNEL_ASSERT_PRINTF
#define FPGM_INDEX_ASSERT(ok, tensor, index, size)                                      \
  CUDA_KERNEL_ASSERT_PRINTF(ok, "fpgm.gather_channels: indices[%d] holds %lld, out of " \
                                "range for size %lld", (tensor), (index), (size))
#else
#define FPGM_INDEX_ASSERT(ok, tensor, index, size) CUDA_KERNEL_ASSERT(ok)
#endif
#include "kernels/gather.cuh"

namespace fpgm {
namespace {

std::vector<at::Tensor> gather_channels_cuda(at::TensorList tensors, at::IntArrayRef dims,
                                             at::TensorList indices) {
  const GatherArgs args = check_gather_args(tensors, dims, indices);
  if (tensors.empty()) return {};
  const c10::cuda::CUDAGuard guard(tensors[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  check_not_capturing(stream, "gather_channels");
  std::vector<at::Tensor> outs, keep_alive;
  std::vector<kernels::GatherTensor> parts;
  for (const auto k : c10::irange(tensors.size())) {
    const at::Tensor src = tensors[k].contiguous();
    const at::Tensor index = indices[k].contiguous();  // int64 or int32, read as such
    const int64_t dim = args.dims[k];
    auto shape = src.sizes().vec();
    const int64_t channels = shape[dim], kept = index.numel();
    shape[dim] = kept;
    at::Tensor out = at::empty(shape, src.options());
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < dim; ++i) outer *= src.size(i);
    for (int64_t i = dim + 1; i < src.dim(); ++i) inner *= src.size(i);
    parts.push_back({src.const_data_ptr(), out.mutable_data_ptr(), index.const_data_ptr(),
                     index.scalar_type() == at::kLong, outer, channels, kept,
                     inner * static_cast<int64_t>(src.element_size())});
    keep_alive.push_back(src);
    keep_alive.push_back(index);
    outs.push_back(out);
  }
  const kernels::GatherPlan plan = kernels::plan_gather(parts);
  if (plan.blocks == 0) return outs;  // nothing to copy (and no empty launch)
  TORCH_CHECK(plan.blocks <= INT_MAX, "fpgm.gather_channels: too much work for one launch");
  const int64_t bytes = static_cast<int64_t>(plan.descs.size() * sizeof(kernels::GatherDesc));
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.mutable_data_ptr(), plan.descs.data(), bytes);
  at::Tensor table = at::empty({bytes}, tensors[0].options().dtype(at::kByte));
  table.copy_(host, /*non_blocking=*/true);
  kernels::launch_gather(
      plan, static_cast<const kernels::GatherDesc*>(table.const_data_ptr()),
      [stream](auto kernel, long long blocks, int threads, auto... a) {
        kernel<<<static_cast<unsigned int>(blocks), threads, 0, stream>>>(a...);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpgm, CUDA, m) {
  m.impl("gather_channels", &gather_channels_cuda);
}

}  // namespace fpgm
