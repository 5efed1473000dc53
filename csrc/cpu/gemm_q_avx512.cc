// AVX-512 level of the fused dequant GEMV/GEMM (compiled with -mavx512f/bw/vl/dq; the VNNI
// kernels per function, see gemm_q_avx512_q8.h). It performs exactly the operation sequence of
// gemm_q.h, like the AVX2 level, so all levels agree bit for bit: per output one FMA chain per
// group over ascending k (in-place codes times pre-scaled activations), then t = fma(−z, X, A),
// y = fma(s, t, y) over ascending groups; int8 activations: exact integer block dots I_b, then
// A = fma(fma(−z, Q, I), d, A), y = fma(s, A, y). Only the width changes: a zmm holds one code
// position of 16 consecutive columns (16 qweight words, one 64-byte load), and column tails
// (N is only a multiple of 4..32 depending on the width) run the same code under a lane mask
// instead of a scalar loop.
//
// Tested on machines without AVX-512 through the SIMDe-emulated build
// (scripts/avx512-emu-test.mjs): that proves the logic and the bit-exactness against the
// scalar reference, for any thread count and M = 1 vs 512. It says nothing about speed; no
// AVX-512 timing has been taken. The tile shapes follow the AVX2 level's measured choices,
// widened to 16 lanes and to the 32 zmm registers.
#include "simd_avx512.h"

#include <cmath>
#include <cstring>
#include <utility>

#include "gemm_q.h"
#include "isa.h"
#include "kvant/half.h"

namespace kvant {
namespace avx512 {
namespace {

template <class F, int... Js>
inline void forEach(F&& f, std::integer_sequence<int, Js...>) {
  (f(std::integral_constant<int, Js>{}), ...);
}

constexpr int unitCodes(int bits) { return bits == 3 ? 32 : 32 / bits; }
constexpr int unitWords(int bits) { return bits == 3 ? 3 : 1; }
constexpr __mmask16 kFull = 0xffff;

// Lanes [0, cols) of a 16-column vector (cols >= 16: all).
inline __mmask16 tailMask(size_t cols) { return cols >= 16 ? kFull : __mmask16((1u << cols) - 1); }
// Mask of the last of the (cols + 15) / 16 vectors covering cols >= 1 columns.
inline __mmask16 lastMask(size_t cols) { return tailMask(cols - (cols - 1) / 16 * 16); }
// Mask of vector c of nv, the last one under `last`.
inline __mmask16 vecMask(size_t c, size_t nv, __mmask16 last) { return c + 1 == nv ? last : kFull; }

// 16 qweight words (or activations/terms): a plain load for full vectors, a masked one at the
// column tail (masked-off lanes are not read, so nothing past the matrix is touched).
inline __m512i loadW(const uint32_t* p, __mmask16 m) { return m == kFull ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi32(m, p); }
inline __m512 loadF(const float* p, __mmask16 m) { return m == kFull ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(m, p); }
inline void storeY(float* p, __mmask16 m, __m512 v) {
  if (m == kFull) _mm512_storeu_ps(p, v);
  else _mm512_mask_storeu_ps(p, m, v);
}

// Code J of a packing unit for 16 columns, as an exact integer c·2^e (e = qInPlaceShift).
template <int BITS, int J>
inline __m512i codeInPlace(const __m512i* w) {
  constexpr int pos = BITS * J, word = pos / 32, s = pos % 32;
  constexpr int maxq = (1 << BITS) - 1;
  if constexpr (s + BITS < 32) {
    return _mm512_and_si512(w[word], _mm512_set1_epi32(maxq << s));
  } else if constexpr (s + BITS == 32) {
    return _mm512_srli_epi32(w[word], s);  // top code: the shift also clears the rest
  } else {  // 3-bit code split across two words (codes 10 and 21 of the 96-bit unit)
    return _mm512_and_si512(_mm512_or_si512(_mm512_srli_epi32(w[word], s), _mm512_slli_epi32(w[word + 1], 32 - s)),
                            _mm512_set1_epi32(maxq));
  }
}

// Zero points of columns n..n+15 of group g (lanes under m) as floats. Column c's code starts
// at bit bits·c of the qzeros row in every layout, so two masked gathers (the words holding
// each code's low and high bit; the same word unless a 3-bit code crosses) and variable shifts
// serve all widths. Once per group and vector: amortized over G rows of codes.
inline __m512 zerosOf(const QMatrix& w, size_t g, size_t n, __mmask16 m) {
  const int bits = w.fmt.bits;
  const int maxq = (1 << bits) - 1;
  const size_t gp0 = size_t(bits) * n;
  const int* base = reinterpret_cast<const int*>(w.qzeros + g * size_t(qZeroCols(w.fmt)) + gp0 / 32);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i bp = _mm512_add_epi32(_mm512_set1_epi32(int(gp0 % 32)), _mm512_mullo_epi32(_mm512_set1_epi32(bits), lane));
  const __m512i lo = _mm512_srli_epi32(bp, 5), hi = _mm512_srli_epi32(_mm512_add_epi32(bp, _mm512_set1_epi32(bits - 1)), 5);
  const __m512i s = _mm512_and_si512(bp, _mm512_set1_epi32(31));
  const __m512i wl = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, lo, base, 4);
  const __m512i wh = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), m, hi, base, 4);
  // VPSLLVD by 32 (s = 0) yields 0, as needed; when the code does not cross, wh = wl and the
  // left shift only fills bits above the code, which the mask clears.
  __m512i v = _mm512_or_si512(_mm512_srlv_epi32(wl, s), _mm512_sllv_epi32(wh, _mm512_sub_epi32(_mm512_set1_epi32(32), s)));
  const __m512i mq = _mm512_set1_epi32(maxq);
  v = _mm512_and_si512(v, mq);
  if (w.fmt.zeroFormat == int32_t(ZeroFormat::kGptqV1)) v = _mm512_and_si512(_mm512_add_epi32(v, _mm512_set1_epi32(1)), mq);
  return _mm512_cvtepi32_ps(v);
}

