// Device code of fpgm::distance_scores, distance_matrix and distance_scores_multi. The
// work tables' types are in tables.cuh, the host planner that builds them in
// distance_plan.cuh, the launches of a call in launch.cuh.
// No torch or CUDA header: see common.cuh for the three ways this file is compiled.
//
// Every call, one layer or a whole model, is the same five launches (l1: four, matrix:
// four; one more when pairs are split) over all layers at once, each through a
// device-side table (LayerDesc per layer, TileItem per tile pair):
//
//   1. row_stats_kernel     per row: sum of squares in float64 -> NaN/Inf flag of the
//                           layer, cos: 1/|row| and the zero-row flag; zeroes the row's sum
//   2. column_mean_kernel   l2, cos: per column, the mean of the rows (cos: of the unit
//                           rows that are not zero), in float64, in a fixed order
//   3. prepare_rows_kernel  per row: the prepared row in the accumulation type acc_t
//                           (float32, or float64 for float64 input), padded with zeros to
//                           a multiple of kTileK: l2 x - mean, cos x/|x| - mean, l1 x
//                           (D <= 16, the direct path: l2 x, cos x/|x|); and
//                           |prepared row|^2 exactly as the tile kernel sums it
//   4. tile_kernel          per tile pair (I, J), J >= I, of every layer: a 64 x 64 tile
//                           of Gram products (l2, cos), of sum |a - b| (l1) or of
//                           sum (a - b)^2 (l2, cos with D <= 16: the direct path) from
//                           shared memory, 4 x 4 outputs per thread, then the fused epilogue:
//                           d^2 = sq_i + sq_j - 2 g, clamped at 0, sqrt (l2) or
//                           min(max(d^2 / 2, 0), 2) with zero rows at 1 (cos); row and
//                           column sums of the tile added to the scores with float64
//                           atomics (or, for distance_matrix, both halves written out).
//                           When a call has too few pairs to fill the GPU, each pair's
//                           columns are split over several items (split-K): they leave
//                           float64 partial tiles, and
//   4b. split_finish_kernel adds them in a fixed order and runs the same epilogue
//   5. finalize_kernel      scores: float64 sums -> the result dtype; NaN for a bad layer
//
// Accuracy (the contract of csrc/accuracy.h, as the CPU kernels keep it): centring the rows keeps
// |a|^2 + |b|^2 - 2ab from cancelling between near-duplicate filters. Products are float32
// FMAs (never TF32) accumulated in chunks of kTileK = 16 columns; each chunk's float32 sum
// is added to a float64 total. The squared norms sq_i are built from the very same chunk
// sums (same operands, same order of FMAs), so for two identical filters the kernel's
// d^2 is exactly 0 rather than the rounding noise of a separate norm computation. Row
// and column sums are float64 atomics: their order varies from run to run, which moves
// the float64 sum in its last bits and almost never changes a float32 score.
//
// NaN or Inf in a weight: an op on the GPU cannot raise without a host synchronisation,
// so the layer's scores (and its whole distance matrix) are set to NaN instead, and
// never ranked silently. The row_stats flag is per layer: other layers are unaffected.
#pragma once

#include "common.cuh"
#include "tables.cuh"

