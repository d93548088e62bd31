#include "build_info.h"

#include <torch/version.h>

#include <sstream>

#include "accuracy.h"

#ifndef FPGM_EXT_CUDA_ARCH_LIST
#define FPGM_EXT_CUDA_ARCH_LIST ""
#endif
#ifndef FPGM_EXT_BUILD_SYSTEM
#define FPGM_EXT_BUILD_SYSTEM "unknown"
#endif

namespace fpgm {

std::string build_info_json() {
  std::ostringstream s;
  s << "{\"torch_version\": \"" << TORCH_VERSION << "\"";
#ifdef WITH_CUDA
  s << ", \"with_cuda\": true";
#else
  s << ", \"with_cuda\": false";
#endif
#ifdef CUDA_VERSION_STRING
  s << ", \"cuda_version\": \"" << CUDA_VERSION_STRING << "\"";
#else
  s << ", \"cuda_version\": null";
#endif
  s << ", \"cuda_arch_list\": \"" << FPGM_EXT_CUDA_ARCH_LIST << "\"";
#ifdef _OPENMP
  s << ", \"openmp\": " << _OPENMP;
#else
  s << ", \"openmp\": null";
#endif
  s << ", \"compiler\": \"" << __VERSION__ << "\"";
  // The accuracy contract the kernels were compiled with (tests compare the reference's).
  s << ", \"accuracy\": {\"close_ratio\": " << accuracy::kCloseRatio
    << ", \"centre_rows\": " << accuracy::kCentreRows
    << ", \"centre_ratio\": " << accuracy::kCentreRatio
    << ", \"direct_max_d\": " << accuracy::kDirectMaxD << "}";
  s << ", \"build_system\": \"" << FPGM_EXT_BUILD_SYSTEM << "\"}";
  return s.str();
}

}  // namespace fpgm

extern "C" const char* fpgm_ext_build_info() {
  static const std::string info = fpgm::build_info_json();
  return info.c_str();
}
