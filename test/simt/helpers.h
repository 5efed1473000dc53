// Shared helpers of the kernel tests under the SIMT emulation: seeded inputs, NaN-poisoned
// outputs, the devices whose limits the launches are checked against, and an element-wise
// comparison that reports max abs/rel error and the first offending index.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "check.h"
#include "launch.h"
#include "simt/simt.h"

namespace simttest {

constexpr double kU32 = 5.9604644775390625e-8;  // unit roundoff of f32 (2^-24)

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * double(next() >> 11) * 0x1.0p-53; }
  size_t below(size_t n) { return size_t(next() % n); }
};

inline std::vector<float> randomF32(Rng& r, size_t n, double lo = -1, double hi = 1) {
  std::vector<float> v(n);
  for (auto& x : v) x = float(r.uniform(lo, hi));
  return v;
}
inline std::vector<float> poisoned(size_t n) { return std::vector<float>(n, NAN); }

// Every supported architecture: launches are planned and checked against each one's limits.
inline std::vector<kvant::cuda::Device> devices() {
  std::vector<kvant::cuda::Device> d;
  for (int sm : kvant::cuda::kSupportedArchs) {
    kvant::cuda::Device dev;
    kvant::cuda::archLimits(sm, &dev.limits);
    d.push_back(dev);
  }
  return d;
}
inline kvant::cuda::Device device(int sm) {
  kvant::cuda::Device dev;
  kvant::cuda::archLimits(sm, &dev.limits);
  return dev;
}

// Expect |got[i] - want[i]| <= tol(i) for all i (NaN anywhere fails). Prints the worst error.
template <class Tol>
inline bool expectClose(const char* what, const float* got, const double* want, size_t n, Tol tol, const char* file, int line) {
  double maxAbs = 0, maxRel = 0;
  size_t bad = n, nbad = 0;
  for (size_t i = 0; i < n; ++i) {
    const double e = std::fabs(double(got[i]) - want[i]);
    const bool ok = e <= tol(i);  // false for NaN
    if (!ok) {
      if (bad == n) bad = i;
      ++nbad;
    }
    if (e == e) {
      maxAbs = std::fmax(maxAbs, e);
      if (want[i] != 0) maxRel = std::fmax(maxRel, e / std::fabs(want[i]));
    }
  }
  if (std::getenv("KVANT_SIMT_VERBOSE"))
    std::fprintf(stderr, "  %s: n %zu, max abs err %.3g, max rel err %.3g, max bound %.3g\n", what, n, maxAbs, maxRel, [&] {
      double t = 0;
      for (size_t i = 0; i < n; ++i) t = std::fmax(t, double(tol(i)));
      return t;
    }());
  if (nbad) {
    char buf[512];
    std::snprintf(buf, sizeof buf, "%s: %zu of %zu outside the bound; first [%zu] got %.9g want %.9g tol %.3g; max abs %.3g rel %.3g (%s)",
                  what, nbad, n, bad, double(got[bad]), want[bad], double(tol(bad)), maxAbs, maxRel,
                  kvant::simt::scheduleName().c_str());
    kvtest::fail(file, line, buf);
    return false;
  }
  return true;
}
#define EXPECT_CLOSE(what, got, want, n, tol) simttest::expectClose(what, got, want, n, tol, __FILE__, __LINE__)

#define EXPECT_OK(expr)                                                                                        \
  do {                                                                                                         \
    const kvant::Status st_ = (expr);                                                                          \
    if (st_ != kvant::Status::kOk)                                                                             \
      kvtest::fail(__FILE__, __LINE__, std::string(#expr " -> ") + kvant::statusCode(st_) + ": " +            \
                                           kvant::cuda::lastLaunchError().message + " (" + kvant::simt::scheduleName() + ")"); \
  } while (0)
#define EXPECT_STATUS(expr, code) EXPECT_EQ(int(expr), int(code))

inline std::vector<double> toDouble(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

}  // namespace simttest
