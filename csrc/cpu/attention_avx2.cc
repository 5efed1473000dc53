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

template <int MR>
void rows(const float* p, size_t ldp, size_t n, const float* v, size_t ldv, size_t dv, float* acc, size_t lda) {
  size_t d = 0;
  for (; d + 16 <= dv; d += 16) block16<MR>(p, ldp, n, v + d, ldv, acc + d, lda);
  for (; d + 8 <= dv; d += 8) block8<MR>(p, ldp, n, v + d, ldv, acc + d, lda);
  for (; d < dv; ++d)  // column tail: same j order, one FMA per term like the vector lanes
    for (int i = 0; i < MR; ++i) {
      float s = acc[i * lda + d];
      for (size_t j = 0; j < n; ++j) s = __builtin_fmaf(p[i * ldp + j], v[j * ldv + d], s);
      acc[i * lda + d] = s;
    }
}

void pv(const float* p, size_t ldp, size_t m, size_t n, const float* v, size_t ldv, size_t dv, float* acc, size_t lda) {
  size_t i = 0;
  for (; i + 4 <= m; i += 4) rows<4>(p + i * ldp, ldp, n, v, ldv, dv, acc + i * lda, lda);
  switch (m - i) {
    case 3: rows<3>(p + i * ldp, ldp, n, v, ldv, dv, acc + i * lda, lda); break;
    case 2: rows<2>(p + i * ldp, ldp, n, v, ldv, dv, acc + i * lda, lda); break;
    case 1: rows<1>(p + i * ldp, ldp, n, v, ldv, dv, acc + i * lda, lda); break;
    default: break;
  }
}

}  // namespace
const AttnKernels kAttnKernels = {pv};
}  // namespace avx2
}  // namespace kvant
