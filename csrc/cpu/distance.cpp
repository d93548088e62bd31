// CPU kernels of fpgm::distance_scores, distance_matrix and distance_scores_multi.
//
// Every layer is flattened to rows F[N, D] (distance_layer.h). A call's layers are prepared
// and run a batch at a time, each batch's prepared rows within a memory budget (128 MiB or
// more: a whole CNN is one batch, an LLM many; distance_batches.h). The work of a batch is
// a list of items over all its layers, scheduled dynamically on all threads, covering only
// the upper triangle of each distance matrix (distance_items.h):
// - l2 and cos: Gram products and a SIMD epilogue, d^2 = |a|^2 + |b|^2 - 2 a.b, clamped at
//   0, sqrt (l2) or d^2 / 2 (cos), row and column sums. The products: on an AVX-512 CPU,
//   our packed kernel (gram_kernel.h); otherwise one BLAS product per item;
// - l1, and l2 / cos in few dimensions (where the Gram identity would cancel) or in small
//   layers: tile pairs, a SIMD |a - b| or (a - b)^2 loop, or on AVX-512 CPUs the pair
//   kernels (pair_kernel.h) (distance_blocks.h).
// Cosine *scores* need none of this: they have a closed form (cos_scores.cpp); the Gram
// path serves cosine matrices.
// This file reduces the items into scores or a matrix and holds the entry points.
// No N x N buffer is allocated for scores: each item leaves its row and column sums in its
// own slot, and the slots are added in a fixed order, so results do not depend on
// scheduling: the same on every run with the same number of threads. (The thread count
// decides how the triangle is cut into items, which may move a float64 sum in its last
// bits, rarely a float32 score.)
//
// Accuracy (../accuracy.h, docs/design.md): rows are translated to (near) their mean
// before the Gram product when the weights share a large common component (l2; cos
// always, after normalising), which leaves distances unchanged and makes the norms small;
// and any pair still close compared with its norms (filters in a tight cluster,
// near-duplicates) is recomputed directly from sum (a - b)^2.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include "../checks.h"
#include "cos_scores.h"
#include "distance_batches.h"
#include "distance_blocks.h"
#include "distance_items.h"
#include "distance_layer.h"

