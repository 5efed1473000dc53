// AVX2+FMA level of the fused dequant GEMV/GEMM. Both regimes perform exactly the operation
// sequence of gemm_q.h (per output: one FMA chain per group over ascending k, then the
// scale/zero combine), so they agree bit for bit with each other and with the scalar reference.
//
// qweight is [K·bits/32, N]: one qweight row holds, for each column, a word of codes along K.
// Eight consecutive columns are therefore one 32-byte load, and code j of all eight is one
// AND (kept in place, see gemm_q.h) + one int->float convert, then one FMA per activation row.
//
// Decode (M <= 8, memory-bound), two shapes of the same arithmetic:
//  - split-K (>= 4 groups, the usual case): a task reads the qweight rows of one group front
//    to back over up to 2048 columns (long contiguous runs, like a dense GEMV's rows) and
//    writes the group terms; groupCombine then applies the scales in group order.
//  - column blocks (few groups): 8·C columns keep their accumulators in registers and walk
//    down the qweight rows with software prefetch.
// Each weight byte is read once per activation row group either way.
// GEMM (M > 8, compute-bound): the codes of a group × 16..64-column panel are converted once
// per row block into an L1/L2-resident buffer and reused by every 6-row tile of x (packed
// k-major by qgemmPrepare) through a 6x16 register-tiled micro-kernel: f32 FMAs (12
// accumulators + 2 panel vectors + broadcasts = 16 ymm), or, for int8 activations at 2/3/4
// bits, maddubs byte dot products on a byte panel (32 multiply-adds per instruction).
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
// the qzeros row in every layout (2/4/8 bits and the 96-bit 3-bit units alike), so the 8 codes
// are 8·bits consecutive bits from bit bits·n: one word (2/4 bits; n is a multiple of 8), two
// (8 bits), or at most two for 3 bits (24 bits from a bit offset 3n mod 32 in {0, 8, 16, 24};
// the second word is read only when the codes reach into it, so nothing past the row is
// touched). The 3-bit form used two gathers before; perf put ~18% of a hot 3-bit int8 GEMV's
// samples on them (once per group and column vector).
inline __m256 zerosOf(const QMatrix& w, size_t g, size_t n) {
  const int bits = w.fmt.bits;
  const uint32_t maxq = (1u << bits) - 1;
  const uint32_t* row = w.qzeros + g * size_t(qZeroCols(w.fmt));
  const size_t gp0 = size_t(bits) * n;
  const __m256i mq = _mm256_set1_epi32(int(maxq));
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  __m256i v;
  if (bits == 8) {
    v = _mm256_srlv_epi32(_mm256_setr_epi32(int(row[n / 4]), int(row[n / 4]), int(row[n / 4]), int(row[n / 4]), int(row[n / 4 + 1]),
                                            int(row[n / 4 + 1]), int(row[n / 4 + 1]), int(row[n / 4 + 1])),
                          _mm256_setr_epi32(0, 8, 16, 24, 0, 8, 16, 24));
  } else {
    const size_t w0 = gp0 / 32;
    const unsigned off = unsigned(gp0 % 32);
    uint64_t u = row[w0];
    if (off + 8u * unsigned(bits) > 32) u |= uint64_t(row[w0 + 1]) << 32;  // 3 bits only
    v = _mm256_srlv_epi32(_mm256_set1_epi32(int(uint32_t(u >> off))), _mm256_mullo_epi32(_mm256_set1_epi32(bits), lane));
  }
  v = _mm256_and_si256(v, mq);
  if (w.fmt.zeroFormat == int32_t(ZeroFormat::kGptqV1)) v = _mm256_and_si256(_mm256_add_epi32(v, _mm256_set1_epi32(1)), mq);
  return _mm256_cvtepi32_ps(v);
}

inline __m256 scalesOf(const QMatrix& w, size_t g, size_t n) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w.scales + g * size_t(w.fmt.N) + n)));
}

// How many qweight rows ahead to prefetch. A row of a 32-column block is 128 bytes and takes
// ~30 cycles in the f32 GEMV, ~10 in the int8 one; 8 (resp. 32) rows ahead is ~250-300 cycles,
// about one DRAM latency, i.e. 1-4 KB in flight per thread (measured: 32 beat 8 for int8).
constexpr size_t kPrefetchUnits = 8;
constexpr size_t kPrefetchUnitsQ8 = 32;

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

// ---- GEMV with int8 activations (QAct::kInt8, 2, 3, 4 and 8 bits; 3 bits: Q8Dot3 below) ----
//
// One packed word holds 32/BITS codes of one column along K. Shifting the 8-column vector
// right by BITS·j and masking every byte with maxq leaves, in byte i of each column's lane,
// code (8/BITS)·i + j: exactly the byte order qgemmPrepare wrote the int8 activations in.
// maddubs (u8 codes × s8 activations, adjacent pairs summed to i16) then yields partial dot
// products, summed over a 32-row block in i16 (bound: 8 maddubs per block per lane, each
// |pair| <= 2·maxq·127: 4 bits 8·3810 = 30480, 2 bits 8·762 = 6096, both < 32767) and
// widened once per block with madd(·, 1) (8 bits: recentred codes, see Q8Dot). I_b is
// exact, so this equals the scalar reference.
// All columns of the strip (up to kStripVectors·8) advance together one 32-row block at a
// time, so every qweight row is read as one contiguous run (256 bytes for a 64-column task;
// measured 25-40% faster from DRAM than 32-column blocks walking 128-byte runs N·4 bytes
// apart); the per-vector accumulators live in small L1 arrays.
constexpr size_t kStripVectors = 16;

// I_b for one column vector, row by row (xr: the row's SH broadcast activation words).
// 2/4 bits: maddubs of the masked codes (u8) with the int8 activations, summed in i16 (bound
// above), widened once per block. 8 bits: a code up to 255 times 127 would saturate maddubs'
// pair sums (2·255·127 > 32767), so the code is recentred, c' = c − 128 in [−128, 127], and
// maddubs takes |c'| (u8, <= 128) and the activation carrying c's sign: pairs <= 2·128·127 =
// 32512. Each row's pairs are widened at once (8 rows per block would overflow i16), and
// I = Σ q·c' + 128·Q, all exact integers below 2^24, so the f32 result is exact.
template <int BITS>
struct Q8Dot {
  static constexpr int SH = 8 / BITS;
  __m256i s = _mm256_setzero_si256();
  inline void row(__m256i wv, const __m256i* xr) {
    // Keep wv in a register: GCC otherwise folds the load into each use (and, shift), i.e. two
    // loads of the same 32 bytes per row next to two activation loads, and the loop becomes
    // load-port bound (measured: -9% CPU time on a hot 4-bit q_proj GEMV with one load).
    asm("" : "+x"(wv));
    if constexpr (BITS == 8) {
      const __m256i c = _mm256_xor_si256(wv, _mm256_set1_epi8(char(0x80)));
      s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(c), _mm256_sign_epi8(xr[0], c)), _mm256_set1_epi16(1)));
    } else {
      const __m256i mask = _mm256_set1_epi8(char((1 << BITS) - 1));
      for (int j = 0; j < SH; ++j)
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(j ? _mm256_srli_epi32(wv, BITS * j) : wv, mask), xr[j]));
    }
  }
  // I_b as f32 (exact); q: the block's Q_b broadcast.
  inline __m256 result(__m256 q) const {
    if constexpr (BITS == 8) return _mm256_fmadd_ps(_mm256_set1_ps(128.0f), q, _mm256_cvtepi32_ps(s));
    else return _mm256_cvtepi32_ps(_mm256_madd_epi16(s, _mm256_set1_epi16(1)));
  }
};

