// CPU kernels of fpgm::distance_scores, distance_matrix and distance_scores_multi.
//
// Every layer is flattened to rows F[N, D] and cut into row tiles; the work is the list
// of tile pairs (I, J), J >= I, of all layers at once (symmetry: about N^2 D / 2
// multiply-adds per layer). l2 and cos take the Gram product of a tile pair (at::mm,
// i.e. BLAS) and a fused epilogue: d^2 = |a|^2 + |b|^2 - 2 a.b, clamped at 0, sqrt,
// row and column sums. l1 is a direct loop over column blocks. No N x N buffer is ever
// allocated for scores: each tile pair leaves its row and column sums in its own slot,
// and the slots are added in a fixed order, so results do not depend on the number of
// threads or on scheduling.
//
// Accuracy: rows are centred on their mean (l2) or normalised then centred (cos)
// before the Gram product. Distances do not change, but |a|^2 + |b|^2 - 2 a.b no longer
// cancels catastrophically when filters are near-duplicates of each other.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <string>
#include <vector>

#include "../checks.h"

namespace fpgm {
namespace {

constexpr int64_t kGemmTile = 128;  // rows per tile for l2 / cos (BLAS-sized products)
constexpr int64_t kL1Tile = 64;     // rows per tile for l1
constexpr int64_t kL1Block = 256;   // columns per pass of the l1 loop (tiles stay in cache)

// One layer prepared for the tile loop.
template <typename acc_t>
struct Layer {
  at::Tensor rows;          // [N, D] contiguous acc_t: centred (l2), unit then centred (cos)
  std::vector<double> sq;   // |row|^2 of the prepared rows, in double (l2, cos)
  std::vector<uint8_t> zero;  // cos: the original row was all zeros
  int64_t n = 0, d = 0, tile = 0;
};

struct Item {
  int64_t layer, i0, ni, j0, nj;
  int64_t slot;  // offset of this pair's row and column sums in the partial buffer
};

// Column means of x[N, D] (double), summed in row order so the result is deterministic.
template <typename scalar_t>
std::vector<double> column_means(const scalar_t* x, int64_t n, int64_t d, const double* scale,
                                 const uint8_t* skip) {
  std::vector<double> mean(d, 0.0);
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += (skip && skip[i]) ? 0 : 1;
  if (count == 0) return mean;
  at::parallel_for(0, d, 256, [&](int64_t b, int64_t e) {
    for (int64_t i = 0; i < n; ++i) {
      if (skip && skip[i]) continue;
      const scalar_t* row = x + i * d;
      const double s = scale ? scale[i] : 1.0;
      for (int64_t k = b; k < e; ++k) mean[k] += static_cast<double>(row[k]) * s;
    }
    for (int64_t k = b; k < e; ++k) mean[k] /= static_cast<double>(count);
  });
  return mean;
}

// Converts one weight to prepared rows. Throws if it holds NaN or Inf.
template <typename scalar_t, typename acc_t>
Layer<acc_t> prepare(const at::Tensor& weight, Metric metric, std::string_view op,
                     const std::string& name) {
  Layer<acc_t> L;
  L.n = weight.size(0);
  L.d = weight.numel() / L.n;
  const at::Tensor x2 = weight.reshape({L.n, L.d}).contiguous();
  const scalar_t* x = x2.template const_data_ptr<scalar_t>();
  const int64_t n = L.n, d = L.d;
  L.rows = at::empty({n, d}, weight.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  acc_t* out = L.rows.template mutable_data_ptr<acc_t>();

  // Pass 1: finiteness and row norms (cos needs them before centring).
  std::vector<double> inv_norm(n, 1.0);
  std::atomic<bool> finite{true};
  if (metric == Metric::Cos) L.zero.assign(n, 0);
  at::parallel_for(0, n, std::max<int64_t>(1, 16384 / d), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      double s = 0.0;
      for (int64_t k = 0; k < d; ++k) {
        const double v = static_cast<double>(x[i * d + k]);
        s += v * v;
      }
      if (!std::isfinite(s)) {
        finite = false;
        continue;
      }
      if (metric == Metric::Cos) {
        if (s == 0.0) L.zero[i] = 1;
        else inv_norm[i] = 1.0 / std::sqrt(s);
      }
    }
  });
  TORCH_CHECK_VALUE(finite.load(), nonfinite_message(op, name));

