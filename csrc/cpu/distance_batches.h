// Batches of the layers of one CPU call (distance.cpp). A call prepares and scores its
// layers a batch at a time: a batch's layers are prepared (distance_layer.h), its items run
// on all threads (distance_items.h), and its prepared rows released before the next batch
// is prepared. So the memory a call adds is about one batch's prepared rows (the budget
// below, or one layer where a layer alone is larger) instead of a prepared copy of every
// layer at once (which was four times a bfloat16 model: its rows in float32 and their
// packed copy). Batches are filled with the layers of most work first, so the last items of
// the call are small ones, as when all items shared one queue. Each layer is cut into
// items by the work of the whole call (WorkTotals), so its scores are the same bit for
// bit however the layers are batched.
// Included by distance.cpp only.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "distance_items.h"
#include "distance_layer.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace fpgm::cpu {

// The default budget: 32 MiB of prepared rows per thread, at least 128 MiB. A CNN (ResNet-50
// in float32: 102 MB packed) is one batch, as before batches existed; an LLM, many.
constexpr int64_t kBatchBytesPerThread = int64_t{32} << 20;
constexpr int64_t kMinBatchBytes = int64_t{128} << 20;

// The budget of one batch's prepared rows, in bytes: FPGM_EXT_CPU_BATCH_BYTES where it is a
// positive integer (the tests force small batches with it), else the default. Read on
// every call.
inline int64_t batch_budget() {
  if (const char* v = std::getenv("FPGM_EXT_CPU_BATCH_BYTES")) {
    char* end = nullptr;
    const long long bytes = std::strtoll(v, &end, 10);
    if (end != v && *end == '\0' && bytes > 0) return bytes;
  }
  return std::max<int64_t>(kMinBatchBytes, kBatchBytesPerThread * at::get_num_threads());
}

// What preparing weight w allocates, about (distance_layer.h): on the packed Gram path
// (AVX-512 kernels on) its packed copy; else its prepared rows where they are not the
// weight itself, and the packed copy of few dimensions; and a contiguous copy of a strided
// weight.
template <typename acc_t>
int64_t prepared_bytes(const at::Tensor& w, Metric metric, bool avx512) {
  const int64_t n = w.size(0), d = w.numel() / n;
  const bool direct = takes_direct_path(metric, n, d);
  const int64_t packed = gram::packed_size<acc_t>(n, d) * static_cast<int64_t>(sizeof(acc_t));
  const int64_t rows = w.numel() * static_cast<int64_t>(sizeof(acc_t));
  int64_t bytes = w.is_contiguous() ? 0 : w.numel() * w.element_size();
  if (avx512 && !direct) return bytes + packed;
  if (w.scalar_type() != c10::CppTypeToScalarType<acc_t>::value) bytes += rows;  // converted
  if (!direct || metric == Metric::Cos) bytes += rows;  // centred or unit rows
  if (avx512 && direct && d <= pairs::kSmallD) bytes += packed;
  return bytes;
}

// The work of all layers of the call, from their shapes, as prepare chooses their paths.
inline WorkTotals work_totals(at::TensorList weights, Metric metric, bool avx512) {
  WorkTotals t;
  for (const at::Tensor& w : weights) {
    const int64_t n = w.size(0), d = w.numel() / n;
    if (takes_direct_path(metric, n, d)) continue;
    if (avx512) t.packed += static_cast<double>(n) * n * d;
    else t.gram += n * n / 2 * d;
  }
  return t;
}

// The layers of a call (indices) in batches of up to `budget` bytes (prepared_bytes; a
// larger layer is a batch alone), in order of work (N^2 D), most first.
template <typename acc_t>
std::vector<std::vector<int64_t>> make_batches(at::TensorList weights, Metric metric,
                                               int64_t budget, bool avx512) {
  std::vector<int64_t> order(weights.size());
  std::vector<double> work(weights.size());
  for (size_t k = 0; k < weights.size(); ++k) {
    const double n = static_cast<double>(weights[k].size(0));
    order[k] = static_cast<int64_t>(k);
    work[k] = n * static_cast<double>(weights[k].numel());
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return work[a] > work[b]; });
  std::vector<std::vector<int64_t>> batches;
  int64_t used = 0;
  for (int64_t k : order) {
    const int64_t bytes = prepared_bytes<acc_t>(weights[k], metric, avx512);
    if (batches.empty() || used + bytes > budget) batches.emplace_back(), used = 0;
    batches.back().push_back(k);
    used += bytes;
  }
  return batches;
}

