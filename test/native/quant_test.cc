// Group quantization under ASan/UBSan: bit-stream packing against the SPEC 3-bit layout,
// RTN -> dequantize identical at every ISA level into NaN-poisoned buffers, act-order repack
// round trip, the f64 factorization against its definition, and a whole GPTQ run.
#include <cmath>
#include <cstring>
#include <vector>
#include <utility>

#include "check.h"
#include "gptq.h"
#include "kvant/half.h"
#include "quant.h"
#include "thread_pool.h"

using namespace kvant;

namespace {

uint32_t rng(uint64_t& s) {
  s = s * 6364136223846793005ull + 1442695040888963407ull;
  return uint32_t(s >> 33);
}
float gauss(uint64_t& s) {
  const double u = (rng(s) + 1.0) / 2147483649.0, v = rng(s) / 2147483648.0;
  return float(std::sqrt(-2 * std::log(u)) * std::cos(6.283185307179586 * v));
}
std::vector<Isa> levels() {
  std::vector<Isa> v;
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (isaSupported(i)) v.push_back(i);
  return v;
}
QuantFormat fmt(int bits, int G, bool sym, int64_t K, int64_t N) {
  QuantFormat f;
  f.bits = bits;
  f.groupSize = G;
  f.sym = sym;
  f.zeroFormat = int32_t(ZeroFormat::kGptqV1);
  f.K = K;
  f.N = N;
  return f;
}

}  // namespace

TEST(quant_stream_round_trips_and_3bit_cross_word_layout) {
  uint64_t s = 1;
  for (int bits : {2, 3, 4, 8}) {
    const int64_t n = 96;  // a multiple of 32 codes for every width
    std::vector<uint32_t> codes(n), words(size_t(n * bits / 32) + 1, 0);
    for (auto& c : codes) c = rng(s) & ((1u << bits) - 1);
    words.back() = 0xdeadbeef;  // guard word: must stay untouched
    for (int64_t i = 0; i < n; ++i) qStreamOr(words.data(), 1, i, bits, codes[size_t(i)]);
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(qStreamGet(words.data(), 1, i, bits), codes[size_t(i)]);
    EXPECT_EQ(words.back(), 0xdeadbeefu);
    if (bits == 3) {
      // SPEC §2.5: v10 = word0 bits 30-31 + word1 bit 0; v21 = word1 bit 31 + word2 bits 0-1.
      EXPECT_EQ(((words[0] >> 30) | ((words[1] & 1u) << 2)), codes[10]);
      EXPECT_EQ(((words[1] >> 31) | ((words[2] & 3u) << 1)), codes[21]);
      EXPECT_EQ((words[2] >> 2) & 7u, codes[22]);
    }
  }
}

TEST(quant_rtn_dequant_every_level_identical_and_exact) {
  uint64_t s = 7;
  for (int bits : {2, 3, 4, 8})
    for (int G : {32, 128, -1}) {
      const int64_t K = 160, N = bits == 8 ? 36 : (bits == 2 ? 48 : (bits == 3 ? 64 : 40));
      QuantFormat f = fmt(bits, G, bits != 4, K, N);
      std::vector<float> w(size_t(N * K));
      for (auto& v : w) v = gauss(s) * 0.1f;
      std::vector<uint32_t> qw(size_t(qWeightRows(f) * N)), qz(size_t(qGroupCount(f) * qZeroCols(f)));
      std::vector<uint16_t> sc(size_t(qGroupCount(f) * N));
      int64_t bad = -1;
      EXPECT_TRUE(quantizeRtn(f, w.data(), qw.data(), qz.data(), sc.data(), &bad) == Status::kOk);
      std::vector<float> ref;
      for (Isa isa : levels()) {
        std::vector<float> out(size_t(N * K), NAN);
        DequantArgs a{f, qw.data(), qz.data(), sc.data(), nullptr, nullptr, DType::kF32, out.data()};
        EXPECT_TRUE(dequantize(a, &bad, isa) == Status::kOk);
        for (int64_t i = 0; i < N * K; ++i) {
          EXPECT_TRUE(std::isfinite(out[size_t(i)]));
          // within one step of the weight (half a step plus the zero point's rounding)
          const int64_t g = (i % K) / (G < 0 ? K : G);
          EXPECT_TRUE(std::fabs(out[size_t(i)] - w[size_t(i)]) <= f16ToF32(sc[size_t(g * N + i / K)]) * 1.0001f);
        }
        if (ref.empty()) ref = out;
        else EXPECT_TRUE(std::memcmp(ref.data(), out.data(), ref.size() * 4) == 0);
      }
    }
}

