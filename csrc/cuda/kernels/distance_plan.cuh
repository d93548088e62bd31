// Host planning of fpgm::distance_scores, distance_matrix and distance_scores_multi on
// CUDA: the work tables (a LayerDesc per layer, a TileItem per tile pair or part of one,
// split-K when few pairs would leave the GPU idle), the layout of the one device workspace
// of a call, and the steps (kernel, blocks, threads) of a call. Host C++ only, no torch or
// CUDA header, no device code: one planner for every backend. csrc/cuda/distance.cu
// launches its steps on torch's stream (launch.cuh), the CuPy backend through
// fpgm_ext._C (csrc/device_plans.cpp), the tests through the CPU emulation.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <string>
#include <vector>

#include "tables.cuh"

namespace fpgm {
namespace kernels {

// The work tables and the workspace layout of one call, built on the host.
//
// One workspace (a single device allocation) holds, in order:
//   [ layers | items | pairs | bad | nonzero ]  the table: a host image, one transfer
//   [ sq | inv_norm | sums | mean | partial ]   float64
//   [ zero ]                                     int
//   [ rows ]                                     prepared rows, acc_t, 256-byte aligned
struct DistancePlan {
  std::vector<LayerDesc> layers;  // x and out are left null: the caller sets them
  std::vector<TileItem> items;
  std::vector<SplitPair> pairs;
  long long rows = 0, cols = 0, elems = 0, col_blocks = 0, parts = 0;
  size_t off_layers = 0, off_items = 0, off_pairs = 0, off_bad = 0, off_nonzero = 0;
  size_t table_bytes = 0;
  size_t off_sq = 0, off_inv = 0, off_sums = 0, off_mean = 0, off_partial = 0, off_zero = 0;
  size_t off_rows = 0, total_bytes = 0;

  // The host image of the table part [0, table_bytes) of the workspace.
  void write_table(unsigned char* dst) const {
    std::memset(dst, 0, table_bytes);
    std::memcpy(dst + off_layers, layers.data(), layers.size() * sizeof(LayerDesc));
    std::memcpy(dst + off_items, items.data(), items.size() * sizeof(TileItem));
    if (!pairs.empty()) std::memcpy(dst + off_pairs, pairs.data(), pairs.size() * sizeof(SplitPair));
  }

