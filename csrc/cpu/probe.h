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

// Streaming-read variants for the read ceiling. One sequential stream per thread is not the
// most a core can pull from DRAM: a kernel that walks several rows at once (a dense GEMV's
// 4-row tiles) keeps more misses in flight and reads faster, so a ceiling measured with one
// stream is not a ceiling. The harness measures every variant over the same buffer and takes
// the best. Each sums n floats (so the loads cannot be dropped) in its own access pattern.
struct ReadVariant {
  const char* name;
  double (*sum)(const float* x, size_t n);
  bool chunked;  // true: the buffer is split into 64 KiB tasks taken dynamically (as kernels do); false: one contiguous slice per thread
};
struct ReadProbeKernels {
  const ReadVariant* variants;
  int count;
};
namespace scalar { extern const ReadProbeKernels kReadProbeKernels; }
namespace avx2 { extern const ReadProbeKernels kReadProbeKernels; }
// The chosen level's variants (AVX-512 machines use the AVX2 set: a read is a read).
const ReadProbeKernels& readProbeKernels();

struct ProbeResult {
  double seconds;
  double bytes;   // bytes moved (bandwidth probes)
  double flops;   // flops done (FMA probe)
  double check;   // a value derived from the work, so it cannot be optimized away
};

// Read bandwidth: sum `bytes` of memory (allocated, touched once) `reps` times on all
// pool threads; returns the best repetition.
ProbeResult probeReadBandwidth(size_t bytes, int reps);
// Every read variant over one buffer of `bytes`, interleaved (rep 1 of each variant, then rep
// 2, ...) so load on a shared machine hits them alike; out[v] gets variant v's best rep.
// Returns false if the buffer could not be allocated. out must hold readProbeKernels().count.
bool probeReadVariants(size_t bytes, int reps, ProbeResult* out);
// Copy bandwidth: copy half the buffer into the other half; bytes = read + written.
ProbeResult probeCopyBandwidth(size_t bytes, int reps);
// Peak FMA rate with `threads` threads (1 or the whole pool).
ProbeResult probeFmaPeak(bool allThreads, double seconds);

}  // namespace kvant
