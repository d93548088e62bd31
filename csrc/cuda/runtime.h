// Host helpers shared by the CUDA launchers (distance.cu, gather.cu).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>

#include <mutex>
#include <unordered_map>
#include <utility>

namespace fpgm {

// Every op copies its work table from pinned host memory at each call; a CUDA graph would
// replay that copy from a buffer the caching host allocator has since handed out again.
// So a capture is refused, clearly, rather than recorded wrong.
inline void check_not_capturing(cudaStream_t stream, const char* op) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  C10_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  TORCH_CHECK(status == cudaStreamCaptureStatusNone, "fpgm.", op,
              ": cannot be captured in a CUDA graph (its work table is copied from host memory "
              "at every call); call it outside the capture");
}

// Blocks of `kernel` (launched with `threads` threads, no dynamic shared memory) that
// `device` runs at once: resident blocks per SM (the occupancy API: registers, shared
// memory, warps) x SMs. Cached per device and kernel.
inline long long resident_blocks(const void* kernel, int threads, int device) {
  static std::mutex mutex;
  static std::unordered_map<const void*, std::unordered_map<int, long long>> cache;
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache[kernel].find(device);
    if (it != cache[kernel].end()) return it->second;
  }
  int sms = 0, per_sm = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, 0));
  const long long blocks = static_cast<long long>(sms) * (per_sm > 0 ? per_sm : 1);
  const std::lock_guard<std::mutex> lock(mutex);
  cache[kernel][device] = blocks;
  return blocks;
}

}  // namespace fpgm
