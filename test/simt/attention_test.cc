// FlashAttention-2 forward, split-KV decode and MLA decode (csrc/cuda/attention.cuh) under the
// emulation, against the CPU reference (csrc/cpu/attention) and an f64 computation.
#include <algorithm>

#include "attention.cuh"
#include "attention.h"
#include "helpers.h"

using namespace simttest;
using kvant::DType;
using kvant::Isa;
using kvant::Status;

namespace {

// Round f32 values to the storage type and back (the f64 reference sees the stored values).
std::vector<uint16_t> store16(std::vector<float>& v, DType t) {
  std::vector<uint16_t> s(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    s[i] = t == DType::kF16 ? kvant::f32ToF16(v[i]) : kvant::f32ToBf16(v[i]);
    v[i] = t == DType::kF16 ? kvant::f16ToF32(s[i]) : kvant::bf16ToF32(s[i]);
  }
  return s;
}

// Per output row: the f64 result and the error bound of an f32 online-softmax evaluation.
//   Scores: an f32 dot of D terms (one rounding per FMA) then the scale: |δs| <= (D+1) u scale Σ|q k|.
//   exp(s - m): the subtraction adds |s - m| u, exp ~2u. Call E the worst of these over the keys:
//   every p_j carries relative error <= E. The running sum adds one rounding per tile and 5 for
//   the warp tree, the rescales one per tile: (2 nTiles + 8) u relative on l and on each output
//   accumulator (relative to Σ p |v|). Then O = acc / l: |δO| <= (2E + (4 nTiles + 18) u) Σ p|v| / l,
//   and |δLSE| <= E + (2 nTiles + 8) u + u |LSE|. Both doubled for the first-order approximation.
struct RowRef {
  std::vector<double> o;
  double lse, tolO, tolLse;
};
RowRef refRow(const float* q, size_t D, const std::vector<const float*>& keys, const std::vector<const float*>& vals, size_t Dv, double scale,
              size_t splits = 1) {
  RowRef r;
  r.o.assign(Dv, 0);
  const size_t n = keys.size();
  if (n == 0) {
    r.lse = INFINITY;
    r.tolO = r.tolLse = 0;
    return r;
  }
  std::vector<double> s(n), ds(n);
  double m = -INFINITY;
  for (size_t j = 0; j < n; ++j) {
    double dot = 0, mag = 0;
    for (size_t d = 0; d < D; ++d) {
      dot += double(q[d]) * keys[j][d];
      mag += std::fabs(double(q[d]) * keys[j][d]);
    }
    s[j] = dot * scale;
    ds[j] = double(D + 1) * kU32 * scale * mag;
    m = std::max(m, s[j]);
  }
  double z = 0, E = 0;
  for (size_t j = 0; j < n; ++j) {
    z += std::exp(s[j] - m);
    E = std::max(E, ds[j] + std::fabs(s[j] - m) * kU32 + 2 * kU32);
  }
  std::vector<double> mag(Dv, 0);
  for (size_t j = 0; j < n; ++j) {
    const double p = std::exp(s[j] - m) / z;
    for (size_t d = 0; d < Dv; ++d) {
      r.o[d] += p * vals[j][d];
      mag[d] += p * std::fabs(vals[j][d]);
    }
  }
  const double tiles = double((n + 31) / 32 + splits);
  double mm = 0;
  for (double x : mag) mm = std::max(mm, x);
  r.tolO = 2 * (2 * E + (4 * tiles + 18 + 8 * double(splits)) * kU32) * mm + 1e-30;
  r.lse = m + std::log(z);
  r.tolLse = 2 * (E + (2 * tiles + 8 + 4 * double(splits)) * kU32 + kU32 * std::fabs(r.lse));
  return r;
}

struct Case {
  int B, Sq, Sk, Hq, Hkv, Dqk, Dv;
  bool causal;
  int keysPerSplit;
};

void runFlash(const Case& c, DType type, const kvant::cuda::Device& dev, Rng& r) {
  const size_t nq = size_t(c.B) * c.Sq * c.Hq * c.Dqk, nk = size_t(c.B) * c.Sk * c.Hkv * c.Dqk, nv = size_t(c.B) * c.Sk * c.Hkv * c.Dv;
  std::vector<float> q = randomF32(r, nq, -1, 1), k = randomF32(r, nk, -1, 1), v = randomF32(r, nv, -2, 2);
  std::vector<uint16_t> q16, k16, v16;
  if (type != DType::kF32) {
    q16 = store16(q, type);
    k16 = store16(k, type);
    v16 = store16(v, type);
  }
  const size_t no = size_t(c.B) * c.Sq * c.Hq * c.Dv, nl = size_t(c.B) * c.Hq * c.Sq;
  std::vector<float> out = poisoned(no), lse = poisoned(nl);
  kvant::cuda::FlashDeviceArgs a{};
  a.q = type == DType::kF32 ? static_cast<const void*>(q.data()) : q16.data();
  a.k = type == DType::kF32 ? static_cast<const void*>(k.data()) : k16.data();
  a.v = type == DType::kF32 ? static_cast<const void*>(v.data()) : v16.data();
  a.type = type;
  a.out = out.data();
  a.lse = lse.data();
  a.B = c.B, a.Sq = c.Sq, a.Sk = c.Sk, a.Hq = c.Hq, a.Hkv = c.Hkv, a.Dqk = c.Dqk, a.Dv = c.Dv;
  a.scale = float(1 / std::sqrt(double(c.Dqk)));
  a.causal = c.causal;
  a.keysPerSplit = c.keysPerSplit;
  std::vector<float> scratch = poisoned(kvant::cuda::flashScratchFloats(a) + 1);
  a.scratch = scratch.data();
  EXPECT_OK(kvant::cuda::flashAttention(dev, a));
  // f64 reference and bounds, row by row.
  std::vector<double> wantO(no), tolO(no), wantL(nl), tolL(nl);
  const int group = c.Hq / c.Hkv;
  const size_t splits = size_t(kvant::cuda::flashSplits(a));
  for (int b = 0; b < c.B; ++b)
    for (int i = 0; i < c.Sq; ++i)
      for (int h = 0; h < c.Hq; ++h) {
        const int hk = h / group;
        const int visible = c.causal ? std::max(0, std::min(c.Sk, i + 1 + c.Sk - c.Sq)) : c.Sk;
        std::vector<const float*> keys, vals;
        for (int j = 0; j < visible; ++j) {
          keys.push_back(&k[((size_t(b) * c.Sk + j) * c.Hkv + hk) * c.Dqk]);
          vals.push_back(&v[((size_t(b) * c.Sk + j) * c.Hkv + hk) * c.Dv]);
        }
        const RowRef rr = refRow(&q[((size_t(b) * c.Sq + i) * c.Hq + h) * c.Dqk], c.Dqk, keys, vals, c.Dv, a.scale, splits);
        const size_t o = ((size_t(b) * c.Sq + i) * c.Hq + h) * c.Dv, li = (size_t(b) * c.Hq + h) * c.Sq + i;
        for (int d = 0; d < c.Dv; ++d) {
          wantO[o + d] = rr.o[d];
          tolO[o + d] = rr.tolO;
        }
        wantL[li] = rr.lse;
        tolL[li] = rr.tolLse;
      }
  char what[160];
  std::snprintf(what, sizeof what, "flash %s B%d Sq%d Sk%d H%d/%d D%d/%d causal%d split%d", kvant::dtypeName(type), c.B, c.Sq, c.Sk, c.Hq, c.Hkv,
                c.Dqk, c.Dv, int(c.causal), c.keysPerSplit);
  EXPECT_CLOSE(what, out.data(), wantO.data(), no, [&](size_t i) { return tolO[i]; });
  // LSE: +inf rows must be exactly +inf (|inf - inf| is NaN, so compare those separately).
  for (size_t i = 0; i < nl; ++i)
    if (std::isinf(wantL[i])) {
      EXPECT_TRUE(std::isinf(lse[i]) && lse[i] > 0);
      wantL[i] = 0;
      lse[i] = 0;
    }
  EXPECT_CLOSE(what, lse.data(), wantL.data(), nl, [&](size_t i) { return tolL[i]; });
  // Against the CPU reference (f32 inputs only; its own error obeys the same kind of bound).
  if (type == DType::kF32 && c.keysPerSplit == 0) {
    std::vector<float> cpuO = poisoned(no), cpuL = poisoned(nl);
    kvant::FlashArgs fa{q.data(), k.data(), v.data(), cpuO.data(), cpuL.data(), size_t(c.B), size_t(c.Sq), size_t(c.Sk), size_t(c.Hq),
                        size_t(c.Hkv), size_t(c.Dqk), size_t(c.Dv), a.scale, c.causal, nullptr, nullptr};
    for (Isa isa : {Isa::kScalar, Isa::kAvx2}) {
      if (!kvant::isaSupported(isa)) continue;
      std::fill(cpuO.begin(), cpuO.end(), NAN);
      EXPECT_TRUE(kvant::flashAttention(fa, isa) == Status::kOk);
      const std::vector<double> co = toDouble(cpuO);
      EXPECT_CLOSE(isa == Isa::kScalar ? "flash vs CPU scalar" : "flash vs CPU avx2", out.data(), co.data(), no, [&](size_t i) { return 2 * tolO[i]; });
    }
  }
  // Split-KV: a different block order gives the same bits (the merge runs in split order).
  if (c.keysPerSplit) {
    std::vector<float> out2 = poisoned(no);
    a.out = out2.data();
    const kvant::simt::Schedule keep = kvant::simt::schedule();
    kvant::simt::setSchedule({kvant::simt::Order::kSeeded, keep.seed + 77});
    EXPECT_OK(kvant::cuda::flashAttention(dev, a));
    kvant::simt::setSchedule(keep);
    out[0] = out[0];
    EXPECT_TRUE(std::memcmp(out2.data(), out.data(), no * 4) == 0 || std::isnan(out[0]));
  }
}

}  // namespace

