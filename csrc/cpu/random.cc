#include "random.h"

#include <cmath>

#include "kvant/half.h"
#include "thread_pool.h"

namespace kvant {
namespace {

// splitmix64: a full-period mixing of a 64-bit counter; good enough for test data.
inline uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// 53 random bits -> [0, 1)
inline double unit(uint64_t bits) { return double(bits >> 11) * (1.0 / 9007199254740992.0); }

inline double sample(uint64_t seed, size_t i, RandomDist dist, double a, double b) {
  const uint64_t r = mix(seed * 0x632be59bd9b4e019ull + mix(uint64_t(i)));
  if (dist == RandomDist::kUniform) return a + (b - a) * unit(r);
  // Box-Muller from two independent draws of the same element's stream.
  const double u1 = 1.0 - unit(r), u2 = unit(mix(r));
  return a + b * std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

template <class T>
T clampInt(double v, double lo, double hi) {
  v = std::floor(v);
  return T(v < lo ? lo : v > hi ? hi : v);
}

}  // namespace

Status fillRandom(void* dst, DType type, size_t n, uint64_t seed, RandomDist dist, double a, double b) {
  if (dist != RandomDist::kUniform && dist != RandomDist::kNormal) return Status::kRange;
  constexpr size_t kChunk = size_t(1) << 16;
  threadPool().parallelFor((n + kChunk - 1) / kChunk, [&](size_t c) {
    const size_t e = (c + 1) * kChunk < n ? (c + 1) * kChunk : n;
    for (size_t i = c * kChunk; i < e; ++i) {
      const double v = sample(seed, i, dist, a, b);
      switch (type) {
        case DType::kF32: static_cast<float*>(dst)[i] = float(v); break;
        case DType::kF16: static_cast<uint16_t*>(dst)[i] = f32ToF16(float(v)); break;
        case DType::kBF16: static_cast<uint16_t*>(dst)[i] = f32ToBf16(float(v)); break;
        case DType::kI8: static_cast<int8_t*>(dst)[i] = clampInt<int8_t>(v, -128, 127); break;
        case DType::kU8: static_cast<uint8_t*>(dst)[i] = clampInt<uint8_t>(v, 0, 255); break;
        case DType::kI32: static_cast<int32_t*>(dst)[i] = clampInt<int32_t>(v, -2147483648.0, 2147483647.0); break;
      }
    }
  });
  return Status::kOk;
}

}  // namespace kvant