  if (metric == Metric::L1) {
    at::parallel_for(0, n * d, 32768, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k) out[k] = static_cast<acc_t>(x[k]);
    });
    L.tile = kL1Tile;
    return L;
  }

  // Pass 2: centre (on the mean of the unit rows for cos) and keep |row|^2 of what the
  // Gram product will see, so the diagonal of d^2 is exactly consistent.
  const double* scale = metric == Metric::Cos ? inv_norm.data() : nullptr;
  const uint8_t* skip = metric == Metric::Cos ? L.zero.data() : nullptr;
  const std::vector<double> mean = column_means(x, n, d, scale, skip);
  L.sq.assign(n, 0.0);
  at::parallel_for(0, n, std::max<int64_t>(1, 16384 / d), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const double s = inv_norm[i];
      double sq = 0.0;
      for (int64_t k = 0; k < d; ++k) {
        const acc_t v = static_cast<acc_t>(static_cast<double>(x[i * d + k]) * s - mean[k]);
        out[i * d + k] = v;
        sq += static_cast<double>(v) * static_cast<double>(v);
      }
      L.sq[i] = sq;
    }
  });
  L.tile = kGemmTile;
  return L;
}

// Distance from the Gram entry g of prepared rows i, j (l2 and cos).
template <typename acc_t>
inline double gram_distance(const Layer<acc_t>& L, Metric metric, int64_t i, int64_t j, acc_t g) {
  const double d2 = L.sq[i] + L.sq[j] - 2.0 * static_cast<double>(g);
  if (metric == Metric::L2) return std::sqrt(std::max(d2, 0.0));
  if (L.zero[i] || L.zero[j]) return 1.0;          // cosine distance of a zero row
  return std::min(std::max(0.5 * d2, 0.0), 2.0);   // 1 - cos = |u - v|^2 / 2 for unit u, v
}

// sum_k |a_k - b_k| in eight independent lanes the compiler turns into SIMD.
template <typename acc_t>
inline double l1_segment(const acc_t* a, const acc_t* b, int64_t len) {
  acc_t lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= len; k += 8)
    for (int l = 0; l < 8; ++l) lane[l] += std::abs(a[k + l] - b[k + l]);
  double s = 0.0;
  for (; k < len; ++k) s += std::abs(static_cast<double>(a[k]) - static_cast<double>(b[k]));
  for (int l = 0; l < 8; ++l) s += static_cast<double>(lane[l]);
  return s;
}

// Distances of one tile pair into dist[ni, nj] (double). Diagonal tiles fill only c > r.
template <typename acc_t>
void tile_distances(const Layer<acc_t>& L, Metric metric, const Item& it, acc_t* gram,
                    double* dist) {
  const acc_t* rows = L.rows.template const_data_ptr<acc_t>();
  const int64_t d = L.d;
  const bool diag = it.i0 == it.j0;
  if (metric == Metric::L1) {
    std::fill(dist, dist + it.ni * it.nj, 0.0);
    for (int64_t k0 = 0; k0 < d; k0 += kL1Block) {
      const int64_t len = std::min(kL1Block, d - k0);
      for (int64_t r = 0; r < it.ni; ++r) {
        const acc_t* a = rows + (it.i0 + r) * d + k0;
        for (int64_t c = diag ? r + 1 : 0; c < it.nj; ++c)
          dist[r * it.nj + c] += l1_segment(a, rows + (it.j0 + c) * d + k0, len);
      }
    }
    return;
  }
  auto g = at::from_blob(gram, {it.ni, it.nj}, L.rows.options());
  at::mm_out(g, L.rows.narrow(0, it.i0, it.ni), L.rows.narrow(0, it.j0, it.nj).t());
  for (int64_t r = 0; r < it.ni; ++r)
    for (int64_t c = diag ? r + 1 : 0; c < it.nj; ++c)
      dist[r * it.nj + c] = gram_distance(L, metric, it.i0 + r, it.j0 + c, gram[r * it.nj + c]);
}