TEST(cuda_flash_forward_matches_reference) {
  Rng r(21);
  const auto devs = devices();
  const Case cases[] = {
      {2, 7, 45, 4, 4, 64, 64, false, 0},    {2, 37, 37, 6, 2, 64, 64, true, 0},  // causal square, GQA 3
      {1, 5, 70, 8, 1, 128, 128, true, 0},   // lower-right: 5 new queries after 65 cached keys, MQA
      {1, 40, 9, 2, 2, 64, 64, true, 0},     // Sq > Sk: the first 31 rows see no key (O = 0, LSE = +inf)
      {1, 19, 33, 2, 1, 192, 128, true, 0},  // DeepSeek MHA-mode dims (Dqk != Dv)
      {1, 3, 20, 2, 2, 256, 256, false, 0},  {2, 1, 0, 2, 1, 64, 64, false, 0},  // Sk = 0
  };
  size_t i = 0;
  for (const Case& c : cases) runFlash(c, DType::kF32, devs[i++ % devs.size()], r);
  runFlash({1, 9, 50, 4, 2, 128, 128, true, 0}, DType::kBF16, devs[1], r);
  runFlash({1, 9, 50, 4, 2, 64, 64, false, 0}, DType::kF16, devs[2], r);
  runFlash({1, 6, 30, 2, 1, 192, 128, true, 0}, DType::kBF16, devs[3], r);
}

