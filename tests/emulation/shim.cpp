// extern "C" entry points that run the device code of csrc/cuda/kernels/*.cuh through the
// CPU emulation of cuda_emu.h, with the same host planning (plan_distance, plan_gather)
// and the same launch sequence (launch_distance, launch_gather) as the CUDA launchers in
// csrc/cuda/*.cu; and a launch by kernel name with arguments as bytes, as the CuPy
// backend launches (fpgm_emu_launch_named). Called from Python with ctypes
// (tests/emulation/__init__.py).
//
//   g++ -std=c++20 -O2 -pthread -shared -fPIC -I csrc/cuda/kernels shim.cpp -o libfpgm_emu.so
#include "cuda_emu.h"

#include <cstdlib>
#include <exception>
#include <functional>
#include <map>
#include <new>
#include <string>

#include "distance_launch.cuh"
#include "gather.cuh"

namespace {

namespace k = fpgm::kernels;

struct EmuLaunch {
  template <typename Kernel, typename... Args>
  void operator()(Kernel kernel, long long blocks, int threads, Args... args) const {
    emu::launch(kernel, blocks, threads, args...);
  }
};

// A workspace like the device one: 256-byte aligned, filled with 0xff bytes (NaN doubles,
// -1 ints) so that a kernel relying on memory nobody wrote fails the tests.
struct Buffer {
  unsigned char* p = nullptr;
  explicit Buffer(size_t bytes) {
    p = static_cast<unsigned char*>(::operator new(bytes + 256, std::align_val_t(256)));
    std::memset(p, 0xff, bytes + 256);
  }
  ~Buffer() { ::operator delete(p, std::align_val_t(256)); }
};

thread_local std::string last_error;

int report() {
  if (emu::assert_failures.load() == 0) return 0;
  last_error = emu::assert_message;
  return 1;
}

template <typename scalar_t, typename acc_t>
int run_distance(int metric, bool matrix, int num_layers, const void* const* xs,
                 const long long* ns, const long long* ds, void* const* outs,
                 long long target_blocks) {
  k::DistancePlan plan = k::plan_distance(ns, ds, num_layers, sizeof(acc_t), metric, target_blocks);
  for (int l = 0; l < num_layers; ++l) {
    plan.layers[l].x = xs[l];
    plan.layers[l].out = outs[l];
  }
  Buffer ws(plan.total_bytes);
  plan.write_table(ws.p);  // on the GPU: one host -> device copy of this image
  const k::DistanceArgs<acc_t> args = plan.template args<acc_t>(ws.p, metric);
  k::launch_distance<scalar_t, acc_t>(plan, args, matrix, EmuLaunch{});
  return report();
}

// Every kernel instance the CuPy backend can name, by its C++ name as the one planner
// spells it (kernel_names, kGatherKernelName), launched from argument bytes. The element
// types the CuPy backend names rtc_half / rtc_bfloat16 (NVRTC only) are the emulation's
// half types here: the same 16 bits, the same conversion to float.
using NamedKernel = std::function<void(long long blocks, int threads, const void* const* args)>;

template <typename scalar_t, typename acc_t, bool kL1, bool kMatrix>
void add_instances(std::map<std::string, NamedKernel>& table, const char* scalar, const char* acc) {
  for (const auto kernel : {k::DistanceKernel::RowStats, k::DistanceKernel::ColumnMean,
                            k::DistanceKernel::PrepareRows, k::DistanceKernel::Tile,
                            k::DistanceKernel::SplitFinish, k::DistanceKernel::Finalize}) {
    const int metric = kL1 ? k::kMetricL1 : k::kMetricL2;
    table[k::distance_kernel_name(kernel, scalar, acc, metric, kMatrix)] =
        [kernel](long long blocks, int threads, const void* const* args) {
          const auto& a = *static_cast<const k::DistanceArgs<acc_t>*>(args[0]);
          k::launch_step<scalar_t, acc_t, kL1, kMatrix>({kernel, blocks, threads}, a, EmuLaunch{});
        };
  }
}

template <typename scalar_t, typename acc_t>
void add_instances(std::map<std::string, NamedKernel>& table, const char* scalar, const char* acc) {
  add_instances<scalar_t, acc_t, false, false>(table, scalar, acc);
  add_instances<scalar_t, acc_t, false, true>(table, scalar, acc);
  add_instances<scalar_t, acc_t, true, false>(table, scalar, acc);
  add_instances<scalar_t, acc_t, true, true>(table, scalar, acc);
}

const std::map<std::string, NamedKernel>& named_kernels() {
  static const auto table = [] {
    std::map<std::string, NamedKernel> t;
    add_instances<float, float>(t, "float", "float");
    add_instances<double, double>(t, "double", "double");
    add_instances<emu::half, float>(t, "fpgm::kernels::rtc_half", "float");
    add_instances<emu::bfloat16, float>(t, "fpgm::kernels::rtc_bfloat16", "float");
    t[k::kGatherKernelName] = [](long long blocks, int threads, const void* const* args) {
      emu::launch(&k::gather_kernel, blocks, threads, *static_cast<const k::GatherDesc* const*>(args[0]),
                  *static_cast<const int*>(args[1]));
    };
    return t;
  }();
  return table;
}

}  // namespace

