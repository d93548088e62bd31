// CPU kernels of fpgm::distance_scores, distance_matrix and distance_scores_multi.
//
// Every layer is flattened to rows F[N, D]. The work is a list of items over all layers
// at once, scheduled dynamically on all threads, covering only the upper triangle of the
// distance matrix (symmetry: about N^2 D / 2 multiply-adds per layer):
// - l2 and cos: Gram products and a SIMD epilogue, d^2 = |a|^2 + |b|^2 - 2 a.b, clamped at
//   0, sqrt (l2) or d^2 / 2 (cos), row and column sums. The products: in float on an
//   AVX-512 CPU, our packed kernel (gram_kernel.h) on blocks of 128 rows; otherwise the
//   upper triangle cut recursively into off-diagonal rectangles and small diagonal leaves,
//   one BLAS product each;
// - l1, and l2 / cos with D <= 16 (where the Gram identity would cancel): tile pairs of
//   64 x 64 rows, a SIMD |a - b| or (a - b)^2 loop over blocks of 256 columns.
// Cosine *scores* need none of this: they have a closed form (cos_scores.cpp); the Gram
// path serves cosine matrices.
// No N x N buffer is allocated for scores: each item leaves its row and column sums in its
// own slot, and the slots are added in a fixed order, so results do not depend on
// scheduling: the same on every run with the same number of threads. (The thread count
// decides how the triangle is cut into items, which may move a float64 sum in its last
// bits, rarely a float32 score.)
//
// Accuracy: |a|^2 + |b|^2 - 2 a.b cancels when a and b are close compared with their
// norms. Two guards: rows are translated to (near) their mean before the Gram product
// when the weights share a large common component (l2; cos always, after normalising),
// which leaves distances unchanged and makes the norms small; and any pair still closer
// than 1/8 of its norms (filters in a tight cluster, near-duplicates) is recomputed
// directly, sum (a - b)^2 in float64.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <string>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "avx512.h"
#include "blas.h"
#include "cos_scores.h"
#include "gram_kernel.h"
#include "pair_kernel.h"
#include "simd_loops.h"

