// The dense GEMM (linear layers, router, lm_head) and the bandwidth/FMA probes on every ISA
// level, including avx512 (real, or SIMDe-emulated in scripts/avx512-emu-test.mjs). Before
// this file neither had a native test, so their AVX-512 tables had never run anywhere.
#include <cmath>
#include <cstring>
#include <vector>

#include "check.h"
#include "gemm.h"
#include "kvant/half.h"
#include "probe.h"
#include "random.h"
#include "thread_pool.h"

using namespace kvant;

namespace {
std::vector<Isa> levels() {
  std::vector<Isa> v;
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (isaSupported(i)) v.push_back(i);
  return v;
}
}  // namespace

// y = x·Wᵀ + bias against f64 for f32/f16/bf16 weights on awkward sizes (K not a multiple of
// 8 or 16, N and M not multiples of the 4x4 tile), NaN-poisoned outputs. Bound: a K-term f32
// dot product in any fixed order (lanes, then a reduction tree) has |err| <= (K − 1)·u·Σ|x·w|
// (u = 2^-24, the weight already exact in f32), plus one rounding for the bias: K·u·Σ|x·w| +
// u·|y|. Each level is also batch-invariant (a row alone gives the same bits as inside M = 37)
// and thread-invariant (1 vs 2 threads), as gemm.h promises.
TEST(dense_gemm_every_level_matches_f64_batch_and_thread_invariant) {
  const size_t M = 37, K = 203, N = 45;
  std::vector<float> x(M * K), wf(N * K), bias(N);
  fillRandom(x.data(), DType::kF32, x.size(), 5, RandomDist::kNormal, 0, 1);
  fillRandom(wf.data(), DType::kF32, wf.size(), 6, RandomDist::kNormal, 0, 0.2);
  fillRandom(bias.data(), DType::kF32, bias.size(), 7, RandomDist::kNormal, 0, 1);
  const int before = threadPool().threads();
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    std::vector<uint16_t> wh(N * K);
    std::vector<double> wd(N * K);
    for (size_t i = 0; i < N * K; ++i) {
      wh[i] = t == DType::kF16 ? f32ToF16(wf[i]) : f32ToBf16(wf[i]);
      wd[i] = t == DType::kF32 ? wf[i] : t == DType::kF16 ? f16ToF32(wh[i]) : bf16ToF32(wh[i]);
    }
    const void* w = t == DType::kF32 ? static_cast<const void*>(wf.data()) : wh.data();
    for (Isa isa : levels()) {
      std::vector<float> y1;
      for (int threads : {1, 2}) {
        threadPool().resize(threads);
        std::vector<float> y(M * N, NAN);
        EXPECT_TRUE(gemm(x.data(), M, K, w, t, N, bias.data(), y.data(), isa) == Status::kOk);
        if (threads == 1) {
          y1 = y;
          double worst = 0;
          for (size_t m = 0; m < M; ++m)
            for (size_t n = 0; n < N; ++n) {
              double want = 0, mag = 0;
              for (size_t k = 0; k < K; ++k) {
                want += double(x[m * K + k]) * wd[n * K + k];
                mag += std::fabs(double(x[m * K + k]) * wd[n * K + k]);
              }
              want += bias[n];
              const double bound = double(K) * std::ldexp(1.0, -24) * mag + std::ldexp(std::fabs(want), -24);
              worst = std::fmax(worst, std::fabs(double(y[m * N + n]) - want) / bound);
            }
          if (!(worst <= 1)) {
            EXPECT_TRUE(worst <= 1);
            std::fprintf(stderr, "    dense gemm %s dtype %d: worst %.3g of the bound\n", isaName(isa), int(t), worst);
          }
          for (size_t r : {size_t(0), size_t(17), size_t(36)}) {
            std::vector<float> yr(N, NAN);
            EXPECT_TRUE(gemm(x.data() + r * K, 1, K, w, t, N, bias.data(), yr.data(), isa) == Status::kOk);
            EXPECT_TRUE(std::memcmp(yr.data(), y.data() + r * N, N * 4) == 0);
          }
        } else {
          EXPECT_TRUE(std::memcmp(y.data(), y1.data(), y.size() * 4) == 0);
        }
      }
    }
  }
  threadPool().resize(before);
  std::vector<float> y(M * N);
  EXPECT_TRUE(gemm(x.data(), M, K, wf.data(), DType::kI32, N, nullptr, y.data()) == Status::kDtype);
}

static const ProbeKernels* probeFor(Isa isa) {
  if (isa == Isa::kScalar) return &scalar::kProbeKernels;
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == Isa::kAvx2) return &avx2::kProbeKernels;
  if (isa == Isa::kAvx512) return &avx512::kProbeKernels;
#endif
  return nullptr;
}

// sumF32: any fixed order of n f32 adds then f64 adds: |err| <= n·u·Σ|x|. fmaLoop: `chains`
// independent recurrences a <- a·m + c per lane (a0 = j + 1), whose f64 closed form is
// a_t = m^t (a0 − c/(1−m)) + c/(1−m); each of the t steps rounds once (FMA) or twice, so after
// t = 1000 steps the relative error stays below 2·t·u = 1.2e-4 (the values stay near a0).
TEST(probe_kernels_sum_and_fma_loops_are_right_on_every_level) {
  for (Isa isa : levels()) {
    const ProbeKernels* k = probeFor(isa);
    for (size_t n : {size_t(1), size_t(63), size_t(64), size_t(1000), size_t(4099)}) {
      std::vector<float> x(n);
      fillRandom(x.data(), DType::kF32, n, n, RandomDist::kNormal, 0, 1);
      double want = 0, mag = 0;
      for (float v : x) want += v, mag += std::fabs(v);
      const double got = k->sumF32(x.data(), n);
      EXPECT_TRUE(std::fabs(got - want) <= double(n) * std::ldexp(1.0, -24) * mag);
    }
    const uint64_t iters = 1000;
    double flops = 0;
    const float r = k->fmaLoop(iters, &flops);
    // scalar: 8 chains x 1 lane; avx2: 12 x 8; avx512: 12 x 16 (the files' register budgets).
    // The value returned sums the chains of `reported` lanes (avx2 returns lanes 0 and 7 only).
    const int chains = isa == Isa::kScalar ? 8 : 12, lanes = isa == Isa::kScalar ? 1 : isa == Isa::kAvx2 ? 8 : 16;
    const int reported = isa == Isa::kAvx2 ? 2 : lanes;
    EXPECT_EQ(flops, double(iters) * chains * lanes * 2);
    const double m = double(0.999999f), c = double(1e-7f), fix = c / (1 - m), mt = std::pow(m, double(iters));
    double want = 0;
    for (int j = 0; j < chains; ++j) want += reported * (mt * (double(j + 1) - fix) + fix);
    EXPECT_NEAR_REL(r, want, 1.2e-4);
  }
}
