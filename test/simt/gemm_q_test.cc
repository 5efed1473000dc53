// GPTQ dequantize and the fused dequant GEMV (csrc/cuda/quant.cuh, gemm_q.cuh) under the emulation,
// against an f64 evaluation of the packed format's definition (quant_format.h, SPEC §2.5):
// 2/3/4/8 bits, v1 and v2 zeros, partial last groups, act-order permutations, M = 1..8.
#include <algorithm>
#include <numeric>

#include "gemm_q.cuh"
#include "helpers.h"
#include "quant.cuh"

using namespace simttest;
using kvant::QMatrix;
using kvant::QuantFormat;
using kvant::Status;
using kvant::ZeroFormat;

namespace {

// A random packed matrix, built by packing codes independently of the kernels' unpacking.
struct Packed {
  QuantFormat fmt;
  std::vector<uint32_t> qweight, qzeros;
  std::vector<uint16_t> scales;
  std::vector<int32_t> perm;
  std::vector<int> codes;  // [K][N] by kernel row
  std::vector<int> zeros;  // [ng][N] true zero points
  QMatrix view() const { return QMatrix{fmt, qweight.data(), qzeros.data(), scales.data(), perm.empty() ? nullptr : perm.data()}; }
  // W[n][j] (kernel row j), exactly.
  double w(int64_t j, int64_t n) const {
    const int64_t G = kvant::qEffectiveGroup(fmt), g = j / G;
    return double(kvant::f16ToF32(scales[g * fmt.N + n])) * (codes[j * fmt.N + n] - zeros[g * fmt.N + n]);
  }
};

// Value v at position i of a packed run (bits per value; 3-bit as 96-bit triples).
void put(uint32_t* words, int64_t stride, int64_t i, int bits, uint32_t v) {
  const int64_t bit = bits == 3 ? (i / 32) * 96 + 3 * (i % 32) : i * bits;
  for (int b = 0; b < bits; ++b)
    if (v & (1u << b)) words[((bit + b) / 32) * stride] |= 1u << ((bit + b) % 32);
}

Packed makePacked(Rng& r, int bits, int64_t K, int64_t N, int G, ZeroFormat zf, bool actOrder) {
  Packed p;
  p.fmt = QuantFormat{bits, G, 0, int32_t(zf), K, N};
  const int64_t ng = kvant::qGroupCount(p.fmt), maxq = (1 << bits) - 1;
  p.codes.resize(K * N);
  p.zeros.resize(ng * N);
  p.scales.resize(ng * N);
  p.qweight.assign(kvant::qWeightRows(p.fmt) * N, 0);
  p.qzeros.assign(ng * kvant::qZeroCols(p.fmt), 0);
  for (auto& c : p.codes) c = int(r.below(maxq + 1));
  for (int64_t g = 0; g < ng; ++g)
    for (int64_t n = 0; n < N; ++n) {
      // v1 stores zero - 1 masked: a true zero of 0 is stored as maxq and must read back as 0.
      const int z = g == 0 && n == 1 ? 0 : int(r.below(maxq + 1));
      p.zeros[g * N + n] = z;
      const uint32_t stored = zf == ZeroFormat::kGptqV1 ? uint32_t((z - 1) & maxq) : uint32_t(z);
      put(p.qzeros.data() + g * kvant::qZeroCols(p.fmt), 1, n, bits, stored);
      p.scales[g * N + n] = kvant::f32ToF16(float(r.uniform(0.002, 0.05)));
    }
  for (int64_t j = 0; j < K; ++j)
    for (int64_t n = 0; n < N; ++n) put(p.qweight.data() + n, N, j, bits, uint32_t(p.codes[j * N + n]));
  if (actOrder) {
    p.perm.resize(K);
    std::iota(p.perm.begin(), p.perm.end(), 0);
    for (int64_t i = K - 1; i > 0; --i) std::swap(p.perm[i], p.perm[r.below(i + 1)]);
  }
  return p;
}

struct Shape {
  int bits;
  int64_t K, N;
  int G;
};
// K and N packable but not multiples of the 128-row slab or the 512-column block; G not always
// dividing K (partial last group), G = -1 (one group), G = 48 (groups straddle slab edges).
const Shape kShapes[] = {{4, 328, 72, 128}, {4, 200, 520, 32}, {3, 352, 96, 64}, {3, 160, 32, -1},
                         {2, 336, 80, 48},  {8, 300, 36, 64},  {8, 60, 520, 16}, {2, 48, 16, 128}};

}  // namespace