inline __m512 scalesOf(const QMatrix& w, size_t g, size_t n, __mmask16 m) {
  const uint16_t* p = w.scales + g * size_t(w.fmt.N) + n;
  return _mm512_cvtph_ps(m == kFull ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)) : _mm256_maskz_loadu_epi16(m, p));
}

// Prefetch distances (qweight rows ahead), as measured for the AVX2 level: ~one DRAM latency
// of work. Not re-measured for AVX-512 (no such machine here).
constexpr size_t kPrefetchUnits = 8;
constexpr size_t kPrefetchUnitsQ8 = 32;
// int8 GEMV strip: 16 vectors = 256 columns advance together one 32-row block at a time, so
// every qweight row is read as one 1 KB run (the AVX2 level measured contiguous runs faster).
constexpr size_t kStripVectors = 16;
// Split-K: per-vector accumulators of up to kQSplitCols columns, in L1.
constexpr size_t kSplitVectors = kQSplitCols / 16;

// ---- GEMV, f32 activations ----------------------------------------------------------------

// Rows m0..m0+MR, columns n..n+16C (vector c under mk[c]).
template <int BITS, int C, int MR>
void gemvBlock(const QMatrix& w, const QActs& a, size_t m0, size_t n, const __mmask16* mk, float* y, size_t ldy) {
  constexpr int U = unitCodes(BITS), W = unitWords(BITS);
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt));
  const uint32_t* qw = w.qweight + n;
  const size_t units = K / U;
  __m512 yacc[MR][C];
  for (int i = 0; i < MR; ++i)
    for (int c = 0; c < C; ++c) yacc[i][c] = _mm512_setzero_ps();
  for (size_t g = 0; g < a.ng; ++g) {
    const size_t u0 = g * G / U, u1 = ((g + 1) * G < K ? (g + 1) * G : K) / U;
    __m512 acc[MR][C];
    for (int i = 0; i < MR; ++i)
      for (int c = 0; c < C; ++c) acc[i][c] = _mm512_setzero_ps();
    for (size_t u = u0; u < u1; ++u) {
      const uint32_t* p = qw + u * W * N;
      if (u + kPrefetchUnits < units) {
        const char* pf = reinterpret_cast<const char*>(p + kPrefetchUnits * W * N);
        for (int r = 0; r < W; ++r)
          for (int b = 0; b < C * 64; b += 64) _mm_prefetch(pf + r * N * 4 + b, _MM_HINT_T0);
      }
      __m512i wv[C][W];
      for (int c = 0; c < C; ++c)
        for (int r = 0; r < W; ++r) wv[c][r] = loadW(p + r * N + 16 * c, mk[c]);
      const float* xk[MR];
      for (int i = 0; i < MR; ++i) xk[i] = a.xs + (m0 + i) * K + u * U;
      forEach(
          [&](auto jc) {
            constexpr int J = decltype(jc)::value;
            __m512 xb[MR];
            for (int i = 0; i < MR; ++i) xb[i] = _mm512_set1_ps(xk[i][J]);
            for (int c = 0; c < C; ++c) {
              const __m512 cf = _mm512_cvtepi32_ps((codeInPlace<BITS, J>(wv[c])));
              for (int i = 0; i < MR; ++i) acc[i][c] = _mm512_fmadd_ps(xb[i], cf, acc[i][c]);
            }
          },
          std::make_integer_sequence<int, U>{});
    }
    for (int c = 0; c < C; ++c) {
      const __m512 z = zerosOf(w, g, n + 16 * c, mk[c]), s = scalesOf(w, g, n + 16 * c, mk[c]);
      for (int i = 0; i < MR; ++i) {
        const __m512 t = _mm512_fnmadd_ps(z, _mm512_set1_ps(a.xsum[(m0 + i) * a.ng + g]), acc[i][c]);
        yacc[i][c] = _mm512_fmadd_ps(s, t, yacc[i][c]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int c = 0; c < C; ++c) storeY(y + (m0 + i) * ldy + n + 16 * c, mk[c], yacc[i][c]);
}

template <int BITS, int C>
void gemvRows(const QMatrix& w, const QActs& a, size_t n, const __mmask16* mk, float* y, size_t ldy) {
  size_t m = 0;
  for (; m + 2 <= a.M; m += 2) gemvBlock<BITS, C, 2>(w, a, m, n, mk, y, ldy);
  if (m < a.M) gemvBlock<BITS, C, 1>(w, a, m, n, mk, y, ldy);
}

template <int BITS>
void gemvColumns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  static const __mmask16 full[4] = {kFull, kFull, kFull, kFull};
  size_t n = n0;
  for (; n + 64 <= n1; n += 64) gemvRows<BITS, 4>(w, a, n, full, y, ldy);
  for (; n < n1; n += 16) {
    const __mmask16 m = tailMask(n1 - n);
    gemvRows<BITS, 1>(w, a, n, &m, y, ldy);
  }
}

// ---- Split-K decode (f32 activations) ------------------------------------------------------

// The group term t = fma(−z, X, A) of group g, row m, columns [n0, n1) into T.
template <int BITS>
void termsF32(const QMatrix& w, const QActs& a, size_t m, size_t g, size_t n0, size_t n1, float* T) {
  constexpr int U = unitCodes(BITS), W = unitWords(BITS);
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt));
  const size_t u0 = g * G / U, u1 = ((g + 1) * G < K ? (g + 1) * G : K) / U;
  const size_t nv = (n1 - n0 + 15) / 16, nfull = (n1 - n0) / 16;
  const __mmask16 last = lastMask(n1 - n0);
  __m512 acc[kSplitVectors];
  for (size_t c = 0; c < nv; ++c) acc[c] = _mm512_setzero_ps();
  for (size_t u = u0; u < u1; ++u) {
    const uint32_t* p = w.qweight + u * W * N + n0;
    const float* xk = a.xs + m * K + u * U;
    // Four vectors per step share each activation broadcast.
    size_t c = 0;
    for (; c + 4 <= nfull; c += 4) {
      __m512i wv[4][W];
      for (int v = 0; v < 4; ++v)
        for (int r = 0; r < W; ++r) wv[v][r] = _mm512_loadu_si512(p + r * N + 16 * (c + v));
      __m512 s0 = acc[c], s1 = acc[c + 1], s2 = acc[c + 2], s3 = acc[c + 3];
      forEach([&](auto jc) {
        constexpr int J = decltype(jc)::value;
        const __m512 xb = _mm512_set1_ps(xk[J]);
        s0 = _mm512_fmadd_ps(xb, _mm512_cvtepi32_ps((codeInPlace<BITS, J>(wv[0]))), s0);
        s1 = _mm512_fmadd_ps(xb, _mm512_cvtepi32_ps((codeInPlace<BITS, J>(wv[1]))), s1);
        s2 = _mm512_fmadd_ps(xb, _mm512_cvtepi32_ps((codeInPlace<BITS, J>(wv[2]))), s2);
        s3 = _mm512_fmadd_ps(xb, _mm512_cvtepi32_ps((codeInPlace<BITS, J>(wv[3]))), s3);
      }, std::make_integer_sequence<int, U>{});
      acc[c] = s0, acc[c + 1] = s1, acc[c + 2] = s2, acc[c + 3] = s3;
    }
    for (; c < nv; ++c) {
      const __mmask16 mk = vecMask(c, nv, last);
      __m512i wv[W];
      for (int r = 0; r < W; ++r) wv[r] = loadW(p + r * N + 16 * c, mk);
      __m512 s = acc[c];
      forEach([&](auto jc) {
        constexpr int J = decltype(jc)::value;
        s = _mm512_fmadd_ps(_mm512_set1_ps(xk[J]), _mm512_cvtepi32_ps((codeInPlace<BITS, J>(wv))), s);
      }, std::make_integer_sequence<int, U>{});
      acc[c] = s;
    }
  }
  const __m512 xsum = _mm512_set1_ps(a.xsum[m * a.ng + g]);
  float* t = T + (m * a.ng + g) * N + n0;
  for (size_t c = 0; c < nv; ++c) {
    const __mmask16 mk = vecMask(c, nv, last);
    storeY(t + 16 * c, mk, _mm512_fnmadd_ps(zerosOf(w, g, n0 + 16 * c, mk), xsum, acc[c]));
  }
}

