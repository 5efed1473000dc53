// AVX-512 level of the dequantize kernel (compiled with -mavx512f/bw/vl/dq; tested on machines
// without AVX-512 through the SIMDe-emulated build, scripts/avx512-emu-test.mjs, which proves
// the logic and the bits, not the speed).
//
// Same tile as the AVX2 level (quant.h: 8 columns n x 8 kernel rows j, edges in scalar code),
// but two kernel rows per zmm: lanes 0-7 hold row j's codes for the 8 columns, lanes 8-15 row
// j+1's. The two rows' codes come from two 32-byte loads of qweight words (one per row's word
// row) and one variable shift (VPSRLVD), since the stream position j*bits differs per row.
// Values are float(code - zero) * scale, one rounding, exactly as dequantElementScalar: every
// level writes the same bits. The 8x8 tile is then transposed with two rounds of VPERMT2PS so
// each zmm holds two output columns' 8 consecutive k values (one 32-byte store each).
#include "simd_avx512.h"

#include "kvant/half.h"
#include "quant.h"

namespace kvant {
namespace avx512 {
namespace {

inline __m512i pairI(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
inline __m512 pair(__m256 lo, __m256 hi) {
  return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)), _mm256_castps_pd(hi), 1));
}

// Codes of kernel rows jj and jj+1 for columns n0..n0+7 (lanes 0-7 and 8-15), exact integers.
inline __m512i codesAt2(const uint32_t* qweight, int64_t N, int64_t n0, int64_t jj, int bits) {
  const int64_t p0 = jj * bits, p1 = p0 + bits;
  const int s0 = int(p0 & 31), s1 = int(p1 & 31);
  const int64_t w0 = p0 >> 5, w1 = p1 >> 5;
  auto row = [&](int64_t w) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(qweight + w * N + n0)); };
  const __m512i shift = pairI(_mm256_set1_epi32(s0), _mm256_set1_epi32(s1));
  __m512i v = _mm512_srlv_epi32(pairI(row(w0), row(w1)), shift);
  const bool x0 = s0 + bits > 32, x1 = s1 + bits > 32;
  if (x0 || x1) {  // 3-bit codes 10 and 21 of each triple straddle two words
    // The next word row is loaded only for a row whose code crosses (it may not exist else);
    // VPSLLVD by 32 gives 0 for the other half.
    const __m512i next = pairI(x0 ? row(w0 + 1) : _mm256_setzero_si256(), x1 ? row(w1 + 1) : _mm256_setzero_si256());
    v = _mm512_or_si512(v, _mm512_sllv_epi32(next, pairI(_mm256_set1_epi32(x0 ? 32 - s0 : 32), _mm256_set1_epi32(x1 ? 32 - s1 : 32))));
  }
  return _mm512_and_si512(v, _mm512_set1_epi32((1 << bits) - 1));
}

// f32 -> bf16 exactly as the scalar f32ToBf16: round to nearest even, NaN -> quiet NaN.
inline __m256i toBf16(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40)));
  return _mm512_cvtepi32_epi16(r);
}

