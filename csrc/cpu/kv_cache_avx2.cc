// AVX2 level of the KV cache codecs. Same bytes (encode) and same floats (decode) as the
// scalar reference: the same IEEE operations in the same order, only eight lanes at a time.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "kv_cache.h"
#include "kvant/half.h"

namespace kvant {
namespace avx2 {
namespace {

// One butterfly stage at distance h < 8 inside a vector: lanes with bit h clear get own +
// partner, lanes with it set get partner - own (= lower - upper, as the scalar stage).
template <int h>
inline __m256 stageIn(__m256 v) {
  __m256 p;
  if (h == 1) p = _mm256_permute_ps(v, 0xB1);                                 // swap pairs
  else if (h == 2) p = _mm256_permute_ps(v, 0x4E);                            // swap pairs of pairs
  else p = _mm256_permute2f128_ps(v, v, 0x01);                                // swap 128-bit halves
  const __m256 sum = _mm256_add_ps(v, p), diff = _mm256_sub_ps(p, v);
  constexpr int m = h == 1 ? 0xAA : h == 2 ? 0xCC : 0xF0;                     // lanes with bit h set
  return _mm256_blend_ps(sum, diff, m);
}

inline void wht32(__m256& a, __m256& b, __m256& c, __m256& d) {
  a = stageIn<4>(stageIn<2>(stageIn<1>(a)));
  b = stageIn<4>(stageIn<2>(stageIn<1>(b)));
  c = stageIn<4>(stageIn<2>(stageIn<1>(c)));
  d = stageIn<4>(stageIn<2>(stageIn<1>(d)));
  __m256 t;
  t = _mm256_add_ps(a, b), b = _mm256_sub_ps(a, b), a = t;  // distance 8
  t = _mm256_add_ps(c, d), d = _mm256_sub_ps(c, d), c = t;
  t = _mm256_add_ps(a, c), c = _mm256_sub_ps(a, c), a = t;  // distance 16
  t = _mm256_add_ps(b, d), d = _mm256_sub_ps(b, d), b = t;
}

void hadamard32(float* x, size_t n) {
  for (size_t g = 0; g < n; g += kKvGroup) {
    __m256 a = _mm256_loadu_ps(x + g), b = _mm256_loadu_ps(x + g + 8), c = _mm256_loadu_ps(x + g + 16), d = _mm256_loadu_ps(x + g + 24);
    wht32(a, b, c, d);
    _mm256_storeu_ps(x + g, a), _mm256_storeu_ps(x + g + 8, b), _mm256_storeu_ps(x + g + 16, c), _mm256_storeu_ps(x + g + 24, d);
  }
}

inline bool allFinite(const float* x, size_t n) {
  const __m256 inf = _mm256_set1_ps(INFINITY), absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  size_t i = 0;
  for (; i + 8 <= n; i += 8)  // !(|x| < inf) catches Inf and NaN
    if (_mm256_movemask_ps(_mm256_cmp_ps(_mm256_and_ps(_mm256_loadu_ps(x + i), absMask), inf, _CMP_NLT_UQ))) return false;
  for (; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

inline float hmax(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

bool encode(KvType t, bool hadamard, const float* x, size_t n, uint8_t* dst) {
  if (!allFinite(x, n)) return false;
  if (t == KvType::kF16) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(h, _mm_set1_epi16(0x7c00)), _mm_set1_epi16(0x7c00)))) return false;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 2 * i), h);
    }
    for (; i < n; ++i) {
      const uint16_t h = f32ToF16(x[i]);
      if ((h & 0x7c00u) == 0x7c00u) return false;
      std::memcpy(dst + 2 * i, &h, 2);
    }
    return true;
  }
  if (t == KvType::kBf16) {  // not the hot path (one row per token): the scalar rounding
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = f32ToBf16(x[i]);
      if ((h & 0x7f80u) == 0x7f80u) return false;
      std::memcpy(dst + 2 * i, &h, 2);
    }
    return true;
  }
  const int qmax = kvQmax(t);
  const __m256 absMask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i hi = _mm256_set1_epi32(qmax), lo = _mm256_set1_epi32(-qmax);
  for (size_t g = 0; g < n; g += kKvGroup) {
    __m256 v[4] = {_mm256_loadu_ps(x + g), _mm256_loadu_ps(x + g + 8), _mm256_loadu_ps(x + g + 16), _mm256_loadu_ps(x + g + 24)};
    if (hadamard) wht32(v[0], v[1], v[2], v[3]);
    const __m256 am = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], absMask), _mm256_and_ps(v[1], absMask)),
                                    _mm256_max_ps(_mm256_and_ps(v[2], absMask), _mm256_and_ps(v[3], absMask)));
    const uint16_t dh = f32ToF16(hmax(am) / float(qmax));
    if ((dh & 0x7c00u) == 0x7c00u) return false;
    const float d = f16ToF32(dh);
    const __m256 inv = _mm256_set1_ps(d != 0 ? 1.0f / d : 0.0f);
    alignas(32) int32_t q[32];
    for (int k = 0; k < 4; ++k)  // cvtps rounds to nearest even (MXCSR default), as nearbyint
      _mm256_store_si256(reinterpret_cast<__m256i*>(q + 8 * k), _mm256_max_epi32(lo, _mm256_min_epi32(hi, _mm256_cvtps_epi32(_mm256_mul_ps(v[k], inv)))));
    if (t == KvType::kQ8) {
      KvBlockQ8 b;
      b.d = dh;
      for (size_t i = 0; i < 32; ++i) b.qs[i] = int8_t(q[i]);
      std::memcpy(dst + g / 32 * sizeof(b), &b, sizeof(b));
    } else if (t == KvType::kQ6) {
      KvBlockQ6 b;
      b.d = dh;
      for (size_t i = 0; i < 8; ++i) {
        const uint32_t w = uint32_t(q[i] + 32) | uint32_t(q[8 + i] + 32) << 6 | uint32_t(q[16 + i] + 32) << 12 | uint32_t(q[24 + i] + 32) << 18;
        b.qs[3 * i] = uint8_t(w), b.qs[3 * i + 1] = uint8_t(w >> 8), b.qs[3 * i + 2] = uint8_t(w >> 16);
      }
      std::memcpy(dst + g / 32 * sizeof(b), &b, sizeof(b));
    } else {
      KvBlockQ4 b;
      b.d = dh;
      for (size_t j = 0; j < 16; ++j) b.qs[j] = uint8_t((q[j] + 8) | (q[16 + j] + 8) << 4);
      std::memcpy(dst + g / 32 * sizeof(b), &b, sizeof(b));
    }
  }
  return true;
}

