// CUDA kernels of fpgm::distance_scores, distance_matrix and distance_scores_multi.
//
// The device code is csrc/cuda/kernels/distance.cuh (no torch headers; also compiled by
// NVRTC and, for the tests, on the CPU through tests/emulation). This file only checks
// the arguments (the shared checks of csrc/checks.h), allocates, and launches on torch's
// current stream under a device guard. Per call, whatever the number of layers:
//   - one pinned host buffer holding the work tables, copied with one asynchronous
//     host -> device transfer into the start of one device workspace;
//   - the launches of kernels::launch_distance (five for l2/cos scores, one fewer for l1
//     or a matrix, one more when few tile pairs get their columns split to fill the
//     GPU), each covering all layers; every launch checked with C10_CUDA_KERNEL_LAUNCH_CHECK.
// No host synchronisation anywhere: no .item(), no device -> host copy. Not capturable in
// a CUDA graph (the table is copied from host memory at each call): refused clearly.
//
// Results: scores float32 (float64 for float64 input), summed with float64 atomics (the
// order of additions varies between runs, in the last bits of a float64). No N x N buffer
// for scores. NaN or Inf in a weight cannot raise here without a synchronisation: the
// scores of that layer (all of its matrix) come back NaN instead; see distance.cuh.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <climits>
#include <cstring>
#include <string>
#include <vector>

#include "../checks.h"
#include "runtime.h"
#include "kernels/distance_launch.cuh"

namespace fpgm {
namespace {

int metric_id(Metric m) {
  switch (m) {
    case Metric::L2: return kernels::kMetricL2;
    case Metric::L1: return kernels::kMetricL1;
    case Metric::Cos: return kernels::kMetricCos;
  }
  return kernels::kMetricL2;
}

// Launches on the current stream; the kernels find their work in device tables.
struct StreamLaunch {
  cudaStream_t stream;
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, long long blocks, int threads, Args... args) const {
    TORCH_CHECK(blocks > 0 && blocks <= INT_MAX, "fpgm: too much work for one launch (", blocks,
                " blocks)");
    kernel<<<static_cast<unsigned int>(blocks), threads, 0, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// The tile blocks the GPU runs at once, for the tile kernel this call launches: below that
// many tile pairs, plan_distance splits their columns (split-K) to fill whole waves.
template <typename acc_t>
long long target_blocks(Metric metric, bool matrix, int device) {
  const bool l1 = metric == Metric::L1;
  const void* kernel =
      l1 ? (matrix ? reinterpret_cast<const void*>(&kernels::tile_kernel<acc_t, true, true>)
                   : reinterpret_cast<const void*>(&kernels::tile_kernel<acc_t, true, false>))
         : (matrix ? reinterpret_cast<const void*>(&kernels::tile_kernel<acc_t, false, true>)
                   : reinterpret_cast<const void*>(&kernels::tile_kernel<acc_t, false, false>));
  return resident_blocks(kernel, kernels::kTileThreads, device);
}

// A pinned host copy of `bytes` bytes, transferred asynchronously into dst (a device
// byte tensor). The caching host allocator keeps the pinned block until the copy is done.
void copy_table_async(const at::Tensor& dst, const std::vector<unsigned char>& bytes) {
  at::Tensor host = at::empty({static_cast<int64_t>(bytes.size())},
                              at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.mutable_data_ptr(), bytes.data(), bytes.size());
  dst.copy_(host, /*non_blocking=*/true);
}

// One call over layers xs[l] ([n, d], contiguous, one dtype and device) into outs[l]
// (scores [n] or matrices [n, n] of the result dtype).
template <typename scalar_t, typename acc_t>
void run_layers(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& outs,
                Metric metric, bool matrix) {
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  std::vector<long long> n, d;
  for (const auto& x : xs) {
    n.push_back(x.size(0));
    d.push_back(x.size(1));
  }
  kernels::DistancePlan plan =
      kernels::plan_distance(n.data(), d.data(), static_cast<int>(xs.size()), sizeof(acc_t),
                             metric_id(metric),
                             target_blocks<acc_t>(metric, matrix, xs[0].device().index()));
  for (size_t l = 0; l < xs.size(); ++l) {
    plan.layers[l].x = xs[l].const_data_ptr();
    plan.layers[l].out = outs[l].mutable_data_ptr();
  }
  std::vector<unsigned char> table(plan.table_bytes);
  plan.write_table(table.data());
  at::Tensor workspace =
      at::empty({static_cast<int64_t>(plan.total_bytes)}, xs[0].options().dtype(at::kByte));
  copy_table_async(workspace.narrow(0, 0, static_cast<int64_t>(plan.table_bytes)), table);
  const auto args = plan.template args<acc_t>(workspace.mutable_data_ptr(), metric_id(metric));
  kernels::launch_distance<scalar_t, acc_t>(plan, args, matrix, StreamLaunch{stream});
}

at::ScalarType result_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void run(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& outs, Metric metric,
         bool matrix) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xs[0].scalar_type(), "fpgm_distance_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    run_layers<scalar_t, acc_t>(xs, outs, metric, matrix);
  });
}