TEST(cuda_flash_split_kv_decode) {
  Rng r(22);
  const auto dev = device(80);
  runFlash({2, 1, 150, 8, 2, 128, 128, true, 32}, DType::kF32, dev, r);   // decode, 5 splits, GQA rows in one block
  runFlash({1, 3, 100, 4, 4, 64, 64, true, 64}, DType::kBF16, dev, r);    // chunked prefill: later rows see more splits
  runFlash({1, 40, 9, 2, 2, 64, 64, true, 32}, DType::kF32, dev, r);      // one split (Sk <= keysPerSplit)
  runFlash({1, 4, 70, 2, 1, 64, 64, true, 32}, DType::kF16, dev, r);      // causal rows whose last split is empty
}

TEST(cuda_flash_bad_inputs) {
  const auto dev = device(86);
  kvant::cuda::FlashDeviceArgs a{};
  a.type = DType::kF32;
  a.B = 1, a.Sq = 1, a.Sk = 1, a.Hq = 3, a.Hkv = 2, a.Dqk = 64, a.Dv = 64;
  EXPECT_STATUS(kvant::cuda::flashAttention(dev, a), Status::kShape);  // Hq % Hkv
  a.Hq = 2, a.Dqk = 96;
  EXPECT_STATUS(kvant::cuda::flashAttention(dev, a), Status::kShape);  // head dims not instantiated
  a.Dqk = 64, a.keysPerSplit = 48;
  EXPECT_STATUS(kvant::cuda::flashAttention(dev, a), Status::kShape);  // split not a multiple of 32
  a.keysPerSplit = 32, a.Sk = 100;
  EXPECT_STATUS(kvant::cuda::flashAttention(dev, a), Status::kShape);  // splits need scratch
  a.keysPerSplit = 0, a.type = DType::kI8;
  EXPECT_STATUS(kvant::cuda::flashAttention(dev, a), Status::kDtype);
  // The largest tile (256/256 f32: 80 KB) needs the opt-in and fits every architecture's maximum.
  const unsigned long long before = kvant::cuda::smemOptInCount();
  Rng r(23);
  runFlash({1, 2, 5, 1, 1, 256, 256, false, 0}, DType::kF32, device(86), r);
  EXPECT_TRUE(kvant::cuda::smemOptInCount() > before);
}

