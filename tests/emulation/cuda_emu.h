// A small emulation of the CUDA execution model on the CPU, so the device code of
// csrc/cuda/kernels/*.cuh runs in the tests without a GPU. It is a test harness, not a
// backend: slow (one OS thread per CUDA thread) but faithful where the kernels rely on it.
//
// - A launch runs its blocks one after another. Each block has blockDim.x threads, every
//   one a real std::thread (a pool of them, created once, is reused by every block).
// - threadIdx / blockIdx are thread-local; blockDim / gridDim belong to the launch.
// - __shared__ is `static`: one copy, shared by the threads of the block that runs.
// - __syncthreads() is a C++20 std::barrier of the block; a thread that returns from the
//   kernel calls arrive_and_drop(), as exited threads count as arrived on a GPU.
// - Warp intrinsics (__shfl_sync, __shfl_xor_sync, __ballot_sync; full mask only): each
//   warp of the block has its own std::barrier and a slot per lane; a lane writes its
//   value, the warp meets, each lane reads the slot it asks for, the warp meets again. A
//   thread that returns drops out of its warp's barrier too.
// - atomicAdd / atomicOr are std::atomic_ref read-modify-writes.
// - FPGM_INDEX_ASSERT (a device-side assert) records the failure and lets the kernel go
//   on; the shim reports it as an error after the launch.
// - __CUDA_ARCH__ is not defined, so the kernels take their scalar (non-vector) paths.
//
// Include this before any csrc/cuda/kernels header; compile with -std=c++20 -pthread.
#pragma once

#include <math.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

struct dim3 {
  unsigned int x = 1, y = 1, z = 1;
  dim3() = default;
  dim3(unsigned int x_, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace emu {

inline thread_local dim3 thread_index;
inline thread_local dim3 block_index;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline std::vector<std::optional<std::barrier<>>>* warp_barriers = nullptr;  // per warp
inline std::vector<unsigned long long> warp_slots;                           // per thread
inline std::mutex launch_mutex;  // one launch at a time (the globals above are its state)

struct Record {
  long long blocks;
  int threads;
};
inline std::mutex log_mutex;
inline std::vector<Record> launch_log;
inline std::string assert_message;  // first failed device assertion since reset()
inline std::atomic<int> assert_failures{0};

inline void reset() {
  std::lock_guard<std::mutex> lock(log_mutex);
  launch_log.clear();
  assert_message.clear();
  assert_failures = 0;
}

inline void device_assert_failed(const std::string& message) {
  std::lock_guard<std::mutex> lock(log_mutex);
  if (assert_failures++ == 0) assert_message = message;
}

// The OS threads that play CUDA threads: created once, thread t is always threadIdx.x = t,
// reused by every launch (creating 256 threads per launch would dominate the tests).
// Leaked on purpose: idle workers block on its condition variable until the process ends.
class Pool {
 public:
  // Runs job() on threads 0 .. threads-1 of the pool and waits for all of them.
  void run(int threads, const std::function<void()>& job) {
    std::unique_lock<std::mutex> lock(mutex_);
    while (static_cast<int>(workers_) < threads) {
      const int t = static_cast<int>(workers_++);
      std::thread([this, t] { work(t); }).detach();
    }
    job_ = &job;
    active_ = running_ = threads;
    ++generation_;
    wake_.notify_all();
    done_.wait(lock, [this] { return running_ == 0; });
  }

 private:
  void work(int t) {
    thread_index = dim3(static_cast<unsigned int>(t));
    unsigned long long seen = 0;
    for (;;) {
      const std::function<void()>* job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen && t < active_; });
        seen = generation_;
        job = job_;
      }
      (*job)();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--running_ == 0) done_.notify_all();
    }
  }
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void()>* job_ = nullptr;
  unsigned long long generation_ = 0;
  size_t workers_ = 0;
  int active_ = 0, running_ = 0;
};

inline Pool& pool() {
  static Pool* p = new Pool;
  return *p;
}

