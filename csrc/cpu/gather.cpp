// CPU kernel of fpgm::gather_channels: out[k] = tensors[k].index_select(dims[k], indices[k])
// for many tensors in one call. Each tensor is seen as [outer, C, inner]; every kept
// channel of every outer index is one contiguous block of inner elements, copied with
// memcpy. All blocks of all tensors form one parallel loop.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "../gather_checks.h"

namespace fpgm {
namespace {

// Every index of indices[k] must address a channel of tensors[k] along dim.
void check_index_range(const at::Tensor& t, int64_t dim, const at::Tensor& index, size_t k) {
  const int64_t channels = t.size(dim);
  const int64_t* p = index.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < index.numel(); ++i)
    TORCH_CHECK_INDEX(p[i] >= 0 && p[i] < channels, "fpgm.gather_channels: indices[", k,
                      "] holds ", p[i], ", out of range for dimension ", dim, " of size ",
                      channels, " of tensors[", k, "]");
}

struct Plan {
  const char* src;
  char* dst;
  const int64_t* index;
  int64_t outer, channels, kept, block_bytes;
  int64_t first_block;  // global number of this tensor's first block (outer * kept blocks)
};

std::vector<at::Tensor> gather_channels_cpu(at::TensorList tensors, at::IntArrayRef dims,
                                            at::TensorList indices) {
  const GatherArgs args = check_gather_args(tensors, dims, indices);
  std::vector<at::Tensor> outs;
  std::vector<at::Tensor> keep_alive;  // contiguous copies and int64 indices
  std::vector<Plan> plans;
  int64_t blocks = 0;
  for (const auto k : c10::irange(tensors.size())) {
    const at::Tensor src = tensors[k].contiguous();
    const at::Tensor index = indices[k].to(at::kLong).contiguous();
    const int64_t dim = args.dims[k];
    check_index_range(tensors[k], dim, index, k);
    auto shape = src.sizes().vec();
    const int64_t channels = shape[dim];
    const int64_t kept = index.numel();
    shape[dim] = kept;
    at::Tensor out = at::empty(shape, src.options());
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < dim; ++i) outer *= src.size(i);
    for (int64_t i = dim + 1; i < src.dim(); ++i) inner *= src.size(i);
    plans.push_back({static_cast<const char*>(src.const_data_ptr()),
                     static_cast<char*>(out.mutable_data_ptr()), index.const_data_ptr<int64_t>(),
                     outer, channels, kept, inner * static_cast<int64_t>(src.element_size()),
                     blocks});
    blocks += outer * kept;
    keep_alive.push_back(src);
    keep_alive.push_back(index);
    outs.push_back(out);
  }
  if (blocks == 0) return outs;
  // Grain: about 64 KiB of copies per task.
  int64_t bytes = 0;
  for (const auto& p : plans) bytes += p.outer * p.kept * p.block_bytes;
  const int64_t grain = std::max<int64_t>(1, blocks * 65536 / std::max<int64_t>(bytes, 1));
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    // The plan holding block `begin`; plans are in order of first_block.
    auto p = std::upper_bound(plans.begin(), plans.end(), begin,
                              [](int64_t b, const Plan& q) { return b < q.first_block; }) - 1;
    for (int64_t b = begin; b < end;) {
      while (b >= p->first_block + p->outer * p->kept) ++p;
      const int64_t local_end = std::min(end, p->first_block + p->outer * p->kept);
      for (; b < local_end; ++b) {
        const int64_t local = b - p->first_block;
        const int64_t o = local / p->kept, c = local % p->kept;
        std::memcpy(p->dst + local * p->block_bytes,
                    p->src + (o * p->channels + p->index[c]) * p->block_bytes, p->block_bytes);
      }
    }
  });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpgm, CPU, m) {
  m.impl("gather_channels", &gather_channels_cpu);
}

}  // namespace fpgm