void groupCombine(const QMatrix& w, const float* T, size_t M, size_t n0, size_t n1, float* y, size_t ldy) {
  const size_t N = size_t(w.fmt.N), ng = size_t(qGroupCount(w.fmt));
  for (size_t m = 0; m < M; ++m)
    for (size_t n = n0; n < n1; n += 16) {
      const __mmask16 mk = tailMask(n1 - n);
      __m512 acc = _mm512_setzero_ps();
      for (size_t g = 0; g < ng; ++g) acc = _mm512_fmadd_ps(scalesOf(w, g, n, mk), loadF(T + (m * ng + g) * N + n, mk), acc);
      storeY(y + m * ldy + n, mk, acc);
    }
}

// ---- GEMM -------------------------------------------------------------------------------

// Per-thread panel: up to 4 tiles of 32 columns × G rows of f32 codes (128 KB, L2-resident).
// Groups too large for one 32-column tile (G > 1024) take the GEMV path.
constexpr size_t kPanelFloats = 32768;
constexpr size_t kPanelCols = 32;
alignas(64) thread_local float tPanel[kPanelFloats];

// Q8: plain codes (the int8 path multiplies them by integer activations), else in place.
template <int BITS, int J, bool Q8>
inline __m512i panelCode(const __m512i* w) {
  constexpr int s = qInPlaceShift(BITS, J);
  if constexpr (Q8 && s != 0) return _mm512_srli_epi32((codeInPlace<BITS, J>(w)), s);
  else return codeInPlace<BITS, J>(w);
}

