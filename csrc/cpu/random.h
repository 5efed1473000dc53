// Seeded random fill for tests and benchmarks. Counter-based (element i's value depends
// only on the seed and i), so a fill is identical for any thread count and chunking.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kvant/dtype.h"
#include "kvant/status.h"

namespace kvant {

enum class RandomDist : int { kUniform = 0, kNormal = 1 };

// uniform: values in [a, b); normal: mean a, standard deviation b. Integer dtypes take
// floor() of the value, clamped to the type's range.
Status fillRandom(void* dst, DType type, size_t n, uint64_t seed, RandomDist dist, double a, double b);

}  // namespace kvant