// 3 bits: one 32-row block is one 96-bit unit (3 qweight rows), unpacked into the 8 quads of
// kQ3Quads (gemm_q.h: byte blends of the three words, a shift and a mask of 7 per byte; quads
// 6 and 7 combine two of the blends, see q3Unpack). About 31 instructions per unit and 8
// columns against ~100 for the f32-activation unit (and, convert, FMA per code). Codes <= 7:
// each maddubs pair <= 2·7·127 = 1778, the block's 8 maddubs sum to <= 14224 < 32767 in i16,
// widened once per block: I_b exact.
inline __m256i ror32(__m256i v, int s) { return _mm256_or_si256(_mm256_srli_epi32(v, s), _mm256_slli_epi32(v, 32 - s)); }

// out.quad(v) receives quads 0..7 in kQ3Quads order, exact (every byte a code 0..7).
template <class Sink>
inline void q3Unpack(__m256i w0, __m256i w1, __m256i w2, Sink& out) {
  const __m256i b1 = _mm256_set1_epi32(0x0000ff00), b2 = _mm256_set1_epi32(0x00ff0000), m7 = _mm256_set1_epi8(7);
  // Byte p from word (2p + o) mod 3: bytes 0 and 3 from the first argument, 1 and 2 from the others.
  auto blend = [&](__m256i a03, __m256i a1, __m256i a2) { return _mm256_blendv_epi8(_mm256_blendv_epi8(a03, a1, b1), a2, b2); };
  const __m256i v0 = blend(w0, w2, w1), v1 = blend(w1, w0, w2), v2 = blend(w2, w1, w0);
  out.quad(_mm256_and_si256(v0, m7));
  out.quad(_mm256_and_si256(_mm256_srli_epi32(v1, 1), m7));
  out.quad(_mm256_and_si256(_mm256_srli_epi32(v2, 2), m7));
  out.quad(_mm256_and_si256(_mm256_srli_epi32(v0, 3), m7));
  out.quad(_mm256_and_si256(_mm256_srli_epi32(v1, 4), m7));
  out.quad(_mm256_and_si256(_mm256_srli_epi32(v2, 5), m7));
  // The two-byte codes. Quad 6 (codes 2, 26, 18, 10): byte p's low two bits are bits 8p+6..7
  // of v0 (the right word), its third bit is bit 8(p+1) mod 32 of v1, whose bytes 1, 2, 3 are
  // w0, w2, w1 (the same words) and whose byte 0 is w1 (code 10's third bit, w1 bit 0):
  // v1 rotated right by 6 puts those bits at 8p + 2. Quad 7 (codes 13, 5, 29, 21) likewise:
  // bit 0 from v1 >> 7, bits 1-2 from v2 rotated right by 7 (bytes 1, 2, 3 = w1, w0, w2; byte
  // 0 = w2 bits 0-1, code 21's upper bits).
  out.quad(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(v0, 6), _mm256_set1_epi8(3)), _mm256_and_si256(ror32(v1, 6), _mm256_set1_epi8(4))));
  out.quad(_mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(v1, 7), _mm256_set1_epi8(1)), _mm256_and_si256(ror32(v2, 7), _mm256_set1_epi8(6))));
}

struct Q8Dot3 {
  __m256i s = _mm256_setzero_si256();
  const __m256i* xr = nullptr;  // the 8 broadcast activation quads of the block
  int j = 0;
  inline void quad(__m256i v) { s = _mm256_add_epi16(s, _mm256_maddubs_epi16(v, xr[j++])); }
  inline __m256 result(__m256) const { return _mm256_cvtepi32_ps(_mm256_madd_epi16(s, _mm256_set1_epi16(1))); }
};

// Codes per packing unit, activation quads per unit, units per 32-row block (int8 kernels).
template <int BITS>
struct Q8Shape {
  static constexpr int U = unitCodes(BITS), W = unitWords(BITS), SH = BITS == 3 ? 8 : 8 / BITS, ROWS = int(kQ8Block) / U;
};

// I_b of one column vector over the `rows` units of a block starting at p (its first qweight
// row at the vector's columns), xv: the block's broadcast activation quads.
template <int BITS>
inline __m256 blockDot(const uint32_t* p, size_t N, size_t rows, const __m256i (*xv)[Q8Shape<BITS>::SH], __m256 q) {
  using S = Q8Shape<BITS>;
  auto ld = [&](size_t r) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + r * N)); };
  if constexpr (BITS == 3) {
    (void)rows;  // a block is exactly one unit (G and K are multiples of 32)
    Q8Dot3 dot;
    dot.xr = xv[0];
    q3Unpack(ld(0), ld(1), ld(2), dot);
    return dot.result(q);
  } else {
    Q8Dot<BITS> dot;
    if (rows == size_t(S::ROWS)) {
      for (int r = 0; r < S::ROWS; ++r) dot.row(ld(size_t(r)), xv[r]);
    } else {
      for (size_t r = 0; r < rows; ++r) dot.row(ld(r), xv[r]);
    }
    return dot.result(q);
  }
}

// The broadcast activation quads of the `rows` units from unit u0 (qx: the row's word order).
template <int BITS>
inline void blockActs(const int8_t* qx, size_t u0, size_t rows, __m256i (*xv)[Q8Shape<BITS>::SH]) {
  using S = Q8Shape<BITS>;
  for (size_t r = 0; r < rows; ++r)
    for (int j = 0; j < S::SH; ++j) {
      int32_t v;
      std::memcpy(&v, qx + (u0 + r) * S::U + 4 * j, 4);
      xv[r][j] = _mm256_set1_epi32(v);
    }
}

