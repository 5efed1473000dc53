// Dense GEMV/GEMM: y[M,N] = x[M,K] · W[N,K]ᵀ (+ bias), W in f32, f16 or bf16, x and y f32.
//
// One micro-kernel serves both regimes: it computes a tile of up to 4 activation rows by
// 4 weight rows, streaming K in vector-width chunks with one accumulator per (row, weight row)
// and a fixed horizontal reduction. GEMV (M <= 8) streams every weight row once through it;
// GEMM reuses a block of weight rows (kept in L2) across all activation tiles. Because each
// output is always the same sequence of FMAs, a row's result does not depend on M (batch
// invariance) or on the thread count (the pool splits N into fixed blocks).
#pragma once
#include <cstddef>
#include <cstdint>

#include "isa.h"
#include "kvant/dtype.h"
#include "kvant/status.h"

namespace kvant {

// y[i*ldy + j] = sum_k x[i*ldx + k] * w[j*ldw + k], for i < mr <= 4, j < nr <= 4.
using GemmTileFn = void (*)(const float* x, size_t ldx, size_t mr, const void* w, size_t ldw, size_t nr, size_t K,
                            float* y, size_t ldy);

struct GemmKernels {
  GemmTileFn tileF32, tileF16, tileBf16;
};

namespace scalar { extern const GemmKernels kGemmKernels; }
namespace avx2 { extern const GemmKernels kGemmKernels; }
namespace avx512 { extern const GemmKernels kGemmKernels; }
const GemmKernels* gemmKernelsFor(Isa isa);  // Isa(-1): the chosen level; nullptr if unsupported

// Weight rows per pool task: 16 rows x K of bf16 stay in L2 (K = 10944: 350 KB) while every
// activation tile reuses them; small enough that N = 576 still gives 36 tasks for 2+ threads.
constexpr size_t kGemmRowsPerTask = 16;

Status gemm(const float* x, size_t M, size_t K, const void* w, DType wType, size_t N, const float* bias, float* y,
            Isa isa = Isa(-1));

// H independent linears in one call (MLA's absorbed W_UK / W_UV, one small matrix per head):
//   y[m*ldyM + h*ldyH + n] = sum_k x[m*ldxM + h*ldxH + k] * w[h*ldwH + n*K + k]
// for m < M, h < H, n < N; strides count elements. Each output is the same tile sequence as
// gemm() over that head's rows, so the result equals H separate gemm calls bit for bit (and
// keeps gemm's batch and thread-count invariance); the pool splits (head, 16-row block) pairs.
// The caller guarantees the accesses are in bounds and y's rows do not overlap each other.
Status gemmHeads(const float* x, size_t M, size_t H, size_t ldxM, size_t ldxH, size_t K, const void* w, DType wType,
                 size_t ldwH, size_t N, float* y, size_t ldyM, size_t ldyH, Isa isa = Isa(-1));

}  // namespace kvant