extern "C" {

// The plan of a call, without running it: out[0] items, out[1] split pairs, out[2] parts.
void fpgm_emu_plan(int metric, int acc_size, int num_layers, const long long* ns,
                   const long long* ds, long long target_blocks, long long* out) {
  const k::DistancePlan plan = k::plan_distance(ns, ds, num_layers, static_cast<size_t>(acc_size),
                                                metric, target_blocks);
  out[0] = static_cast<long long>(plan.items.size());
  out[1] = static_cast<long long>(plan.pairs.size());
  out[2] = plan.parts;
}

// dtype: 0 float32, 1 float64, 2 float16, 3 bfloat16 (inputs [n, d] contiguous).
// metric: 0 l2, 1 l1, 2 cos. outs[l]: n float32 (float64 for float64 input) scores, or an
// n x n matrix when matrix != 0. target_blocks: plan_distance's measure of a full GPU
// (split-K below it; 0: never split). Returns 0, or 1 after a failed device assertion.
int fpgm_emu_distance(int dtype, int metric, int matrix, int num_layers, const void* const* xs,
                      const long long* ns, const long long* ds, void* const* outs,
                      long long target_blocks) {
  emu::reset();
  const long long t = target_blocks;
  try {
    switch (dtype) {
      case 0: return run_distance<float, float>(metric, matrix, num_layers, xs, ns, ds, outs, t);
      case 1: return run_distance<double, double>(metric, matrix, num_layers, xs, ns, ds, outs, t);
      case 2: return run_distance<emu::half, float>(metric, matrix, num_layers, xs, ns, ds, outs, t);
      case 3: return run_distance<emu::bfloat16, float>(metric, matrix, num_layers, xs, ns, ds, outs, t);
      default: last_error = "unknown dtype code"; return 2;
    }
  } catch (const std::exception& e) {
    last_error = e.what();
    return 2;
  }
}

// One gather_channels call: tensor k is [outer, channels, inner] with
// block_bytes = inner * element size; dsts[k] receives [outer, kept, inner].
int fpgm_emu_gather(int count, const void* const* srcs, void* const* dsts,
                    const void* const* indices, const int* index_is64, const long long* outer,
                    const long long* channels, const long long* kept,
                    const long long* block_bytes, int* word_bytes) {
  emu::reset();
  try {
    std::vector<k::GatherTensor> tensors;
    for (int t = 0; t < count; ++t)
      tensors.push_back({srcs[t], dsts[t], indices[t], index_is64[t] != 0, outer[t], channels[t],
                         kept[t], block_bytes[t]});
    const k::GatherPlan plan = k::plan_gather(tensors);
    for (int t = 0; t < count; ++t) word_bytes[t] = plan.descs[t].word_bytes;
    // The descriptor table as the kernel sees it (on the GPU: a device copy).
    Buffer table(plan.descs.size() * sizeof(k::GatherDesc));
    std::memcpy(table.p, plan.descs.data(), plan.descs.size() * sizeof(k::GatherDesc));
    k::launch_gather(plan, reinterpret_cast<const k::GatherDesc*>(table.p), EmuLaunch{});
    return report();
  } catch (const std::exception& e) {
    last_error = e.what();
    return 2;
  }
}

// The launches since the last call into the shim: fills up to cap (blocks, threads)
// pairs and returns how many there were.
int fpgm_emu_launches(long long* blocks, int* threads, int cap) {
  std::lock_guard<std::mutex> lock(emu::log_mutex);
  const int n = static_cast<int>(emu::launch_log.size());
  for (int i = 0; i < n && i < cap; ++i) {
    blocks[i] = emu::launch_log[i].blocks;
    threads[i] = emu::launch_log[i].threads;
  }
  return n;
}

// One launch by kernel name (args[i]: the bytes of argument i). Returns 0, 1 after a
// failed device assertion, 2 for an unknown name. Does not reset the launch log:
// fpgm_emu_reset() starts a call.
int fpgm_emu_launch_named(const char* name, long long blocks, int threads, const void* const* args) {
  const auto& table = named_kernels();
  const auto it = table.find(name);
  if (it == table.end()) {
    last_error = std::string("no kernel instance named ") + name;
    return 2;
  }
  try {
    it->second(blocks, threads, args);
    return report();
  } catch (const std::exception& e) {
    last_error = e.what();
    return 2;
  }
}

void fpgm_emu_reset() { emu::reset(); }

const char* fpgm_emu_last_error() { return last_error.c_str(); }

}  // extern "C"
