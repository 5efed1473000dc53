// The CUDA addon's device layer: device query and a device copy kernel, with status codes
// (never exceptions or exit) carrying CUDA's own error message to the N-API layer.
#include <cuda_runtime.h>

#include <string>

#include "copy.cuh"
#include "device.h"

namespace kvant::cuda {

__global__ void copyBytesKernel(const uint8_t* src, uint8_t* dst, size_t n) {
  copyBytesBody(src, dst, n, size_t(blockIdx.x) * blockDim.x + threadIdx.x, size_t(gridDim.x) * blockDim.x);
}

static CudaStatus fromCuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return {0, ""};
  return {int(e), std::string(what) + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e)};
}

CudaStatus deviceCount(int* count) {
  *count = 0;
  cudaError_t e = cudaGetDeviceCount(count);
  if (e != cudaSuccess) *count = 0;
  return fromCuda(e, "cudaGetDeviceCount");
}

CudaStatus roundTripCopy(const void* host, void* hostOut, size_t n) {
  uint8_t *a = nullptr, *b = nullptr;
  CudaStatus s = fromCuda(cudaMalloc(&a, n ? n : 1), "cudaMalloc");
  if (s.code) return s;
  s = fromCuda(cudaMalloc(&b, n ? n : 1), "cudaMalloc");
  if (!s.code) s = fromCuda(cudaMemcpy(a, host, n, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  if (!s.code && n) {
    const int threads = 256;
    const int blocks = int((n / 16 + threads - 1) / threads) > 0 ? int((n / 16 + threads - 1) / threads) : 1;
    copyBytesKernel<<<blocks < 1024 ? blocks : 1024, threads>>>(a, b, n);
    s = fromCuda(cudaGetLastError(), "copyBytesKernel launch");
    if (!s.code) s = fromCuda(cudaDeviceSynchronize(), "copyBytesKernel");
  }
  if (!s.code) s = fromCuda(cudaMemcpy(hostOut, b, n, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  cudaFree(a);
  if (b) cudaFree(b);
  return s;
}

}  // namespace kvant::cuda
