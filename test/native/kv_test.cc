// KV cache codecs, row I/O and paged decode under ASan/UBSan: every ISA level against the
// scalar reference and f64, plus the range checks that keep bad tables inside the pool.
#include <cmath>
#include <vector>

#include "attention.h"
#include "check.h"
#include "kv_cache.h"
#include "random.h"

using namespace kvant;

static std::vector<float> randn(size_t n, uint64_t seed) {
  std::vector<float> v(n);
  fillRandom(v.data(), DType::kF32, n, seed, RandomDist::kNormal, 0, 1);
  for (size_t i = 0; i < n; i += 13) v[i] *= 9;  // outliers
  return v;
}

TEST(kv_codecs_agree_across_isa_levels_and_stay_within_half_a_step) {
  const KvKernels* ref = kvKernelsFor(Isa::kScalar);
  for (Isa isa : {Isa::kScalar, Isa::kAvx2}) {
    const KvKernels* k = kvKernelsFor(isa);
    if (!k) continue;
    for (KvType t : {KvType::kF16, KvType::kBf16, KvType::kQ8, KvType::kQ6, KvType::kQ4})
      for (bool had : {false, true}) {
        const size_t n = 32 * 7;
        auto x = randn(n, 3 + int(t));
        const size_t bytes = kvSegmentBytes(t, n);
        std::vector<uint8_t> a(bytes + 1, 0xAB), b(bytes + 1, 0xAB);
        EXPECT_TRUE(ref->encode(t, had && kvQuantized(t), x.data(), n, a.data()));
        EXPECT_TRUE(k->encode(t, had && kvQuantized(t), x.data(), n, b.data()));
        EXPECT_TRUE(a == b);
        EXPECT_EQ(int(b[bytes]), 0xAB);  // nothing written past the segment
        std::vector<float> ya(n, NAN), yb(n, NAN);
        ref->decode(t, a.data(), n, ya.data());
        k->decode(t, a.data(), n, yb.data());
        for (size_t i = 0; i < n; ++i) EXPECT_TRUE(ya[i] == yb[i]);
        // Fused forms vs the decoded values in f64: dot over n terms within γ_n of Σ|q·x|,
        // axpy exact up to one rounding per element.
        auto qv = randn(n, 77);
        double want = 0, mag = 0;
        for (size_t i = 0; i < n; ++i) want += double(qv[i]) * ya[i], mag += std::fabs(double(qv[i]) * ya[i]);
        EXPECT_TRUE(std::fabs(k->dot(t, a.data(), qv.data(), n) - want) <= (n + 2) * 6e-8 * mag + 1e-30);
        std::vector<float> acc = qv;
        k->axpy(t, a.data(), 0.375f, acc.data(), n);
        for (size_t i = 0; i < n; ++i) EXPECT_TRUE(std::fabs(acc[i] - (qv[i] + 0.375 * ya[i])) <= 1.2e-7 * (std::fabs(qv[i]) + std::fabs(0.375 * ya[i])));
        if (!kvQuantized(t)) continue;
        std::vector<float> y = x;
        if (had) ref->hadamard32(y.data(), n);
        for (size_t g = 0; g < n; g += 32) {
          double amax = 0;
          for (size_t i = g; i < g + 32; ++i) amax = std::fmax(amax, std::fabs(double(y[i])));
          const double half = amax / kvQmax(t) * (1 + 1.0 / 2048) / 2 * (1 + 1e-6);  // f16 scale rounding
          for (size_t i = g; i < g + 32; ++i) EXPECT_TRUE(std::fabs(double(ya[i]) - y[i]) <= half);
        }
      }
  }
}

