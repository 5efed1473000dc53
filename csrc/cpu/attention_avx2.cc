// AVX2+FMA level of the attention inner loops (see AttnKernels in attention.h).
#include <immintrin.h>

#include "attention.h"

namespace kvant {
namespace avx2 {
namespace {

// MR rows x 16 columns of acc in 2·MR registers; per j: 2 loads of V, MR broadcasts of p,
// 2·MR FMAs. MR = 4 uses 8 accumulators + 2 V vectors + 1 broadcast of the 16 ymm registers.
template <int MR>
inline void block16(const float* p, size_t ldp, size_t n, const float* v, size_t ldv, float* acc, size_t lda) {
  __m256 a[MR][2];
  for (int i = 0; i < MR; ++i) a[i][0] = _mm256_loadu_ps(acc + i * lda), a[i][1] = _mm256_loadu_ps(acc + i * lda + 8);
  for (size_t j = 0; j < n; ++j) {
    const __m256 v0 = _mm256_loadu_ps(v + j * ldv), v1 = _mm256_loadu_ps(v + j * ldv + 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 w = _mm256_broadcast_ss(p + i * ldp + j);
      a[i][0] = _mm256_fmadd_ps(w, v0, a[i][0]);
      a[i][1] = _mm256_fmadd_ps(w, v1, a[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(acc + i * lda, a[i][0]), _mm256_storeu_ps(acc + i * lda + 8, a[i][1]);
}

template <int MR>
inline void block8(const float* p, size_t ldp, size_t n, const float* v, size_t ldv, float* acc, size_t lda) {
  __m256 a[MR];
  for (int i = 0; i < MR; ++i) a[i] = _mm256_loadu_ps(acc + i * lda);
  for (size_t j = 0; j < n; ++j) {
    const __m256 v0 = _mm256_loadu_ps(v + j * ldv);
    for (int i = 0; i < MR; ++i) a[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(p + i * ldp + j), v0, a[i]);
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(acc + i * lda, a[i]);
}

// All rows of one column stripe [d, d + W) of acc, 4 rows at a time.
template <int W, int MR>
inline void blk(const float* p, size_t ldp, size_t n, const float* v, size_t ldv, float* acc, size_t lda) {
  if (W == 16) block16<MR>(p, ldp, n, v, ldv, acc, lda);
  else block8<MR>(p, ldp, n, v, ldv, acc, lda);
}

template <int W>
inline void stripe(const float* p, size_t ldp, size_t m, size_t n, const float* v, size_t ldv, float* acc, size_t lda) {
  size_t i = 0;
  for (; i + 4 <= m; i += 4) blk<W, 4>(p + i * ldp, ldp, n, v, ldv, acc + i * lda, lda);
  switch (m - i) {
    case 3: blk<W, 3>(p + i * ldp, ldp, n, v, ldv, acc + i * lda, lda); break;
    case 2: blk<W, 2>(p + i * ldp, ldp, n, v, ldv, acc + i * lda, lda); break;
    case 1: blk<W, 1>(p + i * ldp, ldp, n, v, ldv, acc + i * lda, lda); break;
    default: break;
  }
}

// Sums of the 8 lanes of a0..a3, as [Σa0, Σa1, Σa2, Σa3] per 128-bit half (to be added).
inline __m256 reduce4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
  return _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
}

// Full tiles: MR (1 or 2) rows x NR (4) keys over the vector part of d, then one joint
// reduction; the d tail (d % 8) is added afterwards in order. Partial tiles pad with
// duplicates of key 0 / row 0 whose results are dropped, so every stored output goes through
// exactly the same instructions whatever its position in the tile.
template <int MR>
inline void tile(const float* const* qr, const float* const* kr, size_t d, float out[MR][4]) {
  __m256 a[MR][4];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < 4; ++j) a[i][j] = _mm256_setzero_ps();
  const size_t dv = d & ~size_t(7);
  for (size_t t = 0; t < dv; t += 8) {
    const __m256 k0 = _mm256_loadu_ps(kr[0] + t), k1 = _mm256_loadu_ps(kr[1] + t), k2 = _mm256_loadu_ps(kr[2] + t), k3 = _mm256_loadu_ps(kr[3] + t);
    for (int i = 0; i < MR; ++i) {
      const __m256 x = _mm256_loadu_ps(qr[i] + t);
      a[i][0] = _mm256_fmadd_ps(x, k0, a[i][0]);
      a[i][1] = _mm256_fmadd_ps(x, k1, a[i][1]);
      a[i][2] = _mm256_fmadd_ps(x, k2, a[i][2]);
      a[i][3] = _mm256_fmadd_ps(x, k3, a[i][3]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    const __m256 r = reduce4(a[i][0], a[i][1], a[i][2], a[i][3]);
    const __m128 s = _mm_add_ps(_mm256_castps256_ps128(r), _mm256_extractf128_ps(r, 1));
    _mm_storeu_ps(out[i], s);
    for (size_t t = dv; t < d; ++t)
      for (int j = 0; j < 4; ++j) out[i][j] = __builtin_fmaf(qr[i][t], kr[j][t], out[i][j]);
  }
}

// Keys outer, query rows inner: 4 keys (4 x d floats) stay in L1 while every row pair uses
// them; the other order re-streams the whole key block from L2 once per row pair.
void qk(const float* q, size_t ldq, size_t m, const float* k, size_t ldk, size_t n, size_t d, float* s, size_t lds) {
  for (size_t j = 0; j < n; j += 4) {
    const size_t nr = n - j < 4 ? n - j : 4;
    const float* kr[4];
    for (size_t c = 0; c < 4; ++c) kr[c] = k + (j + (c < nr ? c : 0)) * ldk;
    for (size_t i = 0; i < m; i += 2) {
      const size_t mr = m - i < 2 ? m - i : 2;
      const float* qr[2] = {q + i * ldq, q + (i + mr - 1) * ldq};
      float out[2][4];
      tile<2>(qr, kr, d, out);
      for (size_t r = 0; r < mr; ++r)
        for (size_t c = 0; c < nr; ++c) s[(i + r) * lds + j + c] = out[r][c];
    }
  }
}

// Column stripes outer, row groups inner: a 16-column stripe of V (n rows x 64 bytes) stays
// in L1 while all row groups use it; rows outer would re-stream all of V from L2 per group.
void pv(const float* p, size_t ldp, size_t m, size_t n, const float* v, size_t ldv, size_t dv, float* acc, size_t lda) {
  size_t d = 0;
  for (; d + 16 <= dv; d += 16) stripe<16>(p, ldp, m, n, v + d, ldv, acc + d, lda);
  for (; d + 8 <= dv; d += 8) stripe<8>(p, ldp, m, n, v + d, ldv, acc + d, lda);
  for (; d < dv; ++d)  // column tail: same j order, one FMA per term like the vector lanes
    for (size_t i = 0; i < m; ++i) {
      float s = acc[i * lda + d];
      for (size_t j = 0; j < n; ++j) s = __builtin_fmaf(p[i * ldp + j], v[j * ldv + d], s);
      acc[i * lda + d] = s;
    }
}

// --- FlashAttention-2 prefill on transposed blocks (query rows = vector lanes) ---

// 16 query rows (two vectors of qt) x NR keys: 2·NR accumulators, per t two loads of qt,
// NR broadcasts of k, 2·NR FMAs; NR = 6 fills 12 + 2 + 1 = 15 of the 16 ymm registers.
// Each output is one chain of FMAs over t in order, so it never depends on NR or the tile.
template <int NR>
inline void qkTile16(const float* qt, size_t ldqt, const float* const* kr, size_t d, float* st, size_t ldst) {
  __m256 a[NR][2];
  for (int j = 0; j < NR; ++j) a[j][0] = a[j][1] = _mm256_setzero_ps();
  for (size_t t = 0; t < d; ++t) {
    const __m256 q0 = _mm256_loadu_ps(qt + t * ldqt), q1 = _mm256_loadu_ps(qt + t * ldqt + 8);
    for (int j = 0; j < NR; ++j) {
      const __m256 b = _mm256_broadcast_ss(kr[j] + t);
      a[j][0] = _mm256_fmadd_ps(q0, b, a[j][0]);
      a[j][1] = _mm256_fmadd_ps(q1, b, a[j][1]);
    }
  }
  for (int j = 0; j < NR; ++j) _mm256_storeu_ps(st + j * ldst, a[j][0]), _mm256_storeu_ps(st + j * ldst + 8, a[j][1]);
}

// 8 query rows x NR keys (the m % 16 tail), the same FMA chain per output.
template <int NR>
inline void qkTile8(const float* qt, size_t ldqt, const float* const* kr, size_t d, float* st, size_t ldst) {
  __m256 a[NR];
  for (int j = 0; j < NR; ++j) a[j] = _mm256_setzero_ps();
  for (size_t t = 0; t < d; ++t) {
    const __m256 q0 = _mm256_loadu_ps(qt + t * ldqt);
    for (int j = 0; j < NR; ++j) a[j] = _mm256_fmadd_ps(q0, _mm256_broadcast_ss(kr[j] + t), a[j]);
  }
  for (int j = 0; j < NR; ++j) _mm256_storeu_ps(st + j * ldst, a[j]);
}

template <bool W16>
inline void qkTileN(size_t nr, const float* qt, size_t ldqt, const float* const* kr, size_t d, float* st, size_t ldst) {
  switch (nr) {
#define KV_QK_CASE(N) \
  case N: W16 ? qkTile16<N>(qt, ldqt, kr, d, st, ldst) : qkTile8<N>(qt, ldqt, kr, d, st, ldst); break;
    KV_QK_CASE(6) KV_QK_CASE(5) KV_QK_CASE(4) KV_QK_CASE(3) KV_QK_CASE(2) KV_QK_CASE(1)
#undef KV_QK_CASE
    default: break;
  }
}

// Row tiles outer, keys inner: a 16-row slice of qt (d x 64 bytes, 12 KB at d = 192) stays
// in L1 while the key block streams from L2 past it.
void qkT(const float* qt, size_t ldqt, size_t m, const float* k, size_t ldk, size_t n, size_t d, float* st, size_t ldst) {
  for (size_t i = 0; i < m; i += 16) {
    const bool w16 = m - i >= 16;  // else an 8-row tail (m is a multiple of 8)
    for (size_t j = 0; j < n; j += 6) {
      const size_t nr = n - j < 6 ? n - j : 6;
      const float* kr[6];
      for (size_t c = 0; c < nr; ++c) kr[c] = k + (j + c) * ldk;
      if (w16) qkTileN<true>(nr, qt + i, ldqt, kr, d, st + j * ldst + i, ldst);
      else qkTileN<false>(nr, qt + i, ldqt, kr, d, st + j * ldst + i, ldst);
    }
  }
}

// 2^x for x <= 0 (scores minus their running max): x = n + f with n = round(x), |f| <= 1/2;
// 2^f by a degree-6 polynomial (Cephes' exp2f coefficients, relative error < 2e-7 ~ 2 ulp on
// [-1/2, 1/2]), 2^n put into the exponent field. Below -126 the result is exactly 0 (not a
// denormal), so masked scores (-inf) and the first block's corr (2^-inf) are exact zeros.
// At x = 0: n = 0, f = 0 and the polynomial gives exactly 1, so a row whose max does not
// change keeps corr = 1 exactly.
inline __m256 exp2v(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-126.f);
  const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(0.f));
  const __m256 n = _mm256_round_ps(xc, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_sub_ps(xc, n);
  __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  const __m256 r = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LT_OQ), r);
}

// 8 rows per vector; the causal mask only on blocks that cut through the diagonal.
void softmaxT(float* st, size_t ldst, size_t m, size_t n, long c, float scale2, float* mx, float* l, float* corr) {
  const __m256 ninf = _mm256_set1_ps(-__builtin_inff()), s2 = _mm256_set1_ps(scale2);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (size_t i = 0; i < m; i += 8) {
    // Row i + lane sees key j iff j <= i + lane + c; every key of the block when i + c >= n - 1.
    const bool full = long(i) + c >= long(n) - 1;
    const long lim0 = long(i) + c;  // > -2^31 and < 2^31 for any real block (|c| <= Sk)
    const __m256i lim = _mm256_add_epi32(_mm256_set1_epi32(int(lim0 < -(1L << 30) ? -(1L << 30) : lim0 > (1L << 30) ? (1L << 30) : lim0)), lane);
    __m256 bm = ninf;
    for (size_t j = 0; j < n; ++j) {
      __m256 x = _mm256_mul_ps(_mm256_loadu_ps(st + j * ldst + i), s2);
      if (!full) {
        const __m256 vis = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_add_epi32(lim, _mm256_set1_epi32(1)), _mm256_set1_epi32(int(j))));
        x = _mm256_blendv_ps(ninf, x, vis);
      }
      _mm256_storeu_ps(st + j * ldst + i, x);
      bm = _mm256_max_ps(bm, x);
    }
    const __m256 mOld = _mm256_loadu_ps(mx + i);
    const __m256 mNew = _mm256_max_ps(mOld, bm);
    // Rows with nothing seen yet (mNew = -inf) subtract 0 instead: p = 2^-inf = 0, corr = 0
    // on a zero accumulator and l = 0.
    const __m256 mUse = _mm256_blendv_ps(mNew, _mm256_setzero_ps(), _mm256_cmp_ps(mNew, ninf, _CMP_EQ_OQ));
    const __m256 cr = exp2v(_mm256_sub_ps(mOld, mUse));
    __m256 sum = _mm256_setzero_ps();
    for (size_t j = 0; j < n; ++j) {
      const __m256 p = exp2v(_mm256_sub_ps(_mm256_loadu_ps(st + j * ldst + i), mUse));
      _mm256_storeu_ps(st + j * ldst + i, p);
      sum = _mm256_add_ps(sum, p);
    }
    _mm256_storeu_ps(l + i, _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(l + i), cr), sum));
    _mm256_storeu_ps(corr + i, cr);
    _mm256_storeu_ps(mx + i, mNew);
  }
}

// MR rows x 16 columns of acc in 2·MR registers, scaled by rowScale on load; per j: 2 loads
// of V, MR broadcasts of p (contiguous in pt), 2·MR FMAs (MR = 6: 15 registers).
template <int MR>
inline void pvTile(const float* pt, size_t ldpt, size_t n, const float* v, size_t ldv, const float* rs, float* acc, size_t lda) {
  __m256 a[MR][2];
  for (int i = 0; i < MR; ++i) {
    const __m256 c = _mm256_broadcast_ss(rs + i);
    a[i][0] = _mm256_mul_ps(_mm256_loadu_ps(acc + i * lda), c);
    a[i][1] = _mm256_mul_ps(_mm256_loadu_ps(acc + i * lda + 8), c);
  }
  for (size_t j = 0; j < n; ++j) {
    const __m256 v0 = _mm256_loadu_ps(v + j * ldv), v1 = _mm256_loadu_ps(v + j * ldv + 8);
    for (int i = 0; i < MR; ++i) {
      const __m256 w = _mm256_broadcast_ss(pt + j * ldpt + i);
      a[i][0] = _mm256_fmadd_ps(w, v0, a[i][0]);
      a[i][1] = _mm256_fmadd_ps(w, v1, a[i][1]);
    }
  }
  for (int i = 0; i < MR; ++i) _mm256_storeu_ps(acc + i * lda, a[i][0]), _mm256_storeu_ps(acc + i * lda + 8, a[i][1]);
}

// MR = 6 spelled out: GCC keeps a 12-entry __m256 array in memory (a store per FMA) instead
// of registers; named accumulators stay in ymm registers. Same arithmetic as pvTile<6>.
inline void pvTile6(const float* pt, size_t ldpt, size_t n, const float* v, size_t ldv, const float* rs, float* acc, size_t lda) {
#define KV_LD(I) \
  __m256 a##I##0 = _mm256_mul_ps(_mm256_loadu_ps(acc + I * lda), _mm256_broadcast_ss(rs + I)); \
  __m256 a##I##1 = _mm256_mul_ps(_mm256_loadu_ps(acc + I * lda + 8), _mm256_broadcast_ss(rs + I));
  KV_LD(0) KV_LD(1) KV_LD(2) KV_LD(3) KV_LD(4) KV_LD(5)
#undef KV_LD
  for (size_t j = 0; j < n; ++j) {
    const __m256 v0 = _mm256_loadu_ps(v + j * ldv), v1 = _mm256_loadu_ps(v + j * ldv + 8);
    const float* pj = pt + j * ldpt;
#define KV_FMA(I)                                  \
  {                                                \
    const __m256 w = _mm256_broadcast_ss(pj + I);  \
    a##I##0 = _mm256_fmadd_ps(w, v0, a##I##0);     \
    a##I##1 = _mm256_fmadd_ps(w, v1, a##I##1);     \
  }
    KV_FMA(0) KV_FMA(1) KV_FMA(2) KV_FMA(3) KV_FMA(4) KV_FMA(5)
#undef KV_FMA
  }
#define KV_ST(I) _mm256_storeu_ps(acc + I * lda, a##I##0), _mm256_storeu_ps(acc + I * lda + 8, a##I##1);
  KV_ST(0) KV_ST(1) KV_ST(2) KV_ST(3) KV_ST(4) KV_ST(5)
#undef KV_ST
}

inline void pvTileN(size_t mr, const float* pt, size_t ldpt, size_t n, const float* v, size_t ldv, const float* rs, float* acc, size_t lda) {
  switch (mr) {
#define KV_PV_CASE(M) \
  case M: pvTile<M>(pt, ldpt, n, v, ldv, rs, acc, lda); break;
    case 6: pvTile6(pt, ldpt, n, v, ldv, rs, acc, lda); break;
    KV_PV_CASE(5) KV_PV_CASE(4) KV_PV_CASE(3) KV_PV_CASE(2) KV_PV_CASE(1)
#undef KV_PV_CASE
    default: break;
  }
}

// Column stripes outer (a 16-column stripe of V, n x 64 bytes, stays in L1), row groups inner.
void pvT(const float* pt, size_t ldpt, size_t m, size_t n, const float* v, size_t ldv, size_t dv, const float* rowScale, float* acc, size_t lda) {
  size_t d = 0;
  for (; d + 16 <= dv; d += 16)
    for (size_t i = 0; i < m; i += 6) pvTileN(m - i < 6 ? m - i : 6, pt + i, ldpt, n, v + d, ldv, rowScale + i, acc + i * lda + d, lda);
  for (; d < dv; ++d)  // column tail: the same order, one FMA per term like the vector lanes
    for (size_t i = 0; i < m; ++i) {
      float s = acc[i * lda + d] * rowScale[i];
      for (size_t j = 0; j < n; ++j) s = __builtin_fmaf(pt[j * ldpt + i], v[j * ldv + d], s);
      acc[i * lda + d] = s;
    }
}

}  // namespace
const AttnKernels kAttnKernels = {qk, pv, qkT, softmaxT, pvT};
}  // namespace avx2
}  // namespace kvant