// Codes of rows [k0, k1) (a group) × columns n..n+16·nv into panel[(k−k0)·32 + 16v].
template <int BITS, bool Q8>
void fillPanel(const QMatrix& w, size_t k0, size_t k1, size_t n, int nv, const __mmask16* mk, float* panel) {
  constexpr int U = unitCodes(BITS), W = unitWords(BITS);
  const size_t N = size_t(w.fmt.N);
  for (size_t u = k0 / U; u < k1 / U; ++u) {
    const uint32_t* p = w.qweight + u * W * N + n;
    float* dst = panel + (u * U - k0) * kPanelCols;
    for (int v = 0; v < nv; ++v) {
      __m512i wv[W];
      for (int r = 0; r < W; ++r) wv[r] = loadW(p + r * N + 16 * v, mk[v]);
      forEach([&](auto jc) { _mm512_store_ps(dst + decltype(jc)::value * kPanelCols + 16 * v, _mm512_cvtepi32_ps((panelCode<BITS, decltype(jc)::value, Q8>(wv)))); },
              std::make_integer_sequence<int, U>{});
    }
  }
}

// acc[i][v] += Σ_k x[i·ldx + k] · panel[k·32 + 16v], k ascending. 8 rows × 2 vectors: 16
// accumulators + 2 panel vectors + 1 broadcast of the 32 zmm registers.
template <int MR, int NV>
inline void panelDot(const float* x, size_t ldx, const float* panel, size_t kn, __m512 (&acc)[MR][NV]) {
  for (size_t k = 0; k < kn; ++k) {
    __m512 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm512_load_ps(panel + k * kPanelCols + 16 * v);
    for (int i = 0; i < MR; ++i) {
      const __m512 xb = _mm512_set1_ps(x[i * ldx + k]);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(xb, b[v], acc[i][v]);
    }
  }
}

