// One item's distances on the CPU (distance.cpp): the Gram block of an item (packed
// kernel or one BLAS product) with its epilogue and the exact recomputation of close pairs
// (../accuracy.h), or the direct path's block of distances.
// Included by distance.cpp only.
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

#include "../accuracy.h"
#include "blas.h"
#include "distance_items.h"
#include "gram_kernel.h"
#include "pair_kernel.h"
#include "simd_loops.h"

namespace fpgm::cpu {

constexpr int64_t kBlock = 256;  // direct path: columns per pass (tiles stay in cache)

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
  const acc_t* rows = L.rows.template const_data_ptr<acc_t>();  // held off the packed path
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
    for (double& v : s.dist) v = accuracy::l2_from_d2(v);
  else if (metric == Metric::Cos)  // unit rows
    for (double& v : s.dist) v = accuracy::cos_from_d2(v);
  return s.dist.data();
}

// Close pairs on the Gram path (accuracy::is_close_pair): centring makes the norms small
// for most layers, but filters in tight clusters (near-duplicates, the case FPGM exists
// for) still sit far from the centre and close to each other. The epilogues leave those
// pairs out and count them; a row that had any is fixed up here: exactly those pairs
// (simd::is_close), sum_k (a_k - b_k)^2 of the prepared rows (in the rows' type over chunks
// of kBlock columns, the chunks added in float64).
template <typename acc_t>
double exact_distance(const acc_t* a, const acc_t* b, int64_t d, Metric metric) {
  double e = 0.0;
  for (int64_t k0 = 0; k0 < d; k0 += kBlock)
    simd::sqdiff_rows(a + k0, b + k0, d, 1, std::min(kBlock, d - k0), &e);
  return metric == Metric::L2 ? accuracy::l2_from_d2(e) : accuracy::cos_from_d2(e);  // cos: unit rows
}

// Column c of item `it` as a prepared row: held by the layer, or made once per item into
// s.cols (clustered filters have close pairs by the thousand: made per pair, the rows cost
// twice the distances).
template <typename acc_t>
const acc_t* column_row(const Layer<acc_t>& L, const Item& it, int64_t c, Scratch<acc_t>& s) {
  if (L.rows.defined()) return L.rows.template const_data_ptr<acc_t>() + (it.j0 + c) * L.d;
  if (s.cols_of != &it) {
    s.cols_of = &it;
    s.cols.resize(it.nj * L.d);
    s.made.assign(it.nj, 0);
  }
  acc_t* dst = s.cols.data() + c * L.d;
  if (!s.made[c]) {
    s.tmp.resize(L.d);
    if (const acc_t* x = prepared_row(L, it.j0 + c, dst, s.tmp.data()); x != dst) std::copy(x, x + L.d, dst);
    s.made[c] = 1;
  }
  return dst;
}

// Calls fix(c, distance) for each close pair of row r of a Gram block, columns [c0, nj).
template <typename acc_t, typename Fix>
void fix_close_pairs(const Layer<acc_t>& L, Metric metric, const Item& it, const acc_t* g,
                     int64_t r, int64_t c0, Scratch<acc_t>& s, const Fix& fix) {
  const acc_t sq_i = L.sq[it.i0 + r];
  const acc_t* a = nullptr;
  for (int64_t c = c0; c < it.nj; ++c) {
    if (!simd::is_close(g[r * it.nj + c], sq_i, L.sq[it.j0 + c])) continue;
    if (a == nullptr) {
      s.row.resize(L.d), s.tmp.resize(L.d);
      a = prepared_row(L, it.i0 + r, s.row.data(), s.tmp.data());
    }
    fix(c, exact_distance(a, column_row(L, it, c, s), L.d, metric));
  }
}

// simd::l2_epilogue, by the AVX-512 version where the packed kernel runs (same result).
template <typename acc_t>
double l2_epilogue(const Layer<acc_t>& L, const acc_t* g, acc_t sq_i, const acc_t* sq,
                   double* colsum, int64_t len, int64_t* close) {
  if constexpr (std::is_same_v<acc_t, float>)
    if (L.packed.defined()) return gram::l2_epilogue(g, sq_i, sq, colsum, len, close);
  return simd::l2_epilogue(g, sq_i, sq, colsum, len, close);
}

}  // namespace fpgm::cpu