namespace fpgm {
namespace {

// Gram path: the upper triangle is cut recursively, each triangle into its off-diagonal
// rectangle (one BLAS product, all of it needed) and two half-size triangles, down to
// diagonal leaves computed whole: N^2 / 2 + N * leaf / 2 products, in large square-ish
// calls. Leaves of 32 rows for long rows (D >= 2048) and small layers (up to 256 filters),
// 64 otherwise: smaller leaves waste less of the diagonal but make less efficient calls
// (bench/NOTES.md sections 2, 7 and 13).
inline int64_t leaf_rows(int64_t m, int64_t d) { return d >= 2048 || m <= 256 ? 32 : 64; }
constexpr int64_t kMaxGramBlock = 1 << 18;  // floats of one BLAS result (1 MiB per thread)
constexpr int64_t kBigItem = 1 << 25;       // multiply-adds of a Gram item run on all threads,
constexpr int64_t kBigItemMinD = 1024;      // when its rows are this long (see for_each_item)
constexpr int64_t kTile = 64;        // direct path: rows per tile
constexpr int64_t kBlock = 256;      // direct path: columns per pass (tiles stay in cache)
constexpr int64_t kDirectMaxD = 16;  // l2 / cos with D up to this take the direct path: the
                                     // Gram identity cancels for close pairs in few dimensions
constexpr int64_t kCentreRows = 64;   // Gram path: rows whose mean is the centre
constexpr double kCentreRatio = 16.0;  // l2 centres when |centre|^2 > mean |row|^2 / 16:
                                       // 4x what the mean of 64 rows of zero-mean noise
                                       // reaches (|row|^2 / 64), so noise does not trigger it
constexpr int64_t kDirectMaxWork = 1 << 20;  // and small layers (N^2 D up to this), where a
                                             // BLAS call costs more than it saves
// Packed kernel (float, AVX-512; gram_kernel.h): the triangle in blocks of rows, each cut
// into column ranges from the diagonal on (see packed_block).
struct PackedBlock {
  int64_t rows, cols;
};

// One layer prepared for the kernels: either the Gram path (l2, cos: Gram products and
// an epilogue) or the direct path (l1, and l2 / cos in few dimensions: a loop over
// |a - b| or (a - b)^2). For cos, zero rows are taken out (`index` maps the m remaining
// rows to the original ones): their distance to any other row is 1, by definition, and
// is added afterwards.
template <typename acc_t>
struct Layer {
  at::Tensor rows;             // [m, D] contiguous acc_t: the rows, unit rows for cos, and
                               // centred on the Gram path
  std::vector<acc_t> sq;       // Gram path: |row|^2 of the prepared rows
  std::vector<int64_t> index;  // cos with zero rows: original row of each prepared row
  at::Tensor packed;           // on AVX-512 CPUs, the Gram path and the float direct path
                               // in few dimensions: the rows packed for gram::block /
                               // pairs::small_block (uses_packed_rows); else undefined
  int64_t n = 0;               // filters of the layer
  int64_t m = 0;               // prepared rows (n less the zero rows for cos)
  int64_t d = 0;
  bool direct = false;
  bool pair_kernel = false;    // direct path, float, AVX-512, not packed: pairs::block
                               // (pair_kernel.h); decided once per layer (prepare)
};

// A block of distances: rows [i0, i0 + ni) against columns [j0, j0 + nj) of one layer,
// where only column > row counts (the upper triangle). Gram path: an off-diagonal
// rectangle (or a row chunk of one) or a diagonal leaf (j0 = i0, nj = ni); direct path: a
// tile pair. `slot`: ni row sums then nj column sums.
struct Item {
  int64_t layer, i0, ni, j0, nj, slot;
};

// The packed copy of rows x[m, d] for gram::block, panels split over the threads; with
// norm2, the rows' squared norms from the same pass.
template <typename T>
at::Tensor pack_rows(const T* x, int64_t m, int64_t d, const at::TensorOptions& options,
                     double* norm2 = nullptr) {
  at::Tensor packed = at::empty({gram::packed_size<T>(m, d)}, options);
  T* out = packed.template mutable_data_ptr<T>();
  const int64_t panels = (m + gram::kPanel<T> - 1) / gram::kPanel<T>;
  at::parallel_for(0, panels, std::max<int64_t>(1, 32768 / gram::kPanel<T> / d),
                   [&](int64_t b, int64_t e) { gram::pack(x, m, d, b, e, out, norm2); });
  return packed;
}

// Whether layer L (prepared rows, float or double) takes a packed copy of its rows: the
// Gram path, and the float direct path in few dimensions (pairs::small_block).
template <typename acc_t>
bool uses_packed_rows(const Layer<acc_t>& L) {
  if (!avx512_kernels()) return false;
  return !L.direct || (std::is_same_v<acc_t, float> && L.d <= pairs::kSmallD);
}

// Converts one weight to prepared rows. Throws if it holds NaN or Inf.
template <typename acc_t>
Layer<acc_t> prepare_rows(const at::Tensor& weight, Metric metric, std::string_view op,
                          const std::string& name) {
  Layer<acc_t> L;
  L.n = weight.size(0);
  L.d = weight.numel() / L.n;
  const int64_t n = L.n, d = L.d;
  // ATen's own (vectorised) conversion; no copy for contiguous input of the compute type.
  at::Tensor x = weight.reshape({n, d}).to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const acc_t* xp = x.const_data_ptr<acc_t>();
  const int64_t grain = std::max<int64_t>(1, 32768 / d);
  L.direct = metric == Metric::L1 || d <= kDirectMaxD || n * n * d <= kDirectMaxWork;

  // Squared row norms: finiteness, unit rows (cos), and whether l2 needs centring. The
  // packed kernel's l2 path takes them from the pass that packs the rows.
  std::vector<double> norm2(n);
  if (metric != Metric::Cos && uses_packed_rows(L))  // (cos rows change: packed by prepare)
    L.packed = pack_rows(xp, n, d, x.options(), norm2.data());
  if (!L.packed.defined()) {
    at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) norm2[i] = simd::sum_squares(xp + i * d, d);
    });
  }
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_VALUE(std::isfinite(norm2[i]), nonfinite_message(op, name));
  if (metric != Metric::Cos && L.direct) {
    L.rows = x;
    L.m = n;
    return L;
  }

  std::vector<int64_t> src;  // prepared row -> original row
  std::vector<double> scale(n, 1.0);
  for (int64_t i = 0; i < n; ++i) {
    if (metric == Metric::Cos) {
      if (norm2[i] == 0.0) continue;
      scale[i] = 1.0 / std::sqrt(norm2[i]);
    }
    src.push_back(i);
  }
  L.m = static_cast<int64_t>(src.size());
  if (L.m < n) L.index = src;
  const int64_t m = L.m;
  // The centre: column means of up to kCentreRows evenly spaced (unit) rows, summed in row
  // order (deterministic). Any common translation leaves every distance exact; the centre
  // only has to sit near the rows' mean so that |a|^2 + |b|^2 - 2 a.b does not cancel, and
  // the mean of 64 spread rows is within about spread / 8 of the full one, at a fraction of
  // a pass over the weight. None on the direct path, which needs no centring.
  std::vector<double> mean(d, 0.0);
  if (!L.direct) {
    const int64_t count = std::min<int64_t>(m, kCentreRows);
    std::vector<int64_t> pick(count);
    for (int64_t k = 0; k < count; ++k) pick[k] = src[k * m / count];
    at::parallel_for(0, d, 512, [&](int64_t b, int64_t e) {
      for (int64_t r : pick) simd::add_scaled(xp + r * d + b, scale[r], mean.data() + b, e - b);
      for (int64_t k = b; k < e; ++k) mean[k] /= static_cast<double>(std::max<int64_t>(count, 1));
    });
  }
  if (metric == Metric::L2) {
    // Centring shrinks |a|^2 + |b|^2 by about |centre|^2 each: where that is under 1/16 of
    // the mean squared norm (weights of mean near zero, as most trained layers), it gains
    // nothing the close-pair check does not already guarantee; the rows are used as they
    // are, no copy.
    double centre_sq = 0.0, mean_norm2 = 0.0;
    for (int64_t k = 0; k < d; ++k) centre_sq += mean[k] * mean[k];
    for (int64_t i = 0; i < n; ++i) mean_norm2 += norm2[i];
    if (centre_sq * kCentreRatio <= mean_norm2 / static_cast<double>(n)) {
      L.rows = x;
      L.sq.assign(n, 0);
      for (int64_t i = 0; i < n; ++i) L.sq[i] = static_cast<acc_t>(norm2[i]);
      return L;
    }
  }
  L.rows = at::empty({m, d}, x.options());
  L.packed = at::Tensor();  // packs the new rows (prepare)
  acc_t* out = L.rows.template mutable_data_ptr<acc_t>();
  L.sq.resize(m);
  std::vector<double> sq(m);
  if (metric == Metric::L2) {
    // Unscaled rows: x - centre in acc_t, one rounding, as exact as rounding the
    // difference taken in double, at a fraction of the cost.
    std::vector<acc_t> centre(mean.begin(), mean.end());
    at::parallel_for(0, m, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) sq[r] = simd::shift(xp + r * d, centre.data(), out + r * d, d);
    });
  } else {
    at::parallel_for(0, m, grain, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r)
        sq[r] = simd::centre(xp + src[r] * d, scale[src[r]], mean.data(), out + r * d, d);
    });
  }
  for (int64_t r = 0; r < m; ++r) {
    TORCH_CHECK_VALUE(std::isfinite(sq[r]), nonfinite_message(op, name));
    L.sq[r] = static_cast<acc_t>(sq[r]);
  }
  return L;
}