struct PanelCtx {
  const QActs* a;
  size_t k0, kn, g;
  const float* panel;
  const __m512* z;
  const __m512* s;
  const __mmask16* mk;
  float* y;
  size_t ldy, n;
};

// One group for rows m0..m0+MR: acc from the panel, then the combine into y (first group:
// from 0, as every path does).
template <int MR, int NV>
void microTile(const PanelCtx& c, size_t m0) {
  const QActs& a = *c.a;
  __m512 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  panelDot<MR, NV>(a.xs + m0 * a.K + c.k0, a.K, c.panel, c.kn, acc);
  for (int i = 0; i < MR; ++i) {
    const __m512 xsb = _mm512_set1_ps(a.xsum[(m0 + i) * a.ng + c.g]);
    for (int v = 0; v < NV; ++v) {
      float* yp = c.y + (m0 + i) * c.ldy + c.n + 16 * v;
      const __m512 t = _mm512_fnmadd_ps(c.z[v], xsb, acc[i][v]);
      const __m512 prev = c.g == 0 ? _mm512_setzero_ps() : loadF(yp, c.mk[v]);
      storeY(yp, c.mk[v], _mm512_fmadd_ps(c.s[v], t, prev));
    }
  }
}

// Q8: per 32-row block, I = Σ q·c in f32 FMAs is exact (|partial| <= 32·255·127 < 2^24), then
// A = fma(fma(−z, Q, I), d, A) as in every other path.
template <int MR, int NV>
void microTileQ8(const PanelCtx& c, size_t m0) {
  const QActs& a = *c.a;
  __m512 A[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) A[i][v] = _mm512_setzero_ps();
  for (size_t b = 0, kb = 0; kb < c.kn; ++b, kb += kQ8Block) {
    const size_t kb1 = kb + kQ8Block < c.kn ? kb + kQ8Block : c.kn;
    __m512 I[MR][NV];
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < NV; ++v) I[i][v] = _mm512_setzero_ps();
    panelDot<MR, NV>(a.xs + m0 * a.K + c.k0 + kb, a.K, c.panel + kb * kPanelCols, kb1 - kb, I);
    for (int i = 0; i < MR; ++i) {
      const size_t bi = (m0 + i) * a.nbt + c.g * a.bpg + b;
      const __m512 q = _mm512_set1_ps(a.qsum[bi]), d = _mm512_set1_ps(a.dx[bi]);
      for (int v = 0; v < NV; ++v) A[i][v] = _mm512_fmadd_ps(_mm512_fnmadd_ps(c.z[v], q, I[i][v]), d, A[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) {
      float* yp = c.y + (m0 + i) * c.ldy + c.n + 16 * v;
      const __m512 prev = c.g == 0 ? _mm512_setzero_ps() : loadF(yp, c.mk[v]);
      storeY(yp, c.mk[v], _mm512_fmadd_ps(c.s[v], A[i][v], prev));
    }
}

template <bool Q8, int MR, int NV>
inline void tileRows(const PanelCtx& c, size_t m0) {
  if constexpr (Q8) microTileQ8<MR, NV>(c, m0);
  else microTile<MR, NV>(c, m0);
}

template <bool Q8, int NV>
void microRows(const PanelCtx& c) {
  const size_t M = c.a->M;
  size_t m = 0;
  for (; m + 8 <= M; m += 8) tileRows<Q8, 8, NV>(c, m);
  switch (M - m) {
    case 7: tileRows<Q8, 7, NV>(c, m); break;
    case 6: tileRows<Q8, 6, NV>(c, m); break;
    case 5: tileRows<Q8, 5, NV>(c, m); break;
    case 4: tileRows<Q8, 4, NV>(c, m); break;
    case 3: tileRows<Q8, 3, NV>(c, m); break;
    case 2: tileRows<Q8, 2, NV>(c, m); break;
    case 1: tileRows<Q8, 1, NV>(c, m); break;
    default: break;
  }
}

// Panel GEMM over columns [n0, n1); `gemv` serves groups too large for the panel.
template <int BITS, bool Q8>
void gemmColumns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy, QColumnsFn gemv) {
  const size_t K = a.K, G = size_t(qEffectiveGroup(w.fmt));
  const size_t fit = kPanelFloats / (G * kPanelCols);
  const size_t tilesPerPass = fit < 4 ? fit : 4;
  if (tilesPerPass == 0) return gemv(w, a, n0, n1, y, ldy);
  for (size_t nb = n0; nb < n1; nb += kPanelCols * tilesPerPass) {
    const size_t nbEnd = nb + kPanelCols * tilesPerPass < n1 ? nb + kPanelCols * tilesPerPass : n1;
    for (size_t g = 0; g < a.ng; ++g) {
      const size_t k0 = g * G, k1 = (g + 1) * G < K ? (g + 1) * G : K;
      __m512 z[4][2], s[4][2];
      __mmask16 mk[4][2];
      int nvs[4];
      size_t t = 0;
      for (size_t n = nb; n < nbEnd; n += kPanelCols, ++t) {
        const size_t cols = nbEnd - n;
        nvs[t] = cols > 16 ? 2 : 1;
        mk[t][0] = tailMask(cols), mk[t][1] = tailMask(cols > 16 ? cols - 16 : 0);
        fillPanel<BITS, Q8>(w, k0, k1, n, nvs[t], mk[t], tPanel + t * G * kPanelCols);
        for (int v = 0; v < nvs[t]; ++v) z[t][v] = zerosOf(w, g, n + 16 * v, mk[t][v]), s[t][v] = scalesOf(w, g, n + 16 * v, mk[t][v]);
      }
      t = 0;
      for (size_t n = nb; n < nbEnd; n += kPanelCols, ++t) {
        const PanelCtx c{&a, k0, k1 - k0, g, tPanel + t * G * kPanelCols, z[t], s[t], mk[t], y, ldy, n};
        if (nvs[t] == 2) microRows<Q8, 2>(c);
        else microRows<Q8, 1>(c);
      }
    }
  }
}

}  // namespace