template <int BITS>
void gemvQ8Strip(const QMatrix& w, const QActs& a, size_t m, size_t n0, size_t nv, float* y, size_t ldy) {
  using S = Q8Shape<BITS>;
  constexpr int U = S::U, W = S::W;
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt)), qrows = K / U * W;
  const uint32_t* qw = w.qweight + n0;
  const int8_t* qx = a.qx + m * K;
  const float* dx = a.dx + m * a.nbt;
  const float* qs = a.qsum + m * a.nbt;
  __m256 A[kStripVectors], Z[kStripVectors], Y[kStripVectors];
  for (size_t c = 0; c < nv; ++c) Y[c] = _mm256_setzero_ps();
  for (size_t g = 0; g < a.ng; ++g) {
    const size_t k0 = g * G, k1 = (g + 1) * G < K ? (g + 1) * G : K;
    for (size_t c = 0; c < nv; ++c) A[c] = _mm256_setzero_ps(), Z[c] = zerosOf(w, g, n0 + 8 * c);
    for (size_t b = 0, kb = k0; kb < k1; ++b, kb += kQ8Block) {
      const size_t u0 = kb / U, rows = ((kb + kQ8Block < k1 ? kb + kQ8Block : k1) - kb) / U;
      const size_t r0 = u0 * W, nr = rows * W;  // the block's qweight rows
      if (r0 + nr + kPrefetchUnitsQ8 <= qrows)
        for (size_t r = 0; r < nr; ++r) {
          const char* pf = reinterpret_cast<const char*>(qw + (r0 + r + kPrefetchUnitsQ8) * N);
          for (size_t o = 0; o < nv * 32; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
        }
      __m256i xv[S::ROWS][S::SH];
      blockActs<BITS>(qx, u0, rows, xv);
      const __m256 q = _mm256_broadcast_ss(qs + g * a.bpg + b), d = _mm256_broadcast_ss(dx + g * a.bpg + b);
      const uint32_t* p = qw + r0 * N;
      for (size_t c = 0; c < nv; ++c) {
        const __m256 I = blockDot<BITS>(p + 8 * c, N, rows, xv, q);
        A[c] = _mm256_fmadd_ps(_mm256_fnmadd_ps(Z[c], q, I), d, A[c]);
      }
    }
    for (size_t c = 0; c < nv; ++c) Y[c] = _mm256_fmadd_ps(scalesOf(w, g, n0 + 8 * c), A[c], Y[c]);
  }
  for (size_t c = 0; c < nv; ++c) _mm256_storeu_ps(y + m * ldy + n0 + 8 * c, Y[c]);
}

template <int BITS>
void gemvQ8Columns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  const size_t n8 = n0 + (n1 - n0) / 8 * 8;
  for (size_t m = 0; m < a.M; ++m)
    for (size_t n = n0; n < n8; n += kStripVectors * 8) {
      const size_t nv = (n8 - n) / 8 < kStripVectors ? (n8 - n) / 8 : kStripVectors;
      gemvQ8Strip<BITS>(w, a, m, n, nv, y, ldy);
    }
  if (n8 < n1) scalar::kQGemmKernels.columns(w, a, n8, n1, y, ldy);  // 8-bit N % 8 == 4 tail: same math
}

// ---- Split-K decode: one group × a wide column range per task ----------------------------
//
// Both kernels below read the qweight rows of one group front to back over up to 2048
// columns (the whole row for N <= 2048), which is what lets the DRAM streams run like a dense
// GEMV's; per-column accumulators live in L1 arrays. They write the group term t that
// columns() would have formed in registers, with the same operations.
constexpr size_t kSplitVectors = kQSplitCols / 8;

// Software prefetch for the f32 terms: the same columns of the next packing unit's rows (one
// row pass, 8 KB at 2048 columns, ahead), into L2. That loop spends ~15 instructions per 32
// bytes at 4 bits, so the out-of-order window holds few of the next lines' loads, and the
// hardware prefetcher restarts each row stream at every 4 KB page. History: a prefetch 2 KB
// ahead along the row measured +9-19% over none; the next-row form measured 10-20% less CPU
// time than that from DRAM (1 thread, q_proj at 2/3/4/8 bits, loaded machine; dense down
// neutral). Prefetches never fault; addresses past the matrix are skipped anyway (integer
// arithmetic, no pointer overflow).
inline uintptr_t qweightEnd(const QMatrix& w) {
  return reinterpret_cast<uintptr_t>(w.qweight) + size_t(qWeightRows(w.fmt)) * size_t(w.fmt.N) * 4;
}

template <int BITS>
void termsF32(const QMatrix& w, const QActs& a, size_t m, size_t g, size_t n0, size_t nv, float* T) {
  constexpr int U = unitCodes(BITS), W = unitWords(BITS);
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt));
  const size_t u0 = g * G / U, u1 = ((g + 1) * G < K ? (g + 1) * G : K) / U;
  const uintptr_t end = qweightEnd(w);
  __m256 acc[kSplitVectors];
  for (size_t c = 0; c < nv; ++c) acc[c] = _mm256_setzero_ps();
  for (size_t u = u0; u < u1; ++u) {
    const uint32_t* p = w.qweight + u * W * N + n0;
    const float* xk = a.xs + m * K + u * U;
    // Four vectors per step share each activation broadcast (1 broadcast per 32 weights
    // instead of per 8: ~20% fewer instructions in this compute-bound loop).
    size_t c = 0;
    for (; c + 4 <= nv; c += 4) {
      for (int r = 0; r < W; ++r)
        for (int h = 0; h < 2; ++h) {
          const uintptr_t pf = reinterpret_cast<uintptr_t>(p + (r + W) * N + 8 * c + 16 * h);
          if (pf < end) _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T1);
        }
      __m256i wv[4][W];
      for (int v = 0; v < 4; ++v)
        for (int r = 0; r < W; ++r) wv[v][r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + r * N + 8 * (c + v)));
      __m256 s0 = acc[c], s1 = acc[c + 1], s2 = acc[c + 2], s3 = acc[c + 3];
      forEach([&](auto jc) {
        constexpr int J = decltype(jc)::value;
        const __m256 xb = _mm256_broadcast_ss(xk + J);
        s0 = _mm256_fmadd_ps(xb, _mm256_cvtepi32_ps(codeInPlace<BITS, J>(wv[0])), s0);
        s1 = _mm256_fmadd_ps(xb, _mm256_cvtepi32_ps(codeInPlace<BITS, J>(wv[1])), s1);
        s2 = _mm256_fmadd_ps(xb, _mm256_cvtepi32_ps(codeInPlace<BITS, J>(wv[2])), s2);
        s3 = _mm256_fmadd_ps(xb, _mm256_cvtepi32_ps(codeInPlace<BITS, J>(wv[3])), s3);
      }, std::make_integer_sequence<int, U>{});
      acc[c] = s0, acc[c + 1] = s1, acc[c + 2] = s2, acc[c + 3] = s3;
    }
    for (; c < nv; ++c) {
      __m256i wv[W];
      for (int r = 0; r < W; ++r) wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + r * N + 8 * c));
      __m256 s = acc[c];
      forEach([&](auto jc) {
        constexpr int J = decltype(jc)::value;
        s = _mm256_fmadd_ps(_mm256_broadcast_ss(xk + J), _mm256_cvtepi32_ps(codeInPlace<BITS, J>(wv)), s);
      }, std::make_integer_sequence<int, U>{});
      acc[c] = s;
    }
  }
  const __m256 xsum = _mm256_broadcast_ss(a.xsum + m * a.ng + g);
  float* t = T + (m * a.ng + g) * N + n0;
  for (size_t c = 0; c < nv; ++c) _mm256_storeu_ps(t + 8 * c, _mm256_fnmadd_ps(zerosOf(w, g, n0 + 8 * c), xsum, acc[c]));
}

