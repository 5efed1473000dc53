// Small ops (csrc/cuda/small_ops.cuh) under the emulation, against the CPU scalar reference
// (csrc/cpu/small_ops) and an f64 computation, on awkward sizes with NaN-poisoned outputs.
#include <algorithm>
#include <cmath>
#include <limits>

#include "helpers.h"
#include "small_ops.cuh"
#include "small_ops.h"

using namespace simttest;
using kvant::DType;
using kvant::Isa;
using kvant::Status;

namespace {
const size_t kSizes[] = {1, 7, 33, 250, 257, 1000, 2049};
}

TEST(cuda_rmsnorm_matches_reference) {
  Rng r(1);
  for (const auto& dev : devices())
    for (size_t n : kSizes)
      for (DType wt : {DType::kF32, DType::kF16, DType::kBF16}) {
        const size_t rows = 1 + r.below(5);
        std::vector<float> x = randomF32(r, rows * n, -3, 3), wf = randomF32(r, n, -2, 2);
        std::vector<uint16_t> w16(n);
        for (size_t i = 0; i < n; ++i) {
          w16[i] = wt == DType::kF16 ? kvant::f32ToF16(wf[i]) : kvant::f32ToBf16(wf[i]);
          wf[i] = wt == DType::kF16 ? kvant::f16ToF32(w16[i]) : wt == DType::kBF16 ? kvant::bf16ToF32(w16[i]) : wf[i];
        }
        const void* w = wt == DType::kF32 ? static_cast<const void*>(wf.data()) : w16.data();
        const float eps = 1e-6f;
        std::vector<float> y = poisoned(rows * n), cpu = poisoned(rows * n);
        EXPECT_OK(kvant::cuda::rmsNorm(dev, x.data(), w, wt, eps, y.data(), rows, n));
        EXPECT_TRUE(kvant::rmsNorm(x.data(), w, wt, eps, cpu.data(), rows, n, Isa::kScalar) == Status::kOk);
        // The AVX2 level of the CPU reference too, where this CPU has it (same f64 sum bound).
        std::vector<float> cpu2 = poisoned(rows * n);
        const bool haveAvx2 = kvant::isaSupported(Isa::kAvx2);
        if (haveAvx2) EXPECT_TRUE(kvant::rmsNorm(x.data(), w, wt, eps, cpu2.data(), rows, n, Isa::kAvx2) == Status::kOk);
        std::vector<double> want(rows * n);
        for (size_t t = 0; t < rows; ++t) {
          double ss = 0;
          for (size_t i = 0; i < n; ++i) ss += double(x[t * n + i]) * x[t * n + i];
          const double inv = 1 / std::sqrt(ss / double(n) + double(eps));
          for (size_t i = 0; i < n; ++i) want[t * n + i] = double(x[t * n + i]) * inv * wf[i];
        }
        // f32 sum of squares: n/T serial terms per thread + 10 tree levels (5 in the warp, 5
        // over warps), all terms positive, so the sum's relative error is <= (n/T + 10)u; inv
        // takes half of it plus ~3u (mean, +eps, rsqrt: 2 ulp on a device); y = x*inv*w adds 2
        // roundings. Bound ((n/T + 10)/2 + 8)u |y|, doubled for the first-order approximation.
        const double T = double(kvant::cuda::rowConfig(rows, n, 0).block.x);
        const double rel = 2 * ((double(n) / T + 10) / 2 + 8) * kU32;
        EXPECT_CLOSE("rmsNorm vs f64", y.data(), want.data(), y.size(), [&](size_t i) { return rel * std::fabs(want[i]) + 1e-30; });
        // The CPU reference sums in f64: its own error is < 4u.
        const std::vector<double> c = toDouble(cpu);
        EXPECT_CLOSE("rmsNorm vs CPU", y.data(), c.data(), y.size(), [&](size_t i) { return (rel + 4 * kU32) * std::fabs(c[i]) + 1e-30; });
        if (haveAvx2) {
          const std::vector<double> c2 = toDouble(cpu2);
          EXPECT_CLOSE("rmsNorm vs CPU avx2", y.data(), c2.data(), y.size(), [&](size_t i) { return (rel + 4 * kU32) * std::fabs(c2[i]) + 1e-30; });
        }
        // In place (y aliases x) gives the same bits.
        std::vector<float> inplace = x;
        EXPECT_OK(kvant::cuda::rmsNorm(dev, inplace.data(), w, wt, eps, inplace.data(), rows, n));
        EXPECT_TRUE(std::memcmp(inplace.data(), y.data(), y.size() * 4) == 0);
      }
}

