// Group quantization, the packing side: round-to-nearest quantization straight into the
// AutoGPTQ tensor set, dequantization back to f32/f16/bf16, and the act-order "make
// sequential" repack. The format itself is described once in kvant/quant_format.h.
//
// Every packed axis is one little-endian bit stream of `bits`-bit codes: code i sits at bit
// position i*bits of the stream (word i*bits/32, shift i*bits%32). For 2/4/8 bits a code never
// crosses a word; for 3 bits it does at i%32 in {10, 21} — exactly the 10-1-10-1-10 layout of
// SPEC §2.5, so one pair of helpers serves all widths. qweight's stream runs down a column
// (along K, word stride N); qzeros' runs along a row (along N, word stride 1).
#pragma once
#include <cstddef>
#include <cstdint>

#include "isa.h"
#include "kvant/dtype.h"
#include "kvant/quant_format.h"
#include "kvant/status.h"

namespace kvant {

inline uint32_t qStreamGet(const uint32_t* base, int64_t wordStride, int64_t i, int bits) {
  const int64_t p = i * bits;
  const int s = int(p & 31);
  const int64_t w = p >> 5;
  uint32_t v = base[w * wordStride] >> s;
  if (s + bits > 32) v |= base[(w + 1) * wordStride] << (32 - s);
  return v & ((1u << bits) - 1u);
}

// ORs a code into a pre-zeroed stream.
inline void qStreamOr(uint32_t* base, int64_t wordStride, int64_t i, int bits, uint32_t code) {
  const int64_t p = i * bits;
  const int s = int(p & 31);
  const int64_t w = p >> 5;
  base[w * wordStride] |= code << s;
  if (s + bits > 32) base[(w + 1) * wordStride] |= code >> (32 - s);
}

// The true zero point of (group g, column n), undoing v1's "stored zero = zero - 1".
inline int32_t qZeroAt(const QuantFormat& f, const uint32_t* qzeros, int64_t g, int64_t n) {
  const uint32_t z = qStreamGet(qzeros + g * qZeroCols(f), 1, n, f.bits);
  const uint32_t maxq = (1u << f.bits) - 1u;
  return int32_t(f.zeroFormat == int32_t(ZeroFormat::kGptqV1) ? (z + 1u) & maxq : z);
}

// The min-max grid of SPEC §2.3 for one group of one output row. The scale is rounded to f16
// *before* the codes are chosen, so the codes are optimal for the scale the checkpoint stores
// (AutoGPTQ picks codes with the f32 scale and rounds it afterwards; with f16's 11-bit
// mantissa the two differ by <= 2^-11 relative, and ours is never worse for the stored model).
struct QuantGrid {
  float scale;        // f16ToF32(scaleF16); 0 when the whole group rounds to 0
  int32_t zero;       // 0..maxq
  uint16_t scaleF16;
};

// Fits the grid on x[i*stride], i < n. Returns kRange when the scale overflows f16.
Status qFitGrid(const float* x, int64_t n, int64_t stride, int bits, bool sym, QuantGrid* grid);

// q = clamp(round_half_even(x / scale) + zero, 0, maxq); a zero scale gives the zero point.
inline int32_t qCode(float x, const QuantGrid& g, int32_t maxq) {
  if (g.scale == 0.0f) return g.zero;
  const float r = __builtin_nearbyintf(x / g.scale);  // default rounding mode: half to even
  float q = r + float(g.zero);
  q = q < 0.0f ? 0.0f : (q > float(maxq) ? float(maxq) : q);
  return int32_t(q);
}
inline float qValue(int32_t code, const QuantGrid& g) { return float(code - g.zero) * g.scale; }

// Writes one grid into the packed scales/qzeros of (group g, column n). qzeros pre-zeroed.
void qStoreGrid(const QuantFormat& f, int64_t g, int64_t n, const QuantGrid& grid, uint32_t* qzeros, uint16_t* scales);

// Checks the format fields a kernel relies on (bits, packable K and N, group size).
Status qCheckFormat(const QuantFormat& f);

// Round-to-nearest: w f32 [N, K] -> qweight/qzeros (zero-filled here) and scales, groups
// sequential (g = k / G). A NaN/Inf weight is kRange with its flat index in *badIndex.
Status quantizeRtn(const QuantFormat& f, const float* w, uint32_t* qweight, uint32_t* qzeros, uint16_t* scales,
                   int64_t* badIndex);

// Dequantization kernels: one table per ISA level. `tile` handles output columns
// [n0, n0 + 8) x kernel rows [j0, j0 + 8) fully inside the matrix; the scalar code handles
// every edge. Values are float(code - zero) * scale: an exact integer difference and one
// rounding, so every level produces the same bits.
struct DequantArgs {
  QuantFormat fmt;
  const uint32_t* qweight;
  const uint32_t* qzeros;
  const uint16_t* scales;
  const int32_t* gIdx;  // group of kernel row j (nullptr: j / G)
  const int32_t* perm;  // output column of kernel row j (nullptr: j)
  DType outType;        // f32, f16 or bf16
  void* out;            // [N, K] in original input-channel order
};
struct QuantKernels {
  void (*tile)(const DequantArgs& a, int64_t n0, int64_t j0);
};
namespace scalar { extern const QuantKernels kQuantKernels; }
namespace avx2 { extern const QuantKernels kQuantKernels; }
namespace avx512 { extern const QuantKernels kQuantKernels; }
const QuantKernels* quantKernelsFor(Isa isa);  // Isa(-1): chosen level; nullptr if unsupported

void dequantElementScalar(const DequantArgs& a, int64_t n, int64_t j);

// Checks gIdx (values in [0, ng)) and perm (a permutation) first: kRange with the index.
Status dequantize(const DequantArgs& a, int64_t* badIndex, Isa isa = Isa(-1));

// Act-order repack (SPEC §2.4, pitfall 6). Forward: rows stably sorted by g_idx into
// qweightOut, perm[j] = input channel of kernel row j; every group must then hold exactly
// G rows (the last one K - (ng-1)G), else kFormat. Inverse (forward == false): gIdx is
// written (gIdx[perm[j]] = j / G) and qweightOut holds rows in original order again.
Status qMakeSequential(const QuantFormat& f, const uint32_t* qweightIn, int32_t* gIdx, int32_t* perm,
                       uint32_t* qweightOut, bool forward, int64_t* badIndex);

}  // namespace kvant
