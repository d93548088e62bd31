// The direct path's distance sums in float on AVX-512 CPUs: sum_k |a_k - b_k| (l1) or
// sum_k (a_k - b_k)^2 (l2 / cos in few dimensions, small layers) for a block of row pairs,
// 4 rows x 4 columns at a time. The portable loop (simd::l1_rows) takes one row against
// four and spends more than half its time adding each pair's 16 lanes one by one in double;
// here the 16 sums of a 4 x 4 tile are reduced together by shuffles, once per 256 k.
//
// Exactness as the portable loop: float lanes over 256 k (16 terms per lane), that chunk's
// sum in float, and the chunks added in double. Callers check avx512_kernels() first.
#pragma once

#include <cstdint>

namespace fpgm::pairs {

// dist[r * nj + c] += sum_k op(rows[i0 + r, k], rows[j0 + c, k]) for r < ni, c < nj, op the
// absolute (squared = false) or squared difference, rows[m, d] row-major. With `upper`,
// only the entries with j0 + c > i0 + r are needed: tiles wholly on or below the diagonal
// are skipped (their entries left as they were).
void block(const float* rows, int64_t d, int64_t i0, int64_t ni, int64_t j0, int64_t nj,
           bool squared, bool upper, double* dist);

// The distances themselves for rows of few dimensions (d <= kSmallD), where 16 lanes
// along k would mostly hold padding: the lanes run along 16 columns instead, read from the
// rows packed as for gram::block (gram_kernel.h); no reduction at all. dist[r * nj + c] =
// sum_k |a_k - b_k| (kind L1), sqrt(sum_k (a_k - b_k)^2) (L2), or min(sum_k (a_k - b_k)^2 / 2,
// 2) (Cos, unit rows), in float (at most kSmallD terms), written as double. j0 a multiple
// of 16; `upper` as for block().
constexpr int64_t kSmallD = 32;
enum class Kind { L1, L2, Cos };
void small_block(const float* rows, const float* packed, int64_t d, int64_t i0, int64_t ni,
                 int64_t j0, int64_t nj, Kind kind, bool upper, double* dist);

}  // namespace fpgm::pairs