namespace fpgm {
namespace cpu {
namespace {

// The scores of one batch's layers into out[b.ids[l]].
template <typename acc_t>
void score_batch(const Batch<acc_t>& b, Metric metric, const at::TensorOptions& options,
                 std::vector<at::Tensor>& out) {
  const std::vector<Layer<acc_t>>& layers = b.layers;
  int64_t slots = 0;
  const std::vector<Item> items = make_items(layers, metric, b.totals, &slots);
  std::vector<double> partial(slots, 0.0);
  for_each_item<acc_t>(items, layers, [&](const Item& it, Scratch<acc_t>& s) {
    const Layer<acc_t>& L = layers[it.layer];
    double* rsum = partial.data() + it.slot;
    double* csum = rsum + it.ni;
    if (L.direct) {
      const double* dist = direct_block(L, metric, it, s);
      for (int64_t r = 0; r < it.ni; ++r) {
        const int64_t c0 = std::max<int64_t>(0, it.i0 + r + 1 - it.j0);
        if (c0 < it.nj) rsum[r] += simd::sum_and_add(dist + r * it.nj + c0, csum + c0, it.nj - c0);
      }
      return;
    }
    const acc_t* g = gram_block(L, it, s);
    const acc_t* sq = L.sq.data() + it.j0;
    for (int64_t r = 0; r < it.ni; ++r) {
      // Only column > row counts: all of an off-diagonal block, c > r on a diagonal leaf.
      const int64_t c0 = std::max<int64_t>(0, it.i0 + r + 1 - it.j0);
      if (c0 >= it.nj) continue;
      const acc_t* grow = g + r * it.nj + c0;
      const acc_t sq_i = L.sq[it.i0 + r];
      int64_t close = 0;
      rsum[r] += metric == Metric::L2
                     ? l2_epilogue(L, grow, sq_i, sq + c0, csum + c0, it.nj - c0, &close)
                     : simd::cos_epilogue(grow, sq_i, sq + c0, csum + c0, it.nj - c0, &close);
      if (close > 0)
        fix_close_pairs(L, metric, it, g, r, c0, s, [&](int64_t c, double d) {
          rsum[r] += d;
          csum[c] += d;
        });
    }
  });
  // Add the slots in a fixed order (not completion order): deterministic results.
  std::vector<const Item*> ordered;
  for (const Item& it : items) ordered.push_back(&it);
  std::sort(ordered.begin(), ordered.end(), [](const Item* a, const Item* b) { return a->slot < b->slot; });
  std::vector<std::vector<double>> sums(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) sums[l].assign(layers[l].m, 0.0);
  for (const Item* it : ordered) {
    double* s = sums[it->layer].data();
    const double* rsum = partial.data() + it->slot;
    for (int64_t r = 0; r < it->ni; ++r) s[it->i0 + r] += rsum[r];
    for (int64_t c = 0; c < it->nj; ++c) s[it->j0 + c] += rsum[it->ni + c];
  }
  for (size_t l = 0; l < layers.size(); ++l) {
    const Layer<acc_t>& L = layers[l];
    at::Tensor scores = at::empty({L.n}, options);
    acc_t* dst = scores.template mutable_data_ptr<acc_t>();
    if (L.m == L.n) {
      for (int64_t i = 0; i < L.n; ++i) dst[i] = static_cast<acc_t>(sums[l][i]);
    } else {  // cos: zero rows sit at distance 1 from all others
      const double zeros = static_cast<double>(L.n - L.m);
      for (int64_t i = 0; i < L.n; ++i) dst[i] = static_cast<acc_t>(L.n - 1);
      for (int64_t r = 0; r < L.m; ++r) dst[L.index[r]] = static_cast<acc_t>(sums[l][r] + zeros);
    }
    out[b.ids[l]] = scores;
  }
}

template <typename acc_t>
std::vector<at::Tensor> scores_impl(std::string_view op, at::TensorList weights,
                                    const std::string& name, bool indexed, Metric metric) {
  const auto options = weights[0].options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  std::vector<at::Tensor> out(weights.size());
  for_each_batch<acc_t>(op, weights, name, indexed, metric,
                        [&](const Batch<acc_t>& b) { score_batch(b, metric, options, out); });
  return out;
}

// Completes a symmetric matrix a[m, m] whose strict upper triangle is filled: the lower
// triangle its transpose, the diagonal 0. In 64 x 64 blocks (a source block stays in L1
// while it is read across), block rows of the destination in parallel.
template <typename T>
void mirror_upper(T* a, int64_t m) {
  constexpr int64_t kMirrorBlock = 64;
  const int64_t blocks = (m + kMirrorBlock - 1) / kMirrorBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t bj = b0; bj < b1; ++bj) {
      const int64_t j0 = bj * kMirrorBlock, j1 = std::min(m, j0 + kMirrorBlock);
      for (int64_t i0 = 0; i0 < j1; i0 += kMirrorBlock)
        for (int64_t j = j0; j < j1; ++j)
          for (int64_t i = i0; i < std::min(j, i0 + kMirrorBlock); ++i) a[j * m + i] = a[i * m + j];
      for (int64_t j = j0; j < j1; ++j) a[j * m + j] = T(0);
    }
  });
}

