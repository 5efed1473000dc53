// The device copy kernel (copy.cuh) behind a launch wrapper, and the launch error accessors of
// ops.h. Compiled by nvcc for kvant_cuda.node and by g++ under the SIMT emulation for the test
// addon, like every family's .cu.
#include "launch.h"  // first: copy.cuh needs cuda_compat.cuh's __device__
#include "copy.cuh"
#include "launch_target.h"

namespace kvant::cuda {

__global__ void copyBytesKernel(const uint8_t* src, uint8_t* dst, size_t n) {
  copyBytesBody(src, dst, n, size_t(blockIdx.x) * blockDim.x + threadIdx.x, size_t(gridDim.x) * blockDim.x);
}

}  // namespace kvant::cuda

namespace kvant::cuda::ops {

const char* lastLaunchMessage() { return lastLaunchError().message; }
int lastLaunchCudaError() { return lastLaunchError().cudaError; }

// A grid-stride copy (a smoke test of the whole launch path: the binding's roundTripCopy).
// 256 threads x up to 1024 blocks, 16 bytes per thread per step.
Status copyBytes(const Target& t, const void* src, void* dst, size_t n) {
  LaunchConfig c;
  c.block.x = 256;
  const size_t blocks = (n / 16 + 255) / 256;
  c.grid.x = uint32_t(blocks < 1 ? 1 : blocks > 1024 ? 1024 : blocks);
  return launchKernel(toDevice(t), c, copyBytesKernel, static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst), n);
}

}  // namespace kvant::cuda::ops