// [N, ...] -> rows [N, D], contiguous (a copy on the stream when needed).
at::Tensor rows_of(const at::Tensor& w) {
  return w.reshape({w.size(0), w.numel() / w.size(0)}).contiguous();
}

at::Tensor distance_scores_cuda(const at::Tensor& weight, c10::string_view metric) {
  const Metric m = parse_metric("distance_scores", metric);
  check_weight("distance_scores", "weight", weight);
  const c10::cuda::CUDAGuard guard(weight.device());
  check_not_capturing(c10::cuda::getCurrentCUDAStream(), "distance_scores");
  at::Tensor out = at::empty({weight.size(0)}, weight.options().dtype(result_type(weight.scalar_type())));
  run({rows_of(weight)}, {out}, m, false);
  return out;
}

std::vector<at::Tensor> distance_scores_multi_cuda(at::TensorList weights,
                                                   c10::string_view metric) {
  const Metric m = parse_metric("distance_scores_multi", metric);
  if (weights.empty()) return {};
  check_weights(weights);
  const c10::cuda::CUDAGuard guard(weights[0].device());
  check_not_capturing(c10::cuda::getCurrentCUDAStream(), "distance_scores_multi");
  const auto options = weights[0].options().dtype(result_type(weights[0].scalar_type()));
  std::vector<at::Tensor> xs, outs;
  for (const auto& w : weights) {
    xs.push_back(rows_of(w));
    outs.push_back(at::empty({w.size(0)}, options));
  }
  run(xs, outs, m, false);
  return outs;
}

at::Tensor distance_matrix_cuda(const at::Tensor& weight, c10::string_view metric) {
  const Metric m = parse_metric("distance_matrix", metric);
  check_weight("distance_matrix", "weight", weight);
  const c10::cuda::CUDAGuard guard(weight.device());
  check_not_capturing(c10::cuda::getCurrentCUDAStream(), "distance_matrix");
  const auto options = weight.options().dtype(result_type(weight.scalar_type()));
  if (!is_layer_batch(weight)) {
    const int64_t n = weight.size(0);
    at::Tensor out = at::empty({n, n}, options);
    run({rows_of(weight)}, {out}, m, true);
    return out;
  }
  const at::Tensor x = weight.contiguous();
  const int64_t b = x.size(0), n = x.size(1);
  at::Tensor out = at::empty({b, n, n}, options);
  std::vector<at::Tensor> xs, outs;
  for (int64_t i = 0; i < b; ++i) {
    xs.push_back(x.select(0, i));
    outs.push_back(out.select(0, i));
  }
  run(xs, outs, m, true);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpgm, CUDA, m) {
  m.impl("distance_scores", &distance_scores_cuda);
  m.impl("distance_matrix", &distance_matrix_cuda);
  m.impl("distance_scores_multi", &distance_scores_multi_cuda);
}

}  // namespace fpgm