// The group scale: F16C's conversion is exact for every f16 (as f16ToF32), in one instruction
// instead of the portable bit manipulation (a measurable part of a 32-value group's work).
inline float scaleOf(const uint8_t* block) {
  uint16_t h;
  std::memcpy(&h, block, 2);
  return _cvtsh_ss(h);
}

inline void block32(KvType t, const uint8_t* blk, __m256 v[4]);

void decode(KvType t, const uint8_t* src, size_t n, float* y) {
  if (t == KvType::kF16 || t == KvType::kBf16) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * i));
      _mm256_storeu_ps(y + i, t == KvType::kF16 ? _mm256_cvtph_ps(h) : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
    for (; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      y[i] = t == KvType::kF16 ? f16ToF32(h) : bf16ToF32(h);
    }
    return;
  }
  if (t == KvType::kQ8) {
    for (size_t g = 0; g < n; g += 32, src += sizeof(KvBlockQ8)) {
      const __m256 d = _mm256_set1_ps(scaleOf(src));
      for (int k = 0; k < 4; ++k) {
        const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + 2 + 8 * k));
        _mm256_storeu_ps(y + g + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), d));
      }
    }
  } else if (t == KvType::kQ6) {
    // Sign extension by q6Codes (xor + two shifts per 8 codes instead of shift, mask and
    // subtract: the same integers for any stored byte, see there), as block32 does.
    for (size_t g = 0; g < n; g += 32, src += sizeof(KvBlockQ6)) {
      __m256 v[4];
      block32(KvType::kQ6, src, v);
      for (int k = 0; k < 4; ++k) _mm256_storeu_ps(y + g + 8 * k, v[k]);
    }
  } else {
    const __m128i m15 = _mm_set1_epi8(15);
    const __m256i off = _mm256_set1_epi32(8);
    for (size_t g = 0; g < n; g += 32, src += sizeof(KvBlockQ4)) {
      const __m256 d = _mm256_set1_ps(scaleOf(src));
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2));
      const __m128i l = _mm_and_si128(raw, m15), h = _mm_and_si128(_mm_srli_epi16(raw, 4), m15);
      const __m128i parts[4] = {l, _mm_srli_si128(l, 8), h, _mm_srli_si128(h, 8)};
      for (int k = 0; k < 4; ++k)
        _mm256_storeu_ps(y + g + 8 * k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[k]), off)), d));
    }
  }
}