// prepare_rows, and on AVX-512 CPUs the packed copy of the rows (uses_packed_rows).
template <typename acc_t>
Layer<acc_t> prepare(const at::Tensor& weight, Metric metric, std::string_view op,
                     const std::string& name) {
  Layer<acc_t> L = prepare_rows<acc_t>(weight, metric, op, name);
  if (!L.packed.defined() && L.m > 0 && uses_packed_rows(L))
    L.packed = pack_rows(L.rows.template const_data_ptr<acc_t>(), L.m, L.d, L.rows.options());
  L.pair_kernel = std::is_same_v<acc_t, float> && L.direct && !L.packed.defined() &&
                  avx512_kernels();
  return L;
}

// Packed-kernel items of layer l: blocks of b.rows rows x up to b.cols columns.
inline int64_t count_packed_items(int64_t m, PackedBlock b) {
  int64_t count = 0;
  for (int64_t i0 = 0; i0 < m; i0 += b.rows) count += (m - i0 + b.cols - 1) / b.cols;
  return count;
}

inline void add_packed_items(int64_t l, int64_t m, PackedBlock b, std::vector<Item>& items,
                             int64_t& slot) {
  for (int64_t i0 = 0; i0 < m; i0 += b.rows) {
    const int64_t ni = std::min(b.rows, m - i0);
    for (int64_t j0 = i0; j0 < m; j0 += b.cols) {
      const int64_t nj = std::min(b.cols, m - j0);
      items.push_back({l, i0, ni, j0, nj, slot});
      slot += ni + nj;
    }
  }
}