template <int BITS>
void termsQ8(const QMatrix& w, const QActs& a, size_t m, size_t g, size_t n0, size_t nv, float* T) {
  using S = Q8Shape<BITS>;
  constexpr int U = S::U, W = S::W;
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt));
  const size_t k0 = g * G, k1 = (g + 1) * G < K ? (g + 1) * G : K;
  const int8_t* qx = a.qx + m * K;
  const uintptr_t end = qweightEnd(w);
  __m256 A[kSplitVectors], Z[kSplitVectors];
  for (size_t c = 0; c < nv; ++c) A[c] = _mm256_setzero_ps(), Z[c] = zerosOf(w, g, n0 + 8 * c);
  for (size_t b = 0, kb = k0; kb < k1; ++b, kb += kQ8Block) {
    const size_t u0 = kb / U, rows = ((kb + kQ8Block < k1 ? kb + kQ8Block : k1) - kb) / U, nr = rows * W;
    __m256i xv[S::ROWS][S::SH];
    blockActs<BITS>(qx, u0, rows, xv);
    const size_t bi = m * a.nbt + g * a.bpg + b;
    const __m256 q = _mm256_broadcast_ss(a.qsum + bi), d = _mm256_broadcast_ss(a.dx + bi);
    const uint32_t* p = w.qweight + u0 * W * N + n0;
    for (size_t c = 0; c < nv; ++c) {
      // Software prefetch (2, 3 and 4 bits), one line per qweight row per column pair: the
      // same columns of the next block's rows (after a group's last block, the next group's
      // first rows), a whole block pass (16-32 KB) ahead, into L2. Walking 2-4 rows N·4 bytes
      // apart, the hardware prefetcher loses each stream at every 4 KB page; the software
      // prefetch crosses pages. Measured side by side from DRAM (1 thread, CPU time, under
      // load): 4 bits +10-25% GB per CPU-second; 8 bits (8 rows per block) -10%, so it has none.
      if (BITS != 8 && c % 2 == 0)
        for (size_t r = 0; r < nr; ++r) {
          const uintptr_t pf = reinterpret_cast<uintptr_t>(p + (r + nr) * N + 8 * c);
          if (pf < end) _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T1);
        }
      const __m256 I = blockDot<BITS>(p + 8 * c, N, rows, xv, q);
      A[c] = _mm256_fmadd_ps(_mm256_fnmadd_ps(Z[c], q, I), d, A[c]);
    }
  }
  float* t = T + (m * a.ng + g) * N + n0;
  for (size_t c = 0; c < nv; ++c) _mm256_storeu_ps(t + 8 * c, A[c]);
}

template <int BITS>
void groupTermsFor(const QMatrix& w, const QActs& a, size_t g, size_t n0, size_t n1, float* T) {
  const size_t n8 = n0 + (n1 - n0) / 8 * 8;
  for (size_t m = 0; m < a.M; ++m)
    for (size_t n = n0; n < n8; n += kQSplitCols) {
      const size_t nv = ((n8 - n < kQSplitCols ? n8 - n : kQSplitCols)) / 8;
      if (a.act == QAct::kInt8) termsQ8<BITS>(w, a, m, g, n, nv, T);
      else termsF32<BITS>(w, a, m, g, n, nv, T);
    }
  if (n8 < n1) scalar::kQGemmKernels.groupTerms(w, a, g, n8, n1, T);  // 8-bit N % 8 == 4 tail
}

void groupTerms(const QMatrix& w, const QActs& a, size_t g, size_t n0, size_t n1, float* T) {
  switch (w.fmt.bits) {
    case 2: return groupTermsFor<2>(w, a, g, n0, n1, T);
    case 3: return groupTermsFor<3>(w, a, g, n0, n1, T);
    case 4: return groupTermsFor<4>(w, a, g, n0, n1, T);
    case 8: return groupTermsFor<8>(w, a, g, n0, n1, T);
    default: return;
  }
}

void groupCombine(const QMatrix& w, const float* T, size_t M, size_t n0, size_t n1, float* y, size_t ldy) {
  const size_t N = size_t(w.fmt.N), ng = size_t(qGroupCount(w.fmt));
  const size_t n8 = n0 + (n1 - n0) / 8 * 8;
  // 32 columns per pass: the T rows of one (m, ·) are N·4 bytes apart (12 KB for q_proj, a
  // multiple of 4 KB, so all ng rows fall in one L1 set); one 8-column vector per pass used
  // half of each 64-byte line and found the other half evicted on the next pass. Four vectors
  // use whole lines (measured: the combine took ~10% of a hot 4-bit q_proj GEMV).
  for (size_t m = 0; m < M; ++m) {
    size_t n = n0;
    for (; n + 32 <= n8; n += 32) {
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (size_t g = 0; g < ng; ++g) {
        const float* t = T + (m * ng + g) * N + n;
        a0 = _mm256_fmadd_ps(scalesOf(w, g, n), _mm256_loadu_ps(t), a0);
        a1 = _mm256_fmadd_ps(scalesOf(w, g, n + 8), _mm256_loadu_ps(t + 8), a1);
        a2 = _mm256_fmadd_ps(scalesOf(w, g, n + 16), _mm256_loadu_ps(t + 16), a2);
        a3 = _mm256_fmadd_ps(scalesOf(w, g, n + 24), _mm256_loadu_ps(t + 24), a3);
      }
      float* yp = y + m * ldy + n;
      _mm256_storeu_ps(yp, a0), _mm256_storeu_ps(yp + 8, a1), _mm256_storeu_ps(yp + 16, a2), _mm256_storeu_ps(yp + 24, a3);
    }
    for (; n < n8; n += 8) {
      __m256 acc = _mm256_setzero_ps();
      for (size_t g = 0; g < ng; ++g) acc = _mm256_fmadd_ps(scalesOf(w, g, n), _mm256_loadu_ps(T + (m * ng + g) * N + n), acc);
      _mm256_storeu_ps(y + m * ldy + n, acc);
    }
  }
  if (n8 < n1) scalar::kQGemmKernels.groupCombine(w, T, M, n8, n1, y, ldy);
}

// ---- GEMM -------------------------------------------------------------------------------

// Per-thread panel: up to 4 tiles of 16 columns × G rows of f32 codes (128 KB: L2-resident,
// leaving room for the x slices). Groups larger than 2048 take the GEMV path per row pair.
constexpr size_t kPanelFloats = 32768;
alignas(64) thread_local float tPanel[kPanelFloats];

// Converts the codes of rows [k0, k1) (a group) × columns n..n+8·NV into panel[(k−k0)·16 + 8v].
// Q8: plain codes (the int8 path multiplies them by integer activations), else in place.
template <int BITS, int J, bool Q8>
inline __m256i panelCode(const __m256i* w) {
  constexpr int s = qInPlaceShift(BITS, J);
  if constexpr (Q8 && s != 0) return _mm256_srli_epi32(codeInPlace<BITS, J>(w), s);
  else return codeInPlace<BITS, J>(w);
}

