// The one include of every csrc/cpu/*_avx512.cc, instead of <immintrin.h>.
//
// Product build: plain <immintrin.h>; the file is compiled with -mavx512f/bw/vl/dq (binding.gyp)
// and only reached when isa.cc saw the CPU and OS support AVX-512.
//
// Test build (KVANT_SIMDE_AVX512 defined, scripts/avx512-emu-test.mjs only): the same source is
// compiled WITHOUT any -mavx512 flag, on top of native AVX2, and every _mm512_* / masked
// intrinsic resolves to SIMDe's portable implementation ("SIMD Everywhere", libsimde-dev,
// header-only) through its native aliases. isa.cc then reports AVX-512 (and VNNI) as present,
// so the native tests run the avx512 tables next to scalar and avx2 on a machine without
// AVX-512. That proves the logic and the bit-exactness of the AVX-512 code, never its speed.
//
// SIMDe 0.7.4 (Debian 12) lacks a few intrinsics kvant uses: masked loads/stores, the 512-bit
// half conversions, reductions, gathers. They are written below, once, element by element with
// the hardware's semantics (Intel SDM): a masked-off lane is never read or written — which is
// also what lets ASan check the masked tails for real (a full-width load plus blend would be
// reported as an overflow, or hide one). Only what kvant calls is provided; a missing one
// shows up as "inlining failed ... target specific option mismatch" in the emulated build.
#pragma once

#ifndef KVANT_SIMDE_AVX512

#include <immintrin.h>
// VNNI (vpdpbusd) is compiled per function with this attribute, so the rest of the AVX-512
// objects cannot contain it: AVX-512 CPUs without VNNI (Skylake-SP/X) run them too. Callers
// reach such functions only when cpuFeatures().avx512Vnni is set.
#define KVANT_TARGET_VNNI __attribute__((target("avx512vnni")))
#define KVANT_SIMD_EMULATED 0

#else  // ---- SIMDe emulation (tests only) -------------------------------------------------

#if defined(__AVX512F__)
#error "KVANT_SIMDE_AVX512 must be compiled without -mavx512*: SIMDe would use the native instructions"
#endif
#if !__has_include(<simde/x86/avx512.h>)
#error "KVANT_SIMDE_AVX512 needs SIMDe: apt-get install libsimde-dev"
#endif
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>

#include <cstdint>
#include <cstring>

#include "kvant/half.h"

#define KVANT_TARGET_VNNI
#define KVANT_SIMD_EMULATED 1

namespace kvant_emu {

template <class V, class T, int L>
inline V fromLanes(const T (&a)[L]) {
  static_assert(sizeof(V) == sizeof(a), "lane count");
  V v;
  std::memcpy(&v, a, sizeof v);
  return v;
}
template <class T, int L, class V>
inline void toLanes(V v, T (&a)[L]) {
  static_assert(sizeof(V) == sizeof(a), "lane count");
  std::memcpy(a, &v, sizeof v);
}

// Masked load: enabled lanes from memory, the others zero (maskz) or from src (mask).
template <class V, class T, int L, class M>
inline V maskLoad(V src, M k, const void* p) {
  T a[L];
  toLanes(src, a);
  for (int i = 0; i < L; ++i)
    if ((k >> i) & 1) std::memcpy(&a[i], static_cast<const char*>(p) + i * sizeof(T), sizeof(T));
  return fromLanes<V>(a);
}
template <class V, class T, int L, class M>
inline V maskzLoad(M k, const void* p) {
  T a[L] = {};
  for (int i = 0; i < L; ++i)
    if ((k >> i) & 1) std::memcpy(&a[i], static_cast<const char*>(p) + i * sizeof(T), sizeof(T));
  return fromLanes<V>(a);
}
template <class V, class T, int L, class M>
inline void maskStore(void* p, M k, V v) {
  T a[L];
  toLanes(v, a);
  for (int i = 0; i < L; ++i)
    if ((k >> i) & 1) std::memcpy(static_cast<char*>(p) + i * sizeof(T), &a[i], sizeof(T));
}

// VCVTPS2PH / VCVTPH2PS: round to nearest even with subnormals kept and NaNs quieted, which is
// exactly kvant's scalar f32ToF16 / f16ToF32 (the AVX2 level checks this bit for bit against
// the F16C instructions on every run of the conversion test).
inline __m256i cvtps_ph(__m512 v) {
  float a[16];
  uint16_t h[16];
  toLanes(v, a);
  for (int i = 0; i < 16; ++i) h[i] = kvant::f32ToF16(a[i]);
  return fromLanes<__m256i>(h);
}
inline __m512 cvtph_ps(__m256i v) {
  uint16_t h[16];
  float a[16];
  toLanes(v, h);
  for (int i = 0; i < 16; ++i) a[i] = kvant::f16ToF32(h[i]);
  return fromLanes<__m512>(a);
}

// GCC's _mm512_reduce_add_ps/pd: halve the vector repeatedly (512 -> 256 -> 128 -> 64 -> 32
// bits), adding upper to lower half. The emulation keeps that exact pairing, so the rounding
// is the same as on hardware.
inline float reduce_add_ps(__m512 v) {
  float a[16];
  toLanes(v, a);
  for (int w = 8; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) a[i] = a[i] + a[i + w];
  return a[0];
}
inline double reduce_add_pd(__m512d v) {
  double a[8];
  toLanes(v, a);
  for (int w = 4; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) a[i] = a[i] + a[i + w];
  return a[0];
}

// VPGATHERDD with a mask: lane i = *(base + idx[i] * scale) when enabled, else src[i].
inline __m512i mask_i32gather_epi32(__m512i src, __mmask16 k, __m512i idx, const void* base, int scale) {
  int32_t s[16], ix[16];
  toLanes(src, s);
  toLanes(idx, ix);
  for (int i = 0; i < 16; ++i)
    if ((k >> i) & 1) std::memcpy(&s[i], static_cast<const char*>(base) + int64_t(ix[i]) * scale, 4);
  return fromLanes<__m512i>(s);
}

// Lane-wise conversions: VPMOVDW truncates each i32 to its low 16 bits; VPMOVZXWD / VPMOVSXBD
// widen with zero / sign extension; VCVTDQ2PS rounds to nearest even (the default MXCSR mode,
// which is also how C++ converts int32 to float).
template <class VO, class TO, class TI, int L, class VI>
inline VO convertLanes(VI v) {
  TI in[L];
  TO out[L];
  toLanes(v, in);
  for (int i = 0; i < L; ++i) out[i] = TO(in[i]);
  return fromLanes<VO>(out);
}

}  // namespace kvant_emu