// The four 6-bit codes of each 24-bit word w (code + 32 at bits 0, 6, 12, 18) as signed ints.
// XOR with 32 in every field turns code + 32 (1..63) into the code's 6-bit two's complement
// ((c + 32) ^ 32 = c mod 64 for -31 <= c <= 31), so one shift left (field top bit to bit 31)
// and one arithmetic shift right sign-extend each field: 1 + 2 ops per 8 codes where shift,
// mask and subtract took 3. (u ^ 32) read as 6-bit two's complement is u - 32 for every
// 6-bit u, so the integers, and the floats, are the old ones for any stored byte.
inline void q6Codes(__m256i w, __m256i c[4]) {
  const __m256i x = _mm256_xor_si256(w, _mm256_set1_epi32(0x820820));
  c[0] = _mm256_srai_epi32(_mm256_slli_epi32(x, 26), 26);
  c[1] = _mm256_srai_epi32(_mm256_slli_epi32(x, 20), 26);
  c[2] = _mm256_srai_epi32(_mm256_slli_epi32(x, 14), 26);
  c[3] = _mm256_srai_epi32(_mm256_slli_epi32(x, 8), 26);
}

// The 32 values of quantized block `blk` as four vectors (the same floats decode() stores).
inline void block32(KvType t, const uint8_t* blk, __m256 v[4]) {
  const __m256 d = _mm256_set1_ps(scaleOf(blk));
  if (t == KvType::kQ8) {
    for (int k = 0; k < 4; ++k)
      v[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * k)))), d);
  } else if (t == KvType::kQ6) {
    const __m128i shLo = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    const __m128i shHi = _mm_setr_epi8(4, 5, 6, -1, 7, 8, 9, -1, 10, 11, 12, -1, 13, 14, 15, -1);
    const __m256i w = _mm256_set_m128i(_mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 10)), shHi),
                                       _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)), shLo));
    __m256i c[4];
    q6Codes(w, c);
    for (int k = 0; k < 4; ++k) v[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(c[k]), d);
  } else {
    const __m128i m15 = _mm_set1_epi8(15);
    const __m256i off = _mm256_set1_epi32(8);
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m128i l = _mm_and_si128(raw, m15), h = _mm_and_si128(_mm_srli_epi16(raw, 4), m15);
    const __m128i parts[4] = {l, _mm_srli_si128(l, 8), h, _mm_srli_si128(h, 8)};
    for (int k = 0; k < 4; ++k) v[k] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_cvtepu8_epi32(parts[k]), off)), d);
  }
}

inline __m256 half8(KvType t, const uint8_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return t == KvType::kF16 ? _mm256_cvtph_ps(h) : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// bf16 without a widening shuffle: 16 values as 8 dwords, dword j = value 2j | value 2j+1 << 16,
// so x << 16 is the f32 of the even values and x & 0xffff0000 that of the odd ones: two ALU
// ops per 16 values, where vpmovzxwd + shift cost a shuffle and a shift per 8. axpyRows keeps
// its accumulator slice deinterleaved in registers (once on load, back once on store), so each
// element still gets the same FMAs in the same order.
inline __m256 bf16Even(__m256i x) { return _mm256_castsi256_ps(_mm256_slli_epi32(x, 16)); }
inline __m256 bf16Odd(__m256i x) { return _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(int(0xffff0000u)))); }
// 16 floats lo (0..7), hi (8..15) -> even = 0, 2, .., 14 and odd = 1, 3, .., 15, and back.
inline void deinterleave16(__m256 lo, __m256 hi, __m256& even, __m256& odd) {
  even = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0x88)), 0xD8));
  odd = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(lo, hi, 0xDD)), 0xD8));
}
inline void interleave16(__m256 even, __m256 odd, __m256& lo, __m256& hi) {
  const __m256 e = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(even), 0xD8));
  const __m256 o = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(odd), 0xD8));
  lo = _mm256_unpacklo_ps(e, o), hi = _mm256_unpackhi_ps(e, o);
}

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 u = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(u, _mm_shuffle_ps(u, u, 1)));
}

float dot(KvType t, const uint8_t* src, const float* q, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0;
  size_t i = 0;
  if (kvQuantized(t)) {
    const size_t bytes = kvSegmentBytes(t, kKvGroup);
    for (; i < n; i += 32, src += bytes) {
      __m256 v[4];
      block32(t, src, v);
      a0 = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(q + i), a0);
      a1 = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(q + i + 8), a1);
      a0 = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(q + i + 16), a0);
      a1 = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(q + i + 24), a1);
    }
    return hsum(_mm256_add_ps(a0, a1));
  }
  for (; i + 16 <= n; i += 16) {
    a0 = _mm256_fmadd_ps(half8(t, src + 2 * i), _mm256_loadu_ps(q + i), a0);
    a1 = _mm256_fmadd_ps(half8(t, src + 2 * i + 16), _mm256_loadu_ps(q + i + 8), a1);
  }
  float s = hsum(_mm256_add_ps(a0, a1));
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    s += q[i] * (t == KvType::kF16 ? f16ToF32(h) : bf16ToF32(h));
  }
  return s;
}