// Runs every tile pair of every layer on all threads. Per pair, `sink(item, dist)` gets
// the pair's distances (dist[r * nj + c]; only c > r on diagonal tiles).
template <typename acc_t, typename Sink>
void for_each_tile_pair(const std::vector<Layer<acc_t>>& layers, Metric metric,
                        const std::vector<Item>& items, const Sink& sink) {
  int64_t max_tile = 1;
  for (const auto& L : layers) max_tile = std::max(max_tile, std::min(L.tile, L.n));
  // Dynamic scheduling over a shared counter: pairs differ a lot in cost between layers.
  const int64_t workers = at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads());
  std::atomic<int64_t> next{0};
  const int64_t count = static_cast<int64_t>(items.size());
  at::parallel_for(0, workers, 1, [&](int64_t b, int64_t e) {
    std::vector<acc_t> gram(max_tile * max_tile);
    std::vector<double> dist(max_tile * max_tile);
    for (int64_t w = b; w < e; ++w) {
      for (int64_t k = next.fetch_add(1); k < count; k = next.fetch_add(1)) {
        const Item& it = items[k];
        tile_distances(layers[it.layer], metric, it, gram.data(), dist.data());
        sink(it, dist.data());
      }
    }
  });
}

// Upper-triangle tile pairs of all layers, largest first (better load balance), each with
// a slot of ni + nj doubles (ni on diagonal tiles) for its row and column sums.
template <typename acc_t>
std::vector<Item> make_items(const std::vector<Layer<acc_t>>& layers, int64_t* slots) {
  std::vector<Item> items;
  int64_t slot = 0;
  for (int64_t l = 0; l < static_cast<int64_t>(layers.size()); ++l) {
    const auto& L = layers[l];
    for (int64_t i0 = 0; i0 < L.n; i0 += L.tile) {
      for (int64_t j0 = i0; j0 < L.n; j0 += L.tile) {
        const int64_t ni = std::min(L.tile, L.n - i0), nj = std::min(L.tile, L.n - j0);
        items.push_back({l, i0, ni, j0, nj, slot});
        slot += i0 == j0 ? ni : ni + nj;
      }
    }
  }
  std::stable_sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
    return a.ni * a.nj * layers[a.layer].d > b.ni * b.nj * layers[b.layer].d;
  });
  *slots = slot;
  return items;
}

template <typename acc_t>
std::vector<at::Tensor> scores_impl(const std::vector<Layer<acc_t>>& layers, Metric metric,
                                    const at::TensorOptions& options) {
  int64_t slots = 0;
  const std::vector<Item> items = make_items(layers, &slots);
  std::vector<double> partial(slots, 0.0);
  for_each_tile_pair(layers, metric, items, [&](const Item& it, const double* dist) {
    double* rsum = partial.data() + it.slot;
    const bool diag = it.i0 == it.j0;
    double* csum = diag ? rsum : rsum + it.ni;
    for (int64_t r = 0; r < it.ni; ++r)
      for (int64_t c = diag ? r + 1 : 0; c < it.nj; ++c) {
        rsum[r] += dist[r * it.nj + c];
        csum[c] += dist[r * it.nj + c];
      }
  });
  // Add the slots in tile order (not completion order): deterministic results.
  std::vector<Item> ordered = items;
  std::sort(ordered.begin(), ordered.end(),
            [](const Item& a, const Item& b) { return a.slot < b.slot; });
  std::vector<std::vector<double>> sums(layers.size());
  for (size_t l = 0; l < layers.size(); ++l) sums[l].assign(layers[l].n, 0.0);
  for (const Item& it : ordered) {
    auto& s = sums[it.layer];
    const double* rsum = partial.data() + it.slot;
    for (int64_t r = 0; r < it.ni; ++r) s[it.i0 + r] += rsum[r];
    if (it.i0 != it.j0)
      for (int64_t c = 0; c < it.nj; ++c) s[it.j0 + c] += rsum[it.ni + c];
  }
  std::vector<at::Tensor> out;
  for (size_t l = 0; l < layers.size(); ++l)
    out.push_back(at::tensor(sums[l], options.dtype(at::kDouble)).to(options.dtype()));
  return out;
}

