// The split-KV merge of one output row (SPEC §4.6), shared by FlashAttention-2's split-KV decode
// (attention.cuh combineSplitsKernel) and the paged decode (kv_cache.cuh pagedMergeKernel).
// Split p left a normalized partial O_p and its log-sum-exp LSE_p (−inf: the split saw no key).
// In split order, so a row's result never depends on how many splits other rows had:
//   M = max_p LSE_p,  S = Σ_p exp(LSE_p − M),  LSE = M + ln S  (+inf when every split was empty),
//   O[d] = Σ_p exp(LSE_p − LSE) · O_p[d]  (one FMA per split; 0 when every split was empty).
// Subtracting M keeps every exp ≤ 1 (no overflow however large the scores); weighting by
// exp(LSE_p − LSE) = l_p·e^{m_p} / Σ_q l_q·e^{m_q} turns the normalized partials back into the
// exact softmax average.
#pragma once
#include "launch.h"

namespace kvant::cuda {

// LSE of the merged row from the ns split LSEs at lsePart[0], lsePart[stride], ...
__device__ __forceinline__ float splitMergeLse(const float* lsePart, size_t stride, int ns) {
  float M = -INFINITY;
  for (int s = 0; s < ns; ++s) M = fmaxf(M, lsePart[size_t(s) * stride]);
  float S = 0.f;
  if (M != -INFINITY)
    for (int s = 0; s < ns; ++s) S += expf(lsePart[size_t(s) * stride] - M);
  return S == 0.f ? INFINITY : M + logf(S);
}

// One merged output value: Σ_p exp(LSE_p − L) · opart[p · oStride] over the non-empty splits,
// L = splitMergeLse(...) (with every split empty no term is added: 0).
__device__ __forceinline__ float splitMergeValue(const float* lsePart, size_t lseStride, const float* opart, size_t oStride, int ns, float L) {
  float o = 0.f;
  for (int s = 0; s < ns; ++s) {
    const float w = lsePart[size_t(s) * lseStride];
    if (w != -INFINITY) o = fmaf(expf(w - L), opart[size_t(s) * oStride], o);
  }
  return o;
}

}  // namespace kvant::cuda
