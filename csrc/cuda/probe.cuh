// Device ceilings for `kvant bench --backend cuda`: the f16 tensor-core peak (this file) next to
// the device-to-device copy bandwidth (device.cu copyBytes / the runtime's cudaMemcpy).
//
// tensorCorePeak: every warp holds one A and one B fragment (m16n16k16, f16, filled with a and b)
// and kPeakAcc independent f32 accumulators in registers, and issues `iters` rounds of kPeakAcc
// back-to-back mma_sync — no loads, no shared memory, so the loop is bounded by the tensor cores
// alone. Independent accumulators matter: one chain of mma_sync waits for each result before the
// next (latency-bound); kPeakAcc chains in flight keep the pipes full. The accumulators are
// stored at the end (out[((block·warps + warp)·kPeakAcc + j)·256 + e]) so nothing can be
// optimized away, and the stored value checks the work was done: every element of A·B is
// Σ_{k<16} a·b = 16·a·b, so after `iters` rounds every element equals iters·16·f16(a)·f16(b)
// exactly as long as that stays an integer multiple of a power of two below 2^24 (the test
// picks a = 1, b = 1/64: each step adds 0.25, exact in f32 for iters < 2^26).
// Work per launch: grid·warps·kPeakAcc·iters·2·16·16·16 flops.
#pragma once
#include "launch.h"

namespace kvant::cuda {

constexpr int kPeakAcc = 4;          // independent accumulator chains per warp
constexpr uint32_t kPeakMaxWarps = 8;  // warps per block (256 threads)
constexpr double kPeakFlopsPerMma = 2.0 * 16 * 16 * 16;

__global__ void tensorCorePeakKernel(float a, float b, int iters, float* out) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kPeakAcc];
  wmma::fill_fragment(fa, __float2half(a));
  wmma::fill_fragment(fb, __float2half(b));
#pragma unroll
  for (int j = 0; j < kPeakAcc; ++j) wmma::fill_fragment(acc[j], 0.0f);
  for (int i = 0; i < iters; ++i) {
#pragma unroll
    for (int j = 0; j < kPeakAcc; ++j) wmma::mma_sync(acc[j], fa, fb, acc[j]);
  }
  const size_t warp = size_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
#pragma unroll
  for (int j = 0; j < kPeakAcc; ++j) wmma::store_matrix_sync(out + (warp * kPeakAcc + j) * 256, acc[j], 16, wmma::mem_row_major);
}

// Floats `out` must hold for a launch of `blocks` blocks of `warps` warps.
inline size_t tensorCorePeakOutFloats(size_t blocks, size_t warps) { return blocks * warps * kPeakAcc * 256; }

// ---- entry point: out (device, 32-byte aligned) holds tensorCorePeakOutFloats(blocks, warps) floats ----
KV_ENTRY Status tensorCorePeak(const Device& d, size_t blocks, size_t warps, int iters, float a, float b, float* out) {
  if (blocks == 0 || warps == 0 || warps > kPeakMaxWarps || iters < 0) return Status::kShape;
  if (blocks > 0x7fffffffu) return Status::kRange;
  if (reinterpret_cast<uintptr_t>(out) % 32 != 0) return Status::kRange;  // store_matrix_sync needs 256-bit alignment
  LaunchConfig c;
  c.grid.x = uint32_t(blocks);
  c.block.x = uint32_t(warps * 32);
  return launchKernel(d, c, tensorCorePeakKernel, a, b, iters, out);
}

}  // namespace kvant::cuda
