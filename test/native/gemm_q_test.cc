// Fused dequant GEMV/GEMM under ASan+UBSan: every level against f64 on awkward sizes, levels
// agreeing bit for bit, NaN-poisoned outputs, and the status codes of bad formats.
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <vector>

#include "check.h"
#include "gemm_q.h"
#include "kvant/half.h"
#include "random.h"
#include "thread_pool.h"

using namespace kvant;

namespace {

uint64_t lcg(uint64_t& s) {
  s = s * 6364136223846793005ull + 1442695040888963407ull;
  return s >> 33;
}

// Code i of a packed dimension sits at bits [bits*i, bits*i + bits) of the concatenated words.
void put(std::vector<uint32_t>& w, size_t base, size_t stride, size_t pos, int bits, uint32_t v) {
  for (int b = 0; b < bits; ++b)
    if ((v >> b) & 1u) w[base + (pos + size_t(b)) / 32 * stride] |= 1u << ((pos + size_t(b)) % 32);
}

struct Made {
  QuantFormat f{};
  std::vector<uint32_t> qw, qz;
  std::vector<uint16_t> sc;
  std::vector<double> W, mag;  // [N][K]
  QMatrix q() const { return QMatrix{f, qw.data(), qz.data(), sc.data(), nullptr}; }
};

Made make(int bits, int groupSize, bool v2, size_t K, size_t N, uint64_t seed) {
  Made r;
  r.f = QuantFormat{bits, groupSize, 0, v2 ? 1 : 0, int64_t(K), int64_t(N)};
  const size_t G = size_t(qEffectiveGroup(r.f)), ng = size_t(qGroupCount(r.f));
  const uint32_t maxq = (1u << bits) - 1;
  r.qw.assign(size_t(qWeightRows(r.f)) * N, 0);
  r.qz.assign(ng * size_t(qZeroCols(r.f)), 0);
  r.sc.resize(ng * N);
  r.W.resize(N * K);
  r.mag.resize(N * K);
  std::vector<uint32_t> z(ng * N);
  for (size_t i = 0; i < ng * N; ++i) {
    z[i] = uint32_t(lcg(seed) % (maxq + 1));
    put(r.qz, (i / N) * size_t(qZeroCols(r.f)), 1, size_t(bits) * (i % N), bits, v2 ? z[i] : (z[i] - 1) & maxq);
    r.sc[i] = f32ToF16(float((lcg(seed) % 2 ? -1.0 : 1.0) * (0.005 + 0.05 * double(lcg(seed) % 1000) / 1000)));
  }
  for (size_t k = 0; k < K; ++k)
    for (size_t n = 0; n < N; ++n) {
      const uint32_t c = uint32_t(lcg(seed) % (maxq + 1));
      put(r.qw, n, N, size_t(bits) * k, bits, c);
      const size_t g = k / G;
      const double s = f16ToF32(r.sc[g * N + n]);
      r.W[n * K + k] = s * (double(c) - double(z[g * N + n]));
      r.mag[n * K + k] = std::fabs(s) * (double(c) + double(z[g * N + n]));
    }
  return r;
}

}  // namespace

