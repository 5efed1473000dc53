// Varlen FlashAttention-2 (csrc/cuda/attention.cuh with cuSeqlensQ / cuSeqlensK) under the
// emulation: packed batches of sequences of different lengths, causal lower-right per sequence,
// LSE in the [Hq, totalQ] layout, rows that see no key -> O = 0 and LSE = +inf; against an f64
// attention per sequence and the CPU flashAttention's varlen form.
#include <algorithm>

#include "attention.cuh"
#include "attention.h"
#include "helpers.h"

using namespace simttest;
using kvant::DType;
using kvant::Isa;
using kvant::Status;
namespace kc = kvant::cuda;

namespace {

std::vector<uint16_t> store16(std::vector<float>& v, DType t) {
  std::vector<uint16_t> s(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    s[i] = t == DType::kF16 ? kvant::f32ToF16(v[i]) : kvant::f32ToBf16(v[i]);
    v[i] = t == DType::kF16 ? kvant::f16ToF32(s[i]) : kvant::bf16ToF32(s[i]);
  }
  return s;
}

struct VarCase {
  std::vector<int> sq, sk;
  int Hq, Hkv, Dqk, Dv;
  bool causal;
};

// The f64 reference and the bound of the FA2 kernel (derived in test/simt/attention_test.cc's
// refRow, one split): scores carry (D+1)·u·scale·Σ|q·k|, exp(s − m) another |s − m|·u + 2u (E is
// the worst over the keys); the running sums (2·nTiles + 8)·u relative; then
// |δO| <= 2·(2E + (4·nTiles + 26)·u)·max_d Σ p|v_d| and |δLSE| <= 2·(E + (2·nTiles + 12)·u + u·|LSE|).
void runVarlen(const VarCase& c, DType type, const kc::Device& dev, Rng& r) {
  const int B = int(c.sq.size());
  std::vector<int32_t> cuQ(B + 1, 0), cuK(B + 1, 0);
  int maxQ = 0, maxK = 0;
  for (int b = 0; b < B; ++b) {
    cuQ[b + 1] = cuQ[b] + c.sq[b], cuK[b + 1] = cuK[b] + c.sk[b];
    maxQ = std::max(maxQ, c.sq[b]), maxK = std::max(maxK, c.sk[b]);
  }
  const int Tq = cuQ[B], Tk = cuK[B];
  std::vector<float> q = randomF32(r, size_t(Tq) * c.Hq * c.Dqk), k = randomF32(r, size_t(Tk) * c.Hkv * c.Dqk), v = randomF32(r, size_t(Tk) * c.Hkv * c.Dv, -2, 2);
  std::vector<uint16_t> q16, k16, v16;
  if (type != DType::kF32) q16 = store16(q, type), k16 = store16(k, type), v16 = store16(v, type);
  const size_t no = size_t(Tq) * c.Hq * c.Dv, nl = size_t(c.Hq) * Tq;
  std::vector<float> out = poisoned(no), lse = poisoned(nl);
  kc::FlashDeviceArgs a{};
  a.q = type == DType::kF32 ? static_cast<const void*>(q.data()) : q16.data();
  a.k = type == DType::kF32 ? static_cast<const void*>(k.data()) : k16.data();
  a.v = type == DType::kF32 ? static_cast<const void*>(v.data()) : v16.data();
  a.type = type, a.out = out.data(), a.lse = lse.data();
  a.B = B, a.Sq = maxQ, a.Sk = maxK, a.Hq = c.Hq, a.Hkv = c.Hkv, a.Dqk = c.Dqk, a.Dv = c.Dv;
  a.scale = float(1 / std::sqrt(double(c.Dqk))), a.causal = c.causal;
  int bad = 0;
  a.cuQ = cuQ.data(), a.cuK = cuK.data(), a.totalQ = Tq, a.totalK = Tk, a.badSeqlens = &bad;
  EXPECT_OK(kc::flashAttention(dev, a));
  EXPECT_EQ(bad, 0);
  std::vector<double> wantO(no), tolO(no), wantL(nl), tolL(nl);
  const int group = c.Hq / c.Hkv;
  const double u = kU32;
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < c.sq[b]; ++i)
      for (int h = 0; h < c.Hq; ++h) {
        const int hk = h / group, vis = c.causal ? std::max(0, std::min(c.sk[b], i + 1 + c.sk[b] - c.sq[b])) : c.sk[b];
        const float* qr = &q[((size_t(cuQ[b]) + i) * c.Hq + h) * c.Dqk];
        const size_t o = ((size_t(cuQ[b]) + i) * c.Hq + h) * c.Dv, li = size_t(h) * Tq + cuQ[b] + i;
        std::vector<double> s(vis), ds(vis);
        double m = -INFINITY;
        for (int j = 0; j < vis; ++j) {
          const float* kr = &k[((size_t(cuK[b]) + j) * c.Hkv + hk) * c.Dqk];
          double dot = 0, mag = 0;
          for (int d = 0; d < c.Dqk; ++d) dot += double(qr[d]) * kr[d], mag += std::fabs(double(qr[d]) * kr[d]);
          s[j] = dot * a.scale, ds[j] = double(c.Dqk + 1) * u * a.scale * mag, m = std::max(m, s[j]);
        }
        double z = 0, E = 0;
        for (int j = 0; j < vis; ++j) z += std::exp(s[j] - m), E = std::max(E, ds[j] + std::fabs(s[j] - m) * u + 2 * u);
        std::vector<double> acc(c.Dv, 0), mag(c.Dv, 0);
        for (int j = 0; j < vis; ++j) {
          const double p = std::exp(s[j] - m) / z;
          for (int d = 0; d < c.Dv; ++d) {
            const double x = v[((size_t(cuK[b]) + j) * c.Hkv + hk) * c.Dv + d];
            acc[d] += p * x, mag[d] += p * std::fabs(x);
          }
        }
        double mm = 0;
        for (double x : mag) mm = std::max(mm, x);
        const double tiles = double((vis + 31) / 32 + 1);
        for (int d = 0; d < c.Dv; ++d) wantO[o + d] = acc[d], tolO[o + d] = vis ? 2 * (2 * E + (4 * tiles + 26) * u) * mm : 0;
        if (vis == 0) {  // sees no key: O = 0 exactly, LSE = +inf
          EXPECT_TRUE(std::isinf(lse[li]) && lse[li] > 0);
          lse[li] = 0, wantL[li] = 0, tolL[li] = 0;
        } else {
          wantL[li] = m + std::log(z), tolL[li] = 2 * (E + (2 * tiles + 12) * u + u * std::fabs(wantL[li]));
        }
      }
  char what[128];
  std::snprintf(what, sizeof what, "varlen %s B%d H%d/%d D%d/%d causal%d", kvant::dtypeName(type), B, c.Hq, c.Hkv, c.Dqk, c.Dv, int(c.causal));
  EXPECT_CLOSE(what, out.data(), wantO.data(), no, [&](size_t i) { return tolO[i]; });
  EXPECT_CLOSE(what, lse.data(), wantL.data(), nl, [&](size_t i) { return tolL[i]; });
  if (type != DType::kF32) return;
  // The CPU flashAttention, varlen form (Sq / Sk = the totals there).
  std::vector<float> cpuO = poisoned(no), cpuL = poisoned(nl);
  kvant::FlashArgs fa{q.data(), k.data(), v.data(), cpuO.data(), cpuL.data(), size_t(B), size_t(Tq), size_t(Tk), size_t(c.Hq), size_t(c.Hkv),
                      size_t(c.Dqk), size_t(c.Dv), a.scale, c.causal, cuQ.data(), cuK.data()};
  for (Isa isa : {Isa::kScalar, Isa::kAvx2}) {
    if (!kvant::isaSupported(isa)) continue;
    std::fill(cpuO.begin(), cpuO.end(), NAN);
    EXPECT_TRUE(kvant::flashAttention(fa, isa) == Status::kOk);
    const std::vector<double> co = toDouble(cpuO);
    EXPECT_CLOSE(isa == Isa::kScalar ? "varlen vs CPU scalar" : "varlen vs CPU avx2", out.data(), co.data(), no, [&](size_t i) { return 2 * tolO[i]; });
    for (size_t i = 0; i < nl; ++i)  // +inf rows agree exactly; the rest within the bound
      if (std::isinf(cpuL[i])) cpuL[i] = 0;
    const std::vector<double> cl = toDouble(cpuL);
    EXPECT_CLOSE("varlen lse vs CPU", lse.data(), cl.data(), nl, [&](size_t i) { return 2 * tolL[i]; });
  }
}

}  // namespace