void tile(const DequantArgs& a, int64_t n0, int64_t j0) {
  const QuantFormat& f = a.fmt;
  const int64_t N = f.N, K = f.K, G = qEffectiveGroup(f);
  // Zero points and scales of each row's group for the 8 columns; act-order rows change group
  // often, sequential ones every G rows (then the previous row's values are reused).
  __m256i z8[8];
  __m256 s8[8];
  int64_t prevG = -1;
  for (int j = 0; j < 8; ++j) {
    const int64_t jj = j0 + j;
    const int64_t g = a.gIdx ? a.gIdx[jj] : jj / G;
    if (g != prevG) {
      alignas(32) int32_t z[8];
      for (int i = 0; i < 8; ++i) z[i] = qZeroAt(f, a.qzeros, g, n0 + i);
      z8[j] = _mm256_load_si256(reinterpret_cast<const __m256i*>(z));
      s8[j] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.scales + g * N + n0)));
      prevG = g;
    } else {
      z8[j] = z8[j - 1], s8[j] = s8[j - 1];
    }
  }
  __m512 R[4];
  for (int p = 0; p < 4; ++p) {
    const __m512i c = codesAt2(a.qweight, N, n0, j0 + 2 * p, f.bits);
    R[p] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c, pairI(z8[2 * p], z8[2 * p + 1]))), pair(s8[2 * p], s8[2 * p + 1]));
  }
  const __m512 R0 = R[0], R1 = R[1], R2 = R[2], R3 = R[3];
  // R[p]: rows 2p (lanes 0-7) and 2p+1 (lanes 8-15); lane = (row % 2) * 8 + column.
  // Round 1: A[c] (rows 0-3) and B[c] (rows 4-7) of columns 4c..4c+3, lane = (col - 4c) * 4 + row % 4.
  // Source index in (first, second) operand: row r < 2 of the first at r*8 + col, rows 2-3 of
  // the second at 16 + (r-2)*8 + col.
  alignas(64) int32_t i1[2][16];
  for (int c = 0; c < 2; ++c)
    for (int l = 0; l < 16; ++l) {
      const int col = 4 * c + l / 4, r = l % 4;
      i1[c][l] = r < 2 ? r * 8 + col : 16 + (r - 2) * 8 + col;
    }
  __m512 A[2], B[2];
  for (int c = 0; c < 2; ++c) {
    const __m512i idx = _mm512_load_si512(i1[c]);
    A[c] = _mm512_permutex2var_ps(R0, idx, R1);
    B[c] = _mm512_permutex2var_ps(R2, idx, R3);
  }
  // Round 2: O[d] = columns 2d (lanes 0-7) and 2d+1 (lanes 8-15), lane % 8 = row; rows 0-3 from
  // A[d/2] at (col - 4c)*4 + row, rows 4-7 from B[d/2] at 16 + (col - 4c)*4 + row - 4.
  __m512 O[4];
  for (int d = 0; d < 4; ++d) {
    alignas(64) int32_t i2[16];
    for (int l = 0; l < 16; ++l) {
      const int co = 2 * d + l / 8 - 4 * (d / 2), r = l % 8;
      i2[l] = r < 4 ? co * 4 + r : 16 + co * 4 + r - 4;
    }
    O[d] = _mm512_permutex2var_ps(A[d / 2], _mm512_load_si512(i2), B[d / 2]);
  }
  for (int d = 0; d < 4; ++d) {
    const int64_t n = n0 + 2 * d;
    if (!a.perm) {
      const int64_t at = n * K + j0;
      switch (a.outType) {
        case DType::kF16: {
          const __m256i h = _mm512_cvtps_ph(O[d], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
          uint16_t* o = static_cast<uint16_t*>(a.out);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(o + at), _mm256_castsi256_si128(h));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(o + at + K), _mm256_extracti128_si256(h, 1));
          break;
        }
        case DType::kBF16: {
          const __m256i h = toBf16(O[d]);
          uint16_t* o = static_cast<uint16_t*>(a.out);
          _mm_storeu_si128(reinterpret_cast<__m128i*>(o + at), _mm256_castsi256_si128(h));
          _mm_storeu_si128(reinterpret_cast<__m128i*>(o + at + K), _mm256_extracti128_si256(h, 1));
          break;
        }
        default: {
          float* o = static_cast<float*>(a.out);
          _mm256_storeu_ps(o + at, _mm512_castps512_ps256(O[d]));
          _mm256_storeu_ps(o + at + K, _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(O[d]), 1)));
          break;
        }
      }
    } else {  // made-sequential matrix: kernel row j goes back to input channel perm[j]
      alignas(64) float v[16];
      _mm512_store_ps(v, O[d]);
      for (int c = 0; c < 2; ++c)
        for (int j = 0; j < 8; ++j) {
          const int64_t at = (n + c) * K + a.perm[j0 + j];
          const float x = v[c * 8 + j];
          switch (a.outType) {
            case DType::kF16: static_cast<uint16_t*>(a.out)[at] = f32ToF16(x); break;
            case DType::kBF16: static_cast<uint16_t*>(a.out)[at] = f32ToBf16(x); break;
            default: static_cast<float*>(a.out)[at] = x; break;
          }
        }
    }
  }
}

}  // namespace
const QuantKernels kQuantKernels = {tile};
}  // namespace avx512
}  // namespace kvant