TEST(qgemm_every_level_matches_f64_and_the_scalar_reference_bit_for_bit) {
  struct Shape { int bits; size_t K, N; };
  const Shape shapes[] = {{2, 304, 48}, {3, 160, 64}, {4, 296, 104}, {8, 300, 36}};
  uint64_t seed = 1;
  for (const Shape& sh : shapes)
    for (int groupSize : {32, 128, -1})
      for (bool v2 : {false, true}) {
        const Made m = make(sh.bits, groupSize, v2, sh.K, sh.N, ++seed);
        const QMatrix q = m.q();
        const size_t G = size_t(qEffectiveGroup(m.f)), ng = size_t(qGroupCount(m.f));
        for (size_t M : {size_t(1), size_t(3), size_t(11)}) {
          std::vector<float> x(M * sh.K);
          fillRandom(x.data(), DType::kF32, x.size(), seed * 31 + M, RandomDist::kNormal, 0, 1);
          std::vector<float> scratch(qgemmScratchFloats(m.f, M));
          std::vector<float> ref;
          for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
            if (!qgemmKernelsFor(isa)) continue;
            std::vector<float> y(M * sh.N, NAN);
            EXPECT_TRUE(qgemm(q, x.data(), DType::kF32, M, nullptr, y.data(), scratch.data(), isa) == Status::kOk);
            for (size_t i = 0; i < M; ++i)
              for (size_t n = 0; n < sh.N; ++n) {
                double want = 0, mag = 0;
                for (size_t k = 0; k < sh.K; ++k) {
                  want += double(x[i * sh.K + k]) * m.W[n * sh.K + k];
                  mag += std::fabs(double(x[i * sh.K + k])) * m.mag[n * sh.K + k];
                }
                // Bound derived in test/qgemm.test.ts: (G + ng + 3)·u·Σ|x||s|(c + z) + u·|y|.
                const double bound = double(G + ng + 3) * std::ldexp(1.0, -24) * mag + std::ldexp(std::fabs(want), -24);
                const double err = std::fabs(double(y[i * sh.N + n]) - want);
                if (!(err <= bound)) {
                  EXPECT_TRUE(err <= bound);
                  std::fprintf(stderr, "    bits %d G %d v2 %d M %zu isa %d: y[%zu,%zu] = %g vs %g (bound %g)\n", sh.bits, groupSize, int(v2), M,
                               int(isa), i, n, double(y[i * sh.N + n]), want, bound);
                  return;
                }
              }
            if (ref.empty()) ref = y;
            else EXPECT_TRUE(std::memcmp(ref.data(), y.data(), y.size() * 4) == 0);
          }
        }
      }
}

TEST(qgemm_rejects_bad_formats_with_status_codes) {
  Made m = make(4, 32, false, 64, 16, 3);
  std::vector<float> x(64, 1.f), y(16), scratch(qgemmScratchFloats(m.f, 1));
  QMatrix q = m.q();
  EXPECT_TRUE(qgemm(q, x.data(), DType::kF32, 1, nullptr, y.data(), scratch.data()) == Status::kOk);
  q.fmt.bits = 5;
  EXPECT_TRUE(qgemm(q, x.data(), DType::kF32, 1, nullptr, y.data(), scratch.data()) == Status::kFormat);
  q = m.q();
  q.fmt.groupSize = 20;  // not a multiple of the 8 codes per 4-bit word
  EXPECT_TRUE(qgemm(q, x.data(), DType::kF32, 1, nullptr, y.data(), scratch.data()) == Status::kFormat);
  q = m.q();
  q.fmt.N = 12;  // 12 * 4 bits do not fill whole qzeros words
  EXPECT_TRUE(qgemm(q, x.data(), DType::kF32, 1, nullptr, y.data(), scratch.data()) == Status::kShape);
  q = m.q();
  EXPECT_TRUE(qgemm(q, x.data(), DType::kI32, 1, nullptr, y.data(), scratch.data()) == Status::kDtype);
}

TEST(moe_mlp_validates_indices_and_scratch) {
  Made g = make(4, 32, false, 32, 16, 5), u = make(4, 32, false, 32, 16, 6), d = make(4, 16, false, 16, 32, 7);
  const QMatrix gq = g.q(), uq = u.q(), dq = d.q();
  MlpDesc mlp;
  mlp.gate = MlpProj{&gq, nullptr, DType::kF32, 16, 32};
  mlp.up = MlpProj{&uq, nullptr, DType::kF32, 16, 32};
  mlp.down = MlpProj{&dq, nullptr, DType::kF32, 32, 16};
  std::vector<float> x(2 * 32, 0.5f), out(2 * 32, NAN);
  int32_t idx[2] = {0, 0}, rows[2] = {1, 0};
  float w[2] = {1.f, 0.5f};
  std::vector<float> scratch(moeScratchFloats(&mlp, 1, idx, 2, 32));
  EXPECT_TRUE(moeMlp(x.data(), 2, 32, &mlp, 1, idx, rows, w, 2, out.data(), scratch.data(), scratch.size()) == Status::kOk);
  for (float v : out) EXPECT_TRUE(std::isfinite(v));
  // Same x row through the same MLP: row 0 = 0.5 · row 1 up to one rounding of the product.
  for (size_t c = 0; c < 32; ++c) EXPECT_NEAR_REL(out[c], 0.5 * out[32 + c], 1e-6);
  EXPECT_TRUE(moeMlp(x.data(), 2, 32, &mlp, 1, idx, rows, w, 2, out.data(), scratch.data(), scratch.size() - 1) == Status::kShape);
  int32_t badIdx[2] = {0, 1}, badRow[2] = {0, 2};
  EXPECT_TRUE(moeMlp(x.data(), 2, 32, &mlp, 1, badIdx, rows, w, 2, out.data(), scratch.data(), scratch.size()) == Status::kRange);
  EXPECT_TRUE(moeMlp(x.data(), 2, 32, &mlp, 1, idx, badRow, w, 2, out.data(), scratch.data(), scratch.size()) == Status::kRange);
}

