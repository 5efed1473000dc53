// AVX2 level of the dequantize kernel: one 8 (columns n) x 8 (kernel rows j) tile at a time.
// A kernel row's 8 codes for 8 consecutive columns are 8 consecutive qweight words with one
// common shift (the stream position j*bits is the same for every column), so they come out
// of one or two vector loads; the tile is then transposed so each column's 8 values are
// stored contiguously in the [N, K] output.
#include <immintrin.h>

#include "kvant/half.h"
#include "quant.h"

namespace kvant {
namespace avx2 {
namespace {

inline __m256i codesAt(const uint32_t* qweight, int64_t N, int64_t n0, int64_t j, int bits) {
  const int64_t p = j * bits;
  const int s = int(p & 31);
  const int64_t w = p >> 5;
  __m256i v = _mm256_srl_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qweight + w * N + n0)), _mm_cvtsi32_si128(s));
  if (s + bits > 32)  // 3-bit codes 10 and 21 of each triple straddle two words
    v = _mm256_or_si256(v, _mm256_sll_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(qweight + (w + 1) * N + n0)),
                                            _mm_cvtsi32_si128(32 - s)));
  return _mm256_and_si256(v, _mm256_set1_epi32((1 << bits) - 1));
}

inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// f32 -> bf16 exactly as the scalar f32ToBf16: round to nearest even, NaN -> quiet NaN.
inline __m128i toBf16(__m256 v) {
  const __m256i u = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40)), nan);
  r = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, _mm256_setzero_si256()), 0x08);
  return _mm256_castsi256_si128(r);
}

void tile(const DequantArgs& a, int64_t n0, int64_t j0) {
  const QuantFormat& f = a.fmt;
  const int64_t N = f.N, K = f.K, G = qEffectiveGroup(f);
  __m256 r[8];
  int64_t prevG = -1;
  __m256i zero = _mm256_setzero_si256();
  __m256 scale = _mm256_setzero_ps();
  for (int j = 0; j < 8; ++j) {
    const int64_t jj = j0 + j;
    const int64_t g = a.gIdx ? a.gIdx[jj] : jj / G;
    if (g != prevG) {  // act-order rows change group often; sequential ones every G rows
      alignas(32) int32_t z[8];
      for (int i = 0; i < 8; ++i) z[i] = qZeroAt(f, a.qzeros, g, n0 + i);
      zero = _mm256_load_si256(reinterpret_cast<const __m256i*>(z));
      scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a.scales + g * N + n0)));
      prevG = g;
    }
    const __m256i c = codesAt(a.qweight, N, n0, jj, f.bits);
    r[j] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c, zero)), scale);
  }
  transpose8(r);
  for (int i = 0; i < 8; ++i) {
    const int64_t n = n0 + i;
    if (!a.perm) {
      const int64_t at = n * K + j0;
      switch (a.outType) {
        case DType::kF16:
          _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(a.out) + at), _mm256_cvtps_ph(r[i], _MM_FROUND_TO_NEAREST_INT));
          break;
        case DType::kBF16: _mm_storeu_si128(reinterpret_cast<__m128i*>(static_cast<uint16_t*>(a.out) + at), toBf16(r[i])); break;
        default: _mm256_storeu_ps(static_cast<float*>(a.out) + at, r[i]); break;
      }
    } else {  // made-sequential matrix: kernel row j goes back to input channel perm[j]
      alignas(32) float v[8];
      _mm256_store_ps(v, r[i]);
      for (int j = 0; j < 8; ++j) {
        const int64_t at = n * K + a.perm[j0 + j];
        switch (a.outType) {
          case DType::kF16: static_cast<uint16_t*>(a.out)[at] = f32ToF16(v[j]); break;
          case DType::kBF16: static_cast<uint16_t*>(a.out)[at] = f32ToBf16(v[j]); break;
          default: static_cast<float*>(a.out)[at] = v[j]; break;
        }
      }
    }
  }
}

}  // namespace
const QuantKernels kQuantKernels = {tile};
}  // namespace avx2
}  // namespace kvant