namespace {

void runMla(int L, int R, int H, const std::vector<int>& lens, int pageSize, int keysPerSplit, Rng& r) {
  const int B = int(lens.size()), D = L + R;
  int maxLen = 0;
  for (int x : lens) maxLen = std::max(maxLen, x);
  const int maxPages = std::max(1, (maxLen + pageSize - 1) / pageSize) + 1;
  const int numPages = B * maxPages + 3;
  std::vector<float> poolF = randomF32(r, size_t(numPages) * pageSize * D, -1, 1);
  std::vector<uint16_t> pool = store16(poolF, DType::kBF16);
  // Pages in a scrambled order so the page table matters.
  std::vector<int32_t> table(size_t(B) * maxPages, -1), perm(numPages);
  for (int i = 0; i < numPages; ++i) perm[i] = i;
  for (int i = numPages - 1; i > 0; --i) std::swap(perm[i], perm[r.below(i + 1)]);
  int next = 0;
  for (int b = 0; b < B; ++b)
    for (int p = 0; p < (lens[b] + pageSize - 1) / pageSize; ++p) table[size_t(b) * maxPages + p] = perm[next++];
  std::vector<float> q = randomF32(r, size_t(B) * H * D, -1, 1), out = poisoned(size_t(B) * H * L), lse = poisoned(size_t(B) * H);
  kvant::cuda::MlaDeviceArgs a{};
  a.q = q.data(), a.out = out.data(), a.lse = lse.data();
  a.B = B, a.H = H, a.L = L, a.R = R;
  a.scale = float(1 / std::sqrt(double(D)));
  a.pool = pool.data(), a.numPages = numPages, a.pageSize = pageSize, a.maxPages = maxPages;
  a.pageTable = table.data(), a.seqLens = lens.data(), a.maxSeqLen = maxLen, a.keysPerSplit = keysPerSplit;
  std::vector<float> scratch = poisoned(kvant::cuda::mlaScratchFloats(a));
  std::vector<int> spb(B, -1);
  int bad = 0;
  a.scratch = scratch.data(), a.splitsPerBatch = spb.data(), a.badPage = &bad;
  EXPECT_OK(kvant::cuda::mlaDecode(device(86), a));
  EXPECT_EQ(bad, 0);
  std::vector<double> want(out.size()), tol(out.size()), wantL(lse.size()), tolL(lse.size());
  for (int b = 0; b < B; ++b)
    for (int h = 0; h < H; ++h) {
      std::vector<const float*> rows;
      for (int t = 0; t < lens[b]; ++t) rows.push_back(&poolF[(size_t(table[size_t(b) * maxPages + t / pageSize]) * pageSize + t % pageSize) * D]);
      const size_t splits = size_t(std::max(1, (lens[b] + keysPerSplit - 1) / keysPerSplit));
      const RowRef rr = refRow(&q[(size_t(b) * H + h) * D], D, rows, rows, L, a.scale, splits);
      for (int d = 0; d < L; ++d) {
        want[(size_t(b) * H + h) * L + d] = rr.o[d];
        tol[(size_t(b) * H + h) * L + d] = rr.tolO;
      }
      wantL[size_t(b) * H + h] = std::isinf(rr.lse) ? 0 : rr.lse;
      tolL[size_t(b) * H + h] = rr.tolLse;
      if (std::isinf(rr.lse)) {
        EXPECT_TRUE(std::isinf(lse[size_t(b) * H + h]) && lse[size_t(b) * H + h] > 0);
        lse[size_t(b) * H + h] = 0;
      }
    }
  EXPECT_CLOSE("mla vs f64", out.data(), want.data(), out.size(), [&](size_t i) { return tol[i]; });
  EXPECT_CLOSE("mla lse vs f64", lse.data(), wantL.data(), lse.size(), [&](size_t i) { return tolL[i]; });
  // The CPU reference (splits of 512 keys, f32 throughout).
  std::vector<float> cpuO = poisoned(out.size()), cpuL = poisoned(lse.size());
  kvant::MlaDecodeArgs ca{q.data(), cpuO.data(), cpuL.data(), size_t(B), size_t(H), size_t(L), size_t(R), a.scale, pool.data(),
                          size_t(numPages), size_t(pageSize), size_t(maxPages), table.data(), lens.data()};
  for (Isa isa : {Isa::kScalar, Isa::kAvx2}) {
    if (!kvant::isaSupported(isa)) continue;
    std::fill(cpuO.begin(), cpuO.end(), NAN);
    EXPECT_TRUE(kvant::mlaDecode(ca, isa) == Status::kOk);
    const std::vector<double> co = toDouble(cpuO);
    EXPECT_CLOSE(isa == Isa::kScalar ? "mla vs CPU scalar" : "mla vs CPU avx2", out.data(), co.data(), out.size(), [&](size_t i) { return 2 * tol[i]; });
  }
}

}  // namespace

