// Element types shared by the TS API, the N-API layer and the kernels.
// The numeric values are part of the TS <-> native contract (lib/dtype.ts mirrors them).
#pragma once
#include <cstddef>
#include <cstdint>

namespace kvant {

enum class DType : int { kF32 = 0, kF16 = 1, kBF16 = 2, kI8 = 3, kU8 = 4, kI32 = 5 };
constexpr int kNumDTypes = 6;

inline size_t dtypeSize(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF16: return 2;
    case DType::kBF16: return 2;
    case DType::kI8: return 1;
    case DType::kU8: return 1;
    case DType::kI32: return 4;
  }
  return 0;
}

inline const char* dtypeName(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kF16: return "f16";
    case DType::kBF16: return "bf16";
    case DType::kI8: return "i8";
    case DType::kU8: return "u8";
    case DType::kI32: return "i32";
  }
  return "?";
}

}  // namespace kvant
