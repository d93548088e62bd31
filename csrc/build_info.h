#pragma once
#include <string>

namespace fpgm {
// The configuration this library was compiled with, as a JSON object.
std::string build_info_json();
}  // namespace fpgm

// C entry point so a library built by CMake (without pybind11) can be asked too.
extern "C" const char* fpgm_ext_build_info();
