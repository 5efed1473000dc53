// The int8-activation GEMV kernels of the AVX-512 qgemm level (QAct::kInt8, 2/3/4/8-bit weights),
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
// 3 bits: a 32-row block is one 96-bit unit (three qweight rows), unpacked into the 8 quads
// of kQ3Quads (gemm_q.h) exactly as the AVX2 level's q3Unpack does, byte blends under k-masks
// instead of VPBLENDVB; maddubs: 8 per block, <= 8·2·7·127 = 14224 per i16 lane, widened once.
namespace KV_Q8_NS {

// Codes per packing unit, qweight rows per unit, activation quads per unit, units per block.
template <int BITS>
struct Shape {
  static constexpr int U = unitCodes(BITS), W = unitWords(BITS), SH = BITS == 3 ? 8 : 8 / BITS, ROWS = int(kQ8Block) / U;
};

// The 3-bit unit of 16 columns (words w0, w1, w2) against its 8 broadcast activation quads.
struct Dot3 {
  __m512i s = _mm512_setzero_si512();
  inline void quad(__m512i v, __m512i x) {  // v: 4 codes 0..7 per lane
#if KV_Q8_VNNI
    s = _mm512_dpbusd_epi32(s, v, x);
#else
    s = _mm512_add_epi16(s, _mm512_maddubs_epi16(v, x));
#endif
  }
  inline void unit(__m512i w0, __m512i w1, __m512i w2, const __m512i* xr) {
    // Byte p of each lane from word (2p + o) mod 3: bytes 0 and 3 from a03, byte 1 from a1, byte 2 from a2.
    const __mmask64 b1 = 0x2222222222222222ull, b2 = 0x4444444444444444ull;
    auto blend = [&](__m512i a03, __m512i a1, __m512i a2) { return _mm512_mask_blend_epi8(b2, _mm512_mask_blend_epi8(b1, a03, a1), a2); };
    const __m512i m7 = _mm512_set1_epi8(7);
    const __m512i v0 = blend(w0, w2, w1), v1 = blend(w1, w0, w2), v2 = blend(w2, w1, w0);
    quad(_mm512_and_si512(v0, m7), xr[0]);
    quad(_mm512_and_si512(_mm512_srli_epi32(v1, 1), m7), xr[1]);
    quad(_mm512_and_si512(_mm512_srli_epi32(v2, 2), m7), xr[2]);
    quad(_mm512_and_si512(_mm512_srli_epi32(v0, 3), m7), xr[3]);
    quad(_mm512_and_si512(_mm512_srli_epi32(v1, 4), m7), xr[4]);
    quad(_mm512_and_si512(_mm512_srli_epi32(v2, 5), m7), xr[5]);
    // The two-byte codes (see the AVX2 level's q3Unpack): low bits from v0 >> 6 (v1 >> 7),
    // the rest from v1 (v2) rotated right by 6 (7).
    quad(_mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(v0, 6), _mm512_set1_epi8(3)), _mm512_and_si512(_mm512_ror_epi32(v1, 6), _mm512_set1_epi8(4))), xr[6]);
    quad(_mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(v1, 7), _mm512_set1_epi8(1)), _mm512_and_si512(_mm512_ror_epi32(v2, 7), _mm512_set1_epi8(6))), xr[7]);
  }
  inline __m512 result(__m512) const {
#if KV_Q8_VNNI
    return _mm512_cvtepi32_ps(s);
#else
    return _mm512_cvtepi32_ps(_mm512_madd_epi16(s, _mm512_set1_epi16(1)));
#endif
  }
};

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

// The 32-bit activation words of one 32-row block: xv[r][j] = bytes 4j..4j+3 of packing unit u0 + r.
template <int BITS>
inline void blockActs(const int8_t* qx, size_t u0, size_t rows, __m512i (*xv)[Shape<BITS>::SH]) {
  using S = Shape<BITS>;
  for (size_t r = 0; r < rows; ++r)
    for (int j = 0; j < S::SH; ++j) {
      int32_t v;
      std::memcpy(&v, qx + (u0 + r) * S::U + 4 * j, 4);
      xv[r][j] = _mm512_set1_epi32(v);
    }
}

