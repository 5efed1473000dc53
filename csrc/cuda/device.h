// Host-side entry points of the CUDA addon (no CUDA types: the N-API layer includes this).
#pragma once
#include <cstddef>
#include <string>

namespace kvant::cuda {

struct CudaStatus {
  int code;             // 0 = ok, else the cudaError_t value
  std::string message;  // CUDA's own name and description of the error
};

CudaStatus deviceCount(int* count);
// host -> device, copy kernel on the device, device -> host (a smoke test of the whole path).
CudaStatus roundTripCopy(const void* host, void* hostOut, size_t n);

}  // namespace kvant::cuda