TEST(quant_make_sequential_round_trip) {
  uint64_t s = 3;
  QuantFormat f = fmt(4, 32, true, 128, 16);
  std::vector<uint32_t> qw(size_t(qWeightRows(f) * f.N));
  for (auto& v : qw) v = rng(s) | (rng(s) << 16);
  std::vector<int32_t> gIdx(128), perm(128), back(128);
  for (int k = 0; k < 128; ++k) gIdx[size_t(k)] = (k * 5) % 4;  // 32 channels per group, interleaved
  std::vector<uint32_t> seq(qw.size()), orig(qw.size());
  int64_t bad = -1;
  EXPECT_TRUE(qMakeSequential(f, qw.data(), gIdx.data(), perm.data(), seq.data(), true, &bad) == Status::kOk);
  for (int j = 0; j < 128; ++j) EXPECT_EQ(gIdx[size_t(perm[size_t(j)])], j / 32);
  EXPECT_TRUE(qMakeSequential(f, seq.data(), back.data(), perm.data(), orig.data(), false, &bad) == Status::kOk);
  EXPECT_TRUE(std::memcmp(orig.data(), qw.data(), qw.size() * 4) == 0);
  EXPECT_TRUE(std::memcmp(back.data(), gIdx.data(), 128 * 4) == 0);
  gIdx[3] = 9;
  EXPECT_TRUE(qMakeSequential(f, qw.data(), gIdx.data(), perm.data(), seq.data(), true, &bad) == Status::kRange);
  EXPECT_EQ(bad, 3);
}

TEST(gptq_factor_inverts_a_cholesky_factor) {
  uint64_t s = 11;
  const int64_t K = 603;  // three panels, the last partial
  std::vector<double> X(size_t(K * 100)), A(size_t(K * K)), L, scratch(size_t(gptqFactorScratch(K)));
  for (auto& v : X) v = gauss(s);
  for (int64_t i = 0; i < K; ++i)
    for (int64_t j = 0; j < K; ++j) {
      double a = i == j ? 1.0 : 0.0;
      for (int64_t t = 0; t < 100; ++t) a += X[size_t(t * K + i)] * X[size_t(t * K + j)];
      A[size_t(i * K + j)] = a;
    }
  for (Isa isa : levels()) {
    const GptqKernels* kk = gptqKernelsFor(isa);
    L = A;
    EXPECT_TRUE(choleskyLower(*kk, L.data(), K, scratch.data()));
    // L L^T = A: f64 sums of K terms, |err| <= K * 2^-52 * (L L^T)_ii-ish; 1e-10 relative to max|A|.
    double worst = 0, amax = 0;
    for (double v : A) amax = std::fmax(amax, std::fabs(v));
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j <= i; ++j) {
        double r = 0;
        for (int64_t p = 0; p <= j; ++p) r += L[size_t(i * K + p)] * L[size_t(j * K + p)];
        worst = std::fmax(worst, std::fabs(r - A[size_t(i * K + j)]));
      }
    EXPECT_TRUE(worst <= 1e-10 * amax);
    std::vector<double> Lc = L;
    invertLower(*kk, L.data(), K, scratch.data());
    double worstI = 0;
    for (int64_t i = 0; i < K; ++i)
      for (int64_t j = 0; j < K; ++j) {
        double r = 0;
        for (int64_t p = 0; p < K; ++p) r += Lc[size_t(i * K + p)] * L[size_t(p * K + j)];
        worstI = std::fmax(worstI, std::fabs(r - (i == j ? 1.0 : 0.0)));
      }
    // cond(L) = sqrt(cond(A)) <= ~1e2 here: residual of L X = I well below 1e-10
    EXPECT_TRUE(worstI <= 1e-10);
  }
}