// One batch: its prepared layers, ids[k] the call's index of layers[k], and the work of the
// whole call (make_items).
template <typename acc_t>
struct Batch {
  std::vector<Layer<acc_t>> layers;
  std::vector<int64_t> ids;
  WorkTotals totals;
};

// Prepares the layers b.ids of weights into b.layers; returns each one's error (or null).
// A layer holding more than its share of the batch's elements (a single layer, or the few
// largest) is prepared with all threads; the others are spread over the threads a layer
// each, largest first: a parallel loop per small layer would cost more in fork and join
// than its work (a CIFAR ResNet's 64 x 576 layers take microseconds each).
template <typename acc_t>
std::vector<std::exception_ptr> prepare_batch(at::TensorList weights, Batch<acc_t>& b,
                                              Metric metric, std::string_view op,
                                              const std::string& name, bool indexed) {
  const int64_t count = static_cast<int64_t>(b.ids.size());
  b.layers.resize(count);
  std::vector<std::exception_ptr> errors(count);
  auto prepare_one = [&](int64_t k) {
    const std::string arg = indexed ? name + "[" + std::to_string(b.ids[k]) + "]" : name;
    try {
      b.layers[k] = prepare<acc_t>(weights[b.ids[k]], metric, op, arg);
    } catch (...) {
      errors[k] = std::current_exception();
    }
  };
  auto numel = [&](int64_t k) { return weights[b.ids[k]].numel(); };
  int64_t total = 0;
  for (int64_t k = 0; k < count; ++k) total += numel(k);
  const int64_t share = total / std::max(1, at::get_num_threads());
  std::vector<int64_t> small;
  for (int64_t k = 0; k < count; ++k) {
    if (numel(k) >= share) prepare_one(k);  // in turn, all threads each
    else small.push_back(k);
  }
  std::stable_sort(small.begin(), small.end(), [&](int64_t x, int64_t y) { return numel(x) > numel(y); });
  // Inside this loop the kernels' own parallel_for calls run inline, on one thread.
  struct None {};
  for_each_dynamic<None>(static_cast<int64_t>(small.size()),
                         [&](int64_t i, None&) { prepare_one(small[i]); });
  return errors;
}

// Hands the pages of freed memory back to the system (glibc), between batches: the previous
// batch's prepared rows were allocated by whichever threads prepared them, and glibc keeps
// freed blocks resident, where, cut up by smaller allocations, the next batch does not
// reuse them all (at two threads an LLM's call grew by ten budgets without this). The cost:
// the next batch touches fresh pages, as the whole call did before batches existed.
inline void release_free_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

// Runs run(batch) on each batch of the layers of weights (one dtype: half and bfloat16 are
// computed in float32, float32 in float32, float64 in float64), one batch after another,
// each batch's prepared layers released after its run. An error (NaN or Inf) names the
// first bad layer in list order, as one pass over all layers would: once a batch finds
// one, the later batches only prepare their layers of lower index, and nothing runs.
template <typename acc_t, typename Run>
void for_each_batch(std::string_view op, at::TensorList weights, const std::string& name,
                    bool indexed, Metric metric, const Run& run) {
  const bool avx512 = avx512_kernels();  // (prepare asks again: the same answer in a call)
  const WorkTotals totals = work_totals(weights, metric, avx512);
  int64_t first_bad = static_cast<int64_t>(weights.size());
  std::exception_ptr error;
  const std::vector<std::vector<int64_t>> batches =
      make_batches<acc_t>(weights, metric, batch_budget(), avx512);
  for (const std::vector<int64_t>& ids : batches) {
    if (&ids != &batches.front()) release_free_memory();
    Batch<acc_t> b{{}, {}, totals};
    for (int64_t id : ids)
      if (id < first_bad) b.ids.push_back(id);
    if (b.ids.empty()) continue;
    const std::vector<std::exception_ptr> errors = prepare_batch(weights, b, metric, op, name, indexed);
    for (size_t k = 0; k < errors.size(); ++k)
      if (errors[k] && b.ids[k] < first_bad) first_bad = b.ids[k], error = errors[k];
    if (!error) run(b);
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace fpgm::cpu
