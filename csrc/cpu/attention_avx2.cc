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

}  // namespace
const AttnKernels kAttnKernels = {qk, pv};
}  // namespace avx2
}  // namespace kvant