template <int BITS, bool Q8>
void fillPanel(const QMatrix& w, size_t k0, size_t k1, size_t n, int nv, float* panel) {
  constexpr int U = unitCodes(BITS), W = unitWords(BITS);
  const size_t N = size_t(w.fmt.N);
  for (size_t u = k0 / U; u < k1 / U; ++u) {
    const uint32_t* p = w.qweight + u * W * N + n;
    float* dst = panel + (u * U - k0) * 16;
    for (int v = 0; v < nv; ++v) {
      __m256i wv[W];
      for (int r = 0; r < W; ++r) wv[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + r * N + 8 * v));
      forEach([&](auto jc) { _mm256_store_ps(dst + decltype(jc)::value * 16 + 8 * v, _mm256_cvtepi32_ps(panelCode<BITS, decltype(jc)::value, Q8>(wv))); },
              std::make_integer_sequence<int, U>{});
    }
  }
}

// acc[i][v] += Σ_k xp[k·6 + i] · panel[k·16 + 8v], k ascending, for the 6 rows of one packed
// tile (gemm_q.h: xp is k-major, so the six broadcasts of a step are 24 contiguous bytes and
// the whole tile is one sequential run next to the panel's). Per k: 2 panel loads + 6
// broadcasts for 12 FMAs (Zen 3 / Haswell: 2 FMAs and 2-3 loads per cycle, so the FMA pipes
// set the pace, given 12 independent chains >= 2 pipes x 4-5 cycles latency).
//
// The 6x2 loop is inline assembly: 12 accumulators + 2 panel vectors + 2 broadcasts are all 16
// ymm registers, and GCC, given the same loop in intrinsics unrolled by 4, spilled two
// accumulators to the stack (perf: a quarter of the kernel's samples on one FMA waiting for
// its reload). Unrolled by 4 so the loop control and the two pointer increments are paid once
// per 48 FMAs. Each vfmadd231ps is the same correctly rounded FMA as _mm256_fmadd_ps, issued in
// the same k order per accumulator, so the bits are those of the intrinsic loop below.
#define KV_QG_STEP(OFF_X, OFF_P)                                   \
  "vmovaps " #OFF_P "(%[p]), %%ymm12\n\t"                          \
  "vmovaps " #OFF_P "+32(%[p]), %%ymm13\n\t"                       \
  "vbroadcastss " #OFF_X "(%[x]), %%ymm14\n\t"                     \
  "vbroadcastss " #OFF_X "+4(%[x]), %%ymm15\n\t"                   \
  "vfmadd231ps %%ymm12, %%ymm14, %[a00]\n\t"                       \
  "vfmadd231ps %%ymm13, %%ymm14, %[a01]\n\t"                       \
  "vbroadcastss " #OFF_X "+8(%[x]), %%ymm14\n\t"                   \
  "vfmadd231ps %%ymm12, %%ymm15, %[a10]\n\t"                       \
  "vfmadd231ps %%ymm13, %%ymm15, %[a11]\n\t"                       \
  "vbroadcastss " #OFF_X "+12(%[x]), %%ymm15\n\t"                  \
  "vfmadd231ps %%ymm12, %%ymm14, %[a20]\n\t"                       \
  "vfmadd231ps %%ymm13, %%ymm14, %[a21]\n\t"                       \
  "vbroadcastss " #OFF_X "+16(%[x]), %%ymm14\n\t"                  \
  "vfmadd231ps %%ymm12, %%ymm15, %[a30]\n\t"                       \
  "vfmadd231ps %%ymm13, %%ymm15, %[a31]\n\t"                       \
  "vbroadcastss " #OFF_X "+20(%[x]), %%ymm15\n\t"                  \
  "vfmadd231ps %%ymm12, %%ymm14, %[a40]\n\t"                       \
  "vfmadd231ps %%ymm13, %%ymm14, %[a41]\n\t"                       \
  "vfmadd231ps %%ymm12, %%ymm15, %[a50]\n\t"                       \
  "vfmadd231ps %%ymm13, %%ymm15, %[a51]\n\t"

template <int NV>
inline void packedDot(const float* xp, const float* panel, size_t kn, __m256 (&acc)[6][NV]) {
  if constexpr (NV == 2) {
    __m256 a00 = acc[0][0], a01 = acc[0][1], a10 = acc[1][0], a11 = acc[1][1], a20 = acc[2][0], a21 = acc[2][1];
    __m256 a30 = acc[3][0], a31 = acc[3][1], a40 = acc[4][0], a41 = acc[4][1], a50 = acc[5][0], a51 = acc[5][1];
    size_t quads = kn / 4;
    if (quads) {
      asm volatile(
          "1:\n\t"
          KV_QG_STEP(0, 0) KV_QG_STEP(24, 64) KV_QG_STEP(48, 128) KV_QG_STEP(72, 192)
          "add $96, %[x]\n\t"
          "add $256, %[p]\n\t"
          "dec %[n]\n\t"
          "jnz 1b\n\t"
          : [a00] "+x"(a00), [a01] "+x"(a01), [a10] "+x"(a10), [a11] "+x"(a11), [a20] "+x"(a20), [a21] "+x"(a21),
            [a30] "+x"(a30), [a31] "+x"(a31), [a40] "+x"(a40), [a41] "+x"(a41), [a50] "+x"(a50), [a51] "+x"(a51),
            [x] "+r"(xp), [p] "+r"(panel), [n] "+r"(quads)
          :
          : "xmm12", "xmm13", "xmm14", "xmm15", "cc", "memory");
    }
    for (size_t k = kn / 4 * 4; k < kn; ++k, xp += 6, panel += 16) {
      const __m256 b0 = _mm256_load_ps(panel), b1 = _mm256_load_ps(panel + 8);
      __m256 xb = _mm256_broadcast_ss(xp);
      a00 = _mm256_fmadd_ps(xb, b0, a00), a01 = _mm256_fmadd_ps(xb, b1, a01);
      xb = _mm256_broadcast_ss(xp + 1);
      a10 = _mm256_fmadd_ps(xb, b0, a10), a11 = _mm256_fmadd_ps(xb, b1, a11);
      xb = _mm256_broadcast_ss(xp + 2);
      a20 = _mm256_fmadd_ps(xb, b0, a20), a21 = _mm256_fmadd_ps(xb, b1, a21);
      xb = _mm256_broadcast_ss(xp + 3);
      a30 = _mm256_fmadd_ps(xb, b0, a30), a31 = _mm256_fmadd_ps(xb, b1, a31);
      xb = _mm256_broadcast_ss(xp + 4);
      a40 = _mm256_fmadd_ps(xb, b0, a40), a41 = _mm256_fmadd_ps(xb, b1, a41);
      xb = _mm256_broadcast_ss(xp + 5);
      a50 = _mm256_fmadd_ps(xb, b0, a50), a51 = _mm256_fmadd_ps(xb, b1, a51);
    }
    acc[0][0] = a00, acc[0][1] = a01, acc[1][0] = a10, acc[1][1] = a11, acc[2][0] = a20, acc[2][1] = a21;
    acc[3][0] = a30, acc[3][1] = a31, acc[4][0] = a40, acc[4][1] = a41, acc[5][0] = a50, acc[5][1] = a51;
  } else {
    for (size_t k = 0; k < kn; ++k) {
      const __m256 b = _mm256_load_ps(panel + k * 16);
      for (int i = 0; i < 6; ++i) acc[i][0] = _mm256_fmadd_ps(_mm256_broadcast_ss(xp + k * 6 + i), b, acc[i][0]);
    }
  }
}
#undef KV_QG_STEP

