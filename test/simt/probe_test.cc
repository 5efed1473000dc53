// The bench's f16 tensor-core peak kernel (csrc/cuda/probe.cuh) under the emulation, through its
// launch wrapper: every stored accumulator element must equal iters·16·f16(a)·f16(b) exactly
// (each mma_sync adds Σ_{k<16} a·b = 16·a·b to every element, and the chosen values keep every
// partial sum an exact f32), the output must be fully written (NaN-poisoned before), and bad
// launches are statuses, not crashes.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "helpers.h"
#include "probe.cuh"

using namespace simttest;
using kvant::Status;

namespace {

struct AlignedFloats {
  float* p;
  size_t n;
  explicit AlignedFloats(size_t count) : p(static_cast<float*>(std::aligned_alloc(64, (count * 4 + 63) / 64 * 64 + 64))), n(count) {
    for (size_t i = 0; i < n + 16; ++i) p[i] = NAN;  // poisoned, 16 guard floats past the end
  }
  ~AlignedFloats() { std::free(p); }
};

}  // namespace

TEST(cuda_probe_tensor_core_peak_value) {
  struct Case {
    size_t blocks, warps;
    int iters;
    float a, b;
  };
  // a = 1, b = 1/64: each step adds 0.25; a = 0.5, b = 3: each step adds 24; iters = 0 leaves the
  // zero-filled accumulators; -2 · 2^-10 checks negative f16 operands.
  for (const Case c : {Case{1, 1, 1, 1.0f, 1.0f / 64}, Case{3, 2, 5, 1.0f, 1.0f / 64}, Case{2, 8, 7, 0.5f, 3.0f}, Case{1, 3, 0, 1.0f, 1.0f},
                       Case{2, 1, 3, -2.0f, 0.0009765625f}})
    for (const auto& dev : devices()) {
      const size_t n = kvant::cuda::tensorCorePeakOutFloats(c.blocks, c.warps);
      EXPECT_EQ(n, c.blocks * c.warps * kvant::cuda::kPeakAcc * 256);
      AlignedFloats out(n);
      EXPECT_OK(kvant::cuda::tensorCorePeak(dev, c.blocks, c.warps, c.iters, c.a, c.b, out.p));
      const double want = double(c.iters) * 16.0 * double(kvant::f16ToF32(kvant::f32ToF16(c.a))) * double(kvant::f16ToF32(kvant::f32ToF16(c.b)));
      size_t bad = 0;
      for (size_t i = 0; i < n; ++i) bad += double(out.p[i]) != want;
      if (bad) std::fprintf(stderr, "  %zu of %zu elements differ from %g (first: %g)\n", bad, n, want, double(out.p[0]));
      EXPECT_EQ(bad, size_t(0));
      size_t guards = 0;
      for (size_t i = n; i < n + 16; ++i) guards += std::isnan(out.p[i]) ? 1 : 0;
      EXPECT_EQ(guards, size_t(16));  // nothing written past the documented extent
    }
}

TEST(cuda_probe_tensor_core_peak_bad_launches) {
  const auto dev = device(80);
  AlignedFloats out(kvant::cuda::tensorCorePeakOutFloats(1, 8));
  EXPECT_STATUS(kvant::cuda::tensorCorePeak(dev, 0, 1, 1, 1, 1, out.p), Status::kShape);
  EXPECT_STATUS(kvant::cuda::tensorCorePeak(dev, 1, 0, 1, 1, 1, out.p), Status::kShape);
  EXPECT_STATUS(kvant::cuda::tensorCorePeak(dev, 1, 9, 1, 1, 1, out.p), Status::kShape);
  EXPECT_STATUS(kvant::cuda::tensorCorePeak(dev, 1, 1, -1, 1, 1, out.p), Status::kShape);
  EXPECT_STATUS(kvant::cuda::tensorCorePeak(dev, 1, 1, 1, 1, 1, out.p + 1), Status::kRange);  // not 32-byte aligned
  EXPECT_TRUE(std::isnan(out.p[0]));                                                               // nothing ran
}
