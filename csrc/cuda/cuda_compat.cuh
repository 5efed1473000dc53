// What every kernel body includes: the CUDA headers under nvcc, the SIMT emulation otherwise
// (test builds only), plus the few helpers both worlds spell the same way.
#pragma once
#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#else
#include "simt/simt.h"
#endif
#include <cstddef>
#include <cstdint>

namespace kvant::cuda {

// The block's dynamic shared memory (the launch's `smem` bytes), 16-byte aligned.
template <class T>
__device__ __forceinline__ T* dynamicSmem() {
#ifdef __CUDACC__
  extern __shared__ __align__(16) unsigned char kvDynSmem[];
  return reinterpret_cast<T*>(kvDynSmem);
#else
  return static_cast<T*>(::kvant::simt::dynamicSmem());
#endif
}

constexpr unsigned kFullMask = 0xffffffffu;

// Butterfly reductions over the 32 lanes of a warp: every lane ends with the result, and the
// summation tree is fixed (the same bits on every run and device).
__device__ __forceinline__ float warpSum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Element loads of the storage types kernels accept (f32, f16, bf16 as raw 16-bit words).
__device__ __forceinline__ float loadF(const float* p, size_t i) { return p[i]; }
__device__ __forceinline__ float loadF16(const uint16_t* p, size_t i) { return __half2float(__ushort_as_half(p[i])); }
__device__ __forceinline__ float loadBf16(const uint16_t* p, size_t i) { return __bfloat162float(__ushort_as_bfloat16(p[i])); }

}  // namespace kvant::cuda
