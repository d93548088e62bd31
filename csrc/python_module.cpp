// The Python extension module fpgm_ext._C. Importing it loads this library, which
// registers the fpgm operators; the module itself reports the build configuration and
// holds the CUDA host planners (submodule `plans`, for the CuPy backend).
#include <pybind11/pybind11.h>

#include "build_info.h"
#include "device_plans.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "fpgm_ext compiled operators (registered as torch.ops.fpgm.*)";
  m.def("build_info_json", &fpgm::build_info_json,
        "The build configuration (torch version, CUDA, OpenMP, arch list) as JSON.");
  auto plans = m.def_submodule("plans", "The CUDA host planners (csrc/cuda/kernels/*_plan.cuh)");
  fpgm::bind_device_plans(plans);
}