// One group for the `rows` (<= 6) valid rows of a packed tile × 8·NV columns: acc = Σ_k
// xs·code from the panel, then the combine t = fma(−z, X, acc), y = fma(s, t, y) (first
// group: from 0, as every path does). Padding rows are computed (zeros) but never stored.
// m0: the tile's first row (for X); yt: its y tile (row stride ldy, 32-byte aligned).
template <int NV>
void microTile(const QActs& a, const float* xt, size_t kn, const float* panel, const __m256* z, const __m256* s, size_t g, size_t m0,
               size_t rows, float* yt, size_t ldy) {
  __m256 acc[6][NV];
  for (int i = 0; i < 6; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_ps();
  packedDot<NV>(xt, panel, kn, acc);
  for (size_t i = 0; i < rows; ++i) {
    const __m256 xsb = _mm256_broadcast_ss(a.xsum + (m0 + i) * a.ng + g);
    for (int v = 0; v < NV; ++v) {
      float* yp = yt + i * ldy + 8 * v;
      const __m256 t = _mm256_fnmadd_ps(z[v], xsb, acc[i][v]);
      const __m256 prev = g == 0 ? _mm256_setzero_ps() : _mm256_load_ps(yp);
      _mm256_store_ps(yp, _mm256_fmadd_ps(s[v], t, prev));
    }
  }
}

// Q8 variant: per 32-row block, I = Σ q·c in f32 FMAs is exact (|partial| <= 32·255·127 < 2^24),
// then A += (I − z·Q)·d as in every other path; A lives in a small stack tile (L1).
template <int NV>
void microTileQ8(const QActs& a, const float* xt, size_t kn, const float* panel, const __m256* z, const __m256* s, size_t g,
                 size_t m0, size_t rows, float* yt, size_t ldy) {
  __m256 A[6][NV];
  for (int i = 0; i < 6; ++i)
    for (int v = 0; v < NV; ++v) A[i][v] = _mm256_setzero_ps();
  for (size_t b = 0, kb = 0; kb < kn; ++b, kb += kQ8Block) {
    const size_t kb1 = kb + kQ8Block < kn ? kb + kQ8Block : kn;
    __m256 I[6][NV];
    for (int i = 0; i < 6; ++i)
      for (int v = 0; v < NV; ++v) I[i][v] = _mm256_setzero_ps();
    packedDot<NV>(xt + kb * 6, panel + kb * 16, kb1 - kb, I);
    for (size_t i = 0; i < rows; ++i) {
      const size_t bi = (m0 + i) * a.nbt + g * a.bpg + b;
      const __m256 q = _mm256_broadcast_ss(a.qsum + bi), d = _mm256_broadcast_ss(a.dx + bi);
      for (int v = 0; v < NV; ++v) A[i][v] = _mm256_fmadd_ps(_mm256_fnmadd_ps(z[v], q, I[i][v]), d, A[i][v]);
    }
  }
  for (size_t i = 0; i < rows; ++i)
    for (int v = 0; v < NV; ++v) {
      float* yp = yt + i * ldy + 8 * v;
      const __m256 prev = g == 0 ? _mm256_setzero_ps() : _mm256_load_ps(yp);
      _mm256_store_ps(yp, _mm256_fmadd_ps(s[v], A[i][v], prev));
    }
}

// ---- GEMM with int8 activations on byte dot products (2, 3 and 4 bits) ------------------
//
// The GEMV's maddubs arithmetic (Q8Dot) with the panel reuse of the f32 GEMM above. The panel
// holds, per group, the codes as the GEMV extracts them: for packing unit u and shift j, the
// 8-column vector (qweight row u >> bits·j) & maxq per byte, i.e. byte b of column c's lane is
// code (8/bits)·b + j of that word (3 bits: the unit's 8 quads of q3Unpack, kQ3Quads); the
// activations in word order (qgemmPrepare) put the 4
// matching q values in one 4-byte quad, broadcast to every lane. One maddubs is then 32
// multiply-adds (4 k × 8 columns) against 8 for an FMA, and a 32-row block is 8 quads
// summed in i16 (bound as in Q8Dot: 8 maddubs per block, |pair| <= 2·maxq·127, 4 bits 30480,
// 3 bits 14224, 2 bits 6096 < 32767) and widened once per block with madd(·, 1). I_b is exact, so the
// result equals the f32-FMA panel path, the GEMV and the scalar reference bit for bit; the
// combine A += (I − z·Q)·d, y = fma(s, A, y) is the same code as theirs.
// 8 bits would saturate maddubs (2·255·127 > 32767) and keep the f32-FMA panel path.
//
// Panel: per 16-column tile, G/4 quads × 64 bytes (two vectors of 8 columns), in tPanel.

template <int BITS>
void fillPanelQ8(const QMatrix& w, size_t k0, size_t k1, size_t n, int nv, uint8_t* panel) {
  const size_t N = size_t(w.fmt.N);
  if constexpr (BITS == 3) {
    // The GEMV's unpack (Q8Dot3), quads stored instead of multiplied: unit u's 8 quads.
    struct Store {
      uint8_t* dst;
      int v, j = 0;
      inline void quad(__m256i q) { _mm256_store_si256(reinterpret_cast<__m256i*>(dst + (j++) * 64 + 32 * v), q); }
    };
    for (size_t u = k0 / 32; u < k1 / 32; ++u) {
      const uint32_t* p = w.qweight + u * 3 * N + n;
      for (int v = 0; v < nv; ++v) {
        auto ld = [&](int r) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + r * N + 8 * v)); };
        Store st{panel + (u * 32 - k0) / 4 * 64, v};
        q3Unpack(ld(0), ld(1), ld(2), st);
      }
    }
  } else {
    constexpr int U = 32 / BITS, SH = 8 / BITS;
    const __m256i mask = _mm256_set1_epi8(char((1 << BITS) - 1));
    for (size_t u = k0 / U; u < k1 / U; ++u) {
      const uint32_t* p = w.qweight + u * N + n;
      uint8_t* dst = panel + (u * U - k0) / 4 * 64;
      for (int v = 0; v < nv; ++v) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8 * v));
        for (int j = 0; j < SH; ++j)
          _mm256_store_si256(reinterpret_cast<__m256i*>(dst + j * 64 + 32 * v), _mm256_and_si256(_mm256_srli_epi32(wv, BITS * j), mask));
      }
    }
  }
}

// One quad step of the 6x2 byte kernel: 2 panel vectors, then per row a broadcast of its 4
// activation bytes and two maddubs (u8 codes × s8 q, adjacent pairs summed to i16) added into
// the row's two i16 accumulators (the first step writes them).
#define KV_QG_ROW8(OX, I, A0, A1, FIRST)                               \
  "vpbroadcastd " #OX "+4*" #I "(%[x]), %%ymm14\n\t"                   \
  FIRST(A0, "%%ymm12") FIRST(A1, "%%ymm13")
