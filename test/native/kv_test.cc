// KV cache codecs, row I/O and paged decode under ASan/UBSan: every ISA level against the
// scalar reference and f64, plus the range checks that keep bad tables inside the pool.
#include <cmath>
#include <cstring>
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

TEST(kv_integer_scores_and_row_axpy_match_f64) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2}) {
    const KvKernels* k = kvKernelsFor(isa);
    if (!k) continue;
    for (KvType t : {KvType::kQ8, KvType::kQ6, KvType::kQ4}) {
      const size_t n = 32 * 5, rows = 11;
      std::vector<uint8_t> enc(rows * kvSegmentBytes(t, n));
      for (size_t r = 0; r < rows; ++r) {
        auto x = randn(n, 40 + r);
        EXPECT_TRUE(k->encode(t, true, x.data(), n, enc.data() + r * kvSegmentBytes(t, n)));
      }
      auto q = randn(n, 7);
      std::vector<int8_t> q8(n);
      std::vector<float> qd(n / 32);
      kvQuantizeQuery(q.data(), n, q8.data(), qd.data());
      // |q - qd·q8| <= qd/2, plus q·(127/amax) vs q/qd (<= 127·3 ulps of a step) and the
      // test's own rounding of qd·q8 (<= 127 ulps of qd): far below 1e-4 of a step.
      for (size_t i = 0; i < n; ++i) EXPECT_TRUE(std::fabs(q[i] - qd[i / 32] * q8[i]) <= qd[i / 32] * (0.5f + 1e-4f));
      for (size_t r = 0; r < rows && kvIntScore(t); ++r) {  // integer scores: q8 / q4 keys
        const uint8_t* src = enc.data() + r * kvSegmentBytes(t, n);
        std::vector<float> y(n);
        k->decode(t, src, n, y.data());
        // f64 of the same products: y_i = d_g·code_i exactly, so Σ qd_g·q8_i·y_i is the exact
        // value; the kernel's integer sums are exact and its float part (per group: qd·d, the
        // product with the sum, one addition; then <= 8 lane additions) stays within
        // γ_(3·n/32+10) of Σ|qd·q8·y|.
        double want = 0, mag = 0;
        for (size_t i = 0; i < n; ++i) {
          want += double(qd[i / 32]) * q8[i] * y[i];
          mag += std::fabs(double(qd[i / 32]) * q8[i] * y[i]);
        }
        const double got = k->dotI8(t, src, q8.data(), qd.data(), n);
        EXPECT_TRUE(std::fabs(got - want) <= (3 * n / 32 + 10) * 6e-8 * mag + 1e-30);
      }
      // axpyRows vs f64 of acc + Σ_r p_r·y_r (y = the decoded rows). The scale is folded into
      // the row weight: per row and element fl(p·d) (one rounding) and the accumulation (one
      // rounding with an FMA, two without), so within γ_(2·rows+1) of |acc| + Σ_r |p_r·y_r|.
      const size_t nn = 32 * 5;
      std::vector<const uint8_t*> rp(rows);
      std::vector<float> p(rows), y(rows * nn);
      for (size_t r = 0; r < rows; ++r) {
        rp[r] = enc.data() + r * kvSegmentBytes(t, n), p[r] = 0.1f * float(r) - 0.3f;
        k->decode(t, rp[r], nn, y.data() + r * nn);
      }
      auto a = randn(nn, 9), a0 = a;
      k->axpyRows(t, rp.data(), 0, rows, p.data(), a.data(), nn);
      for (size_t i = 0; i < nn; ++i) {
        double want = a0[i], mag = std::fabs(a0[i]);
        for (size_t r = 0; r < rows; ++r) want += double(p[r]) * y[r * nn + i], mag += std::fabs(double(p[r]) * y[r * nn + i]);
        EXPECT_TRUE(std::fabs(a[i] - want) <= (2 * rows + 1) * 6e-8 * mag);
      }
    }
  }
}