namespace fpgm {
namespace kernels {

template <typename acc_t>
__device__ __forceinline__ int layer_of_row(const DistanceArgs<acc_t>& a, long long r) {
  const LayerDesc* L = a.layers;
  return find_segment(a.num_layers, r, [L](int i) { return L[i].row_off; });
}

// 1. Sum of squares of each input row, in float64.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads) row_stats_kernel(DistanceArgs<acc_t> a) {
  __shared__ double red[kRowThreads + 32];
  const long long r = blockIdx.x;
  const int l = layer_of_row(a, r);
  const LayerDesc L = a.layers[l];
  const scalar_t* x = static_cast<const scalar_t*>(L.x) + (r - L.row_off) * L.d;
  double s = 0.0;
  for (long long k = threadIdx.x; k < L.d; k += kRowThreads) {
    const double v = to_double(x[k]);
    s = fma(v, v, s);
  }
  s = block_sum<kRowThreads>(s, red);
  if (threadIdx.x == 0) {
    a.sums[r] = 0.0;
    a.inv_norm[r] = 1.0;
    a.zero[r] = 0;
    if (!is_finite(s)) {
      atomicOr(&a.bad[l], 1);
    } else if (s == 0.0) {
      a.zero[r] = 1;
    } else {
      atomicAdd(&a.nonzero[l], 1);
      if (a.metric == kMetricCos) a.inv_norm[r] = 1.0 / sqrt(s);
    }
  }
}

// 2. Column means (l2: of the rows; cos: of the unit rows that are not zero), float64.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kColThreads) column_mean_kernel(DistanceArgs<acc_t> a) {
  __shared__ double red[kColGroups][kColsPerBlock];
  const long long b = blockIdx.x;
  const LayerDesc* Ls = a.layers;
  const int l = find_segment(a.num_layers, b, [Ls](int i) { return Ls[i].col_block_off; });
  const LayerDesc L = Ls[l];
  const int lane = static_cast<int>(threadIdx.x) % kColsPerBlock;
  const int group = static_cast<int>(threadIdx.x) / kColsPerBlock;
  const long long k = (b - L.col_block_off) * kColsPerBlock + lane;
  const scalar_t* x = static_cast<const scalar_t*>(L.x);
  const bool cos = a.metric == kMetricCos;
  double s = 0.0;
  if (k < L.d) {
    for (long long i = group; i < L.n; i += kColGroups) {
      if (cos && a.zero[L.row_off + i]) continue;
      s += to_double(x[i * L.d + k]) * a.inv_norm[L.row_off + i];
    }
  }
  red[group][lane] = s;
  __syncthreads();
  if (group == 0 && k < L.d) {
    double total = 0.0;
    for (int g = 0; g < kColGroups; ++g) total += red[g][lane];
    const long long count = cos ? a.nonzero[l] : L.n;
    a.mean[L.col_off + k] = count > 0 ? total / static_cast<double>(count) : 0.0;
  }
}

// 3. Prepared rows in acc_t, zero-padded to ld, and their squared norms summed exactly as
// tile_kernel sums a Gram entry: float32 FMAs over each chunk of kTileK columns (from
// +0, in column order), each chunk's sum added in float64.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kRowThreads) prepare_rows_kernel(DistanceArgs<acc_t> a) {
  __shared__ double red[kRowThreads + 32];
  const long long r = blockIdx.x;
  const int l = layer_of_row(a, r);
  const LayerDesc L = a.layers[l];
  const long long local = r - L.row_off;
  const scalar_t* x = static_cast<const scalar_t*>(L.x) + local * L.d;
  acc_t* out = a.rows + L.elem_off + local * L.ld;
  const bool raw = a.metric == kMetricL1 || L.direct;  // no centring
  const double scale = a.inv_norm[r];                    // 1 but for cos
  const double* mean = a.mean + L.col_off;
  double sq = 0.0;
  for (long long c = threadIdx.x; c < L.ld / kTileK; c += kRowThreads) {
    acc_t chunk = 0;
    for (int kk = 0; kk < kTileK; ++kk) {
      const long long k = c * kTileK + kk;
      acc_t v = 0;
      if (k < L.d)
        v = raw ? static_cast<acc_t>(to_double(x[k]) * scale)
                : static_cast<acc_t>(to_double(x[k]) * scale - mean[k]);
      out[k] = v;
      chunk = fused_mul_add(v, v, chunk);
    }
    sq += static_cast<double>(chunk);
  }
  sq = block_sum<kRowThreads>(sq, red);
  if (threadIdx.x == 0) a.sq[r] = sq;
}

// The distance of rows r, c (global row indices) from their Gram entry g (l2, cos), or -1
// for a close pair: filters in tight clusters away from the centre (near-duplicates, the
// case FPGM exists for) leave d^2 = sq_r + sq_c - 2g a small difference of large terms that
// has cancelled (accuracy::is_close_pair); close_pair_distances recomputes those.
template <typename acc_t>
__device__ __forceinline__ double gram_distance(const DistanceArgs<acc_t>& a, long long r,
                                                long long c, double g) {
  if (a.metric == kMetricCos && (a.zero[r] || a.zero[c])) return 1.0;  // zero row: distance 1
  const double sum_sq = a.sq[r] + a.sq[c];
  const double d2 = sum_sq - 2.0 * g;
  if (accuracy::is_close_pair(d2, sum_sq)) {
    // Two all-zero input rows (exactly-zero filters; SoftFPGM zeroes 30-40 % of them) are
    // bit-identical: distance 0 (l2; cos returned 1 above), no recompute. Checked only
    // for close pairs, so other pairs pay nothing for it.
    if (a.zero[r] && a.zero[c]) return 0.0;
    return -1.0;
  }
  return a.metric == kMetricL2 ? accuracy::l2_from_d2(d2) : accuracy::cos_from_d2(d2);
}