// ---- int8-activation GEMV: maddubs form, then the VNNI form in its own target region ----
namespace {
#define KV_Q8_NS q8mad
#define KV_Q8_VNNI 0
#include "gemm_q_avx512_q8.h"
#undef KV_Q8_NS
#undef KV_Q8_VNNI
}  // namespace

#if !KVANT_SIMD_EMULATED
#pragma GCC push_options
#pragma GCC target("avx512vnni")
#endif
namespace {
#define KV_Q8_NS q8vnni
#define KV_Q8_VNNI 1
#include "gemm_q_avx512_q8.h"
#undef KV_Q8_NS
#undef KV_Q8_VNNI
}  // namespace
#if !KVANT_SIMD_EMULATED
#pragma GCC pop_options
#endif

namespace {

template <int BITS, bool VNNI>
void columnsFor(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  // M <= 8 streams the weights once per row pair; beyond that the panel kernel's reuse wins.
  if (a.act == QAct::kInt8) {
    const QColumnsFn q8 = VNNI ? q8vnni::q8Columns : q8mad::q8Columns;
    if (a.M <= 8) q8(w, a, n0, n1, y, ldy);
    else gemmColumns<BITS, true>(w, a, n0, n1, y, ldy, q8);
    return;
  }
  if (a.M <= 8) gemvColumns<BITS>(w, a, n0, n1, y, ldy);
  else gemmColumns<BITS, false>(w, a, n0, n1, y, ldy, gemvColumns<BITS>);
}

template <bool VNNI>
void columns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  switch (w.fmt.bits) {
    case 2: return columnsFor<2, VNNI>(w, a, n0, n1, y, ldy);
    case 3: return columnsFor<3, VNNI>(w, a, n0, n1, y, ldy);
    case 4: return columnsFor<4, VNNI>(w, a, n0, n1, y, ldy);
    case 8: return columnsFor<8, VNNI>(w, a, n0, n1, y, ldy);
    default: return;
  }
}

