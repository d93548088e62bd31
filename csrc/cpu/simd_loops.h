// The inner loops of the CPU distance kernels, compiled for AVX-512, AVX2 and a baseline
// and chosen at run time by the loader (GCC target_clones), so one build uses what the
// CPU has. Independent lanes stand in for a reordered sum: exact IEEE arithmetic, no
// fast-math, and the lanes are added in a fixed order, so results are reproducible.
#pragma once

#include <cstdint>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define FPGM_SIMD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FPGM_SIMD_CLONES
#endif

namespace fpgm::simd {

// out[k] += x[k] * scale for k < len (column sums of rows, in double).
void add_scaled(const float* x, double scale, double* out, int64_t len);
void add_scaled(const double* x, double scale, double* out, int64_t len);

// colsum[k] += x[k] for k < len; returns sum(x) (in 16 lanes, added in order: one chain of
// dependent additions would cost 4 cycles an entry).
double sum_and_add(const double* x, double* colsum, int64_t len);

// Sum of squares of x, in double.
double sum_squares(const float* x, int64_t len);
double sum_squares(const double* x, int64_t len);

// out[k] = x[k] * scale - mean[k], rounded to out's type; returns sum(out^2) in double.
double centre(const float* x, double scale, const double* mean, float* out, int64_t len);
double centre(const double* x, double scale, const double* mean, double* out, int64_t len);

// out[k] = x[k] - c[k] (one rounding); returns sum(out^2) in double.
double shift(const float* x, const float* c, float* out, int64_t len);
double shift(const double* x, const double* c, double* out, int64_t len);

// sum_k (x[k] * scale - mean[k])^2, in double.
double centred_norm2(const float* x, double scale, const double* mean, int64_t len);
double centred_norm2(const double* x, double scale, const double* mean, int64_t len);

// Close pairs (accuracy::is_close_pair, csrc/accuracy.h): the epilogues leave such pairs
// out (distance 0), count them, and the caller recomputes exactly the pairs is_close()
// names, directly. The test is bit-identical in every clone and in scalar code.
bool is_close(float g, float sq_i, float sq_c);
bool is_close(double g, double sq_i, double sq_c);

// Distances of row i (|row|^2 = sq_i) against columns with squared norms sq[c] from
// Gram entries g[c]: l2 d = sqrt(max(sq_i + sq_c - 2g, 0)); cos d = clamp((sq_i + sq_c - 2g)/2,
// 0, 2). Adds each d to colsum[c]; returns the row's sum (double). Close pairs count 0,
// and *close is how many there were.
double l2_epilogue(const float* g, float sq_i, const float* sq, double* colsum, int64_t len, int64_t* close);
double cos_epilogue(const float* g, float sq_i, const float* sq, double* colsum, int64_t len, int64_t* close);
double l2_epilogue(const double* g, double sq_i, const double* sq, double* colsum, int64_t len,
                   int64_t* close);
double cos_epilogue(const double* g, double sq_i, const double* sq, double* colsum, int64_t len,
                    int64_t* close);

// Same, writing the distances to out[c] (distance_matrix) instead of summing them (close
// pairs: 0); returns how many pairs were close.
int64_t l2_epilogue_store(const float* g, float sq_i, const float* sq, float* out, int64_t len);
int64_t cos_epilogue_store(const float* g, float sq_i, const float* sq, float* out, int64_t len);
int64_t l2_epilogue_store(const double* g, double sq_i, const double* sq, double* out, int64_t len);
int64_t cos_epilogue_store(const double* g, double sq_i, const double* sq, double* out, int64_t len);

// acc[c] += sum_k |a[k] - b_c[k]| for the rows b_c = b + c * ldb, c < nb, k < len.
void l1_rows(const float* a, const float* b, int64_t ldb, int64_t nb, int64_t len, double* acc);
void l1_rows(const double* a, const double* b, int64_t ldb, int64_t nb, int64_t len, double* acc);
// acc[c] += sum_k (a[k] - b_c[k])^2, likewise.
void sqdiff_rows(const float* a, const float* b, int64_t ldb, int64_t nb, int64_t len, double* acc);
void sqdiff_rows(const double* a, const double* b, int64_t ldb, int64_t nb, int64_t len, double* acc);

}  // namespace fpgm::simd