TEST(kv_rows_and_paged_decode_match_f64_and_reject_bad_tables) {
  const size_t L = 64, R = 16, D = L + R, pageSize = 16, layers = 2, H = 3;
  const size_t rowBytes = kvSegmentBytes(KvType::kQ6, L) + 2 * R;
  const size_t pageBytes = layers * pageSize * rowBytes, numPages = 5;
  std::vector<uint8_t> pool(numPages * pageBytes);
  KvPages p{pool.data(), numPages, pageSize, pageBytes, pageSize * rowBytes, rowBytes};  // layer 1
  const KvSegment segs[2] = {{KvType::kQ6, L, true, 0, 0}, {KvType::kBf16, R, false, kvSegmentBytes(KvType::kQ6, L), L}};
  const size_t T = 40;
  auto x = randn(T * D, 9);
  std::vector<int32_t> slots(T);
  const int32_t table[3] = {4, 0, 2};
  for (size_t t = 0; t < T; ++t) slots[t] = table[t / pageSize] * int32_t(pageSize) + int32_t(t % pageSize);
  EXPECT_TRUE(kvWriteRows(p, segs, 2, x.data(), D, T, slots.data()) == Status::kOk);
  std::vector<float> rows(T * D, NAN);
  EXPECT_TRUE(kvReadRows(p, segs, 2, rows.data(), D, T, slots.data()) == Status::kOk);
  auto q = randn(H * D, 10);
  std::vector<float> out(H * L, NAN), lse(H, NAN);
  PagedDecodeArgs a{};
  a.q = q.data(), a.out = out.data(), a.lse = lse.data(), a.B = 1, a.Hq = H, a.Hkv = 1;
  a.k0 = segs[0], a.k1 = segs[1], a.v = segs[0], a.headStride = 0, a.vFromKey = true, a.scale = 0.2f;
  a.pages = p, a.maxPages = 3, a.pageTable = table;
  const int32_t len = int32_t(T);
  a.seqLens = &len;
  for (Isa isa : {Isa::kScalar, Isa::kAvx2}) {
    if (!isaSupported(isa)) continue;
    EXPECT_TRUE(pagedDecode(a, isa) == Status::kOk);
    for (size_t h = 0; h < H; ++h) {
      std::vector<double> s(T);
      double m = -INFINITY, z = 0;
      for (size_t t = 0; t < T; ++t) {
        double d = 0;
        for (size_t i = 0; i < D; ++i) d += double(q[h * D + i]) * rows[t * D + i];
        s[t] = d * 0.2;
        m = std::fmax(m, s[t]);
      }
      for (size_t t = 0; t < T; ++t) z += std::exp(s[t] - m);
      EXPECT_NEAR_REL(lse[h], m + std::log(z), 1e-5);
      for (size_t i = 0; i < L; ++i) {
        double o = 0;
        for (size_t t = 0; t < T; ++t) o += std::exp(s[t] - m) / z * rows[t * D + i];
        // Worst-case f32 error: scores over 80 terms and sums over 40 rows, (80 + 40 + 8)·2^-24
        // relative, times max|c| (<= 9·5 = 45 with the outliers) and the softmax factor 2: 7e-4.
        EXPECT_TRUE(std::fabs(out[h * L + i] - o) <= 1e-3);
      }
    }
  }
  // Bad tables and shapes never touch memory outside the pool.
  const int32_t badTable[3] = {4, 7, 2};
  a.pageTable = badTable;
  EXPECT_TRUE(pagedDecode(a) == Status::kRange);
  a.pageTable = table;
  const int32_t tooLong = 3 * int32_t(pageSize) + 1;
  a.seqLens = &tooLong;
  EXPECT_TRUE(pagedDecode(a) == Status::kRange);
  a.seqLens = &len;
  a.Hkv = 2;
  EXPECT_TRUE(pagedDecode(a) == Status::kShape);
  a.Hkv = 1;
  slots[5] = int32_t(numPages * pageSize);
  EXPECT_TRUE(kvWriteRows(p, segs, 2, x.data(), D, T, slots.data()) == Status::kRange);
  EXPECT_TRUE(kvReadRows(p, segs, 2, rows.data(), D, T, slots.data()) == Status::kRange);
  KvPages tiny = p;  // the last slot's rope segment would end one byte past the page
  tiny.pageBytes = pageBytes - 1;
  EXPECT_TRUE(kvWriteRows(tiny, segs, 2, x.data(), D, 1, slots.data()) == Status::kShape);
}
