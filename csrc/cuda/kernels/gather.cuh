// Device code of fpgm::gather_channels: out[k] = tensors[k].index_select(dims[k], indices[k])
// for all tensors in ONE launch (multi-tensor-apply style). No torch or CUDA header: see
// common.cuh.
//
// Each tensor is seen as [outer, channels, inner]; a kept channel of one outer index is a
// block of inner * element_size contiguous bytes, copied in words of 16 bytes (uint4)
// where the block size and both base addresses allow it, else 8, 4, 2 or 1 bytes. The
// host (gather_plan.cuh) builds one GatherDesc per tensor; every CUDA block copies one chunk of
// kGatherChunk words of one tensor, found by binary search on first_block.
//
// Index range: checking it on the host would need a device -> host copy (a
// synchronisation). The kernel asserts instead (FPGM_INDEX_ASSERT: CUDA_KERNEL_ASSERT in
// the torch build, a "device-side assert triggered" error at the next synchronisation,
// as torch's own index_select on CUDA) and clamps the index, so no byte outside the
// source is ever read, even with assertions compiled out.
#pragma once

#include "common.cuh"
#include "tables.cuh"

#ifdef FPGM_KERNELS_HOST
#include <cstdio>

#include "gather_plan.cuh"
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

// Host: the one launch of a call (planned by gather_plan.cuh); `descs` is the device
// copy of plan.descs.
template <typename Launch>
void launch_gather(const GatherPlan& p, const GatherDesc* descs, Launch&& launch) {
  if (p.blocks > 0)
    launch(&gather_kernel, p.blocks, kGatherThreads, descs, static_cast<int>(p.descs.size()));
}


#endif  // FPGM_KERNELS_HOST

}  // namespace kernels
}  // namespace fpgm
