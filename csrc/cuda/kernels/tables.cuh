// The work tables of the CUDA kernels: what a host planner writes (distance_plan.cuh,
// gather_plan.cuh) and the device code reads (distance.cuh, gather.cuh), with the block
// sizes both sides use. Plain structs and constants only, so this header compiles in
// every build: nvcc, NVRTC, the CPU emulation, and the host C++ of fpgm_ext._C (whose
// planner the CuPy backend uses). The host and the device see one layout: a table is
// written on the host and copied to the device byte for byte.
#pragma once

#include "../../accuracy.h"

namespace fpgm {
namespace kernels {

enum : int { kMetricL2 = 0, kMetricL1 = 1, kMetricCos = 2 };

constexpr int kTile = 64;           // rows on each side of a tile pair
constexpr int kTileK = 16;          // columns per shared-memory step, = the float32 chunk
constexpr int kTileThreads = 256;   // 16 x 16 threads, 4 x 4 outputs each
constexpr int kRowThreads = 128;    // row kernels: one block per row
constexpr int kColsPerBlock = 32;   // column means: 32 columns x 8 row groups per block
constexpr int kColGroups = 8;
constexpr int kColThreads = kColsPerBlock * kColGroups;
constexpr int kFinalThreads = 256;
// l2 / cos with D up to accuracy::kDirectMaxD take the direct path, as the CPU kernel
// does: the distance from sum (a - b)^2 of the uncentred rows (cos: unit rows).
using accuracy::kDirectMaxD;

struct LayerDesc {
  const void* x;           // input rows [n, d], contiguous, of the op's input dtype
  void* out;               // scores [n] or matrix [n, n], of the result dtype acc_t
  long long n, d, ld;      // ld: d rounded up to kTileK (prepared rows padded with zeros)
  long long row_off;       // this layer's first row in the per-row arrays
  long long col_off;       // its first column in the column-mean array
  long long elem_off;      // its first element in the prepared rows
  long long col_block_off; // its first block of column_mean_kernel
  int direct;              // l2 / cos with d <= kDirectMaxD: sum (a - b)^2, no centring
  int pad_;
};

struct TileItem {
  int layer, ti, tj;  // tile pair (ti <= tj) of one layer: rows ti*kTile.., tj*kTile..
  int k0, k1;         // the steps of kTileK columns it covers: [k0, k1)
  int part;           // -1: the whole pair, finished by this item; else its slot in
                      // DistanceArgs::partial (a pair split over several items)
};

// A tile pair whose columns were split over several items (when a call has too few tile
// pairs to fill the GPU, e.g. one layer with N = 512 and D = 4608): split_finish_kernel
// adds their partial tiles, in order, and finishes the pair.
struct SplitPair {
  int layer, ti, tj;
  int first_part, parts;
};

template <typename acc_t>
struct DistanceArgs {
  const LayerDesc* layers;
  const TileItem* items;
  const SplitPair* pairs;
  int num_layers;
  int metric;
  acc_t* rows;       // prepared rows (elem_off, ld)
  double* sq;        // per row: |prepared row|^2 from float32 chunk sums
  double* inv_norm;  // per row: cos 1/|row| (1 for a zero row); 1 otherwise
  double* mean;      // per column (col_off)
  double* sums;      // per row: the score accumulator
  int* zero;         // per row: cos, the row is all zeros
  int* bad;          // per layer: a row holds NaN or Inf (zero on entry)
  int* nonzero;      // per layer: rows that are not all zeros (zero on entry)
  double* partial;   // per part: the kTile x kTile sums of one item of a split pair
};

constexpr int kGatherThreads = 256;
constexpr long long kGatherChunk = kGatherThreads * 8;  // words per block

struct GatherDesc {
  const unsigned char* src;  // [outer, channels, inner], contiguous
  unsigned char* dst;        // [outer, kept, inner], contiguous
  const void* index;         // [kept] int64 or int32
  long long channels, kept;
  long long words_per_block;  // inner * element_size / word_bytes
  long long words;            // outer * kept * words_per_block
  long long first_block;      // this tensor's first CUDA block
  int word_bytes;             // 16, 8, 4, 2 or 1
  int index_is64;
  int tensor;                 // position in the op's list, for the assertion message
  int pad_;
};

}  // namespace kernels
}  // namespace fpgm