TEST(cuda_mla_decode_matches_reference) {
  Rng r(24);
  runMla(64, 32, 5, {45, 0, 100, 1}, 16, 32, r);  // empty sequence, partial pages, 4 splits, heads < 16
  runMla(64, 32, 20, {70}, 64, 64, r);             // two head blocks
  runMla(512, 64, 16, {40, 9}, 64, 32, r);         // DeepSeek-V2 latent shape (72 KB of shared memory)
}

TEST(cuda_mla_bad_inputs) {
  kvant::cuda::MlaDeviceArgs a{};
  a.B = 1, a.H = 4, a.L = 64, a.R = 32, a.pageSize = 16, a.maxPages = 2, a.keysPerSplit = 32;
  EXPECT_STATUS(kvant::cuda::mlaDecode(device(80), a), Status::kShape);  // no scratch
  std::vector<float> scratch(4096);
  std::vector<int> spb(1);
  int bad = 0;
  a.scratch = scratch.data(), a.splitsPerBatch = spb.data(), a.badPage = &bad;
  a.maxSeqLen = 33;  // more than 2 pages of 16
  EXPECT_STATUS(kvant::cuda::mlaDecode(device(80), a), Status::kRange);
  a.maxSeqLen = 20, a.L = 128;
  std::vector<int32_t> lens{20}, table{0, 5};
  a.seqLens = lens.data(), a.pageTable = table.data();
  EXPECT_STATUS(kvant::cuda::mlaDecode(device(80), a), Status::kShape);  // latent shape not instantiated
  // A page index outside the pool is flagged, not read.
  a.L = 64;
  std::vector<float> q(4 * 96, 0.5f), out(4 * 64), lse(4);
  std::vector<uint16_t> pool(2 * 16 * 96, 0);
  a.q = q.data(), a.out = out.data(), a.lse = lse.data(), a.pool = pool.data(), a.numPages = 2;
  EXPECT_OK(kvant::cuda::mlaDecode(device(80), a));
  EXPECT_EQ(bad, 1);
}
