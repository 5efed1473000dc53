// AVX2+FMA level of the fused dequant GEMV/GEMM. Both regimes perform exactly the operation
// sequence of gemm_q.h (per output: one FMA chain per group over ascending k, then the
// scale/zero combine), so they agree bit for bit with each other and with the scalar reference.
//
// qweight is [K·bits/32, N]: one qweight row holds, for each column, a word of codes along K.
// Eight consecutive columns are therefore one 32-byte load, and code j of all eight is one
// AND (kept in place, see gemm_q.h) + one int->float convert, then one FMA per activation row.
//
// GEMV (M <= 8, memory-bound): a block of 8·C columns keeps its accumulators in registers
// and walks down the qweight rows, touching each weight byte once, with software prefetch
// a few rows ahead (the rows are N·4 bytes apart, farther than the hardware streamer follows).
// GEMM (M > 8, compute-bound): the codes of a group × 16..64-column panel are converted once
// into an L1/L2-resident f32 buffer and reused by every 6-row tile of x through a 6x16
// register-tiled micro-kernel (12 accumulators + 2 panel vectors + 1 broadcast = 15 ymm).
#include <immintrin.h>

#include <cmath>
#include <cstring>
#include <utility>

#include "gemm_q.h"
#include "kvant/half.h"

namespace kvant {
namespace avx2 {
namespace {

template <class F, int... Js>
inline void forEach(F&& f, std::integer_sequence<int, Js...>) {
  (f(std::integral_constant<int, Js>{}), ...);
}

constexpr int unitCodes(int bits) { return bits == 3 ? 32 : 32 / bits; }
constexpr int unitWords(int bits) { return bits == 3 ? 3 : 1; }

// Code J of a packing unit for 8 columns, as an exact integer c·2^e (e = qInPlaceShift).
// w points at the unit's words for these 8 columns.
template <int BITS, int J>
inline __m256i codeInPlace(const __m256i* w) {
  constexpr int pos = BITS * J, word = pos / 32, s = pos % 32;
  constexpr int maxq = (1 << BITS) - 1;
  if constexpr (s + BITS < 32) {
    return _mm256_and_si256(w[word], _mm256_set1_epi32(maxq << s));
  } else if constexpr (s + BITS == 32) {
    return _mm256_srli_epi32(w[word], s);  // top code: the shift also clears the rest
  } else {  // 3-bit code split across two words (codes 10 and 21 of the 96-bit unit)
    return _mm256_and_si256(_mm256_or_si256(_mm256_srli_epi32(w[word], s), _mm256_slli_epi32(w[word + 1], 32 - s)),
                            _mm256_set1_epi32(maxq));
  }
}

// Zero points of columns n..n+7 of group g as floats. Column c's code starts at bit bits·c of
// the qzeros row in every layout (2/4/8 bits and the 96-bit 3-bit units alike), so two
// gathers (the word holding its low bit and the one holding its high bit) cover all formats.
inline __m256 zerosOf(const QMatrix& w, size_t g, size_t n) {
  const int bits = w.fmt.bits;
  const uint32_t maxq = (1u << bits) - 1;
  const uint32_t* row = w.qzeros + g * size_t(qZeroCols(w.fmt));
  const size_t gp0 = size_t(bits) * n;
  const int* base = reinterpret_cast<const int*>(row + gp0 / 32);
  const __m256i bp = _mm256_add_epi32(_mm256_set1_epi32(int(gp0 % 32)), _mm256_mullo_epi32(_mm256_set1_epi32(bits), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  const __m256i lo = _mm256_srli_epi32(bp, 5), hi = _mm256_srli_epi32(_mm256_add_epi32(bp, _mm256_set1_epi32(bits - 1)), 5);
  const __m256i s = _mm256_and_si256(bp, _mm256_set1_epi32(31));
  const __m256i wl = _mm256_i32gather_epi32(base, lo, 4), wh = _mm256_i32gather_epi32(base, hi, 4);
  // sllv by 32 (s = 0) yields 0, as needed when the code does not cross a word.
  __m256i v = _mm256_or_si256(_mm256_srlv_epi32(wl, s), _mm256_sllv_epi32(wh, _mm256_sub_epi32(_mm256_set1_epi32(32), s)));
  const __m256i mq = _mm256_set1_epi32(int(maxq));
  v = _mm256_and_si256(v, mq);
  if (w.fmt.zeroFormat == int32_t(ZeroFormat::kGptqV1)) v = _mm256_and_si256(_mm256_add_epi32(v, _mm256_set1_epi32(1)), mq);
  return _mm256_cvtepi32_ps(v);
}

inline __m256 scalesOf(const QMatrix& w, size_t g, size_t n) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales + g * size_t(w.fmt.N) + n)));
}

// How many qweight rows ahead to prefetch: ~8 units keep ~1 KB per 32 columns in flight
// per thread, enough to cover DRAM latency at this machine's per-core bandwidth.
constexpr size_t kPrefetchUnits = 8;

// GEMV block: rows m0..m0+MR, columns n..n+8C (all inside N).
template <int BITS, int C, int MR>
void gemvBlock(const QMatrix& w, const QActs& a, size_t m0, size_t n, float* y, size_t ldy) {
  constexpr int U = unitCodes(BITS), W = unitWords(BITS);
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt));
  const uint32_t* qw = w.qweight + n;
  const size_t units = K / U;
  __m256 yacc[MR][C];
  for (int i = 0; i < MR; ++i)
    for (int c = 0; c < C; ++c) yacc[i][c] = _mm256_setzero_ps();
  for (size_t g = 0; g < a.ng; ++g) {
    const size_t u0 = g * G / U, u1 = ((g + 1) * G < K ? (g + 1) * G : K) / U;
    __m256 acc[MR][C];
    for (int i = 0; i < MR; ++i)
      for (int c = 0; c < C; ++c) acc[i][c] = _mm256_setzero_ps();
    for (size_t u = u0; u < u1; ++u) {
      const uint32_t* p = qw + u * W * N;
      if (u + kPrefetchUnits < units) {
        const char* pf = reinterpret_cast<const char*>(p + kPrefetchUnits * W * N);
        for (int r = 0; r < W; ++r)
          for (int b = 0; b < C * 32; b += 64) _mm_prefetch(pf + r * N * 4 + b, _MM_HINT_T0);
      }
      __m256i wv[C][W];
      for (int c = 0; c < C; ++c)
        for (int r = 0; r < W; ++r) wv[c][r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + r * N + 8 * c));
      const float* xk[MR];
      for (int i = 0; i < MR; ++i) xk[i] = a.xs + (m0 + i) * K + u * U;
      forEach(
          [&](auto jc) {
            constexpr int J = decltype(jc)::value;
            __m256 xb[MR];
            for (int i = 0; i < MR; ++i) xb[i] = _mm256_broadcast_ss(xk[i] + J);
            for (int c = 0; c < C; ++c) {
              const __m256 cf = _mm256_cvtepi32_ps(codeInPlace<BITS, J>(wv[c]));
              for (int i = 0; i < MR; ++i) acc[i][c] = _mm256_fmadd_ps(xb[i], cf, acc[i][c]);
            }
          },
          std::make_integer_sequence<int, U>{});
    }
    for (int c = 0; c < C; ++c) {
      const __m256 z = zerosOf(w, g, n + 8 * c), s = scalesOf(w, g, n + 8 * c);
      for (int i = 0; i < MR; ++i) {
        const __m256 t = _mm256_fnmadd_ps(z, _mm256_broadcast_ss(a.xsum + (m0 + i) * a.ng + g), acc[i][c]);
        yacc[i][c] = _mm256_fmadd_ps(s, t, yacc[i][c]);
      }
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int c = 0; c < C; ++c) _mm256_storeu_ps(y + (m0 + i) * ldy + n + 8 * c, yacc[i][c]);
}