template <bool VNNI>
void groupTerms(const QMatrix& w, const QActs& a, size_t g, size_t n0, size_t n1, float* T) {
  for (size_t m = 0; m < a.M; ++m)
    for (size_t n = n0; n < n1; n += kQSplitCols) {
      const size_t e = n + kQSplitCols < n1 ? n + kQSplitCols : n1;
      if (a.act == QAct::kInt8) {
        (VNNI ? q8vnni::q8Terms : q8mad::q8Terms)(w, a, m, g, n, e, T);
        continue;
      }
      switch (w.fmt.bits) {
        case 2: termsF32<2>(w, a, m, g, n, e, T); break;
        case 3: termsF32<3>(w, a, m, g, n, e, T); break;
        case 4: termsF32<4>(w, a, m, g, n, e, T); break;
        case 8: termsF32<8>(w, a, m, g, n, e, T); break;
        default: break;
      }
    }
}

void fmaRow(float a, const float* x, float* y, size_t n) {
  const __m512 av = _mm512_set1_ps(a);
  for (size_t i = 0; i < n; i += 16) {
    const __mmask16 m = tailMask(n - i);
    storeY(y + i, m, _mm512_fmadd_ps(av, loadF(x + i, m), loadF(y + i, m)));
  }
}

}  // namespace
const QGemmKernels kQGemmKernels = {columns<false>, fmaRow, groupTerms<false>, groupCombine};
const QGemmKernels kQGemmKernelsVnni = {columns<true>, fmaRow, groupTerms<true>, groupCombine};
}  // namespace avx512
}  // namespace kvant
