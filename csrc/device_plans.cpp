// The CUDA host planners (csrc/cuda/kernels/distance_plan.cuh, gather_plan.cuh) for a
// launcher outside this library: the CuPy backend (fpgm_ext/cupy_backend) plans every
// call here, so it and the compiled CUDA backend cannot plan differently. Host C++ only,
// compiled in every build of fpgm_ext._C, with or without the CUDA kernels.
#include "device_plans.h"

#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/kernels/distance_plan.cuh"
#include "cuda/kernels/gather_plan.cuh"

namespace fpgm {
namespace {

namespace k = kernels;
namespace py = pybind11;

// The steps' kernels as the Python side names them (a key of kernel_names()).
const char* kind_name(k::DistanceKernel kernel) {
  switch (kernel) {
    case k::DistanceKernel::RowStats: return "row_stats";
    case k::DistanceKernel::ColumnMean: return "column_mean";
    case k::DistanceKernel::PrepareRows: return "prepare_rows";
    case k::DistanceKernel::Tile: return "tile";
    case k::DistanceKernel::SplitFinish: return "split_finish";
    case k::DistanceKernel::Finalize: return "finalize";
  }
  return "";
}

constexpr k::DistanceKernel kAllKernels[] = {
    k::DistanceKernel::RowStats, k::DistanceKernel::ColumnMean, k::DistanceKernel::PrepareRows,
    k::DistanceKernel::Tile, k::DistanceKernel::SplitFinish, k::DistanceKernel::Finalize};

void check_metric(int metric) {
  if (metric != k::kMetricL2 && metric != k::kMetricL1 && metric != k::kMetricCos)
    throw std::invalid_argument("fpgm plans: unknown metric id " + std::to_string(metric));
}

k::DistancePlan plan_distance(const std::vector<long long>& n, const std::vector<long long>& d,
                              int acc_size, int metric, long long target_blocks) {
  check_metric(metric);
  if (n.empty() || n.size() != d.size())
    throw std::invalid_argument("fpgm plans: n and d must be non-empty lists of one length");
  for (size_t l = 0; l < n.size(); ++l)
    if (n[l] < 1 || d[l] < 1) throw std::invalid_argument("fpgm plans: every layer needs n, d >= 1");
  if (acc_size != 4 && acc_size != 8) throw std::invalid_argument("fpgm plans: acc_size is 4 or 8");
  return k::plan_distance(n.data(), d.data(), static_cast<int>(n.size()),
                          static_cast<size_t>(acc_size), metric, target_blocks);
}

// The host image of the plan's table, with the layers' input and output addresses.
py::bytes table(k::DistancePlan& p, const std::vector<uintptr_t>& xs,
                const std::vector<uintptr_t>& outs) {
  if (xs.size() != p.layers.size() || outs.size() != p.layers.size())
    throw std::invalid_argument("fpgm plans: one input and one output address per layer");
  for (size_t l = 0; l < p.layers.size(); ++l) {
    p.layers[l].x = reinterpret_cast<const void*>(xs[l]);
    p.layers[l].out = reinterpret_cast<void*>(outs[l]);
  }
  std::string image(p.table_bytes, '\0');
  p.write_table(reinterpret_cast<unsigned char*>(image.data()));
  return py::bytes(image);
}

// The kernels' one argument, DistanceArgs, as bytes (its layout does not depend on acc_t,
// which only types the prepared-rows pointer).
py::bytes args(const k::DistancePlan& p, uintptr_t workspace, int metric, int acc_size) {
  check_metric(metric);
  void* base = reinterpret_cast<void*>(workspace);
  if (acc_size == 8) {
    const auto a = p.args<double>(base, metric);
    return py::bytes(reinterpret_cast<const char*>(&a), sizeof a);
  }
  const auto a = p.args<float>(base, metric);
  return py::bytes(reinterpret_cast<const char*>(&a), sizeof a);
}

std::vector<std::tuple<std::string, long long, int>> steps(const k::DistancePlan& p, int metric,
                                                           bool matrix) {
  check_metric(metric);
  std::vector<std::tuple<std::string, long long, int>> out;
  for (const auto& s : k::distance_steps(p, metric, matrix))
    out.emplace_back(kind_name(s.kernel), s.blocks, s.threads);
  return out;
}

// Every kernel instance a call on (scalar, acc, metric, matrix) may launch, by kind.
py::dict kernel_names(const std::string& scalar, const std::string& acc, int metric, bool matrix) {
  check_metric(metric);
  py::dict names;
  for (const auto kernel : kAllKernels)
    names[kind_name(kernel)] = k::distance_kernel_name(kernel, scalar, acc, metric, matrix);
  return names;
}

// One gather call: per tensor (src, dst, index, index_is64, outer, channels, kept,
// block_bytes) -> (the descriptor table's host image, blocks, word bytes per tensor).
using GatherRow = std::tuple<uintptr_t, uintptr_t, uintptr_t, bool, long long, long long, long long,
                             long long>;

py::tuple plan_gather(const std::vector<GatherRow>& rows) {
  std::vector<k::GatherTensor> tensors;
  for (const auto& r : rows)
    tensors.push_back({reinterpret_cast<const void*>(std::get<0>(r)),
                       reinterpret_cast<void*>(std::get<1>(r)),
                       reinterpret_cast<const void*>(std::get<2>(r)), std::get<3>(r), std::get<4>(r),
                       std::get<5>(r), std::get<6>(r), std::get<7>(r)});
  const k::GatherPlan plan = k::plan_gather(tensors);
  std::vector<int> words;
  for (const auto& g : plan.descs) words.push_back(g.word_bytes);
  const std::string image(reinterpret_cast<const char*>(plan.descs.data()),
                          plan.descs.size() * sizeof(k::GatherDesc));
  return py::make_tuple(py::bytes(image), plan.blocks, words);
}

}  // namespace

void bind_device_plans(py::module_& m) {
  py::class_<k::DistancePlan>(m, "DistancePlan")
      .def_readonly("table_bytes", &k::DistancePlan::table_bytes)
      .def_readonly("total_bytes", &k::DistancePlan::total_bytes)
      .def_readonly("rows", &k::DistancePlan::rows)
      .def_readonly("parts", &k::DistancePlan::parts)
      .def_property_readonly("items", [](const k::DistancePlan& p) { return p.items.size(); })
      .def_property_readonly("pairs", [](const k::DistancePlan& p) { return p.pairs.size(); })
      .def("table", &table, py::arg("xs"), py::arg("outs"))
      .def("args", &args, py::arg("workspace"), py::arg("metric"), py::arg("acc_size"))
      .def("steps", &steps, py::arg("metric"), py::arg("matrix"));
  m.def("plan_distance", &plan_distance, py::arg("n"), py::arg("d"), py::arg("acc_size"),
        py::arg("metric"), py::arg("target_blocks") = 0,
        "Plans one distance call over layers of n[l] rows of d[l] elements.");
  m.def("kernel_names", &kernel_names, py::arg("scalar"), py::arg("acc"), py::arg("metric"),
        py::arg("matrix"), "The kernel instances (C++ names) of a distance call, by kind.");
  m.def("plan_gather", &plan_gather, py::arg("tensors"),
        "Plans one gather_channels call: (descriptor table bytes, blocks, word bytes).");
  m.attr("METRICS") = py::dict(py::arg("l2") = static_cast<int>(k::kMetricL2),
                               py::arg("l1") = static_cast<int>(k::kMetricL1),
                               py::arg("cos") = static_cast<int>(k::kMetricCos));
  m.attr("TILE_THREADS") = k::kTileThreads;  // for the occupancy query before planning
  m.attr("GATHER_KERNEL") = k::kGatherKernelName;
  m.attr("GATHER_THREADS") = k::kGatherThreads;
  m.attr("DISTANCE_ARGS_BYTES") = sizeof(k::DistanceArgs<float>);
  m.attr("GATHER_DESC_BYTES") = sizeof(k::GatherDesc);
}

}  // namespace fpgm
