// Element-type conversion f32 <-> f16 / bf16 (and f16 <-> bf16 through f32).
// Every level rounds to nearest even and keeps subnormals, Inf and NaN exactly like
// the scalar reference in include/kvant/half.h; tests compare all levels bit for bit.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "isa.h"
#include "kvant/dtype.h"
#include "kvant/status.h"

namespace kvant {

struct ConvertKernels {
  void (*f32ToF16)(const float* src, uint16_t* dst, size_t n);
  void (*f16ToF32)(const uint16_t* src, float* dst, size_t n);
  void (*f32ToBf16)(const float* src, uint16_t* dst, size_t n);
  void (*bf16ToF32)(const uint16_t* src, float* dst, size_t n);
};

namespace scalar { extern const ConvertKernels kConvertKernels; }
namespace avx2 { extern const ConvertKernels kConvertKernels; }
namespace avx512 { extern const ConvertKernels kConvertKernels; }

const ConvertKernels& convertKernels();                 // for the chosen level
const ConvertKernels* convertKernelsFor(Isa isa);       // nullptr when unsupported here

// Convert n elements between float types, in parallel chunks on the thread pool.
// src and dst must not overlap unless they are the same dtype (then it is a memmove).
// `cancel` (optional) is polled between chunks; a set flag returns kAborted.
Status convertElements(const void* src, DType srcType, void* dst, DType dstType, size_t n,
                       const std::atomic<bool>* cancel = nullptr, Isa isa = Isa(-1));

}  // namespace kvant
