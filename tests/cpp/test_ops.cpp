// C++ test of the fpgm operators of libfpgm_ext_ops (the CMake build), called through
// the dispatcher as any C++ or TorchScript caller would, against a naive double-precision
// loop oracle written here (independent of fpgm_ext/reference.py).
//
// Built as fpgm_ext_cpp_test by CMakeLists.txt and run by ctest. One line per check group,
// then "N passed, M failed"; exits non-zero when any check failed.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "build_info.h"

// ---- a tiny check framework --------------------------------------------------------------
namespace {

int g_passed = 0;
int g_failed = 0;
int g_group_passed = 0;
int g_group_failed = 0;

void check_impl(bool ok, const char* expr, const char* file, int line, const std::string& what) {
  if (ok) {
    ++g_passed;
    ++g_group_passed;
    return;
  }
  ++g_failed;
  ++g_group_failed;
  std::cout << "  FAIL " << file << ":" << line << ": " << expr;
  if (!what.empty()) std::cout << " -- " << what;
  std::cout << std::endl;
}

// CHECK(cond) or CHECK(cond, anything streamable << ...): counts one check. (Replaces
// the glog-style CHECK of c10/util/Logging.h, which aborts.)
#undef CHECK
#define CHECK(cond, ...)                                                        \
  do {                                                                          \
    bool ok_ = false;                                                           \
    std::ostringstream what_;                                                   \
    try {                                                                       \
      ok_ = static_cast<bool>(cond);                                            \
    } catch (const std::exception& e_) {                                        \
      what_ << "threw: " << e_.what() << " ";                                   \
    }                                                                           \
    if (!ok_) what_ << "" __VA_OPT__(<< __VA_ARGS__);                           \
    check_impl(ok_, #cond, __FILE__, __LINE__, what_.str());                    \
  } while (0)

void run_group(const std::string& name, const std::function<void()>& body) {
  g_group_passed = g_group_failed = 0;
  try {
    body();
  } catch (const std::exception& e) {
    ++g_failed;
    ++g_group_failed;
    std::cout << "  FAIL " << name << ": unexpected exception: " << e.what() << std::endl;
  }
  std::cout << (g_group_failed ? "[FAIL] " : "[ ok ] ") << name << ": " << g_group_passed
            << " passed, " << g_group_failed << " failed" << std::endl;
}

// ---- the operators, through the dispatcher -----------------------------------------------
using ScoresFn = at::Tensor(const at::Tensor&, c10::string_view);
using MultiFn = std::vector<at::Tensor>(at::TensorList, c10::string_view);
using GatherFn = std::vector<at::Tensor>(at::TensorList, at::IntArrayRef, at::TensorList);

at::Tensor distance_scores(const at::Tensor& w, const std::string& metric) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fpgm::distance_scores", "")
                       .typed<ScoresFn>();
  return op.call(w, metric);
}

at::Tensor distance_matrix(const at::Tensor& w, const std::string& metric) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fpgm::distance_matrix", "")
                       .typed<ScoresFn>();
  return op.call(w, metric);
}

std::vector<at::Tensor> distance_scores_multi(const std::vector<at::Tensor>& ws,
                                              const std::string& metric) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fpgm::distance_scores_multi", "")
                       .typed<MultiFn>();
  return op.call(ws, metric);
}

std::vector<at::Tensor> gather_channels(const std::vector<at::Tensor>& ts,
                                        const std::vector<int64_t>& dims,
                                        const std::vector<at::Tensor>& idx) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("fpgm::gather_channels", "")
                       .typed<GatherFn>();
  return op.call(ts, dims, idx);
}

// ---- the oracle: naive loops in double -----------------------------------------------------
struct Rows {
  int64_t n = 0, d = 0;
  std::vector<double> v;  // row-major [n, d]
};

Rows rows_of(const at::Tensor& w) {
  Rows r;
  r.n = w.size(0);
  r.d = w.numel() / r.n;
  const at::Tensor x = w.reshape({r.n, r.d}).to(at::kDouble).contiguous();
  const double* p = x.const_data_ptr<double>();
  r.v.assign(p, p + r.n * r.d);
  return r;
}