template <typename acc_t>
at::Tensor matrix_impl(const std::vector<Layer<acc_t>>& layers, Metric metric,
                       const at::TensorOptions& options) {
  const int64_t n = layers[0].n;
  at::Tensor out = at::zeros({static_cast<int64_t>(layers.size()), n, n}, options);
  acc_t* m = out.template mutable_data_ptr<acc_t>();
  int64_t slots = 0;
  const std::vector<Item> items = make_items(layers, &slots);
  for_each_tile_pair(layers, metric, items, [&](const Item& it, const double* dist) {
    acc_t* base = m + it.layer * n * n;
    for (int64_t r = 0; r < it.ni; ++r)
      for (int64_t c = it.i0 == it.j0 ? r + 1 : 0; c < it.nj; ++c) {
        const acc_t v = static_cast<acc_t>(dist[r * it.nj + c]);
        base[(it.i0 + r) * n + it.j0 + c] = v;
        base[(it.j0 + c) * n + it.i0 + r] = v;
      }
  });
  return out;
}

// Prepares weights[k] (all of one dtype) and hands the layers to `run`.
template <typename Run>
auto with_layers(std::string_view op, at::TensorList weights, const std::string& name,
                 bool indexed, Metric metric, const Run& run) {
  const auto dtype = weights[0].scalar_type();
  return AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "fpgm_distance", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    std::vector<Layer<acc_t>> layers;
    for (size_t k = 0; k < weights.size(); ++k) {
      const std::string arg = indexed ? name + "[" + std::to_string(k) + "]" : name;
      layers.push_back(prepare<scalar_t, acc_t>(weights[k], metric, op, arg));
    }
    const auto options = weights[0].options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    return run(layers, options);
  });
}

at::Tensor distance_scores_cpu(const at::Tensor& weight, c10::string_view metric) {
  const Metric m = parse_metric("distance_scores", metric);
  check_weight("distance_scores", "weight", weight);
  return with_layers("distance_scores", {weight}, "weight", false, m,
                     [&](const auto& layers, const at::TensorOptions& opt) {
                       return scores_impl(layers, m, opt)[0];
                     });
}

std::vector<at::Tensor> distance_scores_multi_cpu(at::TensorList weights,
                                                  c10::string_view metric) {
  const Metric m = parse_metric("distance_scores_multi", metric);
  if (weights.empty()) return {};
  for (size_t k = 0; k < weights.size(); ++k) {
    const std::string arg = "weights[" + std::to_string(k) + "]";
    check_weight("distance_scores_multi", arg, weights[k]);
    TORCH_CHECK_VALUE(weights[k].scalar_type() == weights[0].scalar_type(),
                      "fpgm.distance_scores_multi: ", arg, " has dtype ",
                      dtype_name(weights[k].scalar_type()), " but weights[0] has ",
                      dtype_name(weights[0].scalar_type()), "; all layers must share one dtype");
    TORCH_CHECK_VALUE(weights[k].device() == weights[0].device(),
                      "fpgm.distance_scores_multi: ", arg, " is on ", weights[k].device(),
                      " but weights[0] is on ", weights[0].device());
  }
  return with_layers("distance_scores_multi", weights, "weights", true, m,
                     [&](const auto& layers, const at::TensorOptions& opt) {
                       return scores_impl(layers, m, opt);
                     });
}

at::Tensor distance_matrix_cpu(const at::Tensor& weight, c10::string_view metric) {
  const Metric m = parse_metric("distance_matrix", metric);
  check_weight("distance_matrix", "weight", weight);
  // [B, N, D] is a batch of B layers; any other rank is one layer [N, ...].
  const bool batched = weight.dim() == 3;
  const std::vector<at::Tensor> layers = batched ? weight.unbind(0) : std::vector{weight};
  at::Tensor out = with_layers("distance_matrix", layers, "weight", false, m,
                               [&](const auto& ls, const at::TensorOptions& opt) {
                                 return matrix_impl(ls, m, opt);
                               });
  return batched ? out : out.squeeze(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(fpgm, CPU, m) {
  m.impl("distance_scores", &distance_scores_cpu);
  m.impl("distance_matrix", &distance_matrix_cpu);
  m.impl("distance_scores_multi", &distance_scores_multi_cpu);
}

}  // namespace fpgm
