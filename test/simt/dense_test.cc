// Dense linear and row kernels (csrc/cuda/dense.cuh) under the emulation, against the CPU
// reference gemmHeads (csrc/cpu/gemm.h, scalar and AVX2 levels) and f64, on awkward sizes with
// NaN-poisoned outputs.
#include <cmath>
#include <cstring>

#include "dense.cuh"
#include "gemm.h"
#include "helpers.h"

using namespace simttest;
using kvant::DType;
using kvant::Isa;
using kvant::Status;

TEST(cuda_dense_linear_heads_matches_reference) {
  Rng r(41);
  const auto dev = device(80);
  struct Shape {
    size_t M, H, N, K;
  };
  for (const Shape s : {Shape{1, 1, 1, 1}, Shape{3, 1, 37, 61}, Shape{5, 3, 33, 100}, Shape{2, 4, 70, 257}, Shape{9, 2, 5, 513}})
    for (DType wt : {DType::kF32, DType::kF16, DType::kBF16}) {
      // Strided activations / outputs (extra pad per head and per row), weights [H, N, K] contiguous.
      const size_t xHead = s.K + r.below(3), xRow = s.H * xHead + r.below(4), yHead = s.N + r.below(3), yRow = s.H * yHead + r.below(4);
      std::vector<float> x = randomF32(r, s.M * xRow, -2, 2), wf = randomF32(r, s.H * s.N * s.K, -1, 1);
      std::vector<uint16_t> w16(wf.size());
      for (size_t i = 0; i < wf.size(); ++i) {
        w16[i] = wt == DType::kF16 ? kvant::f32ToF16(wf[i]) : kvant::f32ToBf16(wf[i]);
        if (wt != DType::kF32) wf[i] = wt == DType::kF16 ? kvant::f16ToF32(w16[i]) : kvant::bf16ToF32(w16[i]);
      }
      const void* w = wt == DType::kF32 ? static_cast<const void*>(wf.data()) : w16.data();
      std::vector<float> y = poisoned(s.M * yRow), cpu = poisoned(s.M * yRow), cpu2 = poisoned(s.M * yRow);
      kvant::cuda::DenseParams p{x.data(), w, y.data(), int64_t(s.M), int64_t(s.H), int64_t(s.N), int64_t(s.K), int64_t(xRow), int64_t(xHead),
                                 int64_t(s.N * s.K), int64_t(s.K), int64_t(yRow), int64_t(yHead)};
      EXPECT_OK(kvant::cuda::denseLinear(dev, p, wt));
      EXPECT_TRUE(kvant::gemmHeads(x.data(), s.M, s.H, xRow, xHead, s.K, w, wt, s.N * s.K, s.N, cpu.data(), yRow, yHead, Isa::kScalar) == Status::kOk);
      const bool avx2 = kvant::isaSupported(Isa::kAvx2);
      if (avx2) EXPECT_TRUE(kvant::gemmHeads(x.data(), s.M, s.H, xRow, xHead, s.K, w, wt, s.N * s.K, s.N, cpu2.data(), yRow, yHead, Isa::kAvx2) == Status::kOk);
      // f64 reference and Σ|x·w| per output; the pad elements stay NaN on every side.
      std::vector<double> want(y.size(), NAN), mag(y.size(), 0);
      for (size_t m = 0; m < s.M; ++m)
        for (size_t h = 0; h < s.H; ++h)
          for (size_t n = 0; n < s.N; ++n) {
            double acc = 0, a = 0;
            for (size_t k = 0; k < s.K; ++k) {
              const double t = double(x[m * xRow + h * xHead + k]) * wf[(h * s.N + n) * s.K + k];
              acc += t;
              a += std::fabs(t);
            }
            want[m * yRow + h * yHead + n] = acc;
            mag[m * yRow + h * yHead + n] = a;
          }
      // Lane l chains ceil(K/32) FMAs, then 5 butterfly additions: the longest chain has
      // ceil(K/32) + 5 roundings, so |y − exact| <= (ceil(K/32) + 5)·u·Σ|x·w| (first order).
      const double dev64 = double((s.K + 31) / 32 + 5) * kU32;
      // Pads: NaN expected; compare only the written elements (and check the pads stayed NaN).
      for (size_t i = 0; i < y.size(); ++i)
        if (std::isnan(want[i])) {
          EXPECT_TRUE(std::isnan(y[i]));
          y[i] = cpu[i] = cpu2[i] = 0, want[i] = 0;
        }
      EXPECT_CLOSE("denseLinear vs f64", y.data(), want.data(), y.size(), [&](size_t i) { return dev64 * mag[i] + 1e-30; });
      // The CPU's f32 sum has its own first-order bound K·u·Σ|x·w| (any order).
      const std::vector<double> c = toDouble(cpu);
      EXPECT_CLOSE("denseLinear vs CPU", y.data(), c.data(), y.size(), [&](size_t i) { return (dev64 + double(s.K) * kU32) * mag[i] + 1e-30; });
      if (avx2) {
        const std::vector<double> c2 = toDouble(cpu2);
        EXPECT_CLOSE("denseLinear vs CPU avx2", y.data(), c2.data(), y.size(), [&](size_t i) { return (dev64 + double(s.K) * kU32) * mag[i] + 1e-30; });
      }
      // A row's result does not depend on M: row m alone gives the same bits.
      const size_t m = s.M - 1;
      std::vector<float> one = poisoned(yRow);
      kvant::cuda::DenseParams q = p;
      q.x = x.data() + m * xRow, q.y = one.data(), q.M = 1;
      EXPECT_OK(kvant::cuda::denseLinear(dev, q, wt));
      for (size_t i = 0; i < yRow; ++i) EXPECT_TRUE(std::isnan(one[i]) ? std::isnan(y[m * yRow + i]) || y[m * yRow + i] == 0 : one[i] == y[m * yRow + i]);
    }
  // Bad shapes and dtypes are statuses, never launches.
  kvant::cuda::DenseParams z{};
  z.M = 1, z.H = 1, z.N = 0, z.K = 4;
  EXPECT_STATUS(kvant::cuda::denseLinear(dev, z, DType::kF32), Status::kShape);
  z.N = 4;
  EXPECT_STATUS(kvant::cuda::denseLinear(dev, z, DType::kI32), Status::kDtype);
  z.M = 70000;
  EXPECT_STATUS(kvant::cuda::denseLinear(dev, z, DType::kF32), Status::kRange);
}