// The largest blocks, 128 rows x 512 columns (the columns' panels, loaded from L3 for a
// k-chunk, then serve 16 row tiles from L2), that still give the layer `min_items` items:
// about three per thread for its share of the work, so that dynamic scheduling balances
// (a 256-filter layer as two blocks of unequal work kept one of two threads idle a third
// of the time). bench/NOTES.md section 16.
inline PackedBlock packed_block(int64_t m, int64_t min_items) {
  for (int64_t rows : {128, 64, 32})
    for (int64_t cols : {512, 256, 128})
      if (count_packed_items(m, {rows, cols}) >= min_items) return {rows, cols};
  return {32, 128};
}

// Gram items of the triangle of rows [lo, hi) of layer l (see leaf_rows). An off-diagonal
// rectangle larger than `max_work` multiply-adds, or than kMaxGramBlock results, is cut
// into row chunks, so that the threads share the big rectangles and the scratch stays small.
inline void add_gram_items(int64_t l, int64_t lo, int64_t hi, int64_t leaf, int64_t d,
                           int64_t max_work, std::vector<Item>& items, int64_t& slot) {
  const int64_t n = hi - lo;
  if (n <= 2 * leaf) {  // the last cuts as strips from the diagonal on: fewer, larger calls
    for (int64_t i0 = lo; i0 < hi; i0 += leaf) {
      const int64_t ni = std::min(leaf, hi - i0);
      items.push_back({l, i0, ni, i0, hi - i0, slot});
      slot += ni + hi - i0;
    }
    return;
  }
  const int64_t mid = lo + n / 2;
  const int64_t rows = mid - lo, cols = hi - mid;
  int64_t chunk = rows;
  while (chunk >= 4 * leaf && (chunk * cols * d > max_work || chunk * cols > kMaxGramBlock))
    chunk = (chunk + 1) / 2;
  for (int64_t r0 = lo; r0 < mid; r0 += chunk) {
    const int64_t ni = std::min(chunk, mid - r0);
    items.push_back({l, r0, ni, mid, cols, slot});
    slot += ni + cols;
  }
  add_gram_items(l, lo, mid, leaf, d, max_work, items, slot);
  add_gram_items(l, mid, hi, leaf, d, max_work, items, slot);
}

