// The small ops of the decode loop: RMSNorm, rotary (interleaved pairs, YaRN frequencies
// given), SiLU-gate, softmax, MoE routing top-k, embedding gather, argmax, axpy.
// Activations are f32 rows; weights of norms and embeddings may be f32/f16/bf16.
// Row-parallel on the pool: each output row is computed the same way for any thread count.
#pragma once
#include <cstddef>
#include <cstdint>

#include "isa.h"
#include "kvant/dtype.h"
#include "kvant/status.h"

namespace kvant {

// Vectorizable inner loops; one table per ISA level. Everything else in the family is
// shared scalar code (routing, rotary, gather): it is not where decode time goes.
struct SmallOpsKernels {
  // sum of squares of x[0..n) accumulated in f32 lanes then f64
  double (*sumSquares)(const float* x, size_t n);
  // y[i] = x[i] * s * w[i]   (w as f32)
  void (*scaleMul)(const float* x, const float* w, float s, float* y, size_t n);
  // y[i] = silu(g[i]) * u[i]
  void (*siluMul)(const float* g, const float* u, float* y, size_t n);
  // y[i] += a * x[i]
  void (*axpy)(float a, const float* x, float* y, size_t n);
  // y[i] = exp(x[i] - m), returns the sum (f64)
  double (*expShift)(const float* x, float m, float* y, size_t n);
};

namespace scalar { extern const SmallOpsKernels kSmallOpsKernels; }
namespace avx2 { extern const SmallOpsKernels kSmallOpsKernels; }
namespace avx512 { extern const SmallOpsKernels kSmallOpsKernels; }
const SmallOpsKernels* smallOpsKernelsFor(Isa isa);  // nullptr if unsupported; Isa(-1) = chosen level

// y[t] = w * x[t] / sqrt(mean(x[t]^2) + eps); rows of n. y may equal x.
Status rmsNorm(const float* x, const void* w, DType wType, float eps, float* y, size_t rows, size_t n, Isa isa = Isa(-1));

// The residual add and the next norm of a decoder layer in one call: x[t] += d[t] (axpy with
// a = 1), then y[t] = rmsNorm(x[t]). Bit for bit axpy(1, d, x) followed by rmsNorm(x, .., y): the
// same per-element kernels in the same order. y must not overlap x or d; d must not overlap x.
Status addRmsNorm(float* x, const float* d, const void* w, DType wType, float eps, float* y, size_t rows, size_t n, Isa isa = Isa(-1));

// In-place rotary on x viewed as [rows, heads, stride]: dims [offset, offset + 2*pairs) of each
// head are rotated as adjacent pairs (x[2i], x[2i+1]) by angle pos[row] * invFreq[i], with
// amplitude `amp` on cos and sin. Angles are formed in f64 so large positions keep precision.
Status ropeInterleaved(float* x, size_t rows, size_t heads, size_t stride, size_t offset, size_t pairs,
                       const int32_t* pos, const float* invFreq, float amp);

// y[t] = silu(g[t]) * u[t]; g and u may be two halves of one row (gate | up): pass strides.
Status siluGate(const float* g, const float* u, size_t inStride, float* y, size_t rows, size_t n, Isa isa = Isa(-1));

// Row softmax in place (f32; -inf entries get probability 0).
Status softmaxRows(float* x, size_t rows, size_t n, Isa isa = Isa(-1));

// MoE routing from router logits [rows, E]: softmax, then greedy top-k or group-limited
// (group score = max of its experts, keep topkGroup groups), ties to the lower index;
// weights normalized (k > 1 and normTopk) or scaled by `scaling`. idx [rows, k], w [rows, k].
Status routeTopK(const float* logits, size_t rows, size_t experts, size_t k, size_t nGroup, size_t topkGroup,
                 bool groupLimited, bool normTopk, float scaling, int32_t* idx, float* w);

// out[t] = table[ids[t]] as f32; every id is checked first (kRange, *badIndex set).
Status embeddingGather(const void* table, DType type, size_t vocab, size_t dim, const int32_t* ids, size_t n,
                       float* out, size_t* badIndex);

// argmax per row, ties to the lower index; NaN is never chosen (all-NaN rows give -1).
Status argmaxRows(const float* x, size_t rows, size_t n, int32_t* out);

// y += a * x over n values.
Status axpy(float a, const float* x, float* y, size_t n, Isa isa = Isa(-1));

}  // namespace kvant
