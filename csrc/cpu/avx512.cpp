// See avx512.h. The environment is read on every call (a getenv per layer), so that tests
// can switch paths in one process.
#include "avx512.h"

#include <cstdlib>
#include <cstring>

namespace fpgm {

bool avx512_kernels() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  static const bool cpu = __builtin_cpu_supports("avx512f");
  if (!cpu) return false;
  const char* choice = std::getenv("FPGM_EXT_CPU_AVX512");
  return choice == nullptr || std::strcmp(choice, "0") != 0;
#else
  return false;
#endif
}

}  // namespace fpgm
