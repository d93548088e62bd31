// The Python extension module fpgm_ext._C. Importing it loads this library, which
// registers the fpgm operators; the module itself only reports the build configuration.
#include <pybind11/pybind11.h>

#include "build_info.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "fpgm_ext compiled operators (registered as torch.ops.fpgm.*)";
  m.def("build_info_json", &fpgm::build_info_json,
        "The build configuration (torch version, CUDA, OpenMP, arch list) as JSON.");
}