void axpy(KvType t, const uint8_t* src, float p, float* acc, size_t n) {
  const __m256 vp = _mm256_set1_ps(p);
  size_t i = 0;
  if (kvQuantized(t)) {
    const size_t bytes = kvSegmentBytes(t, kKvGroup);
    for (; i < n; i += 32, src += bytes) {
      __m256 v[4];
      block32(t, src, v);
      for (int k = 0; k < 4; ++k) _mm256_storeu_ps(acc + i + 8 * k, _mm256_fmadd_ps(vp, v[k], _mm256_loadu_ps(acc + i + 8 * k)));
    }
    return;
  }
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(vp, half8(t, src + 2 * i), _mm256_loadu_ps(acc + i)));
  for (; i < n; ++i) {
    uint16_t h;
    std::memcpy(&h, src + 2 * i, 2);
    acc[i] += p * (t == KvType::kF16 ? f16ToF32(h) : bf16ToF32(h));
  }
}

// The 32 codes of quantized block `blk` as floats, without the scale (code·d = decode()).
inline void codes32f(KvType t, const uint8_t* blk, __m256 v[4]) {
  if (t == KvType::kQ8) {
    for (int k = 0; k < 4; ++k) v[k] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + 8 * k))));
  } else if (t == KvType::kQ6) {
    const __m128i shLo = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
    const __m128i shHi = _mm_setr_epi8(4, 5, 6, -1, 7, 8, 9, -1, 10, 11, 12, -1, 13, 14, 15, -1);
    const __m256i w = _mm256_set_m128i(_mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 10)), shHi),
                                       _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)), shLo));
    __m256i c[4];
    q6Codes(w, c);
    for (int k = 0; k < 4; ++k) v[k] = _mm256_cvtepi32_ps(c[k]);
  } else {
    // Nibbles to signed bytes (minus the offset 8) once for all 32 codes, then one sign
    // extension and one conversion per 8: 3 ops per 8 values instead of 4 plus the scale.
    const __m128i m15 = _mm_set1_epi8(15), o8 = _mm_set1_epi8(8);
    const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
    const __m128i l = _mm_sub_epi8(_mm_and_si128(raw, m15), o8), h = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(raw, 4), m15), o8);
    v[0] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(l));
    v[1] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(l, 8)));
    v[2] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h));
    v[3] = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(h, 8)));
  }
}