TEST(qgemm_int8_activations_match_f64_and_agree_across_levels_and_regimes) {
  uint64_t seed = 100;
  for (int bits : {2, 3, 4, 8})
    for (int groupSize : {32, 128, -1}) {
      // 52: the 8-bit N % 8 == 4 tail; 3 bits: K, N % 32 == 0 (320 = 2·128 + 64 at g128).
      const size_t K = bits == 2 ? 304 : bits == 3 ? 320 : bits == 4 ? 296 : 300, N = bits == 8 ? 52 : bits == 3 ? 96 : 48;
      const Made m = make(bits, groupSize, false, K, N, ++seed);
      const QMatrix q = m.q();
      const size_t G = size_t(qEffectiveGroup(m.f)), ng = size_t(qGroupCount(m.f)), bpg = (G + 31) / 32;
      const size_t M = 11;
      std::vector<float> x(M * K);
      fillRandom(x.data(), DType::kF32, x.size(), seed, RandomDist::kNormal, 0, 1);
      std::vector<float> scratch(qgemmScratchFloats(m.f, M, QAct::kInt8)), one(qgemmScratchFloats(m.f, 1, QAct::kInt8));
      std::vector<float> ref;
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
        if (!qgemmKernelsFor(isa)) continue;
        std::vector<float> y(M * N, NAN), y1(N, NAN);
        EXPECT_TRUE(qgemm(q, x.data(), DType::kF32, M, nullptr, y.data(), scratch.data(), isa, QAct::kInt8) == Status::kOk);
        // Row 3 alone (GEMV) equals row 3 of the M = 11 call (panel GEMM).
        EXPECT_TRUE(qgemm(q, x.data() + 3 * K, DType::kF32, 1, nullptr, y1.data(), one.data(), isa, QAct::kInt8) == Status::kOk);
        EXPECT_TRUE(std::memcmp(y1.data(), y.data() + 3 * N, N * 4) == 0);
        for (size_t i = 0; i < M; ++i) {
          std::vector<double> d(K);
          for (size_t g0 = 0; g0 < K; g0 += G)
            for (size_t b0 = g0; b0 < std::min(g0 + G, K); b0 += 32) {
              const size_t b1 = std::min({b0 + 32, g0 + G, K});
              double mx = 0;
              for (size_t k = b0; k < b1; ++k) mx = std::fmax(mx, std::fabs(double(x[i * K + k])));
              for (size_t k = b0; k < b1; ++k) d[k] = mx / 127;
            }
          for (size_t n = 0; n < N; ++n) {
            double want = 0, mag = 0, qerr = 0;
            const double u = std::ldexp(1.0, -24);
            for (size_t k = 0; k < K; ++k) {
              const double xv = x[i * K + k];
              want += xv * m.W[n * K + k];
              mag += (std::fabs(xv) + d[k]) * m.mag[n * K + k];
              qerr += std::fabs(m.W[n * K + k]) * (0.5 * d[k] * (1 + 2 * u) + 4 * u * std::fabs(xv));
            }
            // Bound derived in test/qgemm.test.ts (int8 activations).
            const double bound = qerr + double(bpg + ng + 3) * u * mag + u * std::fabs(want);
            if (!(std::fabs(double(y[i * N + n]) - want) <= bound)) {
              EXPECT_TRUE(std::fabs(double(y[i * N + n]) - want) <= bound);
              return;
            }
          }
        }
        if (ref.empty()) ref = y;
        else EXPECT_TRUE(std::memcmp(ref.data(), y.data(), y.size() * 4) == 0);
      }
    }
}