double oracle_distance(const Rows& r, int64_t i, int64_t j, const std::string& metric) {
  if (i == j) return 0.0;
  const double* a = r.v.data() + i * r.d;
  const double* b = r.v.data() + j * r.d;
  if (metric == "l2") {
    double s = 0.0;
    for (int64_t k = 0; k < r.d; ++k) s += (a[k] - b[k]) * (a[k] - b[k]);
    return std::sqrt(s);
  }
  if (metric == "l1") {
    double s = 0.0;
    for (int64_t k = 0; k < r.d; ++k) s += std::abs(a[k] - b[k]);
    return s;
  }
  // cos: 1 - a.b / (|a| |b|); a zero row is at distance 1 from every other row.
  double ab = 0.0, aa = 0.0, bb = 0.0;
  for (int64_t k = 0; k < r.d; ++k) {
    ab += a[k] * b[k];
    aa += a[k] * a[k];
    bb += b[k] * b[k];
  }
  if (aa == 0.0 || bb == 0.0) return 1.0;
  return 1.0 - ab / (std::sqrt(aa) * std::sqrt(bb));
}

std::vector<double> oracle_matrix(const at::Tensor& w, const std::string& metric) {
  const Rows r = rows_of(w);
  std::vector<double> m(r.n * r.n, 0.0);
  for (int64_t i = 0; i < r.n; ++i)
    for (int64_t j = 0; j < r.n; ++j) m[i * r.n + j] = oracle_distance(r, i, j, metric);
  return m;
}

std::vector<double> oracle_scores(const at::Tensor& w, const std::string& metric) {
  const Rows r = rows_of(w);
  std::vector<double> s(r.n, 0.0);
  for (int64_t i = 0; i < r.n; ++i)
    for (int64_t j = 0; j < r.n; ++j) s[i] += oracle_distance(r, i, j, metric);
  return s;
}

// Largest |got - ref| / max(|ref|, floor) over all elements; where the worst one is.
struct Err {
  double rel = 0.0;
  int64_t at = -1;
  double got = 0.0, ref = 0.0;
};

Err max_rel_err(const at::Tensor& got, const std::vector<double>& ref, double floor) {
  Err e;
  const at::Tensor g = got.to(at::kDouble).contiguous();
  if (g.numel() != static_cast<int64_t>(ref.size())) {
    e.rel = INFINITY;
    return e;
  }
  const double* p = g.const_data_ptr<double>();
  for (size_t k = 0; k < ref.size(); ++k) {
    const double r = std::abs(p[k] - ref[k]) / std::max(std::abs(ref[k]), floor);
    if (!(r <= e.rel)) {  // also catches NaN
      e = {r, static_cast<int64_t>(k), p[k], ref[k]};
      if (std::isnan(r)) break;
    }
  }
  return e;
}

std::ostream& operator<<(std::ostream& os, const Err& e) {
  return os << "max rel err " << e.rel << " at " << e.at << " (got " << e.got << ", want "
            << e.ref << ")";
}

std::string shape_str(const at::Tensor& t) {
  std::ostringstream s;
  s << t.sizes() << " " << t.scalar_type();
  return s.str();
}

// Tolerance on scores and distances: 1e-5 relative for float32 accumulation, tighter for
// float64. The floor keeps an exact 0 (N = 1) from dividing by 0.
double tolerance(at::ScalarType t) { return t == at::kDouble ? 1e-10 : 1e-5; }

// Entries of a distance matrix are compared relative to max(|entry|, largest entry of the
// layer): a float32 Gram product (|a|^2 + |b|^2 - 2 a.b) cannot give a tiny distance
// between near-duplicate filters to 1e-5 of itself (D = 1, l2: 3e-5 seen), only to about
// float32 epsilon of the layer's scale. The scores (sums) are held to 1e-5 of themselves.
double matrix_floor(const std::vector<double>& m) {
  double mx = 1e-6;
  for (const double v : m) mx = std::max(mx, std::abs(v));
  return mx;
}

// Runs f, which must throw c10::Error whose message contains `needle`.
template <typename F>
void expect_c10_error(const char* what, const std::string& needle, F&& f) {
  std::string got;
  bool c10_error = false;
  try {
    f();
    got = "no exception";
  } catch (const c10::Error& e) {
    c10_error = true;
    got = e.msg();
  } catch (const std::exception& e) {
    got = std::string("not a c10::Error: ") + e.what();
  }
  const bool ok = c10_error && got.find(needle) != std::string::npos;
  check_impl(ok, what, __FILE__, __LINE__,
             ok ? "" : "expected c10::Error mentioning '" + needle + "', got: " + got);
}

const std::vector<std::string> kMetrics = {"l2", "l1", "cos"};

}  // namespace

