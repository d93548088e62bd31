// The schemas of every fpgm operator, defined once. Backends add kernels with
// TORCH_LIBRARY_IMPL (csrc/cpu, csrc/cuda); fake kernels live in fpgm_ext/_fake.py.
#include <torch/library.h>

TORCH_LIBRARY(fpgm, m) {
  m.def("distance_scores(Tensor weight, str metric=\"l2\") -> Tensor");
  m.def("distance_matrix(Tensor weight, str metric=\"l2\") -> Tensor");
  m.def("distance_scores_multi(Tensor[] weights, str metric=\"l2\") -> Tensor[]");
  m.def("gather_channels(Tensor[] tensors, int[] dims, Tensor[] indices) -> Tensor[]");
}
