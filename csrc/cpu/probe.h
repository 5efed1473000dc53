// Machine-ceiling probes for the benchmark harness: how fast this machine can read
// memory and issue FMAs. Kernels are reported as a percentage of these numbers.
#pragma once
#include <cstddef>
#include <cstdint>

#include "isa.h"

namespace kvant {

struct ProbeKernels {
  // Sum of n floats with independent accumulators: a pure streaming read.
  double (*sumF32)(const float* x, size_t n);
  // `iters` rounds of independent FMA chains; returns a value that depends on all of
  // them (so the compiler cannot drop the work) and writes the flops done to *flops.
  float (*fmaLoop)(uint64_t iters, double* flops);
};

namespace scalar { extern const ProbeKernels kProbeKernels; }
namespace avx2 { extern const ProbeKernels kProbeKernels; }
namespace avx512 { extern const ProbeKernels kProbeKernels; }

const ProbeKernels& probeKernels();

struct ProbeResult {
  double seconds;
  double bytes;   // bytes moved (bandwidth probes)
  double flops;   // flops done (FMA probe)
  double check;   // a value derived from the work, so it cannot be optimized away
};

// Read bandwidth: sum `bytes` of memory (allocated, touched once) `reps` times on all
// pool threads; returns the best repetition.
ProbeResult probeReadBandwidth(size_t bytes, int reps);
// Copy bandwidth: copy half the buffer into the other half; bytes = read + written.
ProbeResult probeCopyBandwidth(size_t bytes, int reps);
// Peak FMA rate with `threads` threads (1 or the whole pool).
ProbeResult probeFmaPeak(bool allThreads, double seconds);

}  // namespace kvant