template <int BITS, int C>
void gemvRows(const QMatrix& w, const QActs& a, size_t n, float* y, size_t ldy) {
  size_t m = 0;
  for (; m + 2 <= a.M; m += 2) gemvBlock<BITS, C, 2>(w, a, m, n, y, ldy);
  if (m < a.M) gemvBlock<BITS, C, 1>(w, a, m, n, y, ldy);
}

template <int BITS>
void gemvColumns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  size_t n = n0;
  for (; n + 32 <= n1; n += 32) gemvRows<BITS, 4>(w, a, n, y, ldy);
  for (; n + 8 <= n1; n += 8) gemvRows<BITS, 1>(w, a, n, y, ldy);
  if (n < n1) scalar::kQGemmKernels.columns(w, a, n, n1, y, ldy);  // 8-bit N % 8 == 4 tail: same math
}

// ---- GEMM -------------------------------------------------------------------------------

// Per-thread panel: up to 4 tiles of 16 columns × G rows of f32 codes (128 KB: L2-resident,
// leaving room for the x slices). Groups larger than 2048 take the GEMV path per row pair.
constexpr size_t kPanelFloats = 32768;
alignas(64) thread_local float tPanel[kPanelFloats];

// Converts the codes of rows [k0, k1) (a group) × columns n..n+8·NV into panel[(k−k0)·16 + 8v].
template <int BITS>
void fillPanel(const QMatrix& w, size_t k0, size_t k1, size_t n, int nv, float* panel) {
  constexpr int U = unitCodes(BITS), W = unitWords(BITS);
  const size_t N = size_t(w.fmt.N);
  for (size_t u = k0 / U; u < k1 / U; ++u) {
    const uint32_t* p = w.qweight + u * W * N + n;
    float* dst = panel + (u * U - k0) * 16;
    for (int v = 0; v < nv; ++v) {
      __m256i wv[W];
      for (int r = 0; r < W; ++r) wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + r * N + 8 * v));
      forEach([&](auto jc) { _mm256_store_ps(dst + decltype(jc)::value * 16 + 8 * v, _mm256_cvtepi32_ps(codeInPlace<BITS, decltype(jc)::value>(wv))); },
              std::make_integer_sequence<int, U>{});
    }
  }
}

