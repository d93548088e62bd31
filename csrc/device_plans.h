// The CUDA host planners, bound into fpgm_ext._C as the submodule `plans` (for the CuPy
// backend). See device_plans.cpp.
#pragma once

#include <pybind11/pybind11.h>

namespace fpgm {

void bind_device_plans(pybind11::module_& m);

}  // namespace fpgm