TEST(cuda_gptq_dequantize_is_exact) {
  Rng r(11);
  const auto dev = device(86);
  for (const Shape& s : kShapes)
    for (ZeroFormat zf : {ZeroFormat::kGptqV1, ZeroFormat::kGptqV2}) {
      const Packed p = makePacked(r, s.bits, s.K, s.N, s.G, zf, r.below(2) == 0);
      std::vector<float> out = poisoned(s.N * s.K);
      std::vector<uint16_t> out16(s.N * s.K, 0x7e00);
      EXPECT_OK(kvant::cuda::gptqDequantize(dev, p.view(), out.data(), false));
      EXPECT_OK(kvant::cuda::gptqDequantize(dev, p.view(), out16.data(), true));
      std::vector<double> want(s.N * s.K);
      for (int64_t j = 0; j < s.K; ++j)
        for (int64_t n = 0; n < s.N; ++n) want[n * s.K + (p.perm.empty() ? j : p.perm[j])] = p.w(j, n);
      // (code - zero) * scale is exact in f32 (see gptq.cuh), so no tolerance.
      EXPECT_CLOSE("dequant f32", out.data(), want.data(), out.size(), [](size_t) { return 0.0; });
      std::vector<float> o16(out16.size());
      std::vector<double> w16(out16.size());
      for (size_t i = 0; i < o16.size(); ++i) {
        o16[i] = kvant::f16ToF32(out16[i]);
        w16[i] = kvant::f16ToF32(kvant::f32ToF16(float(want[i])));  // one f16 rounding
      }
      EXPECT_CLOSE("dequant f16", o16.data(), w16.data(), o16.size(), [](size_t) { return 0.0; });
    }
}

TEST(cuda_gptq_gemv_matches_f64) {
  Rng r(12);
  for (const auto& dev : devices())
    for (const Shape& s : kShapes) {
      const ZeroFormat zf = r.below(2) ? ZeroFormat::kGptqV1 : ZeroFormat::kGptqV2;
      const bool act = r.below(2) == 0;
      const Packed p = makePacked(r, s.bits, s.K, s.N, s.G, zf, act);
      for (int M : {1, 3, 8}) {
        std::vector<float> x = randomF32(r, M * s.K, -2, 2), y = poisoned(M * s.N);
        std::vector<float> scratch = poisoned(kvant::cuda::gptqGemvScratchFloats(p.fmt, M));
        EXPECT_OK(kvant::cuda::gptqGemv(dev, p.view(), x.data(), M, y.data(), scratch.data()));
        std::vector<double> want(M * s.N), mag(M * s.N);
        for (int m = 0; m < M; ++m)
          for (int64_t n = 0; n < s.N; ++n) {
            double acc = 0, a = 0;
            for (int64_t j = 0; j < s.K; ++j) {
              const double t = double(x[m * s.K + (p.perm.empty() ? j : p.perm[j])]) * p.w(j, n);
              acc += t;
              a += std::fabs(t);
            }
            want[m * s.N + n] = acc;
            mag[m * s.N + n] = a;
          }
        // Weights are exact; each thread accumulates up to 128 rows with one rounding per FMA,
        // then the slabs are added (S - 1 roundings): |err| <= (min(K,128) + S) u Σ|x w|.
        const double S = double((s.K + 127) / 128);
        const double n = double(std::min<int64_t>(s.K, 128)) + S;
        EXPECT_CLOSE("gptqGemv vs f64", y.data(), want.data(), y.size(), [&](size_t i) { return n * kU32 * mag[i] + 1e-30; });
        // Bits do not depend on the block order: a second launch (other order) is identical.
        std::vector<float> y2 = poisoned(M * s.N);
        kvant::simt::Schedule keep = kvant::simt::schedule();
        kvant::simt::setSchedule({kvant::simt::Order::kSeeded, keep.seed + 1000});
        EXPECT_OK(kvant::cuda::gptqGemv(dev, p.view(), x.data(), M, y2.data(), scratch.data()));
        kvant::simt::setSchedule(keep);
        EXPECT_TRUE(std::memcmp(y.data(), y2.data(), y.size() * 4) == 0);
      }
    }
}

