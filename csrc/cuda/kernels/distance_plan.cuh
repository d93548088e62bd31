// Host planning of fpgm::distance_scores, distance_matrix and distance_scores_multi on
// CUDA: the work tables (a LayerDesc per layer, a TileItem per tile pair or part of one,
// split-K when few pairs would leave the GPU idle), the layout of the one device workspace
// of a call, and the launch sequence of distance.cuh's kernels. Host C++ only, no torch or
// CUDA header: csrc/cuda/distance.cu launches through it on torch's stream, and the tests
// through the CPU emulation (tests/emulation). Not compiled by NVRTC.
#pragma once

#include "distance.cuh"

#ifdef FPGM_KERNELS_HOST
#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

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

template <typename acc_t, bool kL1, bool kMatrix, typename Launch>
void launch_tiles(const DistancePlan& p, const DistanceArgs<acc_t>& a, Launch&& launch) {
  launch(&tile_kernel<acc_t, kL1, kMatrix>, static_cast<long long>(p.items.size()), kTileThreads, a);
  if (!p.pairs.empty())
    launch(&split_finish_kernel<acc_t, kL1, kMatrix>, static_cast<long long>(p.pairs.size()),
           kTileThreads, a);
}

// The launches of one call, the same for one layer or many. `launch(kernel, blocks,
// threads, args...)` launches on the caller's stream (or the emulation); it is never
// called with blocks == 0. matrix: the outputs are [n, n] matrices, not scores.
template <typename scalar_t, typename acc_t, typename Launch>
void launch_distance(const DistancePlan& p, const DistanceArgs<acc_t>& a, bool matrix,
                     Launch&& launch) {
  launch(&row_stats_kernel<scalar_t, acc_t>, p.rows, kRowThreads, a);
  if (a.metric != kMetricL1)
    launch(&column_mean_kernel<scalar_t, acc_t>, p.col_blocks, kColThreads, a);
  launch(&prepare_rows_kernel<scalar_t, acc_t>, p.rows, kRowThreads, a);
  const bool l1 = a.metric == kMetricL1;
  if (matrix) {
    if (l1) launch_tiles<acc_t, true, true>(p, a, launch);
    else launch_tiles<acc_t, false, true>(p, a, launch);
    return;
  }
  if (l1) launch_tiles<acc_t, true, false>(p, a, launch);
  else launch_tiles<acc_t, false, false>(p, a, launch);
  launch(&finalize_kernel<acc_t>, (p.rows + kFinalThreads - 1) / kFinalThreads, kFinalThreads,
         a, p.rows);
}

}  // namespace kernels
}  // namespace fpgm

#endif  // FPGM_KERNELS_HOST
