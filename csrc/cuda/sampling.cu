// Device build of the sampling kernel: body and entry point live in sampling.cuh (shared with
// the host SIMT emulation); this translation unit instantiates them for nvcc.
#include "sampling.cuh"

#include "launch_target.h"

// Forward for the N-API layer (ops.h).
namespace kvant::cuda::ops {

static_assert(kSampleRowBytes == sizeof(cuda::SampleRow), "ops.h mirrors SampleRow's size");

Status sample(const Target& t, const SampleArgs& a) {
  cuda::SampleDeviceArgs d{};
  d.logits = a.logits, d.work = a.work, d.B = a.B, d.V = a.V, d.rows = static_cast<const cuda::SampleRow*>(a.rows);
  d.histOffsets = a.histOffsets, d.histIds = a.histIds, d.tokens = a.tokens, d.badRow = a.badRow;
  return cuda::sampleTokens(toDevice(t), d);
}

}  // namespace kvant::cuda::ops