// The int8 GEMM's byte dot products sum a 32-row block in i16 (gemm_q_avx2.cc: 8 maddubs of
// pairs <= 2·maxq·127). Worst case for that bound: every code maxq and every activation
// quantized to ±127 (x = ±1 in whole blocks), so each block's sum is exactly ±32·maxq·127
// (4 bits: 60960 as i32, 30480 per i16 half; 3 bits: 8 quads of codes 7, 14224 per i16 half,
// through the cross-word codes 10 and 21 as well). An overflow or a saturated maddubs would change
// I by thousands; the scalar reference sums in int32, so the GEMM (M = 13: two 6-row tiles and
// a 1-row tail) must match it and the M = 1 GEMV bit for bit at every level.
TEST(qgemm_int8_gemm_is_exact_at_the_extreme_codes_and_activations) {
  uint64_t seed = 900;
  for (int bits : {2, 3, 4, 8}) {
    // g128 with a partial last group; N: whole 16-column tiles + an 8-column tail (4 bits), the
    // 8-bit N % 8 == 4 tail, whole tiles only (2 bits: N must pack 16 codes per zero word; 3
    // bits: K, N % 32 == 0, 96 = one 64-column pass + two tiles).
    const size_t K = bits == 2 ? 304 : bits == 3 ? 320 : 296, N = bits == 2 ? 48 : bits == 3 ? 96 : bits == 4 ? 56 : 52, M = 13;
    Made m = make(bits, 128, false, K, N, ++seed);
    std::fill(m.qw.begin(), m.qw.end(), 0xFFFFFFFFu);  // every code = maxq
    const QMatrix q = m.q();
    std::vector<float> x(M * K);
    for (size_t i = 0; i < M; ++i)
      for (size_t k = 0; k < K; ++k) x[i * K + k] = i % 3 == 0 ? 1.0f : i % 3 == 1 ? -1.0f : ((k / 32) % 2 ? 1.0f : -1.0f);
    std::vector<float> scratch(qgemmScratchFloats(m.f, M, QAct::kInt8)), one(qgemmScratchFloats(m.f, 1, QAct::kInt8));
    std::vector<float> ref(M * N, NAN);
    EXPECT_TRUE(qgemm(q, x.data(), DType::kF32, M, nullptr, ref.data(), scratch.data(), Isa::kScalar, QAct::kInt8) == Status::kOk);
    for (size_t i = 0; i < M * N; ++i) EXPECT_TRUE(std::isfinite(ref[i]));
    for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
      if (!qgemmKernelsFor(isa)) continue;
      std::vector<float> y(M * N, NAN);
      EXPECT_TRUE(qgemm(q, x.data(), DType::kF32, M, nullptr, y.data(), scratch.data(), isa, QAct::kInt8) == Status::kOk);
      EXPECT_TRUE(std::memcmp(ref.data(), y.data(), y.size() * 4) == 0);
      for (size_t i : {size_t(0), size_t(1), size_t(2), size_t(12)}) {
        std::vector<float> y1(N, NAN);
        EXPECT_TRUE(qgemm(q, x.data() + i * K, DType::kF32, 1, nullptr, y1.data(), one.data(), isa, QAct::kInt8) == Status::kOk);
        EXPECT_TRUE(std::memcmp(y1.data(), ref.data() + i * N, N * 4) == 0);
      }
    }
  }
}