// f16 / bf16: 64 columns of acc (8 registers) across all rows; per row and element one FMA
// in row order, exactly as axpy does, so the result is the same as nrows axpy calls. Columns
// past the last full 64 go through axpy row by row (same arithmetic again).
// Quantized: the scale is folded into the row weight, acc += (p·d)·code, one group of 32
// columns (4 registers) across all rows: per row and group one scalar product, the unscaled
// codes and 4 FMAs (the scalar reference does the same products).
void axpyRows(KvType t, const uint8_t* const* rows, size_t off, size_t nrows, const float* p, float* acc, size_t n) {
  if (kvQuantized(t)) {
    const size_t gbytes = kvSegmentBytes(t, kKvGroup);
    size_t g = 0;
    // Two groups (64 columns, 8 accumulators) per pass over the rows: one group alone keeps
    // 4 FMA chains that each advance one FMA per row, so a pass ran at the FMA latency.
    for (; g + 64 <= n; g += 64) {
      __m256 a0 = _mm256_loadu_ps(acc + g), a1 = _mm256_loadu_ps(acc + g + 8), a2 = _mm256_loadu_ps(acc + g + 16), a3 = _mm256_loadu_ps(acc + g + 24);
      __m256 b0 = _mm256_loadu_ps(acc + g + 32), b1 = _mm256_loadu_ps(acc + g + 40), b2 = _mm256_loadu_ps(acc + g + 48), b3 = _mm256_loadu_ps(acc + g + 56);
      const size_t boff = off + g / 32 * gbytes;
      for (size_t r = 0; r < nrows; ++r) {
        const uint8_t* blk = rows[r] + boff;
        const __m256 w = _mm256_set1_ps(p[r] * scaleOf(blk)), w2 = _mm256_set1_ps(p[r] * scaleOf(blk + gbytes));
        __m256 v[4], u[4];
        codes32f(t, blk, v);
        codes32f(t, blk + gbytes, u);
        a0 = _mm256_fmadd_ps(w, v[0], a0), a1 = _mm256_fmadd_ps(w, v[1], a1);
        a2 = _mm256_fmadd_ps(w, v[2], a2), a3 = _mm256_fmadd_ps(w, v[3], a3);
        b0 = _mm256_fmadd_ps(w2, u[0], b0), b1 = _mm256_fmadd_ps(w2, u[1], b1);
        b2 = _mm256_fmadd_ps(w2, u[2], b2), b3 = _mm256_fmadd_ps(w2, u[3], b3);
      }
      _mm256_storeu_ps(acc + g, a0), _mm256_storeu_ps(acc + g + 8, a1), _mm256_storeu_ps(acc + g + 16, a2), _mm256_storeu_ps(acc + g + 24, a3);
      _mm256_storeu_ps(acc + g + 32, b0), _mm256_storeu_ps(acc + g + 40, b1), _mm256_storeu_ps(acc + g + 48, b2), _mm256_storeu_ps(acc + g + 56, b3);
    }
    for (; g < n; g += 32) {
      __m256 a0 = _mm256_loadu_ps(acc + g), a1 = _mm256_loadu_ps(acc + g + 8), a2 = _mm256_loadu_ps(acc + g + 16), a3 = _mm256_loadu_ps(acc + g + 24);
      const size_t boff = off + g / 32 * gbytes;
      for (size_t r = 0; r < nrows; ++r) {
        const uint8_t* blk = rows[r] + boff;
        const __m256 w = _mm256_set1_ps(p[r] * scaleOf(blk));
        __m256 v[4];
        codes32f(t, blk, v);
        a0 = _mm256_fmadd_ps(w, v[0], a0), a1 = _mm256_fmadd_ps(w, v[1], a1);
        a2 = _mm256_fmadd_ps(w, v[2], a2), a3 = _mm256_fmadd_ps(w, v[3], a3);
      }
      _mm256_storeu_ps(acc + g, a0), _mm256_storeu_ps(acc + g + 8, a1), _mm256_storeu_ps(acc + g + 16, a2), _mm256_storeu_ps(acc + g + 24, a3);
    }
    return;
  }
  size_t c = 0;
  if (t == KvType::kBf16)  // the same FMAs per element in row order, on deinterleaved columns
    for (; c + 64 <= n; c += 64) {
      __m256 e[4], o[4];
      for (int k = 0; k < 4; ++k) deinterleave16(_mm256_loadu_ps(acc + c + 16 * k), _mm256_loadu_ps(acc + c + 16 * k + 8), e[k], o[k]);
      const size_t boff = off + 2 * c;
      for (size_t r = 0; r < nrows; ++r) {
        const uint8_t* src = rows[r] + boff;
        const __m256 vp = _mm256_set1_ps(p[r]);
        for (int k = 0; k < 4; ++k) {
          const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32 * k));
          e[k] = _mm256_fmadd_ps(vp, bf16Even(x), e[k]);
          o[k] = _mm256_fmadd_ps(vp, bf16Odd(x), o[k]);
        }
      }
      for (int k = 0; k < 4; ++k) {
        __m256 lo, hi;
        interleave16(e[k], o[k], lo, hi);
        _mm256_storeu_ps(acc + c + 16 * k, lo), _mm256_storeu_ps(acc + c + 16 * k + 8, hi);
      }
    }
  for (; c + 64 <= n; c += 64) {
    __m256 a[8];
    for (int k = 0; k < 8; ++k) a[k] = _mm256_loadu_ps(acc + c + 8 * k);
    const size_t boff = off + 2 * c;
    for (size_t r = 0; r < nrows; ++r) {
      const uint8_t* src = rows[r] + boff;
      const __m256 vp = _mm256_set1_ps(p[r]);
      for (int k = 0; k < 8; ++k) a[k] = _mm256_fmadd_ps(vp, half8(t, src + 16 * k), a[k]);
    }
    for (int k = 0; k < 8; ++k) _mm256_storeu_ps(acc + c + 8 * k, a[k]);
  }
  if (c < n) {
    const size_t boff = off + 2 * c;
    for (size_t r = 0; r < nrows; ++r) axpy(t, rows[r] + boff, p[r], acc + c, n - c);
  }
}

// 32 signed codes of a group as bytes in order: q8 as stored, q4 nibbles (low = codes
// 0..15, high = 16..31) minus the offset 8.
inline __m256i codes32(KvType t, const uint8_t* blk) {
  if (t == KvType::kQ8) return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
  const __m128i m15 = _mm_set1_epi8(15);
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
  const __m256i c = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m15), _mm_and_si128(raw, m15));
  return _mm256_sub_epi8(c, _mm256_set1_epi8(8));
}