// The items of all layers, largest first (dynamic scheduling then balances well).
template <typename acc_t>
std::vector<Item> make_items(const std::vector<Layer<acc_t>>& layers, Metric metric,
                             int64_t* slots) {
  std::vector<Item> items;
  int64_t slot = 0;
  int64_t gram_work = 0;    // multiply-adds of the BLAS-path layers' triangles
  double packed_work = 0;   // and of the packed-kernel layers'
  for (const auto& L : layers) {
    if (L.direct) continue;
    if (L.packed.defined()) packed_work += static_cast<double>(L.m) * L.m * L.d;
    else gram_work += L.m * L.m / 2 * L.d;
  }
  const int64_t threads = std::max(1, at::get_num_threads());
  // A rectangle is cut only when it holds more than a thread's share of the work: large
  // BLAS calls are the efficient ones (a 512-filter layer as one 256 x 256 rectangle and
  // smaller triangles: 0.557 of a full F F^T on one thread, against 0.601 in 64-row
  // strips), and on two threads the rectangle and the rest balance.
  const int64_t max_work = std::max<int64_t>(gram_work / threads, 1 << 22);
  for (int64_t l = 0; l < static_cast<int64_t>(layers.size()); ++l) {
    const int64_t m = layers[l].m;
    if (layers[l].direct) {
      for (int64_t i0 = 0; i0 < m; i0 += kTile)
        for (int64_t j0 = i0; j0 < m; j0 += kTile) {
          const int64_t ni = std::min(kTile, m - i0), nj = std::min(kTile, m - j0);
          items.push_back({l, i0, ni, j0, nj, slot});
          slot += ni + nj;
        }
    } else if (layers[l].packed.defined()) {
      const double share = static_cast<double>(m) * m * layers[l].d / packed_work;
      const int64_t min_items = static_cast<int64_t>(std::ceil(3.0 * threads * share));
      add_packed_items(l, m, packed_block(m, min_items), items, slot);
    } else {
      add_gram_items(l, 0, m, leaf_rows(m, layers[l].d), layers[l].d, max_work, items, slot);
    }
  }
  std::stable_sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
    return a.ni * a.nj * layers[a.layer].d > b.ni * b.nj * layers[b.layer].d;
  });
  *slots = slot;
  return items;
}

// Per worker scratch: the Gram block or the direct path's distance block.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> gram;
  std::vector<double> dist;
};

// Runs body(k, worker_state) for k in [0, count) on all threads, each index taken by the
// next free thread (dynamic scheduling: items differ in size by orders of magnitude).
template <typename State, typename Body>
void for_each_dynamic(int64_t count, const Body& body) {
  const int64_t workers = at::in_parallel_region() ? 1 : std::max(1, at::get_num_threads());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, std::min(workers, count), 1, [&](int64_t b, int64_t e) {
    State state;
    for (int64_t w = b; w < e; ++w)
      for (int64_t k = next.fetch_add(1); k < count; k = next.fetch_add(1)) body(k, state);
  });
}

// Runs every item, `body(item, scratch)`. The large Gram items of long rows (kBigItem
// multiply-adds or more, D >= kBigItemMinD) go first, one at a time, each BLAS product on
// all threads (BLAS scales well on them, and one thread holding a rectangle of half the
// work while the other works through the small items balances worse); their epilogue,
// O(ni nj) against the product's O(ni nj D), stays on one thread. Then the rest on all
// threads, a thread per item, scheduled dynamically.
template <typename acc_t, typename Body>
void for_each_item(const std::vector<Item>& items, const std::vector<Layer<acc_t>>& layers,
                   const Body& body) {
  std::vector<const Item*> big, rest;
  const bool threaded_blas = !at::in_parallel_region() && at::get_num_threads() > 1;
  for (const Item& it : items) {
    const Layer<acc_t>& L = layers[it.layer];
    const bool is_big = threaded_blas && !L.direct && !L.packed.defined() &&
                        L.d >= kBigItemMinD && it.ni * it.nj * L.d >= kBigItem;
    (is_big ? big : rest).push_back(&it);
  }
  if (!big.empty()) {
    Scratch<acc_t> scratch;
    for (const Item* it : big) body(*it, scratch);
  }
  for_each_dynamic<Scratch<acc_t>>(static_cast<int64_t>(rest.size()),
                                   [&](int64_t k, Scratch<acc_t>& s) { body(*rest[k], s); });
}