// A += (I − z·Q)·d for nv column vectors over the units of one block (p: the block's first
// qweight row at the first column).
template <int BITS>
inline void blockTerms(const uint32_t* p, size_t N, size_t rows, const __m512i (*xv)[Shape<BITS>::SH], size_t nv, __mmask16 last,
                       __m512 q, __m512 d, const __m512* Z, __m512* A) {
  constexpr size_t ROWS = size_t(Shape<BITS>::ROWS);
  for (size_t c = 0; c < nv; ++c) {
    const __mmask16 mk = vecMask(c, nv, last);
    __m512 I;
    if constexpr (BITS == 3) {
      (void)rows;  // a block is exactly one unit (G and K are multiples of 32)
      Dot3 dot;
      dot.unit(loadW(p + 16 * c, mk), loadW(p + N + 16 * c, mk), loadW(p + 2 * N + 16 * c, mk), xv[0]);
      I = dot.result(q);
    } else {
      Dot<BITS> dot;
      if (rows == ROWS) {
        for (size_t r = 0; r < ROWS; ++r) dot.row(loadW(p + r * N + 16 * c, mk), xv[r]);
      } else {
        for (size_t r = 0; r < rows; ++r) dot.row(loadW(p + r * N + 16 * c, mk), xv[r]);
      }
      I = dot.result(q);
    }
    A[c] = _mm512_fmadd_ps(_mm512_fnmadd_ps(Z[c], q, I), d, A[c]);
  }
}

// One activation row m, a strip of nv <= kStripVectors vectors (16·nv columns from n0, the last
// vector under `last`), all groups: y = Σ_g fma(s, A_g, y). Every qweight row of the strip is
// read as one contiguous run, as in the AVX2 level.
template <int BITS>
void gemvQ8Strip(const QMatrix& w, const QActs& a, size_t m, size_t n0, size_t nv, __mmask16 last, float* y, size_t ldy) {
  using S = Shape<BITS>;
  constexpr int U = S::U, W = S::W;
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt)), qrows = K / U * W;
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
      const size_t r0 = u0 * W, nr = rows * W;  // the block's qweight rows
      if (r0 + nr + kPrefetchUnitsQ8 <= qrows)
        for (size_t r = 0; r < nr; ++r) {
          const char* pf = reinterpret_cast<const char*>(qw + (r0 + r + kPrefetchUnitsQ8) * N);
          for (size_t o = 0; o < nv * 64; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
        }
      __m512i xv[S::ROWS][S::SH];
      blockActs<BITS>(qx, u0, rows, xv);
      const __m512 q = _mm512_set1_ps(qs[g * a.bpg + b]), d = _mm512_set1_ps(dx[g * a.bpg + b]);
      blockTerms<BITS>(qw + r0 * N, N, rows, xv, nv, last, q, d, Z, A);
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
  using S = Shape<BITS>;
  constexpr int U = S::U, W = S::W;
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt));
  const size_t k0 = g * G, k1 = (g + 1) * G < K ? (g + 1) * G : K;
  const size_t nv = (n1 - n0 + 15) / 16;
  const __mmask16 last = lastMask(n1 - n0);
  const int8_t* qx = a.qx + m * K;
  __m512 A[kSplitVectors], Z[kSplitVectors];
  for (size_t c = 0; c < nv; ++c) A[c] = _mm512_setzero_ps(), Z[c] = zerosOf(w, g, n0 + 16 * c, vecMask(c, nv, last));
  for (size_t b = 0, kb = k0; kb < k1; ++b, kb += kQ8Block) {
    const size_t u0 = kb / U, rows = ((kb + kQ8Block < k1 ? kb + kQ8Block : k1) - kb) / U;
    __m512i xv[S::ROWS][S::SH];
    blockActs<BITS>(qx, u0, rows, xv);
    const size_t bi = m * a.nbt + g * a.bpg + b;
    blockTerms<BITS>(w.qweight + u0 * W * N + n0, N, rows, xv, nv, last, _mm512_set1_ps(a.qsum[bi]), _mm512_set1_ps(a.dx[bi]), Z, A);
  }
  float* t = T + (m * a.ng + g) * N + n0;
  for (size_t c = 0; c < nv; ++c) storeY(t + 16 * c, vecMask(c, nv, last), A[c]);
}

// Entry points (non-template, defined inside the target region when KV_Q8_VNNI).
void q8Columns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  switch (w.fmt.bits) {
    case 2: return gemvQ8Columns<2>(w, a, n0, n1, y, ldy);
    case 3: return gemvQ8Columns<3>(w, a, n0, n1, y, ldy);
    case 4: return gemvQ8Columns<4>(w, a, n0, n1, y, ldy);
    case 8: return gemvQ8Columns<8>(w, a, n0, n1, y, ldy);
    default: return;
  }
}
void q8Terms(const QMatrix& w, const QActs& a, size_t m, size_t g, size_t n0, size_t n1, float* T) {
  switch (w.fmt.bits) {
    case 2: return termsQ8<2>(w, a, m, g, n0, n1, T);
    case 3: return termsQ8<3>(w, a, m, g, n0, n1, T);
    case 4: return termsQ8<4>(w, a, m, g, n0, n1, T);
    case 8: return termsQ8<8>(w, a, m, g, n0, n1, T);
    default: return;
  }
}

}  // namespace KV_Q8_NS
