// Helpers shared by the device code of csrc/cuda/kernels/*.cuh.
//
// The kernels in this folder include no torch header and no CUDA header, so the same
// source compiles three ways:
//   - by nvcc, included from csrc/cuda/*.cu (the launchers registered with torch);
//   - by NVRTC at run time (CuPy): __CUDACC_RTC__ is defined, host code is left out;
//   - by a host C++20 compiler for the tests: tests/emulation/cuda_emu.h defines
//     __global__, threadIdx, __syncthreads, atomicAdd ... before including this folder.
// Host-only planning code (the work tables) is guarded by FPGM_KERNELS_HOST.
#pragma once

#if !defined(__CUDACC_RTC__)
#define FPGM_KERNELS_HOST 1
#endif

namespace fpgm {
namespace kernels {

#ifdef __CUDACC_RTC__
// Under NVRTC the toolkit's cuda_fp16.h / cuda_bf16.h may be absent (a pip-installed
// CuPy has no toolkit): the CuPy backend reads float16 and bfloat16 inputs through these
// two bit containers, which convert to float as __half and __nv_bfloat16 do (exactly).
struct rtc_half {
  unsigned short bits;
  __device__ __forceinline__ operator float() const {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
    return f;
  }
};
struct rtc_bfloat16 {
  unsigned short bits;
  __device__ __forceinline__ operator float() const {
    return __uint_as_float(static_cast<unsigned int>(bits) << 16);
  }
};
#endif

// Reads any input element (float, double, c10::Half, c10::BFloat16, rtc_half, the
// emulation's half types: anything with a conversion to float) as double.
template <typename T>
__device__ __forceinline__ double to_double(T v) {
  return static_cast<double>(static_cast<float>(v));
}
__device__ __forceinline__ double to_double(double v) { return v; }

__device__ __forceinline__ float fused_mul_add(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fused_mul_add(double a, double b, double c) { return fma(a, b, c); }
__device__ __forceinline__ float absolute(float v) { return fabsf(v); }
__device__ __forceinline__ double absolute(double v) { return fabs(v); }

// True for a finite value (false for NaN and +-Inf), without isfinite (which NVRTC, nvcc
// and the host headers spell differently). Needs IEEE arithmetic (no fast-math).
__device__ __forceinline__ bool is_finite(double v) { return v - v == 0.0; }

__device__ __forceinline__ double quiet_nan() { return nan(""); }

// Largest i in [0, count) with key(i) <= x, for a non-decreasing key and key(0) <= x:
// the segment (layer, tensor) that holds the global work index x.
template <typename Key>
__device__ __forceinline__ int find_segment(int count, long long x, Key key) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (key(mid) <= x) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// Four consecutive elements p[0..3] (p 16-byte aligned for float, 32-byte for double).
__device__ __forceinline__ void load4(const float* p, float (&v)[4]) {
#ifdef __CUDA_ARCH__
  const float4 q = *reinterpret_cast<const float4*>(p);
  v[0] = q.x; v[1] = q.y; v[2] = q.z; v[3] = q.w;
#else
  for (int e = 0; e < 4; ++e) v[e] = p[e];
#endif
}
__device__ __forceinline__ void load4(const double* p, double (&v)[4]) {
#ifdef __CUDA_ARCH__
  const double2 a = *reinterpret_cast<const double2*>(p);
  const double2 b = *reinterpret_cast<const double2*>(p + 2);
  v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
#else
  for (int e = 0; e < 4; ++e) v[e] = p[e];
#endif
}

// Sum of one double per thread over a block of kThreads (a multiple of 32, at most
// 1024), in a fixed order so the result does not depend on scheduling. `red` is shared
// memory of kThreads + 32 doubles. The result is valid in thread 0 only. Every thread
// of the block must call it (it holds two __syncthreads).
template <int kThreads>
__device__ __forceinline__ double block_sum(double v, double* red) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block size");
  constexpr int kPer = kThreads / 32;
  const int tid = static_cast<int>(threadIdx.x);
  red[tid] = v;
  __syncthreads();
  if (tid < 32) {
    double s = 0.0;
    for (int q = 0; q < kPer; ++q) s += red[tid + 32 * q];
    red[kThreads + tid] = s;
  }
  __syncthreads();
  double total = 0.0;
  if (tid == 0)
    for (int q = 0; q < 32; ++q) total += red[kThreads + q];
  return total;
}

}  // namespace kernels
}  // namespace fpgm