// Gram block g[ni, nj] of an item: the packed kernel, or one BLAS product (no TF32: a CPU
// sgemm/dgemm). Entries the epilogues do not read (column <= row) may be left unset.
template <typename acc_t>
const acc_t* gram_block(const Layer<acc_t>& L, const Item& it, Scratch<acc_t>& s) {
  s.gram.resize(it.ni * it.nj);
  if (L.packed.defined()) {
    gram::block(L.packed.template const_data_ptr<acc_t>(), L.d, it.i0, it.ni, it.j0, it.nj,
                it.j0 < it.i0 + it.ni, s.gram.data());
    return s.gram.data();
  }
  const acc_t* rows = L.rows.template const_data_ptr<acc_t>();
  if (blas::gemm_abt(it.ni, it.nj, L.d, rows + it.i0 * L.d, rows + it.j0 * L.d, s.gram.data()))
    return s.gram.data();
  auto g = at::from_blob(s.gram.data(), {it.ni, it.nj}, L.rows.options());
  at::mm_out(g, L.rows.narrow(0, it.i0, it.ni), L.rows.narrow(0, it.j0, it.nj).t());
  return s.gram.data();
}

// Direct-path distances of a tile pair into s.dist[ni, nj] (only column > row filled).
template <typename acc_t>
const double* direct_block(const Layer<acc_t>& L, Metric metric, const Item& it, Scratch<acc_t>& s) {
  const acc_t* rows = L.rows.template const_data_ptr<acc_t>();
  const int64_t d = L.d;
  const bool upper = it.j0 < it.i0 + it.ni;
  if constexpr (std::is_same_v<acc_t, float>) {
    if (L.packed.defined()) {  // the distances themselves, every entry read written
      s.dist.resize(it.ni * it.nj);
      const auto kind = metric == Metric::L1   ? pairs::Kind::L1
                        : metric == Metric::L2 ? pairs::Kind::L2
                                               : pairs::Kind::Cos;
      pairs::small_block(rows, L.packed.template const_data_ptr<float>(), d, it.i0, it.ni, it.j0,
                         it.nj, kind, upper, s.dist.data());
      return s.dist.data();
    }
  }
  s.dist.assign(it.ni * it.nj, 0.0);
  if (L.pair_kernel) {
    if constexpr (std::is_same_v<acc_t, float>)
      pairs::block(rows, d, it.i0, it.ni, it.j0, it.nj, metric != Metric::L1, upper, s.dist.data());
  } else {
    for (int64_t k0 = 0; k0 < d; k0 += kBlock) {
      const int64_t len = std::min(kBlock, d - k0);
      for (int64_t r = 0; r < it.ni; ++r) {
        const int64_t c0 = std::max<int64_t>(0, it.i0 + r + 1 - it.j0);
        if (c0 >= it.nj) continue;
        const acc_t* a = rows + (it.i0 + r) * d + k0;
        const acc_t* b = rows + (it.j0 + c0) * d + k0;
        double* acc = s.dist.data() + r * it.nj + c0;
        if (metric == Metric::L1) simd::l1_rows(a, b, d, it.nj - c0, len, acc);
        else simd::sqdiff_rows(a, b, d, it.nj - c0, len, acc);
      }
    }
  }
  if (metric == Metric::L2)
    for (double& v : s.dist) v = std::sqrt(v);
  else if (metric == Metric::Cos)  // unit rows: 1 - cos = |u - v|^2 / 2
    for (double& v : s.dist) v = std::min(0.5 * v, 2.0);
  return s.dist.data();
}