int main() {
  at::manual_seed(20190601);

  run_group("library loaded (fpgm_ext_build_info)", [] {
    const char* info = fpgm_ext_build_info();
    CHECK(info != nullptr);
    const std::string s = info ? info : "";
    std::cout << "  build info: " << s << std::endl;
    CHECK(s.find("\"build_system\": \"cmake\"") != std::string::npos, s);
    for (const char* op : {"fpgm::distance_scores", "fpgm::distance_matrix",
                           "fpgm::distance_scores_multi", "fpgm::gather_channels"}) {
      const auto h = c10::Dispatcher::singleton().findSchema({op, ""});
      CHECK(h.has_value(), op << " has no schema");
      CHECK(h.has_value() && h->hasKernelForDispatchKey(c10::DispatchKey::CPU),
            op << " has no CPU kernel");
    }
  });

  // The shapes of the scores checks: edge cases, a tile boundary that is not a multiple of
  // the 128-row (l2, cos) or 64-row (l1) tiles, a conv weight, float64 and float16 input.
  std::vector<at::Tensor> weights = {
      at::randn({1, 1}),             // N = 1, D = 1
      at::randn({1, 10}),            // N = 1
      at::randn({7, 1}),             // D = 1
      at::randn({9}),                // rank 1: nine filters of one element
      at::randn({200, 37}),          // N not a multiple of 128 or 64
      at::randn({130, 5}),           // one full tile and a 2-row tail
      at::randn({64, 3, 3, 3}),      // a conv weight
      at::randn({50, 20}, at::kDouble),
      at::randn({40, 9}).to(at::kHalf),
  };
  {
    // A zero filter: cosine distance 1 to every other filter.
    at::Tensor w = at::randn({12, 6});
    w[3].zero_();
    weights.push_back(w);
  }

  for (const auto& metric : kMetrics) {
    run_group("distance_scores " + metric + " vs double loop oracle", [&] {
      for (const at::Tensor& w : weights) {
        const at::Tensor got = distance_scores(w, metric);
        const auto want_dtype = w.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
        CHECK(got.scalar_type() == want_dtype, shape_str(w) << " -> " << got.scalar_type());
        CHECK(got.dim() == 1 && got.size(0) == w.size(0), shape_str(w) << " -> " << got.sizes());
        const Err e = max_rel_err(got, oracle_scores(w, metric), 1e-6);
        CHECK(e.rel <= tolerance(w.scalar_type()), shape_str(w) << ": " << e);
      }
    });
  }

  for (const auto& metric : kMetrics) {
    run_group("distance_matrix " + metric + ": oracle, symmetry, zero diagonal", [&] {
      for (const at::Tensor& w : weights) {
        const at::Tensor m = distance_matrix(w, metric);
        const int64_t n = w.size(0);
        CHECK(m.dim() == 2 && m.size(0) == n && m.size(1) == n, shape_str(w) << " -> " << m.sizes());
        if (m.dim() != 2) continue;
        const std::vector<double> want = oracle_matrix(w, metric);
        const Err e = max_rel_err(m, want, matrix_floor(want));
        CHECK(e.rel <= tolerance(w.scalar_type()), shape_str(w) << ": " << e);
        CHECK(at::equal(m, m.t()), shape_str(w) << ": not symmetric");
        CHECK(at::diagonal(m).abs().max().item<double>() == 0.0, shape_str(w) << ": diagonal "
                                                                      << at::diagonal(m));
        // The scores are the row sums of the matrix.
        const at::Tensor s = distance_scores(w, metric);
        CHECK(at::allclose(m.to(at::kDouble).sum(1), s.to(at::kDouble), 1e-5, 1e-6),
              shape_str(w) << ": row sums != scores");
      }
      // A batch [B, N, D] is B layers.
      const at::Tensor b = at::randn({3, 20, 7});
      const at::Tensor mb = distance_matrix(b, metric);
      CHECK(mb.dim() == 3 && mb.size(0) == 3 && mb.size(1) == 20 && mb.size(2) == 20, mb.sizes());
      if (mb.dim() == 3)
        for (int64_t k = 0; k < 3; ++k) {
          const std::vector<double> want = oracle_matrix(b[k], metric);
          const Err e = max_rel_err(mb[k], want, matrix_floor(want));
          CHECK(e.rel <= 1e-5, "batch " << k << ": " << e);
        }
    });
  }

  for (const auto& metric : kMetrics) {
    run_group("distance_scores_multi " + metric + " == per-layer distance_scores", [&] {
      const std::vector<at::Tensor> layers = {at::randn({64, 3, 3, 3}), at::randn({200, 37}),
                                              at::randn({33, 128})};
      const std::vector<at::Tensor> got = distance_scores_multi(layers, metric);
      CHECK(got.size() == layers.size(), got.size());
      for (size_t k = 0; k < std::min(got.size(), layers.size()); ++k) {
        const at::Tensor single = distance_scores(layers[k], metric);
        CHECK(got[k].sizes() == single.sizes() && got[k].scalar_type() == single.scalar_type(),
              "layer " << k);
        CHECK(at::allclose(got[k], single, 1e-6, 0.0),
              "layer " << k << ": max |diff| " << (got[k] - single).abs().max().item<double>());
        const Err e = max_rel_err(got[k], oracle_scores(layers[k], metric), 1e-6);
        CHECK(e.rel <= 1e-5, "layer " << k << " vs oracle: " << e);
      }
    });
  }

  run_group("gather_channels == index_select", [] {
    const at::Tensor conv = at::randn({64, 3, 3, 3});
    const at::Tensor next = at::randn({32, 64, 3, 3});
    const at::Tensor bias = at::randn({64});
    const at::Tensor lin = at::randn({10, 64}, at::kDouble);
    const at::Tensor strided = at::randn({16, 64}).t();  // [64, 16], not contiguous
    const at::Tensor keep = std::get<0>(at::sort(at::randperm(64).narrow(0, 0, 40)));
    const at::Tensor shuffled = at::randperm(64).narrow(0, 0, 25);  // unsorted
    const at::Tensor keep32 = keep.to(at::kInt);
    const at::Tensor repeated = at::tensor({5, 5, 0, 63}, at::kLong);
    const at::Tensor none = at::empty({0}, at::kLong);
    const std::vector<at::Tensor> ts = {conv, next, bias, lin, strided, conv, conv, bias};
    const std::vector<int64_t> dims = {0, 1, 0, -1, 0, 0, 0, 0};
    const std::vector<at::Tensor> idx = {keep, keep, keep32, shuffled, keep, repeated, none, keep};
    const std::vector<at::Tensor> got = gather_channels(ts, dims, idx);
    CHECK(got.size() == ts.size(), got.size());
    for (size_t k = 0; k < std::min(got.size(), ts.size()); ++k) {
      const at::Tensor want = ts[k].index_select(dims[k], idx[k]);
      CHECK(got[k].sizes() == want.sizes(), "tensor " << k << ": " << got[k].sizes() << " vs "
                                                      << want.sizes());
      CHECK(got[k].scalar_type() == want.scalar_type(), "tensor " << k);
      CHECK(got[k].is_contiguous(), "tensor " << k);
      CHECK(at::equal(got[k], want), "tensor " << k);
    }
  });

  run_group("bad input throws c10::Error", [] {
    const at::Tensor w = at::randn({8, 4});
    expect_c10_error("int weight", "weight", [] {
      distance_scores(at::randint(0, 10, {8, 4}, at::kInt), "l2");
    });
    expect_c10_error("int64 weight (matrix)", "weight", [] {
      distance_matrix(at::randint(0, 10, {8, 4}, at::kLong), "l2");
    });
    expect_c10_error("int weight in multi", "weights[1]", [&] {
      distance_scores_multi({w, at::randint(0, 10, {8, 4}, at::kInt)}, "l2");
    });
    expect_c10_error("unknown metric l3", "l3", [&] { distance_scores(w, "l3"); });
    expect_c10_error("unknown metric l3 (matrix)", "l3", [&] { distance_matrix(w, "l3"); });
    expect_c10_error("unknown metric l3 (multi)", "l3", [&] { distance_scores_multi({w}, "l3"); });
    expect_c10_error("N = 0", "weight", [] { distance_scores(at::randn({0, 4}), "l2"); });
    expect_c10_error("D = 0", "weight", [] { distance_scores(at::randn({4, 0}), "l2"); });
    expect_c10_error("rank 0", "weight", [] { distance_scores(at::randn({}), "l2"); });
    expect_c10_error("NaN in weight", "NaN", [] {
      at::Tensor x = at::randn({8, 4});
      x[2][1] = NAN;
      distance_scores(x, "l2");
    });
    expect_c10_error("index out of range", "indices[0]", [&] {
      gather_channels({w}, {0}, {at::tensor({0, 8}, at::kLong)});
    });
    expect_c10_error("negative index", "indices[1]", [&] {
      gather_channels({w, w}, {0, 1}, {at::tensor({1}, at::kLong), at::tensor({-1}, at::kLong)});
    });
    expect_c10_error("float index", "indices[0]", [&] {
      gather_channels({w}, {0}, {at::tensor({0.0f})});
    });
    expect_c10_error("dim out of range", "dims[0]", [&] {
      gather_channels({w}, {2}, {at::tensor({0}, at::kLong)});
    });
    expect_c10_error("length mismatch", "same length", [&] {
      gather_channels({w, w}, {0}, {at::tensor({0}, at::kLong)});
    });
  });

  std::cout << g_passed << " passed, " << g_failed << " failed" << std::endl;
  return g_failed == 0 ? 0 : 1;
}