// The imm8 of _mm512_cvtps_ph is ignored: kvant only ever passes round-to-nearest-even.
#undef _mm512_maskz_loadu_ps
#define _mm512_maskz_loadu_ps(k, p) (kvant_emu::maskzLoad<__m512, float, 16>((k), (p)))
#undef _mm512_mask_loadu_ps
#define _mm512_mask_loadu_ps(s, k, p) (kvant_emu::maskLoad<__m512, float, 16>((s), (k), (p)))
#undef _mm512_mask_storeu_ps
#define _mm512_mask_storeu_ps(p, k, v) (kvant_emu::maskStore<__m512, float, 16>((p), (k), (v)))
#undef _mm512_maskz_loadu_pd
#define _mm512_maskz_loadu_pd(k, p) (kvant_emu::maskzLoad<__m512d, double, 8>((k), (p)))
#undef _mm512_mask_storeu_pd
#define _mm512_mask_storeu_pd(p, k, v) (kvant_emu::maskStore<__m512d, double, 8>((p), (k), (v)))
#undef _mm512_maskz_loadu_epi32
#define _mm512_maskz_loadu_epi32(k, p) (kvant_emu::maskzLoad<__m512i, int32_t, 16>((k), (p)))
#undef _mm512_mask_storeu_epi32
#define _mm512_mask_storeu_epi32(p, k, v) (kvant_emu::maskStore<__m512i, int32_t, 16>((p), (k), (v)))
#undef _mm256_maskz_loadu_epi16
#define _mm256_maskz_loadu_epi16(k, p) (kvant_emu::maskzLoad<__m256i, int16_t, 16>((k), (p)))
#undef _mm256_mask_storeu_epi16
#define _mm256_mask_storeu_epi16(p, k, v) (kvant_emu::maskStore<__m256i, int16_t, 16>((p), (k), (v)))
#undef _mm_maskz_loadu_epi32
#define _mm_maskz_loadu_epi32(k, p) (kvant_emu::maskzLoad<__m128i, int32_t, 4>((k), (p)))
// SIMDe 0.7.4's alias of _mm512_madd_epi16 takes the four arguments of the masked form.
#undef _mm512_madd_epi16
#define _mm512_madd_epi16(a, b) simde_mm512_madd_epi16(a, b)
#undef _mm512_cvtepi32_epi16
#define _mm512_cvtepi32_epi16(v) (kvant_emu::convertLanes<__m256i, uint16_t, uint32_t, 16>(v))
#undef _mm512_cvtepu16_epi32
#define _mm512_cvtepu16_epi32(v) (kvant_emu::convertLanes<__m512i, uint32_t, uint16_t, 16>(v))
#undef _mm512_cvtepi8_epi32
#define _mm512_cvtepi8_epi32(v) (kvant_emu::convertLanes<__m512i, int32_t, int8_t, 16>(v))
#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps(v) (kvant_emu::convertLanes<__m512, float, int32_t, 16>(v))
#undef _mm512_cvtps_ph
#define _mm512_cvtps_ph(v, imm) (kvant_emu::cvtps_ph(v))
#undef _mm512_cvtph_ps
#define _mm512_cvtph_ps(v) (kvant_emu::cvtph_ps(v))
#undef _mm512_reduce_add_ps
#define _mm512_reduce_add_ps(v) (kvant_emu::reduce_add_ps(v))
#undef _mm512_reduce_add_pd
#define _mm512_reduce_add_pd(v) (kvant_emu::reduce_add_pd(v))
#undef _mm512_mask_i32gather_epi32
#define _mm512_mask_i32gather_epi32(s, k, i, b, sc) (kvant_emu::mask_i32gather_epi32((s), (k), (i), (b), (sc)))
#undef _mm512_i32gather_epi32
#define _mm512_i32gather_epi32(i, b, sc) (kvant_emu::mask_i32gather_epi32(_mm512_setzero_si512(), __mmask16(0xffff), (i), (b), (sc)))

#endif  // KVANT_SIMDE_AVX512