// maddubs multiplies unsigned by signed bytes: |c| · (q · sign c) = c · q, pairs summed to
// int16 (<= 2·127·127, no saturation), madd with 1 sums to 8 int32 lanes (exact); one
// conversion and one FMA with qd·d per group. Lane partials are summed at the end.
float dotI8(KvType t, const uint8_t* src, const int8_t* q8, const float* qd, size_t n) {
  const size_t bytes = kvSegmentBytes(t, kKvGroup);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (size_t g = 0; g < n / 32; ++g, src += bytes) {
    const __m256i c = codes32(t, src);
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + 32 * g));
    const __m256i prod = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(q, c)), ones);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_set1_ps(qd[g] * scaleOf(src)), acc);
  }
  return hsum(acc);
}

// The scores of up to 8 rows as one vector: lane sums of a[0..7] (row r's partial sums in
// a[r]) by a transposing hadd tree, 7 hadds + 2 lane swaps + 1 add for all 8 rows instead of
// a 5-instruction horizontal sum per row.
inline __m256 hsum8(const __m256 a[8]) {
  const __m256 h0123 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
  const __m256 h4567 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
}

// Lane partials of one row's score (summed by hsum8). The float paths score rows one after
// the other, each key read front to back: interleaving four rows (as the integer paths do)
// measured ~1.5x slower for f16 rows streamed from DRAM, and no faster for q6.
inline __m256 dotLanes(KvType t, const uint8_t* src, const float* q, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0;
  if (kvQuantized(t)) {
    const size_t bytes = kvSegmentBytes(t, kKvGroup);
    for (size_t i = 0; i < n; i += 32, src += bytes) {
      __m256 v[4];
      block32(t, src, v);
      a0 = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(q + i), a0);
      a1 = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(q + i + 8), a1);
      a0 = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(q + i + 16), a0);
      a1 = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(q + i + 24), a1);
    }
  } else {
    for (size_t i = 0; i < n; i += 16) {  // n % 16 == 0 (checked by the caller)
      a0 = _mm256_fmadd_ps(half8(t, src + 2 * i), _mm256_loadu_ps(q + i), a0);
      a1 = _mm256_fmadd_ps(half8(t, src + 2 * i + 16), _mm256_loadu_ps(q + i + 8), a1);
    }
  }
  return _mm256_add_ps(a0, a1);
}

// Integer lane partials: per group the exact integer sums (8 lanes of 4 products), converted
// and scaled by qd·d. q4 codes enter maddubs unsigned as stored (c + 8 in 0..15, no sign
// trick): Σ (c + 8)·q = Σ c·q + 8·Σ q, and the per-lane 8·Σ q is subtracted in integers
// (corr, once per call), so the sums are the same integers as dotI8's. q8 rows are scored one
// at a time (dotI8Lanes, keys read in stream order); dotI8Lanes4 interleaves four rows group
// by group (four FMA chains, one query load per four rows) and serves q4's odd last group.
inline __m256 dotI8Lanes(KvType t, const uint8_t* src, const int8_t* q8, const float* qd, const __m256i* corr, size_t groups) {
  const size_t bytes = kvSegmentBytes(t, kKvGroup);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m128i m15 = _mm_set1_epi8(15);
  __m256 acc = _mm256_setzero_ps();
  for (size_t g = 0; g < groups; ++g, src += bytes) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + 32 * g));
    __m256i prod;
    if (t == KvType::kQ8) {
      const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 2));
      prod = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(q, c)), ones);
    } else {
      const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2));
      const __m256i cu = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m15), _mm_and_si128(raw, m15));
      prod = _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(cu, q), ones), corr[g]);
    }
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_set1_ps(qd[g] * scaleOf(src)), acc);
  }
  return acc;
}

inline void dotI8Lanes4(KvType t, const uint8_t* const src[4], const int8_t* q8, const float* qd, const __m256i* corr, size_t groups, __m256 out[4]) {
  const size_t bytes = kvSegmentBytes(t, kKvGroup);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m128i m15 = _mm_set1_epi8(15);
  __m256 acc[4];
  for (int r = 0; r < 4; ++r) acc[r] = _mm256_setzero_ps();
  for (size_t g = 0, o = 0; g < groups; ++g, o += bytes) {
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + 32 * g));
    for (int r = 0; r < 4; ++r) {
      const uint8_t* blk = src[r] + o;
      __m256i prod;
      if (t == KvType::kQ8) {
        const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 2));
        prod = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(c, c), _mm256_sign_epi8(q, c)), ones);
      } else {
        const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2));
        const __m256i cu = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), m15), _mm_and_si128(raw, m15));
        prod = _mm256_sub_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(cu, q), ones), corr[g]);
      }
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), _mm256_set1_ps(qd[g] * scaleOf(blk)), acc[r]);
    }
  }
  for (int r = 0; r < 4; ++r) out[r] = acc[r];
}

