// Device-side reading of the GPTQ packed format (csrc/include/kvant/quant_format.h, SPEC §2.5),
// shared by the quantization kernels (quant.cuh) and the fused dequant GEMV/GEMM (gemm_q.cuh).
// Kernel row j of a packed matrix belongs to group j / G and holds input channel perm[j]
// (act-order made sequential at load; perm = null means the identity).
#pragma once
#include "kvant/quant_format.h"
#include "launch.h"

namespace kvant::cuda {

// The zero point of (group g, column n): unpacked from qzeros (packed along N), with the v1
// "stored minus one" convention undone (masked: a stored 0xF in 4-bit reads back as 0).
__device__ __forceinline__ int zeroOf(const QMatrix& q, int64_t g, int64_t n) {
  const int bits = q.fmt.bits, maxq = (1 << bits) - 1;
  if (!q.qzeros) return 1 << (bits - 1);  // symmetric without stored zeros
  const uint32_t* row = q.qzeros + g * (q.fmt.N * bits / 32);
  int code;
  if (bits == 3) {
    const int64_t bit = 3 * (n % 32), w = (n / 32) * 3 + bit / 32;
    const int sh = int(bit % 32);
    uint64_t v = row[w] >> sh;
    if (sh > 29) v |= uint64_t(row[w + 1]) << (32 - sh);
    code = int(v & 7);
  } else {
    const int f = 32 / bits;
    code = int((row[n / f] >> (bits * (n % f))) & uint32_t(maxq));
  }
  return q.fmt.zeroFormat == int32_t(ZeroFormat::kGptqV1) ? (code + 1) & maxq : code;
}

// Code i (0..31) of a 96-bit little-endian triple (w0 bits 0..31, w1 32..63, w2 64..95).
__device__ __forceinline__ uint32_t code3(uint32_t w0, uint32_t w1, uint32_t w2, int i) {
  const int bit = 3 * i;
  const uint64_t lo = uint64_t(w0) | (uint64_t(w1) << 32);
  if (bit + 3 <= 64) return uint32_t(lo >> bit) & 7u;
  if (bit >= 64) return (w2 >> (bit - 64)) & 7u;
  return uint32_t((lo >> bit) | (uint64_t(w2) << (64 - bit))) & 7u;  // bits 63..65 (i = 21)
}

// Shape checks shared by the GPTQ entry points.
inline Status checkQMatrix(const QMatrix& q) {
  if (!qBitsSupported(q.fmt.bits)) return Status::kFormat;
  if (q.fmt.zeroFormat != int32_t(ZeroFormat::kGptqV1) && q.fmt.zeroFormat != int32_t(ZeroFormat::kGptqV2)) return Status::kFormat;
  if (!qDimPackable(q.fmt.K, q.fmt.bits) || !qDimPackable(q.fmt.N, q.fmt.bits)) return Status::kShape;
  if (q.fmt.groupSize == 0 || q.fmt.groupSize < -1) return Status::kShape;
  if (q.fmt.K > 0x7fffffff || q.fmt.N > 0x7fffffff) return Status::kRange;
  return Status::kOk;
}

}  // namespace kvant::cuda