// Row-batched value accumulation (axpyRows) for every type, 11 rows at an unaligned offset,
// 160 columns (two 64-column register slices and a 32-column tail on AVX2): bit-identical to
// 11 axpy calls in row order at the same ISA level (the documented contract: the same
// arithmetic per element; the bf16 slices work on deinterleaved columns and must still
// match), and within γ_(2·rows+1) of f64 (as the quantized bound above: per row and element
// at most one rounding of p·d and one of the accumulation).
TEST(kv_row_axpy_equals_row_by_row_axpy_every_type) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2}) {
    const KvKernels* k = kvKernelsFor(isa);
    if (!k) continue;
    for (KvType t : {KvType::kF16, KvType::kBf16, KvType::kQ8, KvType::kQ6, KvType::kQ4}) {
      const size_t n = 160, rows = 11, rb = kvSegmentBytes(t, n);
      std::vector<uint8_t> enc(rows * rb + 7);
      std::vector<const uint8_t*> rp(rows);
      std::vector<float> p(rows), y(rows * n);
      for (size_t r = 0; r < rows; ++r) {
        auto x = randn(n, 80 + r);
        EXPECT_TRUE(k->encode(t, kvQuantized(t), x.data(), n, enc.data() + 7 + (rows - 1 - r) * rb));
        rp[r] = enc.data() + (rows - 1 - r) * rb;  // rows out of order in memory, offset 7
        p[r] = 0.37f * float(r) - 1.1f;
        k->decode(t, rp[r] + 7, n, y.data() + r * n);
      }
      auto a = randn(n, 12), a0 = a, b = a;
      k->axpyRows(t, rp.data(), 7, rows, p.data(), a.data(), n);
      for (size_t r = 0; r < rows; ++r) k->axpy(t, rp[r] + 7, p[r], b.data(), n);
      if (!kvQuantized(t)) EXPECT_TRUE(std::memcmp(a.data(), b.data(), n * sizeof(float)) == 0);  // quantized: axpy scales codes, axpyRows folds d into p
      for (size_t i = 0; i < n; ++i) {
        double want = a0[i], mag = std::fabs(a0[i]);
        for (size_t r = 0; r < rows; ++r) want += double(p[r]) * y[r * n + i], mag += std::fabs(double(p[r]) * y[r * n + i]);
        EXPECT_TRUE(std::fabs(a[i] - want) <= (2 * rows + 1) * 6e-8 * mag);
      }
    }
  }
}

// Row-batched scores (dotRows) vs f64 over the decoded rows, for every type, 11 rows (one
// full batch of 8 and a padded tail of 3): float path within γ_(n+2) of Σ|q·y| (any order of
// the n products' sums, as dot's bound), integer path within dotI8's bound; nothing written
// past out[nrows - 1]. Head dims of 1, 5, 9 and 16 groups: q4's pair path with no pair, with
// pairs and an odd last group, at its per-row scale vector's limit (4 pairs) and beyond it.
TEST(kv_row_batched_scores_match_f64) {
  for (Isa isa : {Isa::kScalar, Isa::kAvx2}) {
    const KvKernels* k = kvKernelsFor(isa);
    if (!k) continue;
    for (KvType t : {KvType::kF16, KvType::kBf16, KvType::kQ8, KvType::kQ6, KvType::kQ4})
    for (size_t n : {size_t(32), size_t(160), size_t(288), size_t(512)}) {
      const size_t rows = 11, rb = kvSegmentBytes(t, n);
      std::vector<uint8_t> enc(rows * rb + 7);  // + 7: row offset 7 (unaligned)
      std::vector<const uint8_t*> rp(rows);
      std::vector<float> y(rows * n);
      for (size_t r = 0; r < rows; ++r) {
        auto x = randn(n, 60 + r);
        EXPECT_TRUE(k->encode(t, kvQuantized(t), x.data(), n, enc.data() + 7 + (rows - 1 - r) * rb));
        rp[r] = enc.data() + (rows - 1 - r) * rb;  // rows out of order in memory
        k->decode(t, rp[r] + 7, n, y.data() + r * n);
      }
      auto q = randn(n, 8);
      std::vector<int8_t> q8(n);
      std::vector<float> qd(n / 32);
      kvQuantizeQuery(q.data(), n, q8.data(), qd.data());
      for (bool integer : {false, true}) {
        if (integer && !kvIntScore(t)) continue;
        std::vector<float> out(rows + 1, NAN);
        k->dotRows(t, rp.data(), 7, rows, q.data(), integer ? q8.data() : nullptr, qd.data(), n, out.data());
        EXPECT_TRUE(std::isnan(out[rows]));
        for (size_t r = 0; r < rows; ++r) {
          double want = 0, mag = 0;
          for (size_t i = 0; i < n; ++i) {
            const double qi = integer ? double(qd[i / 32]) * q8[i] : double(q[i]);
            want += qi * y[r * n + i], mag += std::fabs(qi * y[r * n + i]);
          }
          const double bound = (integer ? 3 * n / 32 + 10 : n + 2) * 6e-8 * mag + 1e-30;
          EXPECT_TRUE(std::fabs(out[r] - want) <= bound);
        }
      }
    }
  }
}

