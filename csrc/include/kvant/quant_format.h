// GPTQ-style group quantization: the one description of the packed format, shared by the
// quantizers, the dequantize kernels, the fused dequant GEMM and the checkpoint I/O.
// lib/quant/format.ts mirrors it byte for byte (tested).
//
// A quantized Linear W [N out, K in] is the AutoGPTQ / GPTQ-for-LLaMa tensor set (SPEC §2.5):
//   qweight int32 [K*bits/32, N]        codes packed along K (rows), little-endian in the word
//   qzeros  int32 [ng, N*bits/32]       zero codes packed along N (columns)
//   scales  f16   [ng, N]
//   g_idx   int32 [K]                   group of input channel k (k / G unless act-order)
// with ng = ceil(K / G) (G = -1 means one group of K; a partial last group is valid).
//   W[n][k] = scales[g][n] * (code(k, n) - zero(g, n)),   g = g_idx[k]
//   zero(g, n) = (zcode(g, n) + 1) & maxq  for checkpoint_format "gptq" (v1: stores zero - 1)
//   zero(g, n) = zcode(g, n)               for "gptq_v2"
// Bits 2/4/8: f = 32/bits codes per word, code j of a word at bits [bits*j, bits*j+bits).
// Bits 3: every 32 consecutive codes fill 3 consecutive words, read as one 96-bit
// little-endian integer (word0 = bits 0..31); code j at bits [3j, 3j+3) — the 10-1-10-1-10
// cross-word layout. Hence K*bits and N*bits must be multiples of 32 (for 3 bits: K, N % 32).
#pragma once
#include <cstddef>
#include <cstdint>

namespace kvant {

enum class ZeroFormat : int32_t { kGptqV1 = 0, kGptqV2 = 1 };

// POD, 32 bytes, no padding: the TS mirror writes the same bytes.
struct QuantFormat {
  int32_t bits;        // 2, 3, 4 or 8
  int32_t groupSize;   // 32, 64, 128 (any positive value is accepted by the kernels), or -1 = K
  int32_t sym;         // 1: symmetric (zero = 2^(bits-1)), 0: asymmetric (zero per group/column)
  int32_t zeroFormat;  // ZeroFormat
  int64_t K;           // input channels
  int64_t N;           // output channels
};
static_assert(sizeof(QuantFormat) == 32, "QuantFormat must stay 32 bytes (mirrored in lib/quant/format.ts)");
static_assert(offsetof(QuantFormat, K) == 16 && offsetof(QuantFormat, N) == 24, "QuantFormat field offsets");

inline int64_t qEffectiveGroup(const QuantFormat& f) { return f.groupSize < 0 ? f.K : f.groupSize; }
inline int64_t qGroupCount(const QuantFormat& f) {
  const int64_t g = qEffectiveGroup(f);
  return g <= 0 ? 0 : (f.K + g - 1) / g;
}
inline int64_t qMaxCode(const QuantFormat& f) { return (int64_t(1) << f.bits) - 1; }
inline int64_t qWeightRows(const QuantFormat& f) { return f.K * f.bits / 32; }   // qweight [rows, N]
inline int64_t qZeroCols(const QuantFormat& f) { return f.N * f.bits / 32; }     // qzeros [ng, cols]
inline bool qBitsSupported(int32_t bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }
// K (resp. N) fills whole 32-bit words; 3 bits needs whole 96-bit triples.
inline bool qDimPackable(int64_t d, int32_t bits) { return d > 0 && (bits == 3 ? d % 32 == 0 : (d * bits) % 32 == 0); }

// A quantized matrix as the kernels see it. Groups must be sequential in kernel row order:
// kernel row j belongs to group j / G. An act-order checkpoint (non-monotonic g_idx) is made
// sequential once at load (lib/quant: rows sorted by g_idx, stable, and repacked), and `perm`
// then says which input channel each kernel row holds: the kernel reads x[perm[j]] for row j
// (ExLlama's approach: permute x once per call instead of gathering scales per element).
struct QMatrix {
  QuantFormat fmt;
  const uint32_t* qweight;  // [K*bits/32, N]
  const uint32_t* qzeros;   // [ng, N*bits/32]
  const uint16_t* scales;   // f16 [ng, N]
  const int32_t* perm;      // nullptr, or [K] with values a permutation of 0..K-1
};

}  // namespace kvant