TEST(gptq_runs_clean_and_beats_rtn_on_its_objective) {
  uint64_t s = 5;
  const int64_t K = 192, N = 32, T = 256;
  QuantFormat f = fmt(3, 64, false, K, N);
  std::vector<float> x(size_t(T * K)), w(size_t(N * K)), H(size_t(K * K), 0.0f);
  for (auto& v : x) v = gauss(s);
  for (int64_t t = 0; t < T; ++t) x[size_t(t * K + 17)] *= 20.0f;  // an outlier channel
  for (auto& v : w) v = gauss(s) * 0.05f;
  int64_t bad = -1;
  std::vector<float> xt(size_t(T * K));
  EXPECT_TRUE(hessianAdd(H.data(), K, x.data(), T, 0, 1, xt.data(), &bad) == Status::kOk);
  GptqOptions o;
  o.actOrder = true;
  GptqWorkspace ws;
  ws.reserve(f, o);
  std::vector<uint32_t> qw(size_t(qWeightRows(f) * N)), qz(size_t(qGroupCount(f) * qZeroCols(f)));
  std::vector<uint16_t> sc(size_t(qGroupCount(f) * N));
  std::vector<int32_t> gi(size_t(K), -1);
  GptqStats st;
  EXPECT_TRUE(gptqQuantize(f, w.data(), H.data(), o, ws, qw.data(), qz.data(), sc.data(), gi.data(), &st, nullptr, &bad) == Status::kOk);
  for (int32_t g : gi) EXPECT_TRUE(g >= 0 && g < qGroupCount(f));
  // RTN's output error through the same H
  std::vector<uint32_t> rqw(qw.size()), rqz(qz.size());
  std::vector<uint16_t> rsc(sc.size());
  EXPECT_TRUE(quantizeRtn(f, w.data(), rqw.data(), rqz.data(), rsc.data(), &bad) == Status::kOk);
  std::vector<float> deq(size_t(N * K));
  DequantArgs a{f, rqw.data(), rqz.data(), rsc.data(), nullptr, nullptr, DType::kF32, deq.data()};
  EXPECT_TRUE(dequantize(a, &bad) == Status::kOk);
  double num = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < K; ++i) {
      double hd = 0;
      for (int64_t j = 0; j < K; ++j) hd += double(H[size_t(i * K + j)]) * (w[size_t(n * K + j)] - deq[size_t(n * K + j)]);
      num += (w[size_t(n * K + i)] - deq[size_t(n * K + i)]) * hd;
    }
  EXPECT_TRUE(st.errNum > 0 && st.errNum < num);
  std::vector<float> xn = x;
  xn[5] = NAN;
  EXPECT_TRUE(hessianAdd(H.data(), K, xn.data(), T, 1, 1, xt.data(), &bad) == Status::kRange);
  EXPECT_EQ(bad, 5);
}

