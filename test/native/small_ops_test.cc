// Small ops of every ISA level against f64.
#include <cmath>
#include <vector>

#include "check.h"
#include "random.h"
#include "small_ops.h"

using namespace kvant;

static std::vector<float> randn(size_t n, uint64_t seed, double std = 1) {
  std::vector<float> v(n);
  fillRandom(v.data(), DType::kF32, n, seed, RandomDist::kNormal, 0, std);
  return v;
}

TEST(small_ops_rmsnorm_silu_softmax_axpy_match_f64_on_every_level) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
    if (!isaSupported(isa)) continue;
    for (size_t n : {size_t(1), size_t(15), size_t(17), size_t(333)}) {
      const size_t rows = 3;
      auto x = randn(rows * n, n, 3), w = randn(n, n + 1), u = randn(rows * n, n + 2);
      std::vector<float> y(rows * n, NAN);
      EXPECT_TRUE(rmsNorm(x.data(), w.data(), DType::kF32, 1e-6f, y.data(), rows, n, isa) == Status::kOk);
      for (size_t r = 0; r < rows; ++r) {
        double ss = 0;
        for (size_t i = 0; i < n; ++i) ss += double(x[r * n + i]) * x[r * n + i];
        const double inv = 1 / std::sqrt(ss / double(n) + 1e-6);
        for (size_t i = 0; i < n; ++i) EXPECT_NEAR_REL(y[r * n + i], x[r * n + i] * inv * w[i], 1e-6);
      }
      EXPECT_TRUE(siluGate(x.data(), u.data(), n, y.data(), rows, n, isa) == Status::kOk);
      for (size_t i = 0; i < rows * n; ++i) EXPECT_NEAR_REL(y[i], x[i] / (1 + std::exp(-double(x[i]))) * u[i], 2e-6);
      std::vector<float> s = x;
      EXPECT_TRUE(softmaxRows(s.data(), rows, n, isa) == Status::kOk);
      for (size_t r = 0; r < rows; ++r) {
        double m = -1e300, z = 0;
        for (size_t i = 0; i < n; ++i) m = std::fmax(m, x[r * n + i]);
        for (size_t i = 0; i < n; ++i) z += std::exp(x[r * n + i] - m);
        for (size_t i = 0; i < n; ++i) EXPECT_NEAR_REL(s[r * n + i], std::exp(x[r * n + i] - m) / z, 2e-6);
      }
      std::vector<float> acc = u;
      EXPECT_TRUE(axpy(0.5f, x.data(), acc.data(), rows * n, isa) == Status::kOk);
      for (size_t i = 0; i < rows * n; ++i) EXPECT_NEAR_REL(acc[i], u[i] + 0.5 * x[i], 1e-6);
    }
  }
}

TEST(small_ops_routing_and_gather_reject_bad_input) {
  std::vector<float> logits(2 * 8, 0.f);
  std::vector<int32_t> idx(2 * 3);
  std::vector<float> w(2 * 3);
  EXPECT_TRUE(routeTopK(logits.data(), 2, 8, 9, 1, 1, false, false, 1, idx.data(), w.data()) == Status::kShape);
  EXPECT_TRUE(routeTopK(logits.data(), 2, 8, 3, 3, 1, true, false, 1, idx.data(), w.data()) == Status::kShape);
  EXPECT_TRUE(routeTopK(logits.data(), 2, 8, 3, 1, 1, false, false, 1, idx.data(), w.data()) == Status::kOk);
  EXPECT_EQ(idx[0], 0);  // all equal: lowest ids
  EXPECT_EQ(idx[2], 2);
  std::vector<float> table(4 * 2, 1.f), out(2 * 2);
  int32_t ids[2] = {1, 4};
  size_t bad = 99;
  EXPECT_TRUE(embeddingGather(table.data(), DType::kF32, 4, 2, ids, 2, out.data(), &bad) == Status::kRange);
  EXPECT_EQ(bad, size_t(1));
}
