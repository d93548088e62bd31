// Half and bfloat16 rows to float32, for the rows that the packed Gram path makes from a
// weight a panel (or a row) at a time instead of converting the whole weight
// (distance_layer.h). Exact: every half and bfloat16 value is a float32 value, so the
// result is the same bit for bit as ATen's conversion (Tensor::to).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace fpgm::cpu {

// out[k] = float(x[k]) for k < len. AVX-512 where the CPU has it, else a scalar loop.
void to_float(const c10::Half* x, int64_t len, float* out);
void to_float(const c10::BFloat16* x, int64_t len, float* out);

}  // namespace fpgm::cpu
