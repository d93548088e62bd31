// Whether the CPU kernels written with AVX-512 intrinsics run (gram_kernel.h,
// pair_kernel.h): this build has them (x86-64, GCC or Clang), the CPU runs AVX-512F, and
// the environment does not set FPGM_EXT_CPU_AVX512=0. Otherwise the portable paths run
// (BLAS Gram products, loops compiled per ISA in simd_loops): what a CPU without AVX-512
// gets, and what the tests also run on one with it.
#pragma once

namespace fpgm {

bool avx512_kernels();

}  // namespace fpgm