// The close pairs of the tile that the threads of a warp own (bit i * 4 + j of `pending`:
// the thread's pair (i, j)), recomputed from the prepared rows, sum (a - b)^2 in float64,
// by the whole warp together: one pair at a time, the lanes reading the two rows in
// coalesced strides of 32 columns and adding their partial sums with shuffles. (A thread
// alone would run its pairs serially while the other 31 lanes wait; exact-zero filters
// and SoftFPGM's zeroed ones are all close pairs.) Every thread of the warp calls it.
template <typename acc_t>
__device__ __forceinline__ void close_pair_distances(const DistanceArgs<acc_t>& a,
                                                     const LayerDesc& L, long long i0,
                                                     long long j0, unsigned int pending,
                                                     double (&dist)[4][4]) {
  constexpr unsigned int kAll = 0xffffffffu;
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % 32;
  for (;;) {
    const unsigned int owners = __ballot_sync(kAll, pending != 0u);
    if (owners == 0u) return;
    const int src = __ffs(owners) - 1;
    const int bit = __shfl_sync(kAll, pending != 0u ? __ffs(pending) - 1 : 0, src);
    const int owner = tid - lane + src;  // the owner's (ty, tx) = (owner / 16, owner % 16)
    const long long r = i0 + (owner / 16) * 4 + bit / 4;
    const long long c = j0 + (owner % 16) * 4 + bit % 4;
    const acc_t* x = a.rows + L.elem_off + r * L.ld;
    const acc_t* y = a.rows + L.elem_off + c * L.ld;
    double part = 0.0;
    for (long long k = lane; k < L.d; k += 32) {
      const double diff = static_cast<double>(x[k]) - static_cast<double>(y[k]);
      part = fused_mul_add(diff, diff, part);
    }
    for (int offset = 16; offset > 0; offset /= 2) part += __shfl_xor_sync(kAll, part, offset);
    if (lane == src) {
      const double d = a.metric == kMetricL2 ? accuracy::l2_from_d2(part) : accuracy::cos_from_d2(part);
#pragma unroll
      for (int q = 0; q < 16; ++q)  // a constant index for each entry: dist stays in registers
        if (q == bit) dist[q / 4][q % 4] = d;
      pending &= pending - 1u;  // the lowest bit: the pair just done
    }
  }
}

// The distance of rows r, c from sum (a - b)^2 over their columns (direct path).
template <typename acc_t>
__device__ __forceinline__ double direct_distance(const DistanceArgs<acc_t>& a, long long r,
                                                  long long c, double d2) {
  if (a.metric == kMetricL2) return accuracy::l2_from_d2(d2);
  if (a.zero[r] || a.zero[c]) return 1.0;
  return accuracy::cos_from_d2(d2);  // unit rows
}

template <typename acc_t>
struct alignas(16) TileShared {
  union {
    struct {
      acc_t a[kTileK][kTile];  // a[k][row]: the tile's rows I, transposed
      acc_t b[kTileK][kTile];  // b[k][row]: rows J
    } tile;
    struct {
      double row[16][kTile];  // row[tx][r]: row sums of each thread column
      double col[16][kTile];  // col[ty][c]: column sums of each thread row
    } red;
  };
};

// A layer holding NaN or Inf: NaN for the tile pair's entries of the matrix (scores: the
// finalize kernel writes NaN, nothing to sum here).
template <typename acc_t, bool kMatrix>
__device__ __forceinline__ void tile_nan(const DistanceArgs<acc_t>& a, int layer, int ti, int tj) {
  if constexpr (kMatrix) {
    const LayerDesc& L = a.layers[layer];
    const long long n = L.n, i0 = static_cast<long long>(ti) * kTile;
    const long long j0 = static_cast<long long>(tj) * kTile;
    acc_t* out = static_cast<acc_t*>(L.out);
    for (int q = static_cast<int>(threadIdx.x); q < kTile * kTile; q += kTileThreads) {
      const long long r = i0 + q / kTile, c = j0 + q % kTile;
      if (r < n && c < n) {
        out[r * n + c] = static_cast<acc_t>(quiet_nan());
        out[c * n + r] = static_cast<acc_t>(quiet_nan());
      }
    }
  }
}

