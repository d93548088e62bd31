// Device code of fpgm::gather_channels: out[k] = tensors[k].index_select(dims[k], indices[k])
// for all tensors in ONE launch (multi-tensor-apply style). No torch or CUDA header: see
// common.cuh.
//
// Each tensor is seen as [outer, channels, inner]; a kept channel of one outer index is a
// block of inner * element_size contiguous bytes, copied in words of 16 bytes (uint4)
// where the block size and both base addresses allow it, else 8, 4, 2 or 1 bytes. The
// host builds one GatherDesc per tensor; every CUDA block copies one chunk of
// kGatherChunk words of one tensor, found by binary search on first_block.
//
// Index range: checking it on the host would need a device -> host copy (a
// synchronisation). The kernel asserts instead (FPGM_INDEX_ASSERT: CUDA_KERNEL_ASSERT in
// the torch build, a "device-side assert triggered" error at the next synchronisation,
// as torch's own index_select on CUDA) and clamps the index, so no byte outside the
// source is ever read, even with assertions compiled out.
#pragma once

#include "common.cuh"

#ifdef FPGM_KERNELS_HOST
#include <cstdint>
#include <cstdio>
#include <vector>
#endif

#ifndef FPGM_INDEX_ASSERT
#define FPGM_INDEX_ASSERT(ok, tensor, index, size)                                       \
  do {                                                                                   \
    if (!(ok)) {                                                                         \
      printf("fpgm.gather_channels: indices[%d] holds %lld, out of range for size %lld\n", \
             (tensor), (index), (size));                                                 \
      __trap();                                                                          \
    }                                                                                    \
  } while (0)
#endif

namespace fpgm {
namespace kernels {

constexpr int kGatherThreads = 256;
constexpr long long kGatherChunk = kGatherThreads * 8;  // words per block

struct GatherDesc {
  const unsigned char* src;  // [outer, channels, inner], contiguous
  unsigned char* dst;        // [outer, kept, inner], contiguous
  const void* index;         // [kept] int64 or int32
  long long channels, kept;
  long long words_per_block;  // inner * element_size / word_bytes
  long long words;            // outer * kept * words_per_block
  long long first_block;      // this tensor's first CUDA block
  int word_bytes;             // 16, 8, 4, 2 or 1
  int index_is64;
  int tensor;                 // position in the op's list, for the assertion message
  int pad_;
};

#ifdef __CUDACC_RTC__
typedef uint4 fpgm_word16;
#elif defined(__CUDACC__)
typedef uint4 fpgm_word16;
#else
struct alignas(16) fpgm_word16 {
  unsigned int x, y, z, w;
};
#endif

template <typename word_t>
__device__ __forceinline__ void gather_words(const GatherDesc& g, long long begin, long long end) {
  const word_t* src = reinterpret_cast<const word_t*>(g.src);
  word_t* dst = reinterpret_cast<word_t*>(g.dst);
  for (long long q = begin + threadIdx.x; q < end; q += kGatherThreads) {
    const long long row = q / g.words_per_block, w = q - row * g.words_per_block;
    const long long o = row / g.kept, c = row - o * g.kept;
    long long ch = g.index_is64 ? static_cast<const long long*>(g.index)[c]
                                : static_cast<long long>(static_cast<const int*>(g.index)[c]);
    FPGM_INDEX_ASSERT(ch >= 0 && ch < g.channels, g.tensor, ch, g.channels);
    ch = ch < 0 ? 0 : (ch >= g.channels ? g.channels - 1 : ch);
    dst[q] = src[(o * g.channels + ch) * g.words_per_block + w];
  }
}

__global__ void __launch_bounds__(kGatherThreads) gather_kernel(const GatherDesc* descs,
                                                                int count) {
  const long long b = blockIdx.x;
  const int t = find_segment(count, b, [descs](int i) { return descs[i].first_block; });
  const GatherDesc g = descs[t];
  const long long begin = (b - g.first_block) * kGatherChunk;
  const long long end = begin + kGatherChunk < g.words ? begin + kGatherChunk : g.words;
  switch (g.word_bytes) {
    case 16: gather_words<fpgm_word16>(g, begin, end); break;
    case 8: gather_words<unsigned long long>(g, begin, end); break;
    case 4: gather_words<unsigned int>(g, begin, end); break;
    case 2: gather_words<unsigned short>(g, begin, end); break;
    default: gather_words<unsigned char>(g, begin, end); break;
  }
}

#ifdef FPGM_KERNELS_HOST

// One tensor of a gather call, as the host sees it.
struct GatherTensor {
  const void* src;  // contiguous source
  void* dst;        // contiguous output
  const void* index;
  bool index_is64;
  long long outer, channels, kept, block_bytes;  // block_bytes = inner * element_size
};

struct GatherPlan {
  std::vector<GatherDesc> descs;
  long long blocks = 0;
};

// The widest word (16, 8, 4, 2, 1 bytes) dividing the block size and both addresses.
inline int gather_word_bytes(long long block_bytes, const void* src, const void* dst) {
  const auto a = reinterpret_cast<std::uintptr_t>(src), b = reinterpret_cast<std::uintptr_t>(dst);
  for (int w = 16; w > 1; w /= 2)
    if (block_bytes % w == 0 && a % w == 0 && b % w == 0) return w;
  return 1;
}

inline GatherPlan plan_gather(const std::vector<GatherTensor>& tensors) {
  GatherPlan p;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const GatherTensor& t = tensors[k];
    GatherDesc g{};
    g.src = static_cast<const unsigned char*>(t.src);
    g.dst = static_cast<unsigned char*>(t.dst);
    g.index = t.index;
    g.index_is64 = t.index_is64 ? 1 : 0;
    g.channels = t.channels;
    g.kept = t.kept;
    g.word_bytes = gather_word_bytes(t.block_bytes, t.src, t.dst);
    g.words_per_block = t.block_bytes / g.word_bytes;
    g.words = t.outer * t.kept * g.words_per_block;
    g.first_block = p.blocks;
    g.tensor = static_cast<int>(k);
    p.blocks += (g.words + kGatherChunk - 1) / kGatherChunk;
    p.descs.push_back(g);
  }
  return p;
}

// The one launch of a call; `descs` is the device copy of plan.descs.
template <typename Launch>
void launch_gather(const GatherPlan& p, const GatherDesc* descs, Launch&& launch) {
  if (p.blocks > 0)
    launch(&gather_kernel, p.blocks, kGatherThreads, descs, static_cast<int>(p.descs.size()));
}

#endif  // FPGM_KERNELS_HOST

}  // namespace kernels
}  // namespace fpgm