// Split-K decode over several 2048-column blocks (the last partial) with bias, in one parallel
// phase whose last task per block combines it: the same bits at every level and thread count,
// and y in f16/bf16 equals the f32 result rounded once (f32ToF16 / f32ToBf16: RNE).
TEST(qgemm_split_k_column_blocks_and_typed_outputs) {
  const size_t K = 520, N = 2392, M = 2;  // ng = 5 at g128 (partial last group), 2 column blocks
  const Made m = make(4, 128, false, K, N, 77);
  const QMatrix q = m.q();
  std::vector<float> x(M * K), bias(N);
  fillRandom(x.data(), DType::kF32, x.size(), 5, RandomDist::kNormal, 0, 1);
  fillRandom(bias.data(), DType::kF32, N, 6, RandomDist::kNormal, 0, 1);
  const int before = threadPool().threads();
  for (QAct act : {QAct::kF32, QAct::kInt8}) {
    std::vector<float> ref;
    for (int t : {1, 2, 3}) {
      threadPool().resize(t);
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
        if (!qgemmKernelsFor(isa)) continue;
        std::vector<float> scratch(qgemmScratchFloats(m.f, M, act) + M * N);
        std::vector<float> y(M * N, NAN);
        EXPECT_TRUE(qgemmTyped(q, x.data(), DType::kF32, M, bias.data(), y.data(), DType::kF32, scratch.data(), isa, act) == Status::kOk);
        if (ref.empty()) ref = y;
        EXPECT_TRUE(std::memcmp(ref.data(), y.data(), y.size() * 4) == 0);
        for (DType yt : {DType::kF16, DType::kBF16}) {
          std::vector<uint16_t> h(M * N, 0x7fc1);  // poisoned: a NaN in both f16 and bf16
          EXPECT_TRUE(qgemmTyped(q, x.data(), DType::kF32, M, bias.data(), h.data(), yt, scratch.data(), isa, act) == Status::kOk);
          for (size_t i = 0; i < M * N; ++i) {
            const uint16_t want = yt == DType::kF16 ? f32ToF16(ref[i]) : f32ToBf16(ref[i]);
            if (h[i] != want) {
              EXPECT_TRUE(h[i] == want);
              std::fprintf(stderr, "    act %d threads %d isa %d dtype %d: y[%zu] = 0x%04x, want 0x%04x\n", int(act), t, int(isa), int(yt), i, h[i], want);
              threadPool().resize(before);
              return;
            }
          }
        }
      }
    }
  }
  threadPool().resize(before);
  std::vector<float> scratch(qgemmScratchFloats(m.f, 1) + N), y(N);
  EXPECT_TRUE(qgemmTyped(q, x.data(), DType::kF32, 1, nullptr, y.data(), DType::kI32, scratch.data()) == Status::kDtype);
}

// Batch and thread invariance on every level (avx512 included, emulated or real), f32 and int8
// activations: rows 0, 1, 254 and 511 of one M = 512 call (panel GEMM) equal the same rows run
// alone (M = 1: split-K or column GEMV), with 1 and 2 pool threads, and equal the scalar
// reference bit for bit (gemm_q.h fixes the operation order, so no tolerance applies). Column
// counts leave vector tails at every width (N % 16 != 0 where the packing allows it).
TEST(qgemm_rows_are_batch_and_thread_invariant_and_identical_across_levels) {
  struct Shape { int bits; size_t K, N; int G; };
  const Shape shapes[] = {{2, 320, 80, 64}, {3, 192, 96, 64}, {4, 264, 72, 128}, {8, 200, 44, 32}, {4, 256, 40, -1}};
  const int before = threadPool().threads();
  uint64_t seed = 900;
  for (const Shape& sh : shapes)
    for (QAct act : {QAct::kF32, QAct::kInt8}) {
      const Made m = make(sh.bits, sh.G, true, sh.K, sh.N, ++seed);
      const QMatrix q = m.q();
      const size_t M = 512, K = sh.K, N = sh.N;
      std::vector<float> x(M * K);
      fillRandom(x.data(), DType::kF32, x.size(), seed, RandomDist::kNormal, 0, 1);
      std::vector<float> scratch(qgemmScratchFloats(m.f, M, act)), one(qgemmScratchFloats(m.f, 1, act));
      std::vector<float> ref;  // scalar, 1 thread
      for (Isa isa : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512}) {
        if (!isaSupported(isa)) continue;
        for (int threads : {1, 2}) {
          threadPool().resize(threads);
          std::vector<float> y(M * N, NAN);
          EXPECT_TRUE(qgemm(q, x.data(), DType::kF32, M, nullptr, y.data(), scratch.data(), isa, act) == Status::kOk);
          if (ref.empty()) ref = y;
          const bool same = std::memcmp(ref.data(), y.data(), y.size() * 4) == 0;
          EXPECT_TRUE(same);
          if (!same)
            std::fprintf(stderr, "    bits %d G %d act %d %s threads %d: M = 512 differs from scalar\n", sh.bits, sh.G, int(act), isaName(isa),
                         threads);
          for (size_t r : {size_t(0), size_t(1), size_t(254), size_t(511)}) {
            std::vector<float> y1(N, NAN);
            EXPECT_TRUE(qgemm(q, x.data() + r * K, DType::kF32, 1, nullptr, y1.data(), one.data(), isa, act) == Status::kOk);
            if (std::memcmp(y1.data(), ref.data() + r * N, N * 4) != 0) {
              EXPECT_TRUE(false);
              std::fprintf(stderr, "    bits %d G %d act %d %s threads %d: row %zu alone differs\n", sh.bits, sh.G, int(act), isaName(isa),
                           threads, r);
            }
          }
        }
      }
    }
  threadPool().resize(before);
}