TEST(cuda_gptq_gemv_matches_dequantized_gemv) {
  // The fused kernel agrees with dequantize + a plain f64 product of the same weights.
  Rng r(13);
  const auto dev = device(80);
  const Packed p = makePacked(r, 4, 256, 64, 64, ZeroFormat::kGptqV1, true);
  std::vector<float> w = poisoned(64 * 256), x = randomF32(r, 2 * 256), y = poisoned(2 * 64);
  std::vector<float> scratch(kvant::cuda::gptqGemvScratchFloats(p.fmt, 2));
  EXPECT_OK(kvant::cuda::gptqDequantize(dev, p.view(), w.data(), false));
  EXPECT_OK(kvant::cuda::gptqGemv(dev, p.view(), x.data(), 2, y.data(), scratch.data()));
  std::vector<double> want(2 * 64), mag(2 * 64);
  for (int m = 0; m < 2; ++m)
    for (int n = 0; n < 64; ++n) {
      for (int k = 0; k < 256; ++k) {
        want[m * 64 + n] += double(x[m * 256 + k]) * w[n * 256 + k];
        mag[m * 64 + n] += std::fabs(double(x[m * 256 + k]) * w[n * 256 + k]);
      }
    }
  EXPECT_CLOSE("gemv vs dequant", y.data(), want.data(), y.size(), [&](size_t i) { return 130 * kU32 * mag[i] + 1e-30; });
}

TEST(cuda_gptq_bad_inputs) {
  Rng r(14);
  const auto dev = device(89);
  Packed p = makePacked(r, 4, 64, 16, 32, ZeroFormat::kGptqV1, false);
  std::vector<float> x(64 * 9), y(16 * 9), scratch(4096);
  QMatrix q = p.view();
  q.fmt.bits = 5;
  EXPECT_STATUS(kvant::cuda::gptqGemv(dev, q, x.data(), 1, y.data(), scratch.data()), Status::kFormat);
  EXPECT_STATUS(kvant::cuda::gptqDequantize(dev, q, y.data(), false), Status::kFormat);
  q = p.view();
  q.fmt.zeroFormat = 7;
  EXPECT_STATUS(kvant::cuda::gptqGemv(dev, q, x.data(), 1, y.data(), scratch.data()), Status::kFormat);
  q = p.view();
  q.fmt.K = 63;  // 63 * 4 bits is not a whole number of words
  EXPECT_STATUS(kvant::cuda::gptqGemv(dev, q, x.data(), 1, y.data(), scratch.data()), Status::kShape);
  q = p.view();
  EXPECT_STATUS(kvant::cuda::gptqGemv(dev, q, x.data(), 0, y.data(), scratch.data()), Status::kShape);
  EXPECT_STATUS(kvant::cuda::gptqGemv(dev, q, x.data(), 9, y.data(), scratch.data()), Status::kShape);
  q.fmt.groupSize = 8;  // below the staged-groups bound
  EXPECT_STATUS(kvant::cuda::gptqGemv(dev, q, x.data(), 1, y.data(), scratch.data()), Status::kShape);
  q.fmt.groupSize = 0;
  EXPECT_STATUS(kvant::cuda::gptqDequantize(dev, q, y.data(), false), Status::kShape);
}

TEST(cuda_launch_limits_per_arch) {
  using kvant::cuda::LaunchConfig;
  kvant::cuda::ArchLimits lim;
  EXPECT_TRUE(!kvant::cuda::archLimits(75, &lim));
  for (int sm : kvant::cuda::kSupportedArchs) {
    EXPECT_TRUE(kvant::cuda::archLimits(sm, &lim));
    LaunchConfig c;
    c.block.x = 1024;
    EXPECT_STATUS(kvant::cuda::checkLaunch(c, lim), Status::kOk);
    c.block.x = 1025;
    EXPECT_STATUS(kvant::cuda::checkLaunch(c, lim), Status::kRange);
    c.block.x = 512;
    c.block.y = 3;
    EXPECT_STATUS(kvant::cuda::checkLaunch(c, lim), Status::kRange);
    c.block.y = 1;
    c.grid.y = 65536;
    EXPECT_STATUS(kvant::cuda::checkLaunch(c, lim), Status::kRange);
    c.grid.y = 1;
    c.smem = 48 * 1024;
    EXPECT_STATUS(kvant::cuda::checkLaunch(c, lim), Status::kOk);
    EXPECT_TRUE(!kvant::cuda::needsSmemOptIn(c, lim));
    c.smem += 1;
    EXPECT_TRUE(kvant::cuda::needsSmemOptIn(c, lim));
    const size_t max = sm == 80 ? 163 * 1024 : sm == 90 ? 227 * 1024 : 99 * 1024;
    c.smem = max;
    EXPECT_STATUS(kvant::cuda::checkLaunch(c, lim), Status::kOk);
    c.smem = max + 1;
    EXPECT_STATUS(kvant::cuda::checkLaunch(c, lim), Status::kRange);
  }
  // A launch over the limit is refused before anything runs, with a message naming the limit.
  const auto dev = device(86);
  std::vector<float> x(4, 1.f);
  kvant::cuda::LaunchConfig c;
  c.block.x = 2048;
  EXPECT_STATUS(kvant::cuda::launchKernel(dev, c, kvant::cuda::sumSlabsKernel, static_cast<const float*>(x.data()), 1, size_t(4), x.data()),
                Status::kRange);
  EXPECT_TRUE(std::string(kvant::cuda::lastLaunchError().message).find("1024") != std::string::npos);
}

