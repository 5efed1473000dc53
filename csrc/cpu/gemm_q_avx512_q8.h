// The int8-activation GEMV kernels of the AVX-512 qgemm level (QAct::kInt8, 2/4/8-bit weights),
// written once and included twice by gemm_q_avx512.cc: once as namespace q8mad (VPMADDUBSW,
// any AVX-512BW CPU) and once as q8vnni (VPDPBUSD) inside a `#pragma GCC target("avx512vnni")`
// region, so VNNI instructions exist only in functions reached when CPUID reports VNNI. No
// include guard on purpose. Expects KV_Q8_NS and KV_Q8_VNNI (0/1) and the helpers of
// gemm_q_avx512.cc (loadW, storeY, zerosOf, scalesOf, vecMask, kStripVectors, ...).
//
// Byte layout (gemm_q.h): shifting a column's packed word right by BITS·j and masking every
// byte with maxq leaves, in byte i, code (8/BITS)·i + j — the order qgemmPrepare wrote the int8
// activations in, so one 32-bit activation word broadcast per (row, j) lines up with the codes
// of all 16 columns of a zmm. Both forms compute I_b = Σ q·c exactly, so they and every other
// level give the same bits:
//  - VNNI: VPDPBUSD adds the four u8·s8 products of each 32-bit lane to an i32 accumulator, no
//    saturation, so the raw codes (8 bits too: u8 up to 255) go in as they are.
//  - maddubs: u8·s8 pairs summed to saturating i16. 2/4 bits: the block's <= 8 maddubs per lane
//    stay below 32767 (4 bits 8·2·15·127 = 30480) and are widened once per block (VPMADDWD by
//    1). 8 bits: recentred codes c' = c − 128 as |c'| (u8 <= 128) times the activation carrying
//    c's sign (AVX-512 has no VPSIGNB: the activation is negated under the mask of c' < 0),
//    widened every row, I = Σ q·c' + 128·Q (exact integers below 2^24).
namespace KV_Q8_NS {

template <int BITS>
struct Dot {
  __m512i s = _mm512_setzero_si512();
  inline void row(__m512i wv, const __m512i* xr) {
#if KV_Q8_VNNI
    if constexpr (BITS == 8) {
      s = _mm512_dpbusd_epi32(s, wv, xr[0]);
    } else {
      const __m512i mask = _mm512_set1_epi8(char((1 << BITS) - 1));
      for (int j = 0; j < 8 / BITS; ++j) s = _mm512_dpbusd_epi32(s, _mm512_and_si512(j ? _mm512_srli_epi32(wv, BITS * j) : wv, mask), xr[j]);
    }
#else
    if constexpr (BITS == 8) {
      const __m512i c = _mm512_xor_si512(wv, _mm512_set1_epi8(char(0x80)));
      const __mmask64 neg = _mm512_movepi8_mask(c);
      const __m512i xs = _mm512_mask_sub_epi8(xr[0], neg, _mm512_setzero_si512(), xr[0]);
      s = _mm512_add_epi32(s, _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(c), xs), _mm512_set1_epi16(1)));
    } else {
      const __m512i mask = _mm512_set1_epi8(char((1 << BITS) - 1));
      for (int j = 0; j < 8 / BITS; ++j)
        s = _mm512_add_epi16(s, _mm512_maddubs_epi16(_mm512_and_si512(j ? _mm512_srli_epi32(wv, BITS * j) : wv, mask), xr[j]));
    }
#endif
  }
  // I_b as f32 (exact); q: the block's Q_b broadcast.
  inline __m512 result(__m512 q) const {
#if KV_Q8_VNNI
    (void)q;
    return _mm512_cvtepi32_ps(s);
#else
    if constexpr (BITS == 8) return _mm512_fmadd_ps(_mm512_set1_ps(128.0f), q, _mm512_cvtepi32_ps(s));
    else return _mm512_cvtepi32_ps(_mm512_madd_epi16(s, _mm512_set1_epi16(1)));
#endif
  }
};

// The 32-bit activation words of one 32-row block: xv[r][j] = bytes 4j..4j+3 of packed row r.
template <int BITS>
inline void blockActs(const int8_t* qx, size_t u0, size_t rows, __m512i (*xv)[8 / BITS]) {
  constexpr int U = 32 / BITS;
  for (size_t r = 0; r < rows; ++r)
    for (int j = 0; j < 8 / BITS; ++j) {
      int32_t v;
      std::memcpy(&v, qx + (u0 + r) * U + 4 * j, 4);
      xv[r][j] = _mm512_set1_epi32(v);
    }
}

// A += (I − z·Q)·d for nv column vectors over the rows of one block (p: the block's first
// qweight row at the first column).
template <int BITS>
inline void blockTerms(const uint32_t* p, size_t N, size_t rows, const __m512i (*xv)[8 / BITS], size_t nv, __mmask16 last, __m512 q,
                       __m512 d, const __m512* Z, __m512* A) {
  constexpr size_t ROWS = kQ8Block / (32 / BITS);
  for (size_t c = 0; c < nv; ++c) {
    const __mmask16 mk = vecMask(c, nv, last);
    Dot<BITS> dot;
    if (rows == ROWS) {
      for (size_t r = 0; r < ROWS; ++r) dot.row(loadW(p + r * N + 16 * c, mk), xv[r]);
    } else {
      for (size_t r = 0; r < rows; ++r) dot.row(loadW(p + r * N + 16 * c, mk), xv[r]);
    }
    A[c] = _mm512_fmadd_ps(_mm512_fnmadd_ps(Z[c], q, dot.result(q)), d, A[c]);
  }
}