#define KV_QG_ADD(A, P) "vpmaddubsw %%ymm14, " P ", %%ymm15\n\tvpaddw %%ymm15, %[" #A "], %[" #A "]\n\t"
#define KV_QG_SET(A, P) "vpmaddubsw %%ymm14, " P ", %[" #A "]\n\t"
#define KV_QG_STEP8(OX, OP, FIRST)                                     \
  "vmovdqa " #OP "(%[p]), %%ymm12\n\t"                                 \
  "vmovdqa " #OP "+32(%[p]), %%ymm13\n\t"                              \
  KV_QG_ROW8(OX, 0, a00, a01, FIRST) KV_QG_ROW8(OX, 1, a10, a11, FIRST) \
  KV_QG_ROW8(OX, 2, a20, a21, FIRST) KV_QG_ROW8(OX, 3, a30, a31, FIRST) \
  KV_QG_ROW8(OX, 4, a40, a41, FIRST) KV_QG_ROW8(OX, 5, a50, a51, FIRST)

// acc[i][v] = Σ over nq (<= 8) quads of maddubs(panel, x quad of row i), in i16. The full
// 8-quad block of the 6x2 case is inline assembly for the reason given at packedDot (12
// accumulators + 2 panel vectors + broadcast + product = 16 ymm). Integer sums: any order
// gives the same exact values.
template <int NV>
inline void blockDotQ8(const int8_t* xq, const uint8_t* panel, size_t nq, __m256i (&acc)[6][NV]) {
  if constexpr (NV == 2) {
    if (nq == 8) {
      __m256i a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51;
      asm("" KV_QG_STEP8(0, 0, KV_QG_SET) KV_QG_STEP8(24, 64, KV_QG_ADD) KV_QG_STEP8(48, 128, KV_QG_ADD) KV_QG_STEP8(72, 192, KV_QG_ADD)
              KV_QG_STEP8(96, 256, KV_QG_ADD) KV_QG_STEP8(120, 320, KV_QG_ADD) KV_QG_STEP8(144, 384, KV_QG_ADD) KV_QG_STEP8(168, 448, KV_QG_ADD)
          : [a00] "=&x"(a00), [a01] "=&x"(a01), [a10] "=&x"(a10), [a11] "=&x"(a11), [a20] "=&x"(a20), [a21] "=&x"(a21),
            [a30] "=&x"(a30), [a31] "=&x"(a31), [a40] "=&x"(a40), [a41] "=&x"(a41), [a50] "=&x"(a50), [a51] "=&x"(a51)
          : [x] "r"(xq), [p] "r"(panel), "m"(*reinterpret_cast<const char(*)[192]>(xq)), "m"(*reinterpret_cast<const char(*)[512]>(panel))
          : "xmm12", "xmm13", "xmm14", "xmm15");
      acc[0][0] = a00, acc[0][1] = a01, acc[1][0] = a10, acc[1][1] = a11, acc[2][0] = a20, acc[2][1] = a21;
      acc[3][0] = a30, acc[3][1] = a31, acc[4][0] = a40, acc[4][1] = a41, acc[5][0] = a50, acc[5][1] = a51;
      return;
    }
  }
  for (int i = 0; i < 6; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_setzero_si256();
  for (size_t r = 0; r < nq; ++r) {
    __m256i b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(panel + r * 64 + 32 * v));
    for (int i = 0; i < 6; ++i) {
      int32_t q;
      std::memcpy(&q, xq + r * 24 + 4 * i, 4);
      const __m256i xb = _mm256_set1_epi32(q);
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_add_epi16(acc[i][v], _mm256_maddubs_epi16(b[v], xb));
    }
  }
}
#undef KV_QG_STEP8
#undef KV_QG_SET
#undef KV_QG_ADD
#undef KV_QG_ROW8

// One group for the `rows` valid rows of a packed tile × 8·NV columns, block by block:
// I = madd(acc, 1) (exact, |I| <= 32·maxq·127), A = fma(fnmadd(z, Q, I), d, A), then the
// group's y = fma(s, A, y) (first group: from 0).
template <int NV>
void microTileQ8B(const QActs& a, const int8_t* xt, size_t kn, const uint8_t* panel, const __m256* z, const __m256* s, size_t g,
                  size_t m0, size_t rows, float* yt, size_t ldy) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 A[6][NV];
  for (int i = 0; i < 6; ++i)
    for (int v = 0; v < NV; ++v) A[i][v] = _mm256_setzero_ps();
  const size_t quads = kn / 4;
  for (size_t b = 0, r0 = 0; r0 < quads; ++b, r0 += kQ8Block / 4) {
    const size_t nq = quads - r0 < kQ8Block / 4 ? quads - r0 : kQ8Block / 4;
    __m256i acc[6][NV];
    blockDotQ8<NV>(xt + r0 * 24, panel + r0 * 64, nq, acc);
    for (size_t i = 0; i < rows; ++i) {
      const size_t bi = (m0 + i) * a.nbt + g * a.bpg + b;
      const __m256 q = _mm256_broadcast_ss(a.qsum + bi), d = _mm256_broadcast_ss(a.dx + bi);
      for (int v = 0; v < NV; ++v) {
        const __m256 I = _mm256_cvtepi32_ps(_mm256_madd_epi16(acc[i][v], ones));
        A[i][v] = _mm256_fmadd_ps(_mm256_fnmadd_ps(z[v], q, I), d, A[i][v]);
      }
    }
  }
  for (size_t i = 0; i < rows; ++i)
    for (int v = 0; v < NV; ++v) {
      float* yp = yt + i * ldy + 8 * v;
      const __m256 prev = g == 0 ? _mm256_setzero_ps() : _mm256_load_ps(yp);
      _mm256_store_ps(yp, _mm256_fmadd_ps(s[v], A[i][v], prev));
    }
}

// ---- GEMM driver (all three panel kernels) -----------------------------------------------
//
// Per task (64 columns = 4 panel tiles of 16) and row block of kGemmRowBlock rows: for each
// group, convert the group's panel tiles once, then run every 6-row tile of the block against
// each panel tile (the panel tile, 8 KB at g128, stays in L1; the block's x slice, 96 KB at
// 192 rows, in L2 across the 4 tiles). y of the block lives in tYBlock, a contiguous
// L2-resident buffer of kGemmRowBlock x 64 floats, across all groups, and is copied out once:
// y rows in place are N·4 bytes apart (each row of a tile on its own page, and 128 KB per
// task for M = 512), so the per-group read-modify-write missed L1 and the TLB. Meanwhile the
// next group's x slice of the block is prefetched into L2, a few lines per micro-tile (the
// slice of every group is one contiguous run, gemm_q.h). Measured in isolation (1 thread,
// hot L3, 4-bit 2048 x 10944, M = 512, under load, two runs): y block +8% / -3%, with the
// prefetch +13% / +5% over the old loop (y in place, no row blocks).
// None of this changes a result: each output keeps its one FMA chain per group over
// ascending k and the combine in group order; the y block only holds the running y exactly.
// MODE 0: f32 activations; 1: int8 activations with the f32-FMA panel (8 bits); 2: int8
// activations on maddubs (2, 3 and 4 bits).
//
// Row block: the panel tiles are converted again for every block, so a larger block converts
// less often but holds a larger y block (192 x 64 floats = 48 KB, L2). Side by side (2
// threads, 4-bit 2048 x 10944, M = 512, under load; CPU ms per call, old / 96 / 192 rows):
// f32 346 / 330 / 319, int8 (maddubs, whose byte panel converts faster) 199 / 167 / 179.
constexpr size_t kGemmRowBlockF32 = 192, kGemmRowBlockQ8 = 96;  // multiples of 6
constexpr size_t kGemmPassCols = 64;                            // 4 panel tiles
alignas(64) thread_local float tYBlock[kGemmRowBlockF32 * kGemmPassCols];