TEST(cuda_gptq_wmma_gemm_matches_f64) {
  Rng r(15);
  struct G {
    int bits;
    int64_t K, N;
    int G;
    int64_t M;
  };
  // M, N and K not multiples of the 64 x 64 x 32 block tile; 3-bit triples; act-order.
  const G shapes[] = {{4, 200, 72, 64, 70}, {3, 352, 96, 32, 17}, {2, 48, 16, 128, 5}, {8, 100, 136, -1, 33}};
  for (const G& s : shapes) {
    const Packed p = makePacked(r, s.bits, s.K, s.N, s.G, ZeroFormat::kGptqV1, s.bits != 8);
    std::vector<float> x = randomF32(r, s.M * s.K, -2, 2), y = poisoned(s.M * s.N);
    EXPECT_OK(kvant::cuda::gptqGemm(device(89), p.view(), x.data(), s.M, y.data()));
    std::vector<double> want(s.M * s.N), tol(s.M * s.N);
    for (int64_t m = 0; m < s.M; ++m)
      for (int64_t n = 0; n < s.N; ++n) {
        double acc = 0, mag = 0;
        for (int64_t j = 0; j < s.K; ++j) {
          const double t = double(x[m * s.K + (p.perm.empty() ? j : p.perm[j])]) * p.w(j, n);
          acc += t;
          mag += std::fabs(t);
        }
        want[m * s.N + n] = acc;
        // x and w each rounded to f16 once (relative 2^-11 each, products exact in f32), then a
        // chain of K f32 accumulations (tensor cores: at most one rounding per product added).
        tol[m * s.N + n] = (2 * 0x1.0p-11 + double(s.K + 16) * kU32) * mag + 1e-30;
      }
    EXPECT_CLOSE("gptqGemm vs f64", y.data(), want.data(), y.size(), [&](size_t i) { return tol[i]; });
  }
  EXPECT_STATUS(kvant::cuda::gptqGemm(device(89), makePacked(r, 4, 64, 16, 32, ZeroFormat::kGptqV1, false).view(), nullptr, 0, nullptr),
                Status::kShape);
}

TEST(cuda_gptq_gemv_is_batch_invariant) {
  // A row's result does not depend on the other rows of the batch (decode batches vary).
  Rng r(16);
  const auto dev = device(86);
  const Packed p = makePacked(r, 4, 328, 72, 128, ZeroFormat::kGptqV1, true);
  const int M = 5;
  std::vector<float> x = randomF32(r, M * 328), y = poisoned(M * 72), scratch(kvant::cuda::gptqGemvScratchFloats(p.fmt, M));
  EXPECT_OK(kvant::cuda::gptqGemv(dev, p.view(), x.data(), M, y.data(), scratch.data()));
  for (int m = 0; m < M; ++m) {
    std::vector<float> one = poisoned(72);
    EXPECT_OK(kvant::cuda::gptqGemv(dev, p.view(), x.data() + m * 328, 1, one.data(), scratch.data()));
    EXPECT_TRUE(std::memcmp(one.data(), y.data() + m * 72, 72 * 4) == 0);
  }
  std::vector<float> g = poisoned(M * 72);
  EXPECT_OK(kvant::cuda::gptqGemm(dev, p.view(), x.data(), M, g.data()));
  std::vector<float> g1 = poisoned(72);
  EXPECT_OK(kvant::cuda::gptqGemm(dev, p.view(), x.data() + 2 * 328, 1, g1.data()));
  EXPECT_TRUE(std::memcmp(g1.data(), g.data() + 2 * 72, 72 * 4) == 0);
}