TEST(cuda_rope_matches_reference) {
  Rng r(2);
  const auto dev = device(86);
  for (size_t pairs : {1, 5, 32, 70}) {
    const size_t rows = 1 + r.below(4), heads = 1 + r.below(5), offset = r.below(7), stride = offset + 2 * pairs + r.below(5);
    std::vector<float> x = randomF32(r, rows * heads * stride, -2, 2), invFreq(pairs);
    std::vector<int32_t> pos(rows);
    for (auto& p : pos) p = int32_t(r.below(200000));
    for (auto& f : invFreq) f = float(std::pow(10000.0, -r.uniform(0, 1)));
    const float amp = 1.25f;
    std::vector<float> gpu = x, cpu = x;
    EXPECT_OK(kvant::cuda::ropeInterleaved(dev, gpu.data(), rows, heads, stride, offset, pairs, pos.data(), invFreq.data(), amp));
    EXPECT_TRUE(kvant::ropeInterleaved(cpu.data(), rows, heads, stride, offset, pairs, pos.data(), invFreq.data(), amp) == Status::kOk);
    std::vector<double> want(x.size()), tol(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      want[i] = x[i];
      tol[i] = 0;  // untouched dims must stay bit-exact
    }
    for (size_t t = 0; t < rows; ++t)
      for (size_t h = 0; h < heads; ++h)
        for (size_t i = 0; i < pairs; ++i) {
          const size_t o = (t * heads + h) * stride + offset + 2 * i;
          const double ang = double(pos[t]) * double(invFreq[i]), a = x[o], b = x[o + 1];
          want[o] = amp * (a * std::cos(ang) - b * std::sin(ang));
          want[o + 1] = amp * (a * std::sin(ang) + b * std::cos(ang));
          // cos/sin rounded to f32 (u each), times amp (u), two products and a sum (3u):
          // |err| <= 6u (|a| + |b|) amp; doubled for the first-order approximation.
          tol[o] = tol[o + 1] = 12 * kU32 * (std::fabs(a) + std::fabs(b)) * amp;
        }
    EXPECT_CLOSE("rope vs f64", gpu.data(), want.data(), gpu.size(), [&](size_t i) { return tol[i]; });
    const std::vector<double> c = toDouble(cpu);
    EXPECT_CLOSE("rope vs CPU", gpu.data(), c.data(), gpu.size(), [&](size_t i) { return 2 * tol[i]; });
  }
  std::vector<float> x(10);
  int32_t pos = 0;
  float f = 1;
  EXPECT_STATUS(kvant::cuda::ropeInterleaved(dev, x.data(), 1, 1, 4, 1, 2, &pos, &f, 1.f), Status::kShape);
}

TEST(cuda_silu_gate_matches_reference) {
  Rng r(3);
  const auto dev = device(80);
  for (size_t n : {1, 31, 300, 1409}) {
    const size_t rows = 1 + r.below(4), stride = 2 * n;
    std::vector<float> gu = randomF32(r, rows * stride, -12, 12), y = poisoned(rows * n), cpu = poisoned(rows * n);
    EXPECT_OK(kvant::cuda::siluGate(dev, gu.data(), gu.data() + n, stride, y.data(), rows, n));
    EXPECT_TRUE(kvant::siluGate(gu.data(), gu.data() + n, stride, cpu.data(), rows, n, Isa::kScalar) == Status::kOk);
    std::vector<double> want(rows * n);
    for (size_t t = 0; t < rows; ++t)
      for (size_t i = 0; i < n; ++i) {
        const double g = gu[t * stride + i], u = gu[t * stride + n + i];
        want[t * n + i] = g / (1 + std::exp(-g)) * u;
      }
    // exp (2 ulp on a device), add, divide, multiply: 5 roundings, each relative: 5u; x2 margin.
    EXPECT_CLOSE("siluGate vs f64", y.data(), want.data(), y.size(), [&](size_t i) { return 10 * kU32 * std::fabs(want[i]) + 1e-37; });
    const std::vector<double> c = toDouble(cpu);
    EXPECT_CLOSE("siluGate vs CPU", y.data(), c.data(), y.size(), [&](size_t i) { return 20 * kU32 * std::fabs(c[i]) + 1e-37; });
  }
  EXPECT_STATUS(kvant::cuda::siluGate(dev, nullptr, nullptr, 3, nullptr, 1, 4), Status::kShape);
}

