// CPU kernel of fpgm::gather_channels: out[k] = tensors[k].index_select(dims[k], indices[k])
// for many tensors in one call. Each tensor is seen as [outer, C, inner]; every kept
// channel of every outer index is one contiguous block of inner elements. All blocks of
// all tensors form one parallel loop. Blocks of 1, 2, 4 or 8 bytes (BatchNorm vectors,
// the input channels of 1x1 convs) are copied as single words and blocks of a few words
// (3x3 filters: 36 bytes) by a word loop, since a memcpy call per block costs more than
// the copy; larger blocks by memcpy.
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

// Copies blocks [begin, end) of one tensor, block b being kept channel b % kept of outer
// index b / kept. B > 0: blocks of B bytes, a compile-time size, so each copy is a move or
// two (no call, no alignment assumed) and the loop over one outer index's kept channels is
// a plain gather the compiler can vectorise; B == 0: blocks of p.block_bytes by memcpy.
template <int64_t B>
void copy_blocks_of(const Plan& p, int64_t begin, int64_t end) {
  const int64_t block = B > 0 ? B : p.block_bytes;
  int64_t o = begin / p.kept, c = begin % p.kept;
  char* to = p.dst + begin * block;
  for (int64_t b = begin; b < end; ++o, c = 0) {
    const int64_t run = std::min(p.kept - c, end - b);
    const char* from = p.src + o * p.channels * block;
    const int64_t* index = p.index + c;
    for (int64_t j = 0; j < run; ++j) std::memcpy(to + j * block, from + index[j] * block, block);
    b += run;
    to += run * block;
  }
}

// Sizes worth a compiled copy: 1-8 byte words (BatchNorm vectors, the input channels of
// 1x1 convs and Linear layers), k x k filters in float32 (3x3: 36 bytes, 5x5, 7x7), 3x3 in
// half and double.
void copy_blocks(const Plan& p, int64_t begin, int64_t end) {
  switch (p.block_bytes) {
    case 1: return copy_blocks_of<1>(p, begin, end);
    case 2: return copy_blocks_of<2>(p, begin, end);
    case 4: return copy_blocks_of<4>(p, begin, end);
    case 8: return copy_blocks_of<8>(p, begin, end);
    case 16: return copy_blocks_of<16>(p, begin, end);
    case 18: return copy_blocks_of<18>(p, begin, end);
    case 36: return copy_blocks_of<36>(p, begin, end);
    case 72: return copy_blocks_of<72>(p, begin, end);
    case 100: return copy_blocks_of<100>(p, begin, end);
    case 196: return copy_blocks_of<196>(p, begin, end);
    default: return copy_blocks_of<0>(p, begin, end);
  }
}

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
      copy_blocks(*p, b - p->first_block, local_end - p->first_block);
      b = local_end;
    }
  });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(fpgm, CPU, m) {
  m.impl("gather_channels", &gather_channels_cpu);
}

}  // namespace fpgm
