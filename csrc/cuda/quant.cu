// Device build of the group-quantization kernels: bodies and entry points live in quant.cuh
// (shared with the host SIMT emulation); this translation unit instantiates them for nvcc, and
// (compiled by g++ as C++) for the emulated test addon kvant_cuda_emu.node.
#include "quant.cuh"

#include "launch_target.h"

// Forwards for the N-API layer (ops.h).
namespace kvant::cuda::ops {

Status dequantize(const Target& t, const QMatrix& q, void* out, bool outF16) { return cuda::gptqDequantize(toDevice(t), q, out, outF16); }
Status rtnQuantize(const Target& t, const float* W, const QuantFormat& f, uint32_t* qweight, uint32_t* qzeros, uint16_t* scales, int* bad) {
  return cuda::rtnQuantize(toDevice(t), W, f, qweight, qzeros, scales, bad);
}

}  // namespace kvant::cuda::ops