// The int8 activation prepare rounds x / d half to even exactly as std::nearbyint in the
// default rounding mode, sign of zero included (it uses an add-and-subtract rounding instead
// of the libm call): exact ties (block max 127, so 127/max = 1 and x / d = x exactly), values
// rounding to −0, and random blocks, for every packing width. xs holds float(q); Q_b and d_b
// follow from it.
TEST(qgemm_int8_prepare_rounds_half_to_even_like_nearbyint) {
  uint64_t seed = 900;
  for (int bits : {2, 3, 4, 8}) {
    const size_t K = 256;
    const Made m = make(bits, 128, false, K, bits == 3 ? 32 : 16, ++seed);
    const QMatrix q = m.q();
    std::vector<float> x(K);
    fillRandom(x.data(), DType::kF32, K, seed, RandomDist::kNormal, 0, 1);
    // Block 0: ties and near-zero values, max 127 (d = 1).
    const float ties[] = {127.0f, 0.5f, -0.5f, 1.5f, -1.5f, 2.5f, -2.5f, 126.5f, -126.5f, -0.3f, 0.3f, -0.0f, 0.0f, 3.5f, -4.5f, 64.5f};
    for (size_t k = 0; k < 32; ++k) x[k] = ties[k % 16];
    // Block 1: max 127 again, with a third of the values at random exact halves.
    for (size_t k = 32; k < 64; ++k) x[k] = k % 3 ? float(int(lcg(seed) % 253) - 126) + 0.5f : float(int(lcg(seed) % 255) - 127);
    x[40] = -127.0f;
    std::vector<float> scratch(qgemmScratchFloats(m.f, 1, QAct::kInt8));
    const QActs a = qgemmPrepare(q, x.data(), DType::kF32, K, 1, scratch.data(), QAct::kInt8);
    for (size_t b = 0; b < K / 32; ++b) {
      float mx = 0;
      for (size_t k = 32 * b; k < 32 * b + 32; ++k) mx = std::max(mx, std::fabs(x[k]));
      const float inv = 127.0f / mx;
      float sum = 0;
      for (size_t k = 32 * b; k < 32 * b + 32; ++k) {
        const float want = std::max(-127.0f, std::min(127.0f, std::nearbyint(x[k] * inv)));
        sum += want;
        if (std::memcmp(&want, &a.xs[k], 4) != 0) {
          EXPECT_TRUE(std::memcmp(&want, &a.xs[k], 4) == 0);
          std::fprintf(stderr, "    bits %d k %zu x %.9g: want %.9g got %.9g\n", bits, k, double(x[k]), double(want), double(a.xs[k]));
          return;
        }
      }
      EXPECT_TRUE(a.qsum[b] == sum);
      EXPECT_TRUE(a.dx[b] == mx / 127.0f);
    }
    if (bits == 3) {
      // The 3-bit word order is a permutation of each 32-code unit (kQ3Quads, gemm_q.h): every
      // code's q lands in exactly one byte, the one its quad and byte name.
      bool seen[32] = {};
      for (int j = 0; j < 8; ++j)
        for (int p = 0; p < 4; ++p) {
          EXPECT_TRUE(kQ3Quads[j][p] < 32 && !seen[kQ3Quads[j][p]]);
          seen[kQ3Quads[j][p] & 31] = true;
          for (size_t u = 0; u < K / 32; ++u) EXPECT_TRUE(float(a.qx[u * 32 + 4 * j + p]) == a.xs[u * 32 + kQ3Quads[j][p]]);
        }
    }
  }
}