template <int BITS, int MODE>
void gemmColumns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  constexpr size_t kGemmRowBlock = MODE == 2 ? kGemmRowBlockQ8 : kGemmRowBlockF32;
  static_assert(kGemmRowBlock % 6 == 0 && kGemmRowBlock <= kGemmRowBlockF32, "row blocks hold whole 6-row tiles");
  const size_t K = a.K, G = size_t(qEffectiveGroup(w.fmt));
  const size_t n8 = n0 + (n1 - n0) / 8 * 8;
  const size_t tileBytesPerK = MODE == 2 ? 16 : 64;  // 16 columns of bytes or of floats
  const size_t fit = sizeof(tPanel) / (G * tileBytesPerK);
  const size_t tilesPerPass = fit < kGemmPassCols / 16 ? fit : kGemmPassCols / 16;
  if (tilesPerPass == 0) {  // a group too large for the panel (only group -1 with large K)
    if constexpr (MODE != 0) gemvQ8Columns<BITS>(w, a, n0, n8, y, ldy);
    else
      for (size_t n = n0; n < n8; n += 8) gemvRows<BITS, 1>(w, a, n, y, ldy);
  } else {
    uint8_t* panels = reinterpret_cast<uint8_t*>(tPanel);
    const size_t tileBytes = G * tileBytesPerK, xElem = MODE == 2 ? 1 : 4;
    const char* xBase = MODE == 2 ? reinterpret_cast<const char*>(a.xq) : reinterpret_cast<const char*>(a.xp);
    for (size_t nb = n0; nb < n8; nb += 16 * tilesPerPass) {
      const size_t nbEnd = nb + 16 * tilesPerPass < n8 ? nb + 16 * tilesPerPass : n8;
      for (size_t mb = 0; mb < a.M; mb += kGemmRowBlock) {
        const size_t me = mb + kGemmRowBlock < a.M ? mb + kGemmRowBlock : a.M;
        const size_t tilesM = (me - mb + 5) / 6;
        for (size_t g = 0; g < a.ng; ++g) {
          const size_t k0 = g * G, k1 = (g + 1) * G < K ? (g + 1) * G : K, kn = k1 - k0;
          size_t t = 0;
          __m256 z[4][2], s[4][2];
          for (size_t n = nb; n < nbEnd; n += 16, ++t) {
            const int nv = nbEnd - n >= 16 ? 2 : 1;
            if constexpr (MODE == 2) fillPanelQ8<BITS>(w, k0, k1, n, nv, panels + t * tileBytes);
            else fillPanel<BITS, MODE == 1>(w, k0, k1, n, nv, reinterpret_cast<float*>(panels + t * tileBytes));
            for (int v = 0; v < nv; ++v) z[t][v] = zerosOf(w, g, n + 8 * v), s[t][v] = scalesOf(w, g, n + 8 * v);
          }
          // The next group's x slice of this block, bytes [pf, pfEnd) of xBase, spread over
          // this group's t x tilesM micro-tiles (prefetches never fault).
          size_t pf = 0, pfEnd = 0, pfStep = 0;
          if (g + 1 < a.ng) {
            const size_t kn2 = ((g + 2) * G < K ? (g + 2) * G : K) - k1;
            pf = (k1 * a.Mp + mb * kn2) * xElem;
            pfEnd = pf + tilesM * 6 * kn2 * xElem;
            pfStep = ((pfEnd - pf) / 64 / (tilesM * t) + 1) * 64;
          }
          const char* xg = xBase + k0 * a.Mp * xElem;  // this group's slice: Mp / 6 tiles of kn × 6
          t = 0;
          for (size_t n = nb; n < nbEnd; n += 16, ++t) {
            const bool two = nbEnd - n >= 16;
            const uint8_t* panel = panels + t * tileBytes;
            for (size_t m0 = mb; m0 < me; m0 += 6) {
              for (const size_t e = pf + pfStep < pfEnd ? pf + pfStep : pfEnd; pf < e; pf += 64) _mm_prefetch(xBase + pf, _MM_HINT_T1);
              const size_t rows = a.M - m0 < 6 ? a.M - m0 : 6;
              float* yt = tYBlock + (m0 - mb) * kGemmPassCols + (n - nb);
              const char* xt = xg + m0 * kn * xElem;
              if constexpr (MODE == 2) {
                const auto* xq = reinterpret_cast<const int8_t*>(xt);
                if (two) microTileQ8B<2>(a, xq, kn, panel, z[t], s[t], g, m0, rows, yt, kGemmPassCols);
                else microTileQ8B<1>(a, xq, kn, panel, z[t], s[t], g, m0, rows, yt, kGemmPassCols);
              } else {
                const auto* xf = reinterpret_cast<const float*>(xt);
                const auto* pn = reinterpret_cast<const float*>(panel);
                if constexpr (MODE == 1) {
                  if (two) microTileQ8<2>(a, xf, kn, pn, z[t], s[t], g, m0, rows, yt, kGemmPassCols);
                  else microTileQ8<1>(a, xf, kn, pn, z[t], s[t], g, m0, rows, yt, kGemmPassCols);
                } else {
                  if (two) microTile<2>(a, xf, kn, pn, z[t], s[t], g, m0, rows, yt, kGemmPassCols);
                  else microTile<1>(a, xf, kn, pn, z[t], s[t], g, m0, rows, yt, kGemmPassCols);
                }
              }
            }
          }
        }
        for (size_t m = mb; m < me; ++m) std::memcpy(y + m * ldy + nb, tYBlock + (m - mb) * kGemmPassCols, (nbEnd - nb) * sizeof(float));
      }
    }
  }
  if (n8 < n1) scalar::kQGemmKernels.columns(w, a, n8, n1, y, ldy);
}

template <int BITS>
void columnsFor(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  // M <= 8 streams the weights once per row pair; beyond that the panel kernel's reuse wins.
  if (a.act == QAct::kInt8) {
    if (a.M <= 8) gemvQ8Columns<BITS>(w, a, n0, n1, y, ldy);
    else gemmColumns<BITS, BITS == 8 ? 1 : 2>(w, a, n0, n1, y, ldy);
    return;
  }
  if (a.M <= 8) gemvColumns<BITS>(w, a, n0, n1, y, ldy);
  else gemmColumns<BITS, 0>(w, a, n0, n1, y, ldy);
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
const QGemmKernels kQGemmKernels = {columns, fmaRow, groupTerms, groupCombine};
}  // namespace avx2
}  // namespace kvant