TEST(cuda_softmax_matches_reference) {
  Rng r(4);
  const auto dev = device(90);
  for (size_t n : kSizes) {
    const size_t rows = 2 + r.below(3);
    std::vector<float> x = randomF32(r, rows * n, -10, 10);
    for (size_t i = 0; i < n; i += 5) x[i] = -INFINITY;               // masked entries in row 0
    for (size_t i = 0; i < n; ++i) x[n + i] = -INFINITY;              // row 1: nothing to attend
    std::vector<float> gpu = x, cpu = x;
    EXPECT_OK(kvant::cuda::softmaxRows(dev, gpu.data(), rows, n));
    EXPECT_TRUE(kvant::softmaxRows(cpu.data(), rows, n, Isa::kScalar) == Status::kOk);
    std::vector<float> cpu2 = x;
    const bool haveAvx2 = kvant::isaSupported(Isa::kAvx2);
    if (haveAvx2) EXPECT_TRUE(kvant::softmaxRows(cpu2.data(), rows, n, Isa::kAvx2) == Status::kOk);
    std::vector<double> want(rows * n), tol(rows * n);
    const double T = double(kvant::cuda::rowConfig(rows, n, 0).block.x);
    for (size_t t = 0; t < rows; ++t) {
      double m = -INFINITY, z = 0;
      for (size_t i = 0; i < n; ++i) m = std::max(m, double(x[t * n + i]));
      for (size_t i = 0; i < n; ++i) z += m == -INFINITY ? 0 : std::exp(double(x[t * n + i]) - m);
      for (size_t i = 0; i < n; ++i) {
        const double xi = x[t * n + i];
        want[t * n + i] = m == -INFINITY ? 0 : std::exp(xi - m) / z;
        // x - m rounds (|x - m| u absolute, so |x - m| u relative after exp), exp 2u, the sum of
        // positive terms (n/T + 10)u, 1/s and the product 2u; doubled for first order.
        tol[t * n + i] = xi == -INFINITY ? 0 : 2 * (std::fabs(xi - m) + double(n) / T + 14) * kU32 * want[t * n + i] + 1e-40;
      }
    }
    EXPECT_CLOSE("softmax vs f64", gpu.data(), want.data(), gpu.size(), [&](size_t i) { return tol[i]; });
    const std::vector<double> c = toDouble(cpu);
    EXPECT_CLOSE("softmax vs CPU", gpu.data(), c.data(), gpu.size(), [&](size_t i) { return 2 * tol[i] + 1e-40; });
    if (haveAvx2) {
      const std::vector<double> c2 = toDouble(cpu2);
      EXPECT_CLOSE("softmax vs CPU avx2", gpu.data(), c2.data(), gpu.size(), [&](size_t i) { return 2 * tol[i] + 1e-40; });
    }
  }
  EXPECT_STATUS(kvant::cuda::softmaxRows(dev, nullptr, 3, 0), Status::kShape);
}

TEST(cuda_argmax_matches_reference) {
  Rng r(5);
  const auto dev = device(89);
  for (size_t n : kSizes) {
    const size_t rows = 4;
    std::vector<float> x = randomF32(r, rows * n, -4, 4);
    // Row 0 random; row 1 with NaNs and a repeated maximum (ties go to the lower index);
    // row 2 all NaN (-1); row 3 of -inf and NaN.
    for (size_t i = 0; i < n; i += 3) x[n + i] = NAN;
    if (n > 4) x[n + n - 1] = x[n + 4] = 100.f;
    for (size_t i = 0; i < n; ++i) x[2 * n + i] = NAN;
    for (size_t i = 0; i < n; ++i) x[3 * n + i] = i % 2 ? -INFINITY : NAN;
    std::vector<int32_t> gpu(rows, -7), cpu(rows, -7);
    EXPECT_OK(kvant::cuda::argmaxRows(dev, x.data(), rows, n, gpu.data()));
    EXPECT_TRUE(kvant::argmaxRows(x.data(), rows, n, cpu.data()) == Status::kOk);
    for (size_t t = 0; t < rows; ++t) EXPECT_EQ(gpu[t], cpu[t]);
    if (n > 4) EXPECT_EQ(gpu[1], 4);
    EXPECT_EQ(gpu[2], -1);
  }
  EXPECT_STATUS(kvant::cuda::argmaxRows(dev, nullptr, 1, 0, nullptr), Status::kShape);
}