// q4 integer scores two groups per 256-bit operation: the 16 code bytes of groups g and g+1
// side by side (one register), their low nibbles (codes 0..15 of each group) and high nibbles
// (codes 16..31) masked out at once, and maddubs against the query codes arranged the same
// way (qlo = [g: 0..15 | g+1: 0..15], qhi likewise with 16..31). The two int16 results are
// added (|sum| <= 4·15·127 < 2^15) and madd sums pairs, so lane j of each 128-bit half holds
// the exact integer sum of 8 of its group's products; corr2 is the same arrangement of
// 8·Σ q. One conversion and one FMA with [qd·d of g x4 | of g+1 x4] per two groups: about
// two thirds of the one-group form's operations. Only the partition of the exact integer
// sums into lanes differs from dotI8Lanes4, so dotI8's bound holds unchanged.
struct Q4Pairs {
  __m256i lo[kDotRowsMaxGroups / 2], hi[kDotRowsMaxGroups / 2], corr[kDotRowsMaxGroups / 2];
};
inline void q4Pairs(const int8_t* q8, size_t pairs, Q4Pairs& qp) {
  const __m256i ones = _mm256_set1_epi16(1), eights = _mm256_set1_epi8(8);
  for (size_t p = 0; p < pairs; ++p) {
    const int8_t* a = q8 + 64 * p;
    qp.lo[p] = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 32)), _mm_loadu_si128(reinterpret_cast<const __m128i*>(a)));
    qp.hi[p] = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 48)), _mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 16)));
    qp.corr[p] = _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(eights, qp.lo[p]), _mm256_maddubs_epi16(eights, qp.hi[p])), ones);
  }
}
// The group weights qd[g]·d(r, g) of one row for its first 2·pairs <= 8 groups as one vector
// (lane g): the f16 scales inserted into one register (a 16-bit load-insert each), converted
// by one vcvtph2ps and multiplied by one vmulps, where a scalar conversion, product and
// broadcast per group cost ~5 ops. The same IEEE products as qd[g] * scaleOf(block).
inline __m256 q4RowScales(const uint8_t* row, const __m256 qdv, size_t groups) {
  __m128i h = _mm_setzero_si128();
  auto at = [&](size_t g) {
    uint16_t v;
    std::memcpy(&v, row + g * sizeof(KvBlockQ4), 2);
    return int(v);
  };
  h = _mm_insert_epi16(h, at(0), 0), h = _mm_insert_epi16(h, at(1), 1);
  if (groups > 2) h = _mm_insert_epi16(h, at(2), 2), h = _mm_insert_epi16(h, at(3), 3);
  if (groups > 4) h = _mm_insert_epi16(h, at(4), 4), h = _mm_insert_epi16(h, at(5), 5);
  if (groups > 6) h = _mm_insert_epi16(h, at(6), 6), h = _mm_insert_epi16(h, at(7), 7);
  return _mm256_mul_ps(qdv, _mm256_cvtph_ps(h));
}

// The exact integer dot products of group pair p of one q4 row (two blocks at blk: f16 scale,
// then 16 bytes of codes each) with the query's int8 pair, per lane (lanes 0-3: first block):
// maddubs of the low and high nibbles, widened, minus the query's 8·Σq correction.
inline __m256i q4PairDot(const uint8_t* blk, const Q4Pairs& qp, size_t p, __m256i ones, __m256i m15) {
  const __m256i raw = _mm256_set_m128i(_mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + sizeof(KvBlockQ4) + 2)),
                                       _mm_loadu_si128(reinterpret_cast<const __m128i*>(blk + 2)));
  const __m256i lo = _mm256_and_si256(raw, m15), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), m15);
  const __m256i sum16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, qp.lo[p]), _mm256_maddubs_epi16(hi, qp.hi[p]));
  return _mm256_sub_epi32(_mm256_madd_epi16(sum16, ones), qp.corr[p]);
}

