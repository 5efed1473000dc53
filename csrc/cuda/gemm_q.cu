// Device build of the fused dequant GEMM kernels: bodies and entry points live in gemm_q.cuh (shared with the
// host SIMT emulation); this translation unit instantiates them for nvcc, and (compiled by g++
// as C++) for the emulated test addon kvant_cuda_emu.node.
#include "gemm_q.cuh"

#include "launch_target.h"

// Forwards for the N-API layer (ops.h).
namespace kvant::cuda::ops {

static_assert(ops::kGemvMaxRows == cuda::kGemvMaxRows, "ops.h mirrors the GEMV's row limit");

size_t gemvScratchBytes(const QuantFormat& f, int M) { return cuda::gptqGemvScratchFloats(f, M) * sizeof(float); }
Status gemv(const Target& t, const QMatrix& q, const float* x, int M, float* y, float* scratch) {
  return cuda::gptqGemv(toDevice(t), q, x, M, y, scratch);
}
Status gemm(const Target& t, const QMatrix& q, const float* x, int64_t M, float* y) { return cuda::gptqGemm(toDevice(t), q, x, M, y); }

}  // namespace kvant::cuda::ops
