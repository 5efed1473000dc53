// Dense (float-weight) linear layers and the row plumbing of the DeepSeek-V2 decode loop on the
// GPU: the pieces the device forward (lib/models/deepseek-v2/device-forward.ts) needs that the
// other families do not provide. Contracts mirror lib/ops linear / linearHeads / axpy.
//
// denseLinear: y[m, h, n] = Σ_k x[m·xRow + h·xHead + k] · W[h·wHead + n·wRow + k] for H "heads"
// of independent linears (H = 1 is a plain linear; H = nh gives the per-head absorbed MLA
// matrices W_UK(h)ᵀ and W_UV(h) with arbitrary row strides, so q_nope / o_lat are read in place).
// One warp owns one output (m, h, n): lane l accumulates k = l, l + 32, ... with FMA in f32
// (W decoded from f32 / f16 / bf16 in registers), then a fixed butterfly adds the 32 partials.
// A warp reads one row of W with 32 consecutive loads per step (coalesced), and the order of every
// sum depends on K alone: a row's result is independent of M, of the other rows and of the block
// schedule (batch-invariant, deterministic). Cost: W is re-read once per row m — right for
// decode (M = 1..16), a GEMM would be the next step for long prefill chunks.
//
// copyRows: dst[r·dRow + i] = src[(idx ? idx[r] : r)·sRow + i], i < n: strided slices (the latent
// part of kv_a's rows, q_pe into the absorbed query) and row gathers (the rows routed to an expert).
//
// accumulateRows: y[r·n + i] += Σ_j w[r·J + j] · src[(idx ? idx[r·J + j] : r)·n + i], j in order
// 0..J-1 (w null means 1): the residual add (J = 1) and the MoE combine (J = top-k, the expert
// outputs in the row's top-k order — the order lib/ops moeMlp sums in).
#pragma once
#include "kvant/dtype.h"
#include "launch.h"

namespace kvant::cuda {

constexpr uint32_t kDenseWarps = 4;  // 4 outputs per block: small blocks keep ~all SMs busy at N = 512

struct DenseParams {
  const float* x;
  const void* w;
  float* y;
  int64_t M, H, N, K;
  int64_t xRow, xHead, wHead, wRow, yRow, yHead;
};

template <int WT>
__device__ __forceinline__ float denseLoad(const void* p, int64_t i) {
  if (WT == int(DType::kF32)) return static_cast<const float*>(p)[i];
  if (WT == int(DType::kF16)) return loadF16(static_cast<const uint16_t*>(p), size_t(i));
  return loadBf16(static_cast<const uint16_t*>(p), size_t(i));
}

template <int WT>
__global__ void __launch_bounds__(kDenseWarps * 32) denseLinearKernel(DenseParams p) {
  const int lane = threadIdx.x % 32;
  const int64_t n = int64_t(blockIdx.x) * kDenseWarps + threadIdx.x / 32;
  const int64_t mh = blockIdx.y, m = mh / p.H, h = mh % p.H;
  if (n >= p.N) return;  // whole warps leave; no barrier follows
  const float* xr = p.x + m * p.xRow + h * p.xHead;
  const int64_t wr = h * p.wHead + n * p.wRow;
  float acc = 0.f;
  for (int64_t k = lane; k < p.K; k += 32) acc = fmaf(xr[k], denseLoad<WT>(p.w, wr + k), acc);
  acc = warpSum(acc);
  if (lane == 0) p.y[m * p.yRow + h * p.yHead + n] = acc;
}

__global__ void copyRowsKernel(const float* src, int64_t sRow, const int32_t* idx, float* dst, int64_t dRow, int64_t n) {
  const int64_t r = blockIdx.x;
  const float* s = src + int64_t(idx ? idx[r] : r) * sRow;
  float* d = dst + r * dRow;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) d[i] = s[i];
}

__global__ void accumulateRowsKernel(float* y, int64_t n, const float* src, const int32_t* idx, const float* w, int J) {
  const int64_t r = blockIdx.x;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    float acc = y[r * n + i];
    for (int j = 0; j < J; ++j) {
      const int64_t e = r * J + j;
      acc = fmaf(w ? w[e] : 1.f, src[int64_t(idx ? idx[e] : r) * n + i], acc);
    }
    y[r * n + i] = acc;
  }
}

// ---- entry points (the binding has checked every extent against its buffer) ----

KV_ENTRY Status denseLinear(const Device& d, const DenseParams& p, DType wType) {
  if (p.N <= 0 || p.K <= 0 || p.M < 0 || p.H <= 0) return Status::kShape;
  if (p.M == 0) return Status::kOk;
  if (p.M * p.H > 65535 || p.N > int64_t(0x7fffffff)) return Status::kRange;  // grid.y limit
  LaunchConfig c;
  c.grid.x = ceilDiv(size_t(p.N), kDenseWarps);
  c.grid.y = uint32_t(p.M * p.H);
  c.block.x = kDenseWarps * 32;
  switch (wType) {
    case DType::kF32: return launchKernel(d, c, denseLinearKernel<int(DType::kF32)>, p);
    case DType::kF16: return launchKernel(d, c, denseLinearKernel<int(DType::kF16)>, p);
    case DType::kBF16: return launchKernel(d, c, denseLinearKernel<int(DType::kBF16)>, p);
    default: return Status::kDtype;
  }
}

KV_ENTRY Status copyRows(const Device& d, const float* src, int64_t sRow, const int32_t* idx, float* dst, int64_t dRow, int64_t rows, int64_t n) {
  if (rows < 0 || n < 0) return Status::kShape;
  if (rows == 0 || n == 0) return Status::kOk;
  if (rows > int64_t(0x7fffffff)) return Status::kRange;
  LaunchConfig c;
  c.grid.x = uint32_t(rows);
  c.block.x = 128;
  return launchKernel(d, c, copyRowsKernel, src, sRow, idx, dst, dRow, n);
}

KV_ENTRY Status accumulateRows(const Device& d, float* y, int64_t rows, int64_t n, const float* src, const int32_t* idx, const float* w, int J) {
  if (rows < 0 || n < 0 || J < 1) return Status::kShape;
  if (rows == 0 || n == 0) return Status::kOk;
  if (rows > int64_t(0x7fffffff)) return Status::kRange;
  LaunchConfig c;
  c.grid.x = uint32_t(rows);
  c.block.x = 128;
  return launchKernel(d, c, accumulateRowsKernel, y, n, src, idx, w, J);
}

}  // namespace kvant::cuda
