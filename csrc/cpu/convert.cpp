// See convert.h. The AVX-512 loops carry the target attribute (the rest of the build stays
// baseline x86-64) and run where the CPU reports AVX-512F, whatever FPGM_EXT_CPU_AVX512
// says: the conversion is exact either way, so the switch has nothing to choose here.
#include "convert.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FPGM_CONVERT_AVX512 1
#include <immintrin.h>
#define FPGM_AVX512 __attribute__((target("avx512f")))
#else
#define FPGM_CONVERT_AVX512 0
#endif

namespace fpgm::cpu {
namespace {

#if FPGM_CONVERT_AVX512
bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

// vcvtph2ps: IEEE half to float, subnormals included.
FPGM_AVX512 void half_avx512(const c10::Half* x, int64_t len, float* out) {
  int64_t k = 0;
  for (; k + 16 <= len; k += 16)
    _mm512_storeu_ps(out + k, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k))));
  for (; k < len; ++k) out[k] = static_cast<float>(x[k]);
}

// bfloat16 is the upper half of a float: widen to 32 bits and shift left by 16.
FPGM_AVX512 void bfloat16_avx512(const c10::BFloat16* x, int64_t len, float* out) {
  int64_t k = 0;
  for (; k + 16 <= len; k += 16) {
    const __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + k)));
    _mm512_storeu_ps(out + k, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
  }
  for (; k < len; ++k) out[k] = static_cast<float>(x[k]);
}
#endif

}  // namespace

void to_float(const c10::Half* x, int64_t len, float* out) {
#if FPGM_CONVERT_AVX512
  if (cpu_has_avx512()) return half_avx512(x, len, out);
#endif
  for (int64_t k = 0; k < len; ++k) out[k] = static_cast<float>(x[k]);
}

void to_float(const c10::BFloat16* x, int64_t len, float* out) {
#if FPGM_CONVERT_AVX512
  if (cpu_has_avx512()) return bfloat16_avx512(x, len, out);
#endif
  for (int64_t k = 0; k < len; ++k) out[k] = static_cast<float>(x[k]);
}

}  // namespace fpgm::cpu
