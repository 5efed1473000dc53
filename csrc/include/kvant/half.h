// Scalar IEEE binary16 and bfloat16 conversions: the reference every vectorized
// path is tested against. Round-to-nearest-even, subnormals kept, Inf kept, NaN
// kept as a quiet NaN (payload truncated, never turned into Inf).
#pragma once
#include <cstdint>
#include <cstring>

namespace kvant {

inline uint32_t f32Bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bitsF32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// f16 -> f32 is exact: every binary16 value is representable in binary32. A signalling
// NaN comes out quiet with its payload kept, as VCVTPH2PS does.
inline float f16ToF32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0x1f) return bitsF32(sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0u));
  if (exp != 0) return bitsF32(sign | ((exp + 112u) << 23) | (mant << 13));
  if (mant == 0) return bitsF32(sign);
  // Subnormal: value = mant * 2^-24; normalize into binary32.
  int e = -1;
  do { mant <<= 1; ++e; } while ((mant & 0x400u) == 0);
  return bitsF32(sign | uint32_t(112 - e) << 23 | ((mant & 0x3ffu) << 13));
}

// f32 -> f16, round to nearest even, overflow to Inf, underflow through subnormals to 0.
inline uint16_t f32ToF16(float f) {
  const uint32_t u = f32Bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t absu = u & 0x7fffffffu;
  if (absu >= 0x7f800000u) {  // Inf or NaN
    if (absu == 0x7f800000u) return sign | 0x7c00u;
    return sign | 0x7e00u | uint16_t((absu >> 13) & 0x3ffu);  // quiet NaN, keep top payload
  }
  if (absu >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520 rounds to Inf
  if (absu >= 0x38800000u) {                        // normal f16 range (>= 2^-14)
    const uint32_t mant_odd = (absu >> 13) & 1u;
    const uint32_t rounded = absu + 0xfffu + mant_odd;  // RNE on the 13 dropped bits
    return sign | uint16_t((rounded - 0x38000000u) >> 13);
  }
  if (absu < 0x33000000u) return sign;  // < 2^-25 rounds to zero (2^-25 itself ties to even 0)
  // Subnormal f16: value = m * 2^-24 with m = round(|f| * 2^24).
  const uint32_t exp = absu >> 23;
  const uint32_t mant = (absu & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126u - exp;  // in 14..24
  const uint32_t halfway = 1u << (shift - 1);
  const uint32_t rem = mant & ((1u << shift) - 1);
  uint32_t m = mant >> shift;
  if (rem > halfway || (rem == halfway && (m & 1u))) ++m;
  return sign | uint16_t(m);
}

inline float bf16ToF32(uint16_t b) { return bitsF32(uint32_t(b) << 16); }

// f32 -> bf16, round to nearest even on the low 16 bits; subnormals rounded, not flushed.
inline uint16_t f32ToBf16(float f) {
  const uint32_t u = f32Bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);  // quiet NaN
  const uint32_t lsb = (u >> 16) & 1u;
  return uint16_t((u + 0x7fffu + lsb) >> 16);
}

}  // namespace kvant