TEST(cuda_embedding_gather_matches_reference) {
  Rng r(6);
  const auto dev = device(80);
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16})
    for (size_t dim : {1, 45, 300, 2100}) {
      const size_t vocab = 37, n = 1 + r.below(9);
      std::vector<float> tf = randomF32(r, vocab * dim, -5, 5);
      std::vector<uint16_t> t16(vocab * dim);
      for (size_t i = 0; i < t16.size(); ++i) t16[i] = t == DType::kF16 ? kvant::f32ToF16(tf[i]) : kvant::f32ToBf16(tf[i]);
      const void* table = t == DType::kF32 ? static_cast<const void*>(tf.data()) : t16.data();
      std::vector<int32_t> ids(n);
      for (auto& id : ids) id = int32_t(r.below(vocab));
      std::vector<float> gpu = poisoned(n * dim), cpu = poisoned(n * dim);
      int32_t bad = int32_t(n);
      EXPECT_OK(kvant::cuda::embeddingGather(dev, table, t, vocab, dim, ids.data(), n, gpu.data(), &bad));
      size_t cpuBad = 99;
      EXPECT_TRUE(kvant::embeddingGather(table, t, vocab, dim, ids.data(), n, cpu.data(), &cpuBad) == Status::kOk);
      EXPECT_EQ(bad, int32_t(n));
      EXPECT_TRUE(std::memcmp(gpu.data(), cpu.data(), gpu.size() * 4) == 0);  // widening is exact
      // Out-of-range ids: the first one is reported whatever the block order; rows are zeroed.
      if (n >= 3) {
        ids[n - 1] = int32_t(vocab);
        ids[1] = -3;
        bad = int32_t(n);
        EXPECT_OK(kvant::cuda::embeddingGather(dev, table, t, vocab, dim, ids.data(), n, gpu.data(), &bad));
        EXPECT_EQ(bad, 1);
        EXPECT_EQ(gpu[1 * dim], 0.f);
      }
    }
  EXPECT_STATUS(kvant::cuda::embeddingGather(dev, nullptr, DType::kI8, 4, 4, nullptr, 0, nullptr, nullptr), Status::kDtype);
  EXPECT_STATUS(kvant::cuda::rmsNorm(dev, nullptr, nullptr, DType::kI32, 1e-6f, nullptr, 1, 4), Status::kDtype);
  EXPECT_STATUS(kvant::cuda::rmsNorm(dev, nullptr, nullptr, DType::kF32, 1e-6f, nullptr, 1, 0), Status::kShape);
}

TEST(cuda_route_topk_matches_cpu_exactly) {
  Rng r(7);
  const auto dev = device(90);
  struct R {
    size_t rows, experts, k, nGroup, topkGroup;
    bool groupLimited, norm;
  };
  // V2-Lite (64 experts, greedy top-6, not normalized), V2 (160 experts, 8 groups, 3 kept,
  // top-6, normalized), and odd sizes with more experts than lanes and a single expert.
  const R cases[] = {{5, 64, 6, 1, 1, false, false}, {4, 160, 6, 8, 3, true, true}, {3, 37, 4, 1, 1, false, true}, {2, 1, 1, 1, 1, false, true},
                     {6, 100, 8, 10, 2, true, false}};
  for (const R& c : cases) {
    std::vector<float> logits = randomF32(r, c.rows * c.experts, -3, 3);
    // Ties: equal logits in row 0 must resolve to the lower index on both sides.
    for (size_t e = 0; e + 2 < c.experts; e += 3) logits[e + 1] = logits[e];
    std::vector<int32_t> gi(c.rows * c.k, -7), ci(c.rows * c.k, -7);
    std::vector<float> gw = poisoned(c.rows * c.k), cw = poisoned(c.rows * c.k);
    EXPECT_OK(kvant::cuda::routeTopK(dev, logits.data(), c.rows, c.experts, c.k, c.nGroup, c.topkGroup, c.groupLimited, c.norm, 2.5f, gi.data(),
                                     gw.data()));
    EXPECT_TRUE(kvant::routeTopK(logits.data(), c.rows, c.experts, c.k, c.nGroup, c.topkGroup, c.groupLimited, c.norm, 2.5f, ci.data(), cw.data()) ==
                Status::kOk);
    EXPECT_TRUE(gi == ci);
    EXPECT_TRUE(std::memcmp(gw.data(), cw.data(), gw.size() * 4) == 0);
  }
  std::vector<int32_t> i(8);
  std::vector<float> w(8), l(64);
  EXPECT_STATUS(kvant::cuda::routeTopK(dev, l.data(), 1, 64, 0, 1, 1, false, true, 1.f, i.data(), w.data()), Status::kShape);
  EXPECT_STATUS(kvant::cuda::routeTopK(dev, l.data(), 1, 64, 6, 5, 1, true, true, 1.f, i.data(), w.data()), Status::kShape);  // 64 % 5
  EXPECT_STATUS(kvant::cuda::routeTopK(dev, l.data(), 1, 64, 20, 8, 2, true, true, 1.f, i.data(), w.data()), Status::kShape);  // k > kept experts
}
