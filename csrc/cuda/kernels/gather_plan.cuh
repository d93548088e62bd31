// Host planning of fpgm::gather_channels on CUDA: one GatherDesc per tensor (tables.cuh)
// and the blocks of the one launch. Host C++ only, no torch or CUDA header: the compiled
// launcher (csrc/cuda/gather.cu), the CuPy backend (through fpgm_ext._C) and the CPU
// emulation all plan with it.
#pragma once

#include <cstdint>
#include <vector>

#include "tables.cuh"

namespace fpgm {
namespace kernels {

// The kernel of the one launch (launched by name by the CuPy backend): its arguments are
// the device copy of GatherPlan::descs and their count (int).
constexpr const char* kGatherKernelName = "fpgm::kernels::gather_kernel";

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

}  // namespace kernels
}  // namespace fpgm
