// The steps of a distance call (distance_plan.cuh) launched as the kernels of
// distance.cuh, through `launch(kernel, blocks, threads, args...)`: torch's stream in
// csrc/cuda/distance.cu, the CPU emulation in the tests. Host code, with the kernels: not
// for NVRTC (the CuPy backend launches the same steps by kernel name).
#pragma once

#include "distance.cuh"
#include "distance_plan.cuh"

namespace fpgm {
namespace kernels {

template <typename scalar_t, typename acc_t, bool kL1, bool kMatrix, typename Launch>
void launch_step(const DistanceStep& s, const DistanceArgs<acc_t>& a, Launch&& launch) {
  switch (s.kernel) {
    case DistanceKernel::RowStats: launch(&row_stats_kernel<scalar_t, acc_t>, s.blocks, s.threads, a); return;
    case DistanceKernel::ColumnMean: launch(&column_mean_kernel<scalar_t, acc_t>, s.blocks, s.threads, a); return;
    case DistanceKernel::PrepareRows: launch(&prepare_rows_kernel<scalar_t, acc_t>, s.blocks, s.threads, a); return;
    case DistanceKernel::Tile: launch(&tile_kernel<acc_t, kL1, kMatrix>, s.blocks, s.threads, a); return;
    case DistanceKernel::SplitFinish: launch(&split_finish_kernel<acc_t, kL1, kMatrix>, s.blocks, s.threads, a); return;
    case DistanceKernel::Finalize: launch(&finalize_kernel<acc_t>, s.blocks, s.threads, a); return;
  }
}

// The launches of one call. matrix: the outputs are [n, n] matrices, not scores.
template <typename scalar_t, typename acc_t, typename Launch>
void launch_distance(const DistancePlan& p, const DistanceArgs<acc_t>& a, bool matrix,
                     Launch&& launch) {
  const bool l1 = a.metric == kMetricL1;
  for (const DistanceStep& s : distance_steps(p, a.metric, matrix)) {
    if (l1 && matrix) launch_step<scalar_t, acc_t, true, true>(s, a, launch);
    else if (l1) launch_step<scalar_t, acc_t, true, false>(s, a, launch);
    else if (matrix) launch_step<scalar_t, acc_t, false, true>(s, a, launch);
    else launch_step<scalar_t, acc_t, false, false>(s, a, launch);
  }
}

}  // namespace kernels
}  // namespace fpgm