// Close pairs on the Gram path. d^2 = |a|^2 + |b|^2 - 2 a.b loses about
// (|a|^2 + |b|^2) / d^2 times the rounding of the operands: centring makes the norms small
// for most layers, but filters in tight clusters (near-duplicates, the case FPGM exists
// for) still sit far from the centre and close to each other. The epilogues leave out the
// pairs with d^2 < (|a|^2 + |b|^2) / kCloseRatio and count them; a row that had any is
// fixed up here: exactly those pairs (simd::is_close), sum_k (a_k - b_k)^2 in float64.
template <typename acc_t>
double exact_distance(const Layer<acc_t>& L, Metric metric, int64_t row_a, int64_t row_b) {
  const acc_t* rows = L.rows.template const_data_ptr<acc_t>();
  const acc_t* a = rows + row_a * L.d;
  const acc_t* b = rows + row_b * L.d;
  double e = 0.0;
  for (int64_t k0 = 0; k0 < L.d; k0 += kBlock)
    simd::sqdiff_rows(a + k0, b + k0, L.d, 1, std::min(kBlock, L.d - k0), &e);
  if (metric == Metric::L2) return std::sqrt(e);
  return std::min(0.5 * e, 2.0);  // cos: unit rows, 1 - cos = |u - v|^2 / 2
}

// Calls fix(c, distance) for each close pair of row r of a Gram block, columns [c0, nj).
template <typename acc_t, typename Fix>
void fix_close_pairs(const Layer<acc_t>& L, Metric metric, const Item& it, const acc_t* g,
                     int64_t r, int64_t c0, const Fix& fix) {
  const acc_t sq_i = L.sq[it.i0 + r];
  for (int64_t c = c0; c < it.nj; ++c)
    if (simd::is_close(g[r * it.nj + c], sq_i, L.sq[it.j0 + c]))
      fix(c, exact_distance(L, metric, it.i0 + r, it.j0 + c));
}

// simd::l2_epilogue, by the AVX-512 version where the packed kernel runs (same result).
template <typename acc_t>
double l2_epilogue(const Layer<acc_t>& L, const acc_t* g, acc_t sq_i, const acc_t* sq,
                   double* colsum, int64_t len, int64_t* close) {
  if constexpr (std::is_same_v<acc_t, float>)
    if (L.packed.defined()) return gram::l2_epilogue(g, sq_i, sq, colsum, len, close);
  return simd::l2_epilogue(g, sq_i, sq, colsum, len, close);
}

template <typename acc_t>
std::vector<at::Tensor> scores_impl(const std::vector<Layer<acc_t>>& layers, Metric metric,
                                    const at::TensorOptions& options) {
  int64_t slots = 0;
  const std::vector<Item> items = make_items(layers, metric, &slots);
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
        fix_close_pairs(L, metric, it, g, r, c0, [&](int64_t c, double d) {
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
  std::vector<at::Tensor> out;
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
    out.push_back(scores);
  }
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

template <typename acc_t>
at::Tensor matrix_impl(const std::vector<Layer<acc_t>>& layers, Metric metric,
                       const at::TensorOptions& options) {
  const int64_t n = layers[0].n;
  const int64_t batch = static_cast<int64_t>(layers.size());
  // The items fill each strict upper triangle; mirror_upper the rest.
  at::Tensor out = at::empty({batch, n, n}, options);
  // Layers with zero rows (cos) are computed compactly, then spread out below.
  std::vector<at::Tensor> compact(batch);
  for (int64_t l = 0; l < batch; ++l)
    compact[l] = layers[l].m == n ? out[l] : at::empty({layers[l].m, layers[l].m}, options);
  int64_t slots = 0;
  const std::vector<Item> items = make_items(layers, metric, &slots);
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
        fix_close_pairs(L, metric, it, g, r, c0, [&](int64_t c, double d) {
          dst[c - c0] = static_cast<acc_t>(d);
        });
    }
  });
  for (int64_t l = 0; l < batch; ++l) {
    const Layer<acc_t>& L = layers[l];
    mirror_upper(compact[l].template mutable_data_ptr<acc_t>(), L.m);
    if (L.m == n) continue;
    at::Tensor dst = at::ones({n, n}, options);  // cos: zero rows are at distance 1
    dst.fill_diagonal_(0);
    auto idx = at::tensor(L.index, options.dtype(at::kLong));
    dst.index_put_({idx.unsqueeze(1), idx.unsqueeze(0)}, compact[l]);
    out[l].copy_(dst);
  }
  return out;
}