// The fused epilogue of a tile pair from its sums `total` (Gram entries, or l1
// distances): distances of the pairs the thread owns (c > r only on diagonal tiles), then
// either written out (kMatrix: both halves and the zero diagonal) or summed per row and
// per column of the tile, through shared memory in a fixed order, and added to the scores
// with one float64 atomic per row and per column. Every thread of the block calls it.
template <typename acc_t, bool kL1, bool kMatrix>
__device__ __forceinline__ void tile_finish(const DistanceArgs<acc_t>& a, int layer, int ti,
                                            int tj, const double (&total)[4][4],
                                            TileShared<acc_t>& sm) {
  const LayerDesc& L = a.layers[layer];
  const long long n = L.n;
  const long long i0 = static_cast<long long>(ti) * kTile;
  const long long j0 = static_cast<long long>(tj) * kTile;
  const bool diag = ti == tj;
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;
  acc_t* out = static_cast<acc_t*>(L.out);
  double dist[4][4];
  unsigned int pending = 0u;  // close pairs (Gram path), bit i * 4 + j
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const long long r = i0 + ty * 4 + i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const long long c = j0 + tx * 4 + j;
      dist[i][j] = 0.0;
      if (r >= n || c >= n || (diag && c <= r)) continue;
      if constexpr (kL1) {
        dist[i][j] = total[i][j];
      } else if (L.direct) {
        dist[i][j] = direct_distance(a, L.row_off + r, L.row_off + c, total[i][j]);
      } else {
        dist[i][j] = gram_distance(a, L.row_off + r, L.row_off + c, total[i][j]);
        if (dist[i][j] < 0.0) pending |= 1u << (i * 4 + j);
      }
    }
  }
  if constexpr (!kL1) {
    if (!L.direct) close_pair_distances(a, L, i0, j0, pending, dist);  // the same for the block
  }
  double rowp[4] = {0.0, 0.0, 0.0, 0.0}, colp[4] = {0.0, 0.0, 0.0, 0.0};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const long long r = i0 + ty * 4 + i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const long long c = j0 + tx * 4 + j;
      const bool valid = r < n && c < n && (!diag || c > r);
      const double d = dist[i][j];
      if constexpr (kMatrix) {
        if (valid) {
          out[r * n + c] = static_cast<acc_t>(d);
          out[c * n + r] = static_cast<acc_t>(d);
        } else if (diag && r == c && r < n) {
          out[r * n + r] = 0;
        }
      } else {
        rowp[i] += d;
        colp[j] += d;
      }
    }
  }
  if constexpr (!kMatrix) {
    for (int i = 0; i < 4; ++i) sm.red.row[tx][ty * 4 + i] = rowp[i];
    for (int j = 0; j < 4; ++j) sm.red.col[ty][tx * 4 + j] = colp[j];
    __syncthreads();
    if (tid < kTile) {
      double s = 0.0;
      for (int q = 0; q < 16; ++q) s += sm.red.row[q][tid];
      if (i0 + tid < n) atomicAdd(&a.sums[L.row_off + i0 + tid], s);
    } else if (tid < 2 * kTile) {
      const int c = tid - kTile;
      double s = 0.0;
      for (int q = 0; q < 16; ++q) s += sm.red.col[q][c];
      if (j0 + c < n) atomicAdd(&a.sums[L.row_off + j0 + c], s);
    }
  }
}

enum : int { kStepGram = 0, kStepAbsDiff = 1, kStepSquaredDiff = 2 };

// One step of kTileK columns from shared memory: every output's float32 chunk (from +0,
// in column order; the same FMAs as prepare_rows_kernel's squared norms), then added to
// its float64 total.
template <int kStep, typename acc_t>
__device__ __forceinline__ void tile_step(const TileShared<acc_t>& sm, int ty, int tx,
                                          double (&total)[4][4]) {
  acc_t chunk[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) chunk[i][j] = 0;
#pragma unroll
  for (int kk = 0; kk < kTileK; ++kk) {
    acc_t av[4], bv[4];
    load4(&sm.tile.a[kk][ty * 4], av);
    load4(&sm.tile.b[kk][tx * 4], bv);
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if constexpr (kStep == kStepGram) {
          chunk[i][j] = fused_mul_add(av[i], bv[j], chunk[i][j]);
        } else if constexpr (kStep == kStepAbsDiff) {
          chunk[i][j] += absolute(av[i] - bv[j]);
        } else {
          const acc_t diff = av[i] - bv[j];
          chunk[i][j] = fused_mul_add(diff, diff, chunk[i][j]);
        }
      }
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) total[i][j] += static_cast<double>(chunk[i][j]);
}