// Every ISA level's dequantize on random codes, zeros and scales, for every width and group,
// sequential and act-order (random g_idx over a made-sequential matrix with its permutation),
// into f32/f16/bf16 outputs poisoned with NaN. Sizes leave edges on both axes (K % 8 and
// N % 8 != 0 where packing allows). The reference is f64: s·(c − z) is exact in f64 (a float
// times an integer below 2^9), so its rounding to f32 is what every level must produce, bit
// for bit (one rounding, no tolerance), and then f16/bf16 round that f32 like half.h does.
TEST(quant_dequant_act_order_and_half_outputs_match_f64_on_every_level) {
  uint64_t s = 99;
  struct Shape { int bits; int64_t K, N; };
  const Shape shapes[] = {{2, 176, 48}, {3, 160, 96}, {4, 168, 40}, {8, 164, 36}};
  for (const Shape& sh : shapes)
    for (int G : {32, 64, 128, -1})
      for (int mode = 0; mode < 3; ++mode) {  // 0: sequential, 1: g_idx act-order, 2: perm (made sequential)
        QuantFormat f = fmt(sh.bits, G, false, sh.K, sh.N);
        f.zeroFormat = mode == 1 ? int32_t(ZeroFormat::kGptqV2) : int32_t(ZeroFormat::kGptqV1);
        const int64_t K = f.K, N = f.N, ng = qGroupCount(f), Ge = qEffectiveGroup(f);
        std::vector<uint32_t> qw(size_t(qWeightRows(f) * N)), qz(size_t(ng * qZeroCols(f)));
        for (auto& v : qw) v = rng(s) | (rng(s) << 31);
        for (auto& v : qz) v = rng(s) | (rng(s) << 31);
        std::vector<uint16_t> sc(size_t(ng * N));
        for (auto& v : sc) v = f32ToF16(gauss(s) * 0.02f);
        std::vector<int32_t> gIdx(static_cast<size_t>(K)), perm(static_cast<size_t>(K));
        for (int64_t k = 0; k < K; ++k) gIdx[size_t(k)] = int32_t(k / Ge), perm[size_t(k)] = int32_t(k);
        if (mode == 1)
          for (auto& g : gIdx) g = int32_t(rng(s) % uint32_t(ng));
        if (mode == 2)
          for (int64_t k = K - 1; k > 0; --k) std::swap(perm[size_t(k)], perm[rng(s) % uint32_t(k + 1)]);
        // f64 reference in [N, K] original-channel order.
        std::vector<float> want(size_t(N * K));
        for (int64_t n = 0; n < N; ++n)
          for (int64_t j = 0; j < K; ++j) {
            const int64_t g = gIdx[size_t(j)];
            const double c = qStreamGet(qw.data() + n, N, j, f.bits), z = qZeroAt(f, qz.data(), g, n);
            want[size_t(n * K + perm[size_t(j)])] = float(double(f16ToF32(sc[size_t(g * N + n)])) * (c - z));
          }
        for (DType t : {DType::kF32, DType::kF16, DType::kBF16})
          for (Isa isa : levels()) {
            std::vector<uint32_t> out(size_t(N * K), 0x7fc00001u);  // NaN (f32), NaN pairs (f16/bf16)
            DequantArgs a{f, qw.data(), qz.data(), sc.data(), mode == 1 ? gIdx.data() : nullptr, mode == 2 ? perm.data() : nullptr, t,
                          out.data()};
            int64_t bad = -1;
            EXPECT_TRUE(dequantize(a, &bad, isa) == Status::kOk);
            int64_t wrong = 0, first = -1;
            for (int64_t i = 0; i < N * K; ++i) {
              bool ok;
              if (t == DType::kF32) ok = std::memcmp(&out[size_t(i)], &want[size_t(i)], 4) == 0;
              else {
                const uint16_t got = reinterpret_cast<const uint16_t*>(out.data())[i];
                ok = got == (t == DType::kF16 ? f32ToF16(want[size_t(i)]) : f32ToBf16(want[size_t(i)]));
              }
              if (!ok && wrong++ == 0) first = i;
            }
            if (wrong) {
              EXPECT_EQ(wrong, 0);
              std::fprintf(stderr, "    bits %d G %d mode %d type %d isa %s: %lld wrong, first at %lld\n", sh.bits, G, mode, int(t),
                           isaName(isa), (long long)wrong, (long long)first);
            }
            // bytes past the f16/bf16 output (half of the buffer) stay untouched
            if (t != DType::kF32)
              for (size_t i = size_t(N * K + 1) / 2; i < out.size(); ++i) EXPECT_EQ(out[i], 0x7fc00001u);
          }
      }
}