// Prepares weights[k] (all of one dtype) and hands the layers to `run`. Half and bfloat16
// are computed in float32, float32 in float32, float64 in float64.
// A layer holding more than its share of the elements (a single layer, or a model's few
// largest) is prepared with all threads; the others are spread over the threads a layer
// each, largest first: a parallel loop per small layer would cost more in fork and join
// than its work (a CIFAR ResNet's 64 x 576 layers take microseconds each).
template <typename Run>
auto with_layers(std::string_view op, at::TensorList weights, const std::string& name,
                 bool indexed, Metric metric, const Run& run) {
  auto prepare_all = [&](auto zero) {
    using acc_t = decltype(zero);
    const int64_t count = static_cast<int64_t>(weights.size());
    std::vector<Layer<acc_t>> layers(count);
    std::vector<std::exception_ptr> errors(count);  // the first layer's error is reported
    auto prepare_one = [&](int64_t k) {
      const std::string arg = indexed ? name + "[" + std::to_string(k) + "]" : name;
      try {
        layers[k] = prepare<acc_t>(weights[k], metric, op, arg);
      } catch (...) {
        errors[k] = std::current_exception();
      }
    };
    int64_t total = 0;
    for (const at::Tensor& w : weights) total += w.numel();
    const int64_t share = total / std::max(1, at::get_num_threads());
    std::vector<int64_t> small;
    for (int64_t k = 0; k < count; ++k) {
      if (weights[k].numel() >= share) prepare_one(k);  // in turn, all threads each
      else small.push_back(k);
    }
    std::stable_sort(small.begin(), small.end(), [&](int64_t a, int64_t b) {
      return weights[a].numel() > weights[b].numel();
    });
    // Inside this loop the kernels' own parallel_for calls run inline, on one thread.
    struct None {};
    for_each_dynamic<None>(static_cast<int64_t>(small.size()),
                           [&](int64_t i, None&) { prepare_one(small[i]); });
    for (const auto& e : errors)
      if (e) std::rethrow_exception(e);
    return run(layers, weights[0].options().dtype(c10::CppTypeToScalarType<acc_t>::value));
  };
  return weights[0].scalar_type() == at::kDouble ? prepare_all(0.0) : prepare_all(0.0f);
}

at::Tensor distance_scores_cpu(const at::Tensor& weight, c10::string_view metric) {
  const Metric m = parse_metric("distance_scores", metric);
  check_weight("distance_scores", "weight", weight);
  if (m == Metric::Cos) return cos_scores_cpu({weight}, "distance_scores", "weight", false)[0];
  return with_layers("distance_scores", {weight}, "weight", false, m,
                     [&](const auto& layers, const at::TensorOptions& opt) {
                       return scores_impl(layers, m, opt)[0];
                     });
}

std::vector<at::Tensor> distance_scores_multi_cpu(at::TensorList weights,
                                                  c10::string_view metric) {
  const Metric m = parse_metric("distance_scores_multi", metric);
  if (weights.empty()) return {};
  check_weights(weights);
  if (m == Metric::Cos) return cos_scores_cpu(weights, "distance_scores_multi", "weights", true);
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