// One group for rows m0..m0+MR × 8·NV columns: acc = Σ_k xs·code from the panel, then the
// combine into y (first group: from 0, as every path does).
template <int MR, int NV>
void microTile(const float* xs, size_t K, size_t m0, size_t k0, size_t kn, const float* panel, const __m256* z, const __m256* s,
               const float* xsum, size_t ng, size_t g, float* y, size_t ldy, size_t n) {
  __m256 acc[MR][NV];
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_ps();
  const float* xr[MR];
  for (int i = 0; i < MR; ++i) xr[i] = xs + (m0 + i) * K + k0;
  for (size_t k = 0; k < kn; ++k) {
    __m256 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm256_load_ps(panel + k * 16 + 8 * v);
    for (int i = 0; i < MR; ++i) {
      const __m256 xb = _mm256_broadcast_ss(xr[i] + k);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(xb, b[v], acc[i][v]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    const __m256 xsb = _mm256_broadcast_ss(xsum + (m0 + i) * ng + g);
    for (int v = 0; v < NV; ++v) {
      float* yp = y + (m0 + i) * ldy + n + 8 * v;
      const __m256 t = _mm256_fnmadd_ps(z[v], xsb, acc[i][v]);
      const __m256 prev = g == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(yp);
      _mm256_storeu_ps(yp, _mm256_fmadd_ps(s[v], t, prev));
    }
  }
}

template <int NV>
void microRows(const QActs& a, size_t k0, size_t kn, const float* panel, const __m256* z, const __m256* s, size_t g, float* y,
               size_t ldy, size_t n) {
  size_t m = 0;
  for (; m + 6 <= a.M; m += 6) microTile<6, NV>(a.xs, a.K, m, k0, kn, panel, z, s, a.xsum, a.ng, g, y, ldy, n);
  switch (a.M - m) {
    case 5: microTile<5, NV>(a.xs, a.K, m, k0, kn, panel, z, s, a.xsum, a.ng, g, y, ldy, n); break;
    case 4: microTile<4, NV>(a.xs, a.K, m, k0, kn, panel, z, s, a.xsum, a.ng, g, y, ldy, n); break;
    case 3: microTile<3, NV>(a.xs, a.K, m, k0, kn, panel, z, s, a.xsum, a.ng, g, y, ldy, n); break;
    case 2: microTile<2, NV>(a.xs, a.K, m, k0, kn, panel, z, s, a.xsum, a.ng, g, y, ldy, n); break;
    case 1: microTile<1, NV>(a.xs, a.K, m, k0, kn, panel, z, s, a.xsum, a.ng, g, y, ldy, n); break;
    default: break;
  }
}

template <int BITS>
void gemmColumns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  const size_t K = a.K, G = size_t(qEffectiveGroup(w.fmt));
  const size_t n8 = n0 + (n1 - n0) / 8 * 8;
  const size_t tilesPerPass = kPanelFloats / (G * 16) < 4 ? kPanelFloats / (G * 16) : 4;
  if (tilesPerPass == 0) {
    for (size_t n = n0; n < n8; n += 8) gemvRows<BITS, 1>(w, a, n, y, ldy);
  } else {
    for (size_t nb = n0; nb < n8; nb += 16 * tilesPerPass) {
      const size_t nbEnd = nb + 16 * tilesPerPass < n8 ? nb + 16 * tilesPerPass : n8;
      for (size_t g = 0; g < a.ng; ++g) {
        const size_t k0 = g * G, k1 = (g + 1) * G < K ? (g + 1) * G : K;
        size_t t = 0;
        __m256 z[4][2], s[4][2];
        for (size_t n = nb; n < nbEnd; n += 16, ++t) {
          const int nv = nbEnd - n >= 16 ? 2 : 1;
          fillPanel<BITS>(w, k0, k1, n, nv, tPanel + t * G * 16);
          for (int v = 0; v < nv; ++v) z[t][v] = zerosOf(w, g, n + 8 * v), s[t][v] = scalesOf(w, g, n + 8 * v);
        }
        t = 0;
        for (size_t n = nb; n < nbEnd; n += 16, ++t) {
          if (nbEnd - n >= 16) microRows<2>(a, k0, k1 - k0, tPanel + t * G * 16, z[t], s[t], g, y, ldy, n);
          else microRows<1>(a, k0, k1 - k0, tPanel + t * G * 16, z[t], s[t], g, y, ldy, n);
        }
      }
    }
  }
  if (n8 < n1) scalar::kQGemmKernels.columns(w, a, n8, n1, y, ldy);
}

template <int BITS>
void columnsFor(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  // M <= 8 streams the weights once per row pair; beyond that the panel kernel's reuse wins.
  if (a.M <= 8) gemvColumns<BITS>(w, a, n0, n1, y, ldy);
  else gemmColumns<BITS>(w, a, n0, n1, y, ldy);
}

void columns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  switch (w.fmt.bits) {
    case 2: return columnsFor<2>(w, a, n0, n1, y, ldy);
    case 3: return columnsFor<3>(w, a, n0, n1, y, ldy);
    case 4: return columnsFor<4>(w, a, n0, n1, y, ldy);
    case 8: return columnsFor<8>(w, a, n0, n1, y, ldy);
    default: return;
  }
}

void fmaRow(float a, const float* x, float* y, size_t n) {
  const __m256 av = _mm256_set1_ps(a);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);  // same correctly-rounded FMA as the lanes
}

}  // namespace
const QGemmKernels kQGemmKernels = {columns, fmaRow};
}  // namespace avx2
}  // namespace kvant