// The GPTQ GEMM (the block updates, the Hessian SYRK and the factorization's trailing updates
// all run through it) on every level: f32 and f64, plain and transposed A, full and
// lower-triangular B, against f64 / long double on awkward sizes (no dimension a multiple of a
// tile or block), and bit-identical for 1 and 2 pool threads. Bound: each output is
// C + alpha·Σ_p a·b over Kc terms in some fixed order, with FMAs: |err| <= (Kc + 2)·u·(|C| +
// |alpha|·Σ_p |a·b|) (u = 2^-24 for f32, 2^-53 for f64), the classic n·u bound of a sum plus the
// final scaling and addition.
template <class T>
static void checkGptqGemm(Isa isa, GemmMode mode, bool transA, uint64_t seed) {
  const GptqKernels* kk = gptqKernelsFor(isa);
  const int64_t M = 37, Nc = mode == GemmMode::kBLower ? 301 : 45, Kc = 301;
  const T alpha = T(-0.7);
  std::vector<T> A(size_t(M * Kc)), B(size_t(Kc * Nc)), C0(size_t(M * Nc));
  uint64_t s = seed;
  for (auto& v : A) v = T(gauss(s));
  for (int64_t p = 0; p < Kc; ++p)
    for (int64_t j = 0; j < Nc; ++j) B[size_t(p * Nc + j)] = mode == GemmMode::kBLower && p < j ? T(0) : T(gauss(s));
  for (auto& v : C0) v = T(gauss(s));
  const int64_t rsA = transA ? 1 : Kc, csA = transA ? M : 1;  // transA: A stored [Kc, M]
  const double u = sizeof(T) == 4 ? std::ldexp(1.0, -24) : std::ldexp(1.0, -53);
  std::vector<T> C1;
  for (int threads : {1, 2}) {
    threadPool().resize(threads);
    std::vector<T> C = C0;
    gptqGemm<T>(*kk, M, Nc, Kc, alpha, A.data(), rsA, csA, B.data(), Nc, C.data(), Nc, mode);
    if (threads == 1) {
      C1 = C;
      double worst = 0;
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < Nc; ++j) {
          long double want = 0, mag = 0;
          for (int64_t p = 0; p < Kc; ++p) {
            const long double t = (long double)A[size_t(i * rsA + p * csA)] * B[size_t(p * Nc + j)];
            want += t;
            mag += t < 0 ? -t : t;
          }
          const long double c0 = C0[size_t(i * Nc + j)];
          want = c0 + (long double)alpha * want;
          const double bound = double(Kc + 2) * u * double((c0 < 0 ? -c0 : c0) + std::fabs(double(alpha)) * mag);
          worst = std::fmax(worst, std::fabs(double(C[size_t(i * Nc + j)] - want)) / bound);
        }
      if (!(worst <= 1)) {
        EXPECT_TRUE(worst <= 1);
        std::fprintf(stderr, "    %s f%d mode %d transA %d: worst error %.3g of the bound\n", isaName(isa), int(8 * sizeof(T)), int(mode),
                     int(transA), worst);
      }
    } else {
      EXPECT_TRUE(std::memcmp(C.data(), C1.data(), C.size() * sizeof(T)) == 0);
    }
  }
}

TEST(gptq_gemm_tiles_and_axpy_match_f64_on_every_level_and_any_thread_count) {
  const int before = threadPool().threads();
  uint64_t seed = 1;
  for (Isa isa : levels())
    for (GemmMode mode : {GemmMode::kFull, GemmMode::kBLower})
      for (bool transA : {false, true}) {
        checkGptqGemm<float>(isa, mode, transA, ++seed);
        checkGptqGemm<double>(isa, mode, transA, ++seed);
      }
  threadPool().resize(before);
  // axpyNeg: one rounding (FMA) or two (mul, sub) per element: |err| <= 2u·(|y| + |a·x|).
  for (Isa isa : levels())
    for (int64_t n : {1, 15, 16, 17, 333}) {
      uint64_t s = uint64_t(n) * 7;
      std::vector<float> x(size_t(n) + 1), y(size_t(n) + 1);
      for (auto& v : x) v = gauss(s);
      for (auto& v : y) v = gauss(s);
      std::vector<float> y0 = y;
      gptqKernelsFor(isa)->axpyNeg(0.37f, x.data(), y.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double want = double(y0[size_t(i)]) - 0.37 * double(x[size_t(i)]);
        EXPECT_TRUE(std::fabs(y[size_t(i)] - want) <= 2 * std::ldexp(1.0, -24) * (std::fabs(y0[size_t(i)]) + 0.37 * std::fabs(x[size_t(i)])));
      }
      EXPECT_EQ(y[size_t(n)], y0[size_t(n)]);  // nothing written past n
    }
}
