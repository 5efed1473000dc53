// Device build of the ceiling probes (bodies and entry point in probe.cuh, shared with the host
// SIMT emulation), plus the forward for the N-API layer (ops.h).
#include "probe.cuh"

#include "launch_target.h"

namespace kvant::cuda::ops {

static_assert(kPeakMaxWarps == cuda::kPeakMaxWarps, "ops.h and probe.cuh disagree on the warps per block");

size_t tensorCorePeakOutFloats(size_t blocks, size_t warps) { return cuda::tensorCorePeakOutFloats(blocks, warps); }
Status tensorCorePeak(const Target& t, size_t blocks, size_t warps, int iters, float a, float b, float* out) {
  return cuda::tensorCorePeak(toDevice(t), blocks, warps, iters, a, b, out);
}

}  // namespace kvant::cuda::ops