// One activation row m, a strip of nv <= kStripVectors vectors (16·nv columns from n0, the last
// vector under `last`), all groups: y = Σ_g fma(s, A_g, y). Every qweight row of the strip is
// read as one contiguous run, as in the AVX2 level.
template <int BITS>
void gemvQ8Strip(const QMatrix& w, const QActs& a, size_t m, size_t n0, size_t nv, __mmask16 last, float* y, size_t ldy) {
  constexpr int U = 32 / BITS, ROWS = int(kQ8Block) / U;
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt)), units = K / U;
  const uint32_t* qw = w.qweight + n0;
  const int8_t* qx = a.qx + m * K;
  const float* dx = a.dx + m * a.nbt;
  const float* qs = a.qsum + m * a.nbt;
  __m512 A[kStripVectors], Z[kStripVectors], Y[kStripVectors];
  for (size_t c = 0; c < nv; ++c) Y[c] = _mm512_setzero_ps();
  for (size_t g = 0; g < a.ng; ++g) {
    const size_t k0 = g * G, k1 = (g + 1) * G < K ? (g + 1) * G : K;
    for (size_t c = 0; c < nv; ++c) A[c] = _mm512_setzero_ps(), Z[c] = zerosOf(w, g, n0 + 16 * c, vecMask(c, nv, last));
    for (size_t b = 0, kb = k0; kb < k1; ++b, kb += kQ8Block) {
      const size_t u0 = kb / U, rows = ((kb + kQ8Block < k1 ? kb + kQ8Block : k1) - kb) / U;
      if (u0 + rows + kPrefetchUnitsQ8 <= units)
        for (size_t r = 0; r < rows; ++r) {
          const char* pf = reinterpret_cast<const char*>(qw + (u0 + r + kPrefetchUnitsQ8) * N);
          for (size_t o = 0; o < nv * 64; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
        }
      __m512i xv[ROWS][8 / BITS];
      blockActs<BITS>(qx, u0, rows, xv);
      const __m512 q = _mm512_set1_ps(qs[g * a.bpg + b]), d = _mm512_set1_ps(dx[g * a.bpg + b]);
      blockTerms<BITS>(qw + u0 * N, N, rows, xv, nv, last, q, d, Z, A);
    }
    for (size_t c = 0; c < nv; ++c) Y[c] = _mm512_fmadd_ps(scalesOf(w, g, n0 + 16 * c, vecMask(c, nv, last)), A[c], Y[c]);
  }
  for (size_t c = 0; c < nv; ++c) storeY(y + m * ldy + n0 + 16 * c, vecMask(c, nv, last), Y[c]);
}

template <int BITS>
void gemvQ8Columns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  for (size_t m = 0; m < a.M; ++m)
    for (size_t n = n0; n < n1; n += kStripVectors * 16) {
      const size_t cols = n1 - n < kStripVectors * 16 ? n1 - n : kStripVectors * 16;
      gemvQ8Strip<BITS>(w, a, m, n, (cols + 15) / 16, lastMask(cols), y, ldy);
    }
}

// Split-K: the group term A of group g, row m, columns [n0, n1) (<= kQSplitCols) into T.
template <int BITS>
void termsQ8(const QMatrix& w, const QActs& a, size_t m, size_t g, size_t n0, size_t n1, float* T) {
  constexpr int U = 32 / BITS, ROWS = int(kQ8Block) / U;
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt));
  const size_t k0 = g * G, k1 = (g + 1) * G < K ? (g + 1) * G : K;
  const size_t nv = (n1 - n0 + 15) / 16;
  const __mmask16 last = lastMask(n1 - n0);
  const int8_t* qx = a.qx + m * K;
  __m512 A[kSplitVectors], Z[kSplitVectors];
  for (size_t c = 0; c < nv; ++c) A[c] = _mm512_setzero_ps(), Z[c] = zerosOf(w, g, n0 + 16 * c, vecMask(c, nv, last));
  for (size_t b = 0, kb = k0; kb < k1; ++b, kb += kQ8Block) {
    const size_t u0 = kb / U, rows = ((kb + kQ8Block < k1 ? kb + kQ8Block : k1) - kb) / U;
    __m512i xv[ROWS][8 / BITS];
    blockActs<BITS>(qx, u0, rows, xv);
    const size_t bi = m * a.nbt + g * a.bpg + b;
    blockTerms<BITS>(w.qweight + u0 * N + n0, N, rows, xv, nv, last, _mm512_set1_ps(a.qsum[bi]), _mm512_set1_ps(a.dx[bi]), Z, A);
  }
  float* t = T + (m * a.ng + g) * N + n0;
  for (size_t c = 0; c < nv; ++c) storeY(t + 16 * c, vecMask(c, nv, last), A[c]);
}

// Entry points (non-template, defined inside the target region when KV_Q8_VNNI).
void q8Columns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  switch (w.fmt.bits) {
    case 2: return gemvQ8Columns<2>(w, a, n0, n1, y, ldy);
    case 4: return gemvQ8Columns<4>(w, a, n0, n1, y, ldy);
    case 8: return gemvQ8Columns<8>(w, a, n0, n1, y, ldy);
    default: return;
  }
}
void q8Terms(const QMatrix& w, const QActs& a, size_t m, size_t g, size_t n0, size_t n1, float* T) {
  switch (w.fmt.bits) {
    case 2: return termsQ8<2>(w, a, m, g, n0, n1, T);
    case 4: return termsQ8<4>(w, a, m, g, n0, n1, T);
    case 8: return termsQ8<8>(w, a, m, g, n0, n1, T);
    default: return;
  }
}

}  // namespace KV_Q8_NS
