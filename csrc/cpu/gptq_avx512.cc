// AVX-512 level of the GPTQ register tiles (compiled with -mavx512f/bw/vl/dq; tested on
// machines without AVX-512 through the SIMDe-emulated build, which proves the logic, not the
// speed). Same tile as every level (gptq.h: 6 rows x 16 f32 / 8 f64 columns, so gptq.cc's
// blocking and packing serve all levels): one zmm holds a whole row of the tile.
//
// Six rows are six independent FMA chains, fewer than the 8 (4-cycle latency x 2 FMA ports)
// that keep the FMA units busy, so each row gets two accumulators, for even and odd p, added
// once at the end: 12 chains, 12 + 1 + 1 = 14 of the 32 zmm registers. The sum over p is then
// taken in a different order than the scalar/AVX2 tiles (two interleaved partial sums): each
// output's order is still fixed (independent of the thread count and of the tiling), and the
// f32 error bound of an n-term sum, n·u·Σ|a·b|, holds for any order.
#include "simd_avx512.h"

#include "gptq.h"

namespace kvant {
namespace avx512 {
namespace {

template <class T, class V, class Ops>
inline void tileRows(const T* A, int64_t rsA, int64_t csA, const T* B, int64_t ldb, int64_t kc, T alpha, T* C, int64_t ldc) {
  V e0 = Ops::zero(), e1 = e0, e2 = e0, e3 = e0, e4 = e0, e5 = e0;  // even p
  V o0 = e0, o1 = e0, o2 = e0, o3 = e0, o4 = e0, o5 = e0;            // odd p
  int64_t p = 0;
  for (; p + 2 <= kc; p += 2) {
    const V b = Ops::load(B + p * ldb), c = Ops::load(B + (p + 1) * ldb);
    const T* a = A + p * csA;
    const T* n = a + csA;
    e0 = Ops::fma(Ops::set1(a[0]), b, e0), o0 = Ops::fma(Ops::set1(n[0]), c, o0);
    e1 = Ops::fma(Ops::set1(a[rsA]), b, e1), o1 = Ops::fma(Ops::set1(n[rsA]), c, o1);
    e2 = Ops::fma(Ops::set1(a[2 * rsA]), b, e2), o2 = Ops::fma(Ops::set1(n[2 * rsA]), c, o2);
    e3 = Ops::fma(Ops::set1(a[3 * rsA]), b, e3), o3 = Ops::fma(Ops::set1(n[3 * rsA]), c, o3);
    e4 = Ops::fma(Ops::set1(a[4 * rsA]), b, e4), o4 = Ops::fma(Ops::set1(n[4 * rsA]), c, o4);
    e5 = Ops::fma(Ops::set1(a[5 * rsA]), b, e5), o5 = Ops::fma(Ops::set1(n[5 * rsA]), c, o5);
  }
  if (p < kc) {  // odd kc: the last term goes to the even sums
    const V b = Ops::load(B + p * ldb);
    const T* a = A + p * csA;
    e0 = Ops::fma(Ops::set1(a[0]), b, e0), e1 = Ops::fma(Ops::set1(a[rsA]), b, e1);
    e2 = Ops::fma(Ops::set1(a[2 * rsA]), b, e2), e3 = Ops::fma(Ops::set1(a[3 * rsA]), b, e3);
    e4 = Ops::fma(Ops::set1(a[4 * rsA]), b, e4), e5 = Ops::fma(Ops::set1(a[5 * rsA]), b, e5);
  }
  const V al = Ops::set1(alpha);
  const V acc[6] = {Ops::add(e0, o0), Ops::add(e1, o1), Ops::add(e2, o2), Ops::add(e3, o3), Ops::add(e4, o4), Ops::add(e5, o5)};
  for (int i = 0; i < 6; ++i) Ops::store(C + i * ldc, Ops::fma(al, acc[i], Ops::load(C + i * ldc)));
}

struct OpsF32 {
  static __m512 zero() { return _mm512_setzero_ps(); }
  static __m512 load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
  static __m512 set1(float a) { return _mm512_set1_ps(a); }
  static __m512 fma(__m512 a, __m512 b, __m512 c) { return _mm512_fmadd_ps(a, b, c); }
  static __m512 add(__m512 a, __m512 b) { return _mm512_add_ps(a, b); }
};
struct OpsF64 {
  static __m512d zero() { return _mm512_setzero_pd(); }
  static __m512d load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, __m512d v) { _mm512_storeu_pd(p, v); }
  static __m512d set1(double a) { return _mm512_set1_pd(a); }
  static __m512d fma(__m512d a, __m512d b, __m512d c) { return _mm512_fmadd_pd(a, b, c); }
  static __m512d add(__m512d a, __m512d b) { return _mm512_add_pd(a, b); }
};
static_assert(kGptqMr == 6 && kGptqNrF32 == 16 && kGptqNrF64 == 8, "the AVX-512 tile is one zmm per row of 6");

void tileF32(const float* A, int64_t rsA, int64_t csA, const float* B, int64_t ldb, int64_t kc, float alpha, float* C, int64_t ldc) {
  tileRows<float, __m512, OpsF32>(A, rsA, csA, B, ldb, kc, alpha, C, ldc);
}
void tileF64(const double* A, int64_t rsA, int64_t csA, const double* B, int64_t ldb, int64_t kc, double alpha, double* C, int64_t ldc) {
  tileRows<double, __m512d, OpsF64>(A, rsA, csA, B, ldb, kc, alpha, C, ldc);
}

// y[i] -= a * x[i]: 16 lanes, the tail under a mask (no scalar loop, nothing touched past n).
void axpyNeg(float a, const float* x, float* y, int64_t n) {
  const __m512 va = _mm512_set1_ps(a);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fnmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, _mm512_fnmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i)));
  }
}

}  // namespace
const GptqKernels kGptqKernels = {tileF32, tileF64, axpyNeg};
}  // namespace avx512
}  // namespace kvant