TEST(flash_block_kernels_match_scalar_and_f64) {
  const AttnKernels* ref = attnKernelsFor(Isa::kScalar);
  const AttnKernels* ak = attnKernelsFor(Isa::kAvx2);
  if (!ak) return;
  const size_t m = 40, n = 37, d = 70, dv = 45, ldk = 81, ldv = 50;  // m: multiple of 8 (AVX2 contract)
  auto qt = randn(d * m, 1), kk = randn(n * ldk, 2), v = randn(n * ldv, 3);
  std::vector<float> s1(n * m, NAN), s2(n * m, NAN);
  ref->qkT(qt.data(), m, m, kk.data(), ldk, n, d, s1.data(), m);
  ak->qkT(qt.data(), m, m, kk.data(), ldk, n, d, s2.data(), m);
  for (size_t j = 0; j < n; ++j)
    for (size_t i = 0; i < m; ++i) {
      double want = 0, mag = 0;
      for (size_t t = 0; t < d; ++t) want += double(qt[t * m + i]) * kk[j * ldk + t], mag += std::fabs(double(qt[t * m + i]) * kk[j * ldk + t]);
      EXPECT_TRUE(std::fabs(s1[j * m + i] - want) <= d * 6e-8 * mag);  // γ_d: d roundings
      EXPECT_TRUE(std::fabs(s2[j * m + i] - want) <= d * 6e-8 * mag);
    }
  // Online softmax step with a causal cut (c = 3: row i sees keys j <= i + 3) from a state with
  // finite running maxima on even rows and none (-inf) on odd rows.
  std::vector<float> mx1(m), l1(m), c1(m, NAN), mx2, l2, c2(m, NAN);
  for (size_t i = 0; i < m; ++i) mx1[i] = i % 2 ? -INFINITY : 1.5f, l1[i] = i % 2 ? 0.f : 2.f;
  mx2 = mx1, l2 = l1;
  const float scale2 = 0.2f;
  std::vector<float> p1 = s1, p2 = s1;
  ref->softmaxT(p1.data(), m, m, n, 3, scale2, mx1.data(), l1.data(), c1.data());
  ak->softmaxT(p2.data(), m, m, n, 3, scale2, mx2.data(), l2.data(), c2.data());
  for (size_t i = 0; i < m; ++i) {
    EXPECT_TRUE(mx1[i] == mx2[i]);
    // exp2 polynomial: relative error < 2e-7 per term, plus the f32 sum of n terms.
    EXPECT_TRUE(std::fabs(l1[i] - l2[i]) <= (n + 4) * 1.2e-7 * l1[i]);
    EXPECT_TRUE(std::fabs(c1[i] - c2[i]) <= 3e-7 * c1[i]);
    for (size_t j = 0; j < n; ++j) {
      // Both levels form the argument identically in f32 (x = s·scale2, then x - max, no FMA),
      // so f64 2^arg of that f32 argument isolates exp2 itself: the polynomial's < 2e-7 plus
      // one rounding, 4e-7 with margin; std::exp2f within 1 ulp.
      const float x = s1[j * m + i] * scale2;
      const float arg = x - mx1[i];
      const double want = j <= i + 3 ? std::exp2(double(arg)) : 0.0;
      // Below 2^-126 the AVX2 exp2 returns exactly 0 (documented), f32 exp2f a denormal.
      const double tol = arg < -126 ? 0x1p-126 : 4e-7 * want;
      EXPECT_TRUE(std::fabs(p2[j * m + i] - want) <= tol);  // masked keys: exactly 0
      EXPECT_TRUE(std::fabs(p1[j * m + i] - want) <= tol);
    }
  }
  // P·V with the fused rescale.
  std::vector<float> rs(m), a1 = randn(m * dv, 4), a2;
  for (size_t i = 0; i < m; ++i) rs[i] = 0.5f + 0.01f * float(i);
  a2 = a1;
  const std::vector<float> a0 = a1;
  ref->pvT(p1.data(), m, m, n, v.data(), ldv, dv, rs.data(), a1.data(), dv);
  ak->pvT(p1.data(), m, m, n, v.data(), ldv, dv, rs.data(), a2.data(), dv);
  for (size_t i = 0; i < m; ++i)
    for (size_t c = 0; c < dv; ++c) {
      double want = double(a0[i * dv + c]) * rs[i], mag = std::fabs(want);
      for (size_t j = 0; j < n; ++j) want += double(p1[j * m + i]) * v[j * ldv + c], mag += std::fabs(double(p1[j * m + i]) * v[j * ldv + c]);
      EXPECT_TRUE(std::fabs(a1[i * dv + c] - want) <= (n + 2) * 6e-8 * mag);  // γ_(n+2)
      EXPECT_TRUE(std::fabs(a2[i * dv + c] - want) <= (n + 2) * 6e-8 * mag);
    }
}