  template <typename acc_t>
  DistanceArgs<acc_t> args(void* workspace, int metric) const {
    unsigned char* base = static_cast<unsigned char*>(workspace);
    DistanceArgs<acc_t> a;
    a.layers = reinterpret_cast<const LayerDesc*>(base + off_layers);
    a.items = reinterpret_cast<const TileItem*>(base + off_items);
    a.pairs = reinterpret_cast<const SplitPair*>(base + off_pairs);
    a.num_layers = static_cast<int>(layers.size());
    a.metric = metric;
    a.rows = reinterpret_cast<acc_t*>(base + off_rows);
    a.sq = reinterpret_cast<double*>(base + off_sq);
    a.inv_norm = reinterpret_cast<double*>(base + off_inv);
    a.mean = reinterpret_cast<double*>(base + off_mean);
    a.sums = reinterpret_cast<double*>(base + off_sums);
    a.zero = reinterpret_cast<int*>(base + off_zero);
    a.bad = reinterpret_cast<int*>(base + off_bad);
    a.nonzero = reinterpret_cast<int*>(base + off_nonzero);
    a.partial = reinterpret_cast<double*>(base + off_partial);
    return a;
  }
};

inline size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

constexpr int kMaxSplit = 8;        // parts per tile pair, at most
constexpr int kMinSplitSteps = 8;   // steps of kTileK columns per part, at least

// The parts each tile pair is split into when a call has `pairs` pairs and the GPU runs
// `wave` items at once: the split (1..kMaxSplit) that finishes soonest, counting whole
// waves (time ~ waves / split), the smallest on a tie. So the items fill whole waves, or
// stop just under one: 36 pairs on a wave of 264 are split 7 ways (252 items, one wave),
// not 8 (288 items, a second wave almost empty). Splitting only when pairs < wave.
inline long long split_for_waves(long long pairs, long long wave) {
  if (wave <= pairs || pairs <= 0) return 1;
  long long best = 1, best_waves = 1;  // split s finishes in waves(s) / s wave times
  for (long long s = 2; s <= kMaxSplit; ++s) {
    const long long waves = (pairs * s + wave - 1) / wave;
    if (waves * best < best_waves * s) best = s, best_waves = waves;
  }
  return best;
}

// Plans layers of n[k] rows of d[k] elements (n, d >= 1) for an accumulation type of
// acc_size bytes and a metric (kMetric*). The work is every layer's upper-triangle tile
// pairs. When there are fewer pairs than target_blocks (the tile blocks a GPU holds at
// once: resident blocks per SM x SMs; 0: never split), the columns of each pair are
// split over up to kMaxSplit items (split-K, split_for_waves) so that a single layer
// with few filters but long rows still fills the machine. Items are sorted by cost,
// largest first (better load balance).
inline DistancePlan plan_distance(const long long* n, const long long* d, int num_layers,
                                  size_t acc_size, int metric, long long target_blocks = 0) {
  DistancePlan p;
  long long pairs = 0;
  for (int l = 0; l < num_layers; ++l) {
    LayerDesc L{};
    L.n = n[l];
    L.d = d[l];
    L.ld = (d[l] + kTileK - 1) / kTileK * kTileK;
    L.row_off = p.rows;
    L.col_off = p.cols;
    L.elem_off = p.elems;
    L.col_block_off = p.col_blocks;
    L.direct = metric != kMetricL1 && L.d <= kDirectMaxD ? 1 : 0;
    p.rows += L.n;
    p.cols += L.d;
    p.elems += L.n * L.ld;
    p.col_blocks += (L.d + kColsPerBlock - 1) / kColsPerBlock;
    p.layers.push_back(L);
    const long long tiles = (L.n + kTile - 1) / kTile;
    pairs += tiles * (tiles + 1) / 2;
  }
  const long long split = split_for_waves(pairs, target_blocks);
  for (int l = 0; l < num_layers; ++l) {
    const LayerDesc& L = p.layers[l];
    const int tiles = static_cast<int>((L.n + kTile - 1) / kTile);
    const int steps = static_cast<int>(L.ld / kTileK);
    const int parts = static_cast<int>(std::max<long long>(1, std::min<long long>(split, steps / kMinSplitSteps)));
    for (int ti = 0; ti < tiles; ++ti)
      for (int tj = ti; tj < tiles; ++tj) {
        if (parts == 1) {
          p.items.push_back({l, ti, tj, 0, steps, -1});
          continue;
        }
        const int first = static_cast<int>(p.parts);
        p.pairs.push_back({l, ti, tj, first, parts});
        for (int q = 0; q < parts; ++q)
          p.items.push_back({l, ti, tj, static_cast<int>(static_cast<long long>(steps) * q / parts),
                             static_cast<int>(static_cast<long long>(steps) * (q + 1) / parts),
                             first + q});
        p.parts += parts;
      }
  }
  auto cost = [&p](const TileItem& t) {
    const LayerDesc& L = p.layers[t.layer];
    const long long ni = std::min<long long>(kTile, L.n - static_cast<long long>(t.ti) * kTile);
    const long long nj = std::min<long long>(kTile, L.n - static_cast<long long>(t.tj) * kTile);
    return ni * nj * (t.k1 - t.k0);
  };
  std::stable_sort(p.items.begin(), p.items.end(),
                   [&](const TileItem& x, const TileItem& y) { return cost(x) > cost(y); });
  const size_t L = p.layers.size(), R = static_cast<size_t>(p.rows);
  size_t o = 0;
  p.off_layers = o;  o = align_up(o + L * sizeof(LayerDesc), 16);
  p.off_items = o;   o = align_up(o + p.items.size() * sizeof(TileItem), 16);
  p.off_pairs = o;   o = align_up(o + p.pairs.size() * sizeof(SplitPair), 16);
  p.off_bad = o;     o = align_up(o + L * sizeof(int), 16);
  p.off_nonzero = o; o = align_up(o + L * sizeof(int), 16);
  p.table_bytes = o;
  p.off_sq = o;      o = align_up(o + R * sizeof(double), 16);
  p.off_inv = o;     o = align_up(o + R * sizeof(double), 16);
  p.off_sums = o;    o = align_up(o + R * sizeof(double), 16);
  p.off_mean = o;    o = align_up(o + static_cast<size_t>(p.cols) * sizeof(double), 16);
  p.off_partial = o; o = align_up(o + static_cast<size_t>(p.parts) * kTile * kTile * sizeof(double), 16);
  p.off_zero = o;    o = align_up(o + R * sizeof(int), 256);
  p.off_rows = o;    o = align_up(o + static_cast<size_t>(p.elems) * acc_size, 256);
  p.total_bytes = o;
  return p;
}

// The kernels of distance.cuh, as a call's steps name them.
enum class DistanceKernel : int { RowStats, ColumnMean, PrepareRows, Tile, SplitFinish, Finalize };

struct DistanceStep {
  DistanceKernel kernel;
  long long blocks;  // >= 1
  int threads;
};

// The launches of one call, in order, the same for one layer or many: row statistics,
// column means (l2, cos), prepared rows, the tiles (and the split pairs' finish), then
// the scores (not for a matrix). Every kernel takes the call's DistanceArgs alone.
inline std::vector<DistanceStep> distance_steps(const DistancePlan& p, int metric, bool matrix) {
  std::vector<DistanceStep> s;
  s.push_back({DistanceKernel::RowStats, p.rows, kRowThreads});
  if (metric != kMetricL1) s.push_back({DistanceKernel::ColumnMean, p.col_blocks, kColThreads});
  s.push_back({DistanceKernel::PrepareRows, p.rows, kRowThreads});
  s.push_back({DistanceKernel::Tile, static_cast<long long>(p.items.size()), kTileThreads});
  if (!p.pairs.empty())
    s.push_back({DistanceKernel::SplitFinish, static_cast<long long>(p.pairs.size()), kTileThreads});
  if (!matrix)
    s.push_back({DistanceKernel::Finalize, (p.rows + kFinalThreads - 1) / kFinalThreads, kFinalThreads});
  return s;
}

// The kernel instance a step launches, as C++ names it (NVRTC's name expression), for
// input elements `scalar` and accumulation type `acc` spelled as C++ types: the template
// arguments of each kernel of distance.cuh, written once here for every launcher by name.
inline std::string distance_kernel_name(DistanceKernel k, const std::string& scalar,
                                        const std::string& acc, int metric, bool matrix) {
  const std::string flags = std::string(metric == kMetricL1 ? "true" : "false") + ", " +
                            (matrix ? "true" : "false");
  switch (k) {
    case DistanceKernel::RowStats: return "fpgm::kernels::row_stats_kernel<" + scalar + ", " + acc + ">";
    case DistanceKernel::ColumnMean: return "fpgm::kernels::column_mean_kernel<" + scalar + ", " + acc + ">";
    case DistanceKernel::PrepareRows: return "fpgm::kernels::prepare_rows_kernel<" + scalar + ", " + acc + ">";
    case DistanceKernel::Tile: return "fpgm::kernels::tile_kernel<" + acc + ", " + flags + ">";
    case DistanceKernel::SplitFinish: return "fpgm::kernels::split_finish_kernel<" + acc + ", " + flags + ">";
    case DistanceKernel::Finalize: return "fpgm::kernels::finalize_kernel<" + acc + ">";
  }
  return "";
}

}  // namespace kernels
}  // namespace fpgm