inline void q4PairLanes4(const uint8_t* const src[4], const Q4Pairs& qp, const float* qd, size_t pairs, __m256 acc[4]) {
  const __m256i ones = _mm256_set1_epi16(1), m15 = _mm256_set1_epi8(15);
  if (pairs == 0) return;
  if (pairs <= 4) {  // head dims up to 256: the rows' scales once per row, one lane permute per pair
    alignas(32) float qdp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (size_t g = 0; g < 2 * pairs; ++g) qdp[g] = qd[g];
    const __m256 qdv = _mm256_load_ps(qdp);
    __m256 rs[4];
    for (int r = 0; r < 4; ++r) rs[r] = q4RowScales(src[r], qdv, 2 * pairs);
    for (size_t p = 0, o = 0; p < pairs; ++p, o += 2 * sizeof(KvBlockQ4)) {
      const __m256i idx = _mm256_setr_epi32(int(2 * p), int(2 * p), int(2 * p), int(2 * p), int(2 * p + 1), int(2 * p + 1), int(2 * p + 1), int(2 * p + 1));
      for (int r = 0; r < 4; ++r)
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q4PairDot(src[r] + o, qp, p, ones, m15)), _mm256_permutevar8x32_ps(rs[r], idx), acc[r]);
    }
    return;
  }
  for (size_t p = 0, o = 0; p < pairs; ++p, o += 2 * sizeof(KvBlockQ4)) {
    for (int r = 0; r < 4; ++r) {
      const uint8_t* blk = src[r] + o;
      const __m256i prod = q4PairDot(blk, qp, p, ones, m15);
      const __m256 sc = _mm256_set_m128(_mm_set1_ps(qd[2 * p + 1] * scaleOf(blk + sizeof(KvBlockQ4))), _mm_set1_ps(qd[2 * p] * scaleOf(blk)));
      acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(prod), sc, acc[r]);
    }
  }
}

void dotRows(KvType t, const uint8_t* const* rows, size_t off, size_t nrows, const float* q, const int8_t* q8, const float* qd, size_t n,
             float* out) {
  const bool intPath = q8 != nullptr;
  const size_t groups = n / 32;
  // Per group, 8·(Σ of each lane's 4 query codes): maddubs of the constant 8 with q, summed.
  __m256i corr[kDotRowsMaxGroups];
  if (intPath && t == KvType::kQ4)
    for (size_t g = 0; g < groups; ++g)
      corr[g] = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(8), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q8 + 32 * g))),
                                  _mm256_set1_epi16(1));
  // q4 integer path: whole pairs of groups by q4PairLanes4, an odd last group by dotI8Lanes4.
  const bool q4Int = intPath && t == KvType::kQ4;
  const size_t pairs = q4Int ? groups / 2 : 0;
  Q4Pairs qp;
  if (pairs) q4Pairs(q8, pairs, qp);
  for (size_t r0 = 0; r0 < nrows; r0 += 8) {
    const size_t nr = nrows - r0 < 8 ? nrows - r0 : 8;
    __m256 a[8];
    const uint8_t* src[8];
    for (size_t r = 0; r < 8; ++r) src[r] = rows[r0 + (r < nr ? r : 0)] + off;  // pad with row r0 (dropped)
    if (!intPath) {
      for (size_t r = 0; r < 8; ++r) a[r] = r < nr ? dotLanes(t, src[r], q, n) : _mm256_setzero_ps();
    } else {
      for (size_t h = 0; h < 8; h += 4)
        if (h < nr) {
          if (q4Int) {
            for (size_t r = h; r < h + 4; ++r) a[r] = _mm256_setzero_ps();
            q4PairLanes4(src + h, qp, qd, pairs, a + h);
            if (groups % 2) {  // the last group: its lane partials added to the pairs'
              const uint8_t* last[4];
              __m256 b[4];
              for (int r = 0; r < 4; ++r) last[r] = src[h + r] + 2 * pairs * sizeof(KvBlockQ4);
              dotI8Lanes4(t, last, q8 + 64 * pairs, qd + 2 * pairs, corr + 2 * pairs, 1, b);
              for (int r = 0; r < 4; ++r) a[h + r] = _mm256_add_ps(a[h + r], b[r]);
            }
          } else {
            for (size_t r = h; r < h + 4; ++r) a[r] = r < nr ? dotI8Lanes(t, src[r], q8, qd, corr, groups) : _mm256_setzero_ps();
          }
        } else {
          for (size_t r = h; r < h + 4; ++r) a[r] = _mm256_setzero_ps();  // all dropped
        }
    }
    alignas(32) float s[8];
    _mm256_store_ps(s, hsum8(a));
    for (size_t r = 0; r < nr; ++r) out[r0 + r] = s[r];
  }
}

}  // namespace
const KvKernels kKvKernels = {encode, decode, hadamard32, dot, axpy, axpyRows, dotI8, dotRows};
}  // namespace avx2
}  // namespace kvant