// 4. One tile item per block: a tile pair, or part of its columns. Thread (ty, tx) owns
// rows ty*4..ty*4+3 and columns tx*4..tx*4+3 of the 64 x 64 tile. kL1: sum |a - b|
// instead of the Gram product (and a direct-path layer sum (a - b)^2). kMatrix: write the
// distances instead of summing them.
template <typename acc_t, bool kL1, bool kMatrix>
__global__ void __launch_bounds__(kTileThreads) tile_kernel(DistanceArgs<acc_t> a) {
  __shared__ TileShared<acc_t> sm;
  const TileItem it = a.items[blockIdx.x];
  if (a.bad[it.layer]) {
    if (it.part < 0) tile_nan<acc_t, kMatrix>(a, it.layer, it.ti, it.tj);
    return;  // (a split pair gets its NaN in split_finish_kernel)
  }
  const LayerDesc& L = a.layers[it.layer];
  const long long n = L.n, ld = L.ld;
  const long long i0 = static_cast<long long>(it.ti) * kTile;
  const long long j0 = static_cast<long long>(it.tj) * kTile;
  const bool direct = L.direct != 0;  // the same for the whole block
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;

  // Loader: thread tid brings 4 consecutive columns (lk..lk+3) of tile row lr, from both
  // sides. Rows past n repeat row n-1 (in bounds; their results are masked out).
  const int lr = tid / 4, lk = (tid % 4) * 4;
  const acc_t* rows = a.rows + L.elem_off;
  const acc_t* pa = rows + (i0 + lr < n ? i0 + lr : n - 1) * ld + lk;
  const acc_t* pb = rows + (j0 + lr < n ? j0 + lr : n - 1) * ld + lk;
  acc_t ra[4], rb[4];
  load4(pa + static_cast<long long>(it.k0) * kTileK, ra);
  load4(pb + static_cast<long long>(it.k0) * kTileK, rb);

  double total[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) total[i][j] = 0.0;

  for (long long s = it.k0; s < it.k1; ++s) {
    for (int e = 0; e < 4; ++e) {
      sm.tile.a[lk + e][lr] = ra[e];
      sm.tile.b[lk + e][lr] = rb[e];
    }
    __syncthreads();
    if (s + 1 < it.k1) {  // prefetch the next step while this one is computed
      load4(pa + (s + 1) * kTileK, ra);
      load4(pb + (s + 1) * kTileK, rb);
    }
    if constexpr (kL1) tile_step<kStepAbsDiff>(sm, ty, tx, total);
    else if (direct) tile_step<kStepSquaredDiff>(sm, ty, tx, total);
    else tile_step<kStepGram>(sm, ty, tx, total);
    __syncthreads();
  }

  if (it.part >= 0) {  // part of a split pair: leave the sums for split_finish_kernel
    double* part = a.partial + static_cast<long long>(it.part) * kTile * kTile;
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) part[(ty * 4 + i) * kTile + tx * 4 + j] = total[i][j];
    return;
  }
  tile_finish<acc_t, kL1, kMatrix>(a, it.layer, it.ti, it.tj, total, sm);
}

// 4b. Split pairs only: adds the parts of each pair in order, then the same epilogue.
template <typename acc_t, bool kL1, bool kMatrix>
__global__ void __launch_bounds__(kTileThreads) split_finish_kernel(DistanceArgs<acc_t> a) {
  __shared__ TileShared<acc_t> sm;
  const SplitPair p = a.pairs[blockIdx.x];
  if (a.bad[p.layer]) {
    tile_nan<acc_t, kMatrix>(a, p.layer, p.ti, p.tj);
    return;
  }
  const int tid = static_cast<int>(threadIdx.x);
  const int tx = tid % 16, ty = tid / 16;
  double total[4][4];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) {
      double s = 0.0;
      for (int q = 0; q < p.parts; ++q)
        s += a.partial[(static_cast<long long>(p.first_part) + q) * kTile * kTile +
                       (ty * 4 + i) * kTile + tx * 4 + j];
      total[i][j] = s;
    }
  tile_finish<acc_t, kL1, kMatrix>(a, p.layer, p.ti, p.tj, total, sm);
}

// 5. Scores in the result dtype; all NaN for a layer holding NaN or Inf.
// Every distance kernel takes the one DistanceArgs argument (the rows are the last
// layer's end), so every launcher passes the same thing to each.
template <typename acc_t>
__global__ void __launch_bounds__(kFinalThreads) finalize_kernel(DistanceArgs<acc_t> a) {
  const long long r = static_cast<long long>(blockIdx.x) * kFinalThreads + threadIdx.x;
  const LayerDesc& last = a.layers[a.num_layers - 1];
  if (r >= last.row_off + last.n) return;
  const int l = layer_of_row(a, r);
  const LayerDesc& L = a.layers[l];
  acc_t* out = static_cast<acc_t*>(L.out);
  out[r - L.row_off] = static_cast<acc_t>(a.bad[l] ? quiet_nan() : a.sums[r]);
}

}  // namespace kernels
}  // namespace fpgm