// The matrices of one batch's layers into out[b.ids[l]] ([n, n] each).
template <typename acc_t>
void matrix_batch(const Batch<acc_t>& b, Metric metric, const at::Tensor& out) {
  const std::vector<Layer<acc_t>>& layers = b.layers;
  const int64_t n = out.size(1);
  const auto options = out.options();
  // The items fill each strict upper triangle; mirror_upper the rest. Layers with zero
  // rows (cos) are computed compactly, then spread out below.
  std::vector<at::Tensor> compact(layers.size());
  for (size_t l = 0; l < layers.size(); ++l)
    compact[l] = layers[l].m == n ? out[b.ids[l]] : at::empty({layers[l].m, layers[l].m}, options);
  int64_t slots = 0;
  const std::vector<Item> items = make_items(layers, metric, b.totals, &slots);
  for_each_item<acc_t>(items, layers, [&](const Item& it, Scratch<acc_t>& s) {
    const Layer<acc_t>& L = layers[it.layer];
    acc_t* mat = compact[it.layer].template mutable_data_ptr<acc_t>();
    if (L.direct) {
      const double* dist = direct_block(L, metric, it, s);
      for (int64_t r = 0; r < it.ni; ++r)
        for (int64_t c = std::max<int64_t>(0, it.i0 + r + 1 - it.j0); c < it.nj; ++c)
          mat[(it.i0 + r) * L.m + it.j0 + c] = static_cast<acc_t>(dist[r * it.nj + c]);
      return;
    }
    const acc_t* g = gram_block(L, it, s);
    for (int64_t r = 0; r < it.ni; ++r) {
      const int64_t c0 = std::max<int64_t>(0, it.i0 + r + 1 - it.j0);
      if (c0 >= it.nj) continue;
      acc_t* dst = mat + (it.i0 + r) * L.m + it.j0 + c0;
      const acc_t sq_i = L.sq[it.i0 + r];
      const acc_t* grow = g + r * it.nj + c0;
      const acc_t* sq = L.sq.data() + it.j0 + c0;
      const int64_t close = metric == Metric::L2
                                ? simd::l2_epilogue_store(grow, sq_i, sq, dst, it.nj - c0)
                                : simd::cos_epilogue_store(grow, sq_i, sq, dst, it.nj - c0);
      if (close > 0)
        fix_close_pairs(L, metric, it, g, r, c0, s, [&](int64_t c, double d) {
          dst[c - c0] = static_cast<acc_t>(d);
        });
    }
  });
  for (size_t l = 0; l < layers.size(); ++l) {
    const Layer<acc_t>& L = layers[l];
    mirror_upper(compact[l].template mutable_data_ptr<acc_t>(), L.m);
    if (L.m == n) continue;
    at::Tensor dst = at::ones({n, n}, options);  // cos: zero rows are at distance 1
    dst.fill_diagonal_(0);
    auto idx = at::tensor(L.index, options.dtype(at::kLong));
    dst.index_put_({idx.unsqueeze(1), idx.unsqueeze(0)}, compact[l]);
    out[b.ids[l]].copy_(dst);
  }
}

// The matrices [B, n, n] of B layers of n filters each.
template <typename acc_t>
at::Tensor matrix_impl(at::TensorList layers, Metric metric) {
  const auto options = layers[0].options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  const int64_t n = layers[0].size(0);
  at::Tensor out = at::empty({static_cast<int64_t>(layers.size()), n, n}, options);
  for_each_batch<acc_t>("distance_matrix", layers, "weight", false, metric,
                        [&](const Batch<acc_t>& b) { matrix_batch(b, metric, out); });
  return out;
}

at::Tensor distance_scores_cpu(const at::Tensor& weight, c10::string_view metric) {
  const Metric m = parse_metric("distance_scores", metric);
  check_weight("distance_scores", "weight", weight);
  if (m == Metric::Cos) return cos_scores_cpu({weight}, "distance_scores", "weight", false)[0];
  const std::vector<at::Tensor> one{weight};
  return weight.scalar_type() == at::kDouble
             ? scores_impl<double>("distance_scores", one, "weight", false, m)[0]
             : scores_impl<float>("distance_scores", one, "weight", false, m)[0];
}

std::vector<at::Tensor> distance_scores_multi_cpu(at::TensorList weights,
                                                  c10::string_view metric) {
  const Metric m = parse_metric("distance_scores_multi", metric);
  if (weights.empty()) return {};
  check_weights(weights);
  if (m == Metric::Cos) return cos_scores_cpu(weights, "distance_scores_multi", "weights", true);
  return weights[0].scalar_type() == at::kDouble
             ? scores_impl<double>("distance_scores_multi", weights, "weights", true, m)
             : scores_impl<float>("distance_scores_multi", weights, "weights", true, m);
}

at::Tensor distance_matrix_cpu(const at::Tensor& weight, c10::string_view metric) {
  const Metric m = parse_metric("distance_matrix", metric);
  check_weight("distance_matrix", "weight", weight);
  const bool batched = is_layer_batch(weight);
  const std::vector<at::Tensor> layers = batched ? weight.unbind(0) : std::vector{weight};
  at::Tensor out = weight.scalar_type() == at::kDouble ? matrix_impl<double>(layers, m)
                                                        : matrix_impl<float>(layers, m);
  return batched ? out : out.squeeze(0);
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_IMPL(fpgm, CPU, m) {
  m.impl("distance_scores", &cpu::distance_scores_cpu);
  m.impl("distance_matrix", &cpu::distance_matrix_cpu);
  m.impl("distance_scores_multi", &cpu::distance_scores_multi_cpu);
}

}  // namespace fpgm
