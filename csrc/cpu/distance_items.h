// Work items and scheduling of the CPU distance kernels (distance.cpp). The work of all
// layers at once is a list of items covering only the upper triangle of each layer's
// distance matrix (symmetry: about N^2 D / 2 multiply-adds per layer), largest first,
// run on all threads with dynamic scheduling. How a layer is cut depends on its path:
// - packed kernel (AVX-512): blocks of rows, each cut into column ranges from the
//   diagonal on, sized so that each layer gives every thread about three items;
// - BLAS Gram products: the triangle cut recursively into large off-diagonal rectangles
//   and small diagonal leaves;
// - direct path: tile pairs of kTile x kTile rows.
// Each item owns `slot`: its row and column sums, added later in a fixed order.
// Included by distance.cpp only.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "distance_layer.h"

namespace fpgm::cpu {

// Gram path: the upper triangle is cut recursively, each triangle into its off-diagonal
// rectangle (one BLAS product, all of it needed) and two half-size triangles, down to
// diagonal leaves computed whole: N^2 / 2 + N * leaf / 2 products, in large square-ish
// calls. Leaves of 32 rows for long rows (D >= 2048) and small layers (up to 256 filters),
// 64 otherwise: smaller leaves waste less of the diagonal but make less efficient calls
// (bench/NOTES.md, the BLAS Gram path).
inline int64_t leaf_rows(int64_t m, int64_t d) { return d >= 2048 || m <= 256 ? 32 : 64; }
constexpr int64_t kMaxGramBlock = 1 << 18;  // floats of one BLAS result (1 MiB per thread)
constexpr int64_t kBigItem = 1 << 25;       // multiply-adds of a Gram item run on all threads,
constexpr int64_t kBigItemMinD = 1024;      // when its rows are this long (see for_each_item)
constexpr int64_t kTile = 64;        // direct path: rows per tile

// Packed kernel (float, AVX-512; gram_kernel.h): the triangle in blocks of rows, each cut
// into column ranges from the diagonal on (see packed_block).
struct PackedBlock {
  int64_t rows, cols;
};

// A block of distances: rows [i0, i0 + ni) against columns [j0, j0 + nj) of one layer,
// where only column > row counts (the upper triangle). Gram path: an off-diagonal
// rectangle (or a row chunk of one) or a diagonal leaf (j0 = i0, nj = ni); direct path: a
// tile pair. `slot`: ni row sums then nj column sums.
struct Item {
  int64_t layer, i0, ni, j0, nj, slot;
};

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
// of the time).
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

// The multiply-adds of all layers of a call (not only of those prepared at once), which
// decide how each layer is cut into items: so a layer's items, and its scores bit for bit,
// do not depend on how the call's layers are batched (distance_batches.h).
struct WorkTotals {
  int64_t gram = 0;     // the BLAS-path layers' triangles (N^2 / 2 D each)
  double packed = 0;    // the packed-kernel layers' (N^2 D each)
};

// The items of `layers` (the whole call, or one batch of it), largest first (dynamic
// scheduling then balances well).
template <typename acc_t>
std::vector<Item> make_items(const std::vector<Layer<acc_t>>& layers, Metric metric,
                             const WorkTotals& totals, int64_t* slots) {
  std::vector<Item> items;
  int64_t slot = 0;
  const int64_t gram_work = totals.gram;
  const double packed_work = totals.packed;
  const int64_t threads = std::max(1, at::get_num_threads());
  // A rectangle is cut only when it holds more than a thread's share of the work: large
  // BLAS calls are the efficient ones (bench/NOTES.md, the BLAS Gram path), and on two
  // threads the rectangle and the rest balance.
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

// Per worker scratch: the Gram block or the direct path's distance block, and the rows of
// close pairs where prepared_row makes them (distance_layer.h): a row of the item's, and
// the item's columns, each made once per item (`made`: which of the item's nj columns are
// in `cols`; `cols_of`: the item they belong to): at most 512 rows, and only in a layer
// with close pairs.
template <typename acc_t>
struct Scratch {
  std::vector<acc_t> gram;
  std::vector<double> dist;
  std::vector<acc_t> row, cols, tmp;
  std::vector<char> made;
  const Item* cols_of = nullptr;
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

}  // namespace fpgm::cpu