TEST(cuda_flash_varlen_matches_reference) {
  Rng r(41);
  const auto devs = devices();
  // Sequences of different lengths in one packed batch: an empty query run, an empty key run
  // (its rows see nothing), more queries than keys (the first rows see nothing under causal),
  // a sequence longer than one 16-row block and one 32-key tile.
  runVarlen({{5, 0, 37, 3, 9}, {20, 7, 37, 0, 4}, 4, 2, 64, 64, true}, DType::kF32, devs[0], r);
  runVarlen({{5, 0, 37, 3, 9}, {20, 7, 37, 0, 4}, 4, 2, 64, 64, false}, DType::kF32, devs[1], r);
  runVarlen({{1, 1, 1}, {45, 3, 70}, 6, 2, 128, 128, true}, DType::kF32, devs[2], r);  // varlen decode
  runVarlen({{11, 4}, {11, 30}, 2, 1, 192, 128, true}, DType::kBF16, devs[3], r);      // DeepSeek MHA dims
  runVarlen({{6, 2}, {13, 2}, 2, 2, 64, 64, true}, DType::kF16, devs[0], r);
}

TEST(cuda_flash_varlen_bad_inputs) {
  const auto dev = device(90);
  std::vector<float> q(4 * 2 * 64, 0.5f), k = q, v = q, out = poisoned(4 * 2 * 64), lse = poisoned(8);
  std::vector<int32_t> cuQ{0, 3, 2}, cuK{0, 2, 4};  // sequence 1 has a negative query length
  int bad = 0;
  kc::FlashDeviceArgs a{};
  a.q = q.data(), a.k = k.data(), a.v = v.data(), a.type = DType::kF32, a.out = out.data(), a.lse = lse.data();
  a.B = 2, a.Sq = 3, a.Sk = 2, a.Hq = 2, a.Hkv = 1, a.Dqk = 64, a.Dv = 64, a.scale = 0.125f, a.causal = true;
  a.cuQ = cuQ.data(), a.cuK = cuK.data(), a.totalQ = 4, a.totalK = 4;
  EXPECT_STATUS(kc::flashAttention(dev, a), Status::kShape);  // no flag to report through
  a.badSeqlens = &bad, a.keysPerSplit = 32;
  EXPECT_STATUS(kc::flashAttention(dev, a), Status::kShape);  // varlen has no split-KV
  a.keysPerSplit = 0, a.cuK = nullptr;
  EXPECT_STATUS(kc::flashAttention(dev, a), Status::kShape);  // cuQ without cuK
  a.cuK = cuK.data();
  EXPECT_OK(kc::flashAttention(dev, a));
  EXPECT_EQ(bad, 1);
  for (int i = 0; i < 3 * 2 * 64; ++i) EXPECT_TRUE(!std::isnan(out[i]));  // sequence 0 was still computed
  cuQ = {0, 3, 5}, bad = 0;                                                // past totalQ
  EXPECT_OK(kc::flashAttention(dev, a));
  EXPECT_EQ(bad, 1);
  cuQ = {0, 3, 4}, cuK = {0, 3, 4}, bad = 0;  // a key run longer than Sk = 2
  EXPECT_OK(kc::flashAttention(dev, a));
  EXPECT_EQ(bad, 1);
}
