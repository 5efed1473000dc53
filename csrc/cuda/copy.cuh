// Kernel body of the device copy, in a .cuh so it is shared by the .cu launch code and the
// host SIMT emulation used by tests (DESIGN.md §6). 128-bit loads where aligned.
#pragma once
#include <cstddef>
#include <cstdint>

namespace kvant::cuda {

// Grid-stride copy of n bytes: each thread moves 16-byte chunks, the last partial chunk
// byte by byte (by the first threads), so any length and 1-byte alignment work.
__device__ inline void copyBytesBody(const uint8_t* src, uint8_t* dst, size_t n, size_t tid, size_t nthreads) {
  const size_t chunks = n / 16;
  const bool aligned = ((reinterpret_cast<uintptr_t>(src) | reinterpret_cast<uintptr_t>(dst)) & 15) == 0;
  if (aligned) {
    const uint4* s = reinterpret_cast<const uint4*>(src);
    uint4* d = reinterpret_cast<uint4*>(dst);
    for (size_t i = tid; i < chunks; i += nthreads) d[i] = s[i];
  } else {
    for (size_t i = tid; i < chunks * 16; i += nthreads) dst[i] = src[i];
  }
  for (size_t i = chunks * 16 + tid; i < n; i += nthreads) dst[i] = src[i];
}

}  // namespace kvant::cuda