// kernel<<<blocks, threads>>>(args...)
template <typename Kernel, typename... Args>
void launch(Kernel kernel, long long blocks, int threads, Args... args) {
  std::lock_guard<std::mutex> lock(launch_mutex);
  {
    std::lock_guard<std::mutex> log_lock(log_mutex);
    launch_log.push_back({blocks, threads});
  }
  if (blocks <= 0 || threads <= 0 || threads > 1024 || blocks > 0x7fffffffLL) {
    device_assert_failed("invalid launch configuration");
    return;
  }
  block_dim = dim3(static_cast<unsigned int>(threads));
  grid_dim = dim3(static_cast<unsigned int>(blocks));
  std::optional<std::barrier<>> barrier;
  std::vector<std::optional<std::barrier<>>> warps((threads + 31) / 32);
  warp_slots.assign(static_cast<size_t>(threads), 0);
  long long current = -1;
  // Runs once all threads are between blocks: the next block gets fresh barriers.
  auto next_block = [&]() noexcept {
    ++current;
    if (current < blocks) {
      barrier.emplace(threads);
      block_barrier = &*barrier;
      for (size_t w = 0; w < warps.size(); ++w)
        warps[w].emplace(std::min<int>(32, threads - static_cast<int>(w) * 32));
      warp_barriers = &warps;
    }
  };
  std::barrier<decltype(next_block)> between_blocks(threads, next_block);
  const std::function<void()> job = [&] {
    for (;;) {
      between_blocks.arrive_and_wait();
      if (current >= blocks) break;
      block_index = dim3(static_cast<unsigned int>(current));
      kernel(args...);
      barrier->arrive_and_drop();  // returned from the kernel: counts as arrived
      (*warp_barriers)[thread_index.x / 32]->arrive_and_drop();
    }
  };
  pool().run(threads, job);
  block_barrier = nullptr;
  warp_barriers = nullptr;
}

// One exchange between the lanes of the calling thread's warp: every lane publishes
// `mine`, then reads what `pick(lane)` names (a lane index of the warp).
template <typename Pick>
inline unsigned long long warp_exchange(unsigned long long mine, Pick pick) {
  const unsigned int t = thread_index.x, base = t / 32 * 32;
  std::barrier<>& w = *(*warp_barriers)[t / 32];
  warp_slots[t] = mine;
  w.arrive_and_wait();
  const unsigned long long got = pick(base);
  w.arrive_and_wait();
  return got;
}

template <typename T>
inline unsigned long long to_bits(T v) {
  static_assert(sizeof(T) <= 8, "a warp slot holds 8 bytes");
  unsigned long long b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
inline T from_bits(unsigned long long b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

// Host stand-ins for CUDA's half and bfloat16 (storage + conversion to float).
struct half {
  uint16_t bits;
  operator float() const {
    const uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
    const uint32_t exp = (bits >> 10) & 0x1fu, man = bits & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
      u = sign | 0x7f800000u | (man << 13);  // Inf, NaN
    } else if (exp != 0) {
      u = sign | ((exp + 112u) << 23) | (man << 13);
    } else if (man == 0) {
      u = sign;  // +-0
    } else {     // subnormal: normalise
      int e = -1;
      uint32_t m = man;
      do {
        ++e;
        m <<= 1;
      } while ((m & 0x400u) == 0);
      u = sign | ((112u - e) << 23) | ((m & 0x3ffu) << 13);
    }
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

struct bfloat16 {
  uint16_t bits;
  operator float() const {
    const uint32_t u = static_cast<uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};

}  // namespace emu

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __restrict__ __restrict
#define threadIdx (::emu::thread_index)
#define blockIdx (::emu::block_index)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

constexpr unsigned int kFullMask = 0xffffffffu;

template <typename T>
inline T __shfl_sync(unsigned int mask, T value, int src_lane) {
  if (mask != kFullMask) emu::device_assert_failed("emulation: warp intrinsics need the full mask");
  return emu::from_bits<T>(emu::warp_exchange(
      emu::to_bits(value), [&](unsigned int base) { return emu::warp_slots[base + (src_lane & 31)]; }));
}
template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T value, int lane_mask) {
  if (mask != kFullMask) emu::device_assert_failed("emulation: warp intrinsics need the full mask");
  const unsigned int lane = threadIdx.x % 32;
  return emu::from_bits<T>(emu::warp_exchange(
      emu::to_bits(value), [&](unsigned int base) { return emu::warp_slots[base + (lane ^ lane_mask)]; }));
}
inline unsigned int __ballot_sync(unsigned int mask, int predicate) {
  if (mask != kFullMask) emu::device_assert_failed("emulation: warp intrinsics need the full mask");
  return static_cast<unsigned int>(emu::warp_exchange(predicate != 0, [&](unsigned int base) {
    unsigned long long bits = 0;
    for (unsigned int l = 0; l < 32 && base + l < emu::warp_slots.size(); ++l)
      if (emu::warp_slots[base + l]) bits |= 1ull << l;
    return bits;
  }));
}
inline int __ffs(unsigned int x) { return __builtin_ffs(static_cast<int>(x)); }

template <typename T>
inline T atomicAdd(T* address, T value) {
  return std::atomic_ref<T>(*address).fetch_add(value);
}
inline int atomicOr(int* address, int value) {
  return std::atomic_ref<int>(*address).fetch_or(value);
}

#define FPGM_INDEX_ASSERT(ok, tensor, index, size)                                           \
  do {                                                                                       \
    if (!(ok))                                                                               \
      ::emu::device_assert_failed("fpgm.gather_channels: indices[" + std::to_string(tensor) + \
                                  "] holds " + std::to_string(index) +                       \
                                  ", out of range for size " + std::to_string(size));        \
  } while (0)
