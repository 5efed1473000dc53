// AVX-512 level of the small ops (same math as the AVX2 level, 16 lanes, masked tails).
#include "simd_avx512.h"

#include "small_ops.h"

namespace kvant {
namespace avx512 {
namespace {

// exp(x), 16 lanes: the AVX2 file explains the range reduction; VSCALEFPS applies 2^n.
inline __m512 expPs(__m512 x) {
  const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.3365478515625f), _CMP_LT_OQ);
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f)), _mm512_set1_ps(-87.3365478515625f));
  const __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_maskz_scalef_ps(__mmask16(~under), p, fx);
}

inline __mmask16 tailMask(size_t left) { return __mmask16((1u << left) - 1); }

double sumSquares(const float* x, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 u = _mm512_loadu_ps(x + i), v = _mm512_loadu_ps(x + i + 16);
    a0 = _mm512_fmadd_ps(u, u, a0);
    a1 = _mm512_fmadd_ps(v, v, a1);
  }
  for (; i + 16 <= n; i += 16) {
    const __m512 u = _mm512_loadu_ps(x + i);
    a0 = _mm512_fmadd_ps(u, u, a0);
  }
  if (i < n) {
    const __m512 u = _mm512_maskz_loadu_ps(tailMask(n - i), x + i);
    a1 = _mm512_fmadd_ps(u, u, a1);
  }
  alignas(64) float t[16];
  _mm512_store_ps(t, _mm512_add_ps(a0, a1));
  double s = 0;
  for (float f : t) s += f;
  return s;
}

void scaleMul(const float* x, const float* w, float s, float* y, size_t n) {
  const __m512 vs = _mm512_set1_ps(s);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : tailMask(n - i);
    const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vs), _mm512_maskz_loadu_ps(m, w + i));
    _mm512_mask_storeu_ps(y + i, m, v);
  }
}

void siluMul(const float* g, const float* u, float* y, size_t n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : tailMask(n - i);
    const __m512 gv = _mm512_maskz_loadu_ps(m, g + i);
    const __m512 sig = _mm512_div_ps(gv, _mm512_add_ps(one, expPs(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
    _mm512_mask_storeu_ps(y + i, m, _mm512_mul_ps(sig, _mm512_maskz_loadu_ps(m, u + i)));
  }
}

void axpyRow(float a, const float* x, float* y, size_t n) {
  const __m512 va = _mm512_set1_ps(a);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : tailMask(n - i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

double expShift(const float* x, float m, float* y, size_t n) {
  const __m512 vm = _mm512_set1_ps(m);
  __m512 acc = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? __mmask16(0xffff) : tailMask(n - i);
    const __m512 e = _mm512_maskz_mov_ps(k, expPs(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vm)));
    _mm512_mask_storeu_ps(y + i, k, e);
    acc = _mm512_add_ps(acc, e);
  }
  alignas(64) float t[16];
  _mm512_store_ps(t, acc);
  double s = 0;
  for (float f : t) s += f;
  return s;
}

}  // namespace
const SmallOpsKernels kSmallOpsKernels = {sumSquares, scaleMul, siluMul, axpyRow, expShift};
}  // namespace avx512
}  // namespace kvant