TEST(cuda_copy_and_accumulate_rows_are_exact) {
  Rng r(42);
  const auto dev = device(89);
  for (size_t n : {1, 31, 130, 300}) {
    const size_t rows = 1 + r.below(9), srcRows = rows + 3, sRow = n + r.below(5), dRow = n + r.below(5);
    std::vector<float> src = randomF32(r, srcRows * sRow, -4, 4);
    std::vector<int32_t> idx(rows);
    for (auto& i : idx) i = int32_t(r.below(srcRows));
    // Strided copy without idx, gather with idx: exact copies, untouched pads stay NaN.
    for (bool gather : {false, true}) {
      std::vector<float> dst = poisoned(rows * dRow);
      EXPECT_OK(kvant::cuda::copyRows(dev, src.data(), int64_t(sRow), gather ? idx.data() : nullptr, dst.data(), int64_t(dRow), int64_t(rows), int64_t(n)));
      for (size_t t = 0; t < rows; ++t)
        for (size_t i = 0; i < dRow; ++i) {
          const float got = dst[t * dRow + i];
          if (i < n) EXPECT_TRUE(std::memcmp(&got, &src[size_t(gather ? idx[t] : int32_t(t)) * sRow + i], 4) == 0);
          else EXPECT_TRUE(std::isnan(got));
        }
    }
    // accumulate: y[t] += Σ_j w[t,j] · src[idx[t,j]] in j order, one FMA per term: the same
    // operations in the same order on the host give the same bits.
    const int J = 1 + int(r.below(4));
    std::vector<float> y = randomF32(r, rows * n, -1, 1), w = randomF32(r, rows * size_t(J), 0, 1), s2 = randomF32(r, srcRows * n, -3, 3);
    std::vector<int32_t> id(rows * size_t(J));
    for (auto& i : id) i = int32_t(r.below(srcRows));
    std::vector<float> want = y;
    for (size_t t = 0; t < rows; ++t)
      for (size_t i = 0; i < n; ++i) {
        float acc = want[t * n + i];
        for (int j = 0; j < J; ++j) acc = std::fma(w[t * J + j], s2[size_t(id[t * J + j]) * n + i], acc);
        want[t * n + i] = acc;
      }
    EXPECT_OK(kvant::cuda::accumulateRows(dev, y.data(), int64_t(rows), int64_t(n), s2.data(), id.data(), w.data(), J));
    EXPECT_TRUE(std::memcmp(y.data(), want.data(), y.size() * 4) == 0);
    // Residual form (no idx, no w): y += src exactly as float additions.
    std::vector<float> y2 = randomF32(r, rows * n, -1, 1), add = randomF32(r, rows * n, -1, 1), want2(rows * n);
    for (size_t i = 0; i < y2.size(); ++i) want2[i] = y2[i] + add[i];
    EXPECT_OK(kvant::cuda::accumulateRows(dev, y2.data(), int64_t(rows), int64_t(n), add.data(), nullptr, nullptr, 1));
    EXPECT_TRUE(std::memcmp(y2.data(), want2.data(), y2.size() * 4) == 0);
  }
  EXPECT_STATUS(kvant::cuda::accumulateRows(dev, nullptr, 1, 1, nullptr, nullptr, nullptr, 0), Status::kShape);
  EXPECT_STATUS(kvant::cuda::copyRows(dev, nullptr, 1, nullptr, nullptr, 1, -1, 1), Status::kShape);
}
