#include "quant.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "kvant/half.h"
#include "thread_pool.h"

namespace kvant {

Status qCheckFormat(const QuantFormat& f) {
  if (!qBitsSupported(f.bits)) return Status::kFormat;
  if (f.groupSize == 0 || f.groupSize < -1) return Status::kFormat;
  if (f.zeroFormat != int32_t(ZeroFormat::kGptqV1) && f.zeroFormat != int32_t(ZeroFormat::kGptqV2)) return Status::kFormat;
  if (!qDimPackable(f.K, f.bits) || !qDimPackable(f.N, f.bits)) return Status::kShape;
  return Status::kOk;
}

Status qFitGrid(const float* x, int64_t n, int64_t stride, int bits, bool sym, QuantGrid* grid) {
  const int32_t maxq = (1 << bits) - 1;
  float xmin = 0.0f, xmax = 0.0f;  // the range always contains 0
  for (int64_t i = 0; i < n; ++i) {
    const float v = x[i * stride];
    xmin = v < xmin ? v : xmin;
    xmax = v > xmax ? v : xmax;
  }
  if (sym) {
    xmax = std::fabs(xmin) > xmax ? std::fabs(xmin) : xmax;
    if (xmin < 0.0f) xmin = -xmax;
  }
  if (xmin == 0.0f && xmax == 0.0f) xmin = -1.0f, xmax = 1.0f;
  const float s32 = (xmax - xmin) / float(maxq);
  grid->scaleF16 = f32ToF16(s32);
  grid->scale = f16ToF32(grid->scaleF16);
  if (!std::isfinite(grid->scale)) return Status::kRange;
  if (sym) {
    grid->zero = (maxq + 1) / 2;
  } else if (grid->scale == 0.0f) {
    grid->zero = 0;
  } else {
    float z = std::nearbyint(-xmin / grid->scale);
    grid->zero = int32_t(z < 0.0f ? 0.0f : (z > float(maxq) ? float(maxq) : z));
  }
  return Status::kOk;
}

void qStoreGrid(const QuantFormat& f, int64_t g, int64_t n, const QuantGrid& grid, uint32_t* qzeros, uint16_t* scales) {
  const uint32_t maxq = (1u << f.bits) - 1u;
  const uint32_t stored = f.zeroFormat == int32_t(ZeroFormat::kGptqV1) ? (uint32_t(grid.zero) - 1u) & maxq : uint32_t(grid.zero);
  qStreamOr(qzeros + g * qZeroCols(f), 1, n, f.bits, stored);
  scales[g * f.N + n] = grid.scaleF16;
}

namespace {

// Output columns per pool task: 32 columns own whole qzeros words for every width
// (32 = lcm of 16, 8, 4 codes per word and of 3-bit's 32-code triples), so no two tasks
// ever write the same word.
constexpr int64_t kColsPerTask = 32;

}  // namespace

Status quantizeRtn(const QuantFormat& f, const float* w, uint32_t* qweight, uint32_t* qzeros, uint16_t* scales,
                   int64_t* badIndex) {
  if (Status s = qCheckFormat(f); s != Status::kOk) return s;
  const int64_t K = f.K, N = f.N, G = qEffectiveGroup(f), ng = qGroupCount(f);
  for (int64_t i = 0; i < N * K; ++i)
    if (!std::isfinite(w[i])) {
      if (badIndex) *badIndex = i;
      return Status::kRange;
    }
  std::memset(qweight, 0, size_t(qWeightRows(f) * N) * 4);
  std::memset(qzeros, 0, size_t(ng * qZeroCols(f)) * 4);
  const int32_t maxq = int32_t(qMaxCode(f));
  std::atomic<int> failed{0};
  threadPool().parallelFor(size_t((N + kColsPerTask - 1) / kColsPerTask), [&](size_t t) {
    const int64_t n1 = std::min<int64_t>(N, int64_t(t + 1) * kColsPerTask);
    for (int64_t n = int64_t(t) * kColsPerTask; n < n1; ++n) {
      const float* row = w + n * K;
      for (int64_t g = 0; g < ng; ++g) {
        const int64_t k0 = g * G, k1 = std::min(K, k0 + G);
        QuantGrid grid;
        if (qFitGrid(row + k0, k1 - k0, 1, f.bits, f.sym != 0, &grid) != Status::kOk) {
          failed.store(1);
          return;
        }
        qStoreGrid(f, g, n, grid, qzeros, scales);
        for (int64_t k = k0; k < k1; ++k) qStreamOr(qweight + n, N, k, f.bits, uint32_t(qCode(row[k], grid, maxq)));
      }
    }
  });
  return failed.load() ? Status::kRange : Status::kOk;
}

void dequantElementScalar(const DequantArgs& a, int64_t n, int64_t j) {
  const QuantFormat& f = a.fmt;
  const int64_t g = a.gIdx ? a.gIdx[j] : j / qEffectiveGroup(f);
  const int32_t code = int32_t(qStreamGet(a.qweight + n, f.N, j, f.bits));
  const int32_t zero = qZeroAt(f, a.qzeros, g, n);
  const float v = float(code - zero) * f16ToF32(a.scales[g * f.N + n]);
  const int64_t k = a.perm ? a.perm[j] : j;
  const int64_t at = n * f.K + k;
  switch (a.outType) {
    case DType::kF16: static_cast<uint16_t*>(a.out)[at] = f32ToF16(v); break;
    case DType::kBF16: static_cast<uint16_t*>(a.out)[at] = f32ToBf16(v); break;
    default: static_cast<float*>(a.out)[at] = v; break;
  }
}

namespace scalar {
namespace {
void tile(const DequantArgs& a, int64_t n0, int64_t j0) {
  for (int64_t n = n0; n < n0 + 8; ++n)
    for (int64_t j = j0; j < j0 + 8; ++j) dequantElementScalar(a, n, j);
}
}  // namespace
const QuantKernels kQuantKernels = {tile};
}  // namespace scalar

const QuantKernels* quantKernelsFor(Isa isa) {
  if (int(isa) < 0) isa = isaChoice().isa;
#if defined(__x86_64__) || defined(_M_X64)
  return tableForIsa<QuantKernels>(isa, scalar::kQuantKernels, &avx2::kQuantKernels, &avx512::kQuantKernels);
#else
  return tableForIsa<QuantKernels>(isa, scalar::kQuantKernels, nullptr, nullptr);
#endif
}

Status dequantize(const DequantArgs& a, int64_t* badIndex, Isa isa) {
  if (Status s = qCheckFormat(a.fmt); s != Status::kOk) return s;
  if (a.outType != DType::kF32 && a.outType != DType::kF16 && a.outType != DType::kBF16) return Status::kDtype;
  const QuantKernels* kk = quantKernelsFor(isa);
  if (!kk) return Status::kBackend;
  const int64_t K = a.fmt.K, N = a.fmt.N, ng = qGroupCount(a.fmt);
  if (a.gIdx)
    for (int64_t j = 0; j < K; ++j)
      if (a.gIdx[j] < 0 || a.gIdx[j] >= ng) {
        if (badIndex) *badIndex = j;
        return Status::kRange;
      }
  if (a.perm) {
    std::vector<uint8_t> seen(size_t(K), 0);
    for (int64_t j = 0; j < K; ++j) {
      if (a.perm[j] < 0 || a.perm[j] >= K || seen[size_t(a.perm[j])]) {
        if (badIndex) *badIndex = j;
        return Status::kRange;
      }
      seen[size_t(a.perm[j])] = 1;
    }
  }
  // Tasks own 32 output rows (n) x all K: disjoint outputs, same instructions per element
  // whatever the thread count. Full 8x8 tiles go to the ISA kernel, edges to scalar code.
  const int64_t nFull = N / 8 * 8, jFull = K / 8 * 8;
  threadPool().parallelFor(size_t((N + kColsPerTask - 1) / kColsPerTask), [&](size_t t) {
    const int64_t n1 = std::min<int64_t>(N, int64_t(t + 1) * kColsPerTask);
    for (int64_t n0 = int64_t(t) * kColsPerTask; n0 < n1; n0 += 8) {
      if (n0 + 8 <= nFull) {
        for (int64_t j0 = 0; j0 < jFull; j0 += 8) kk->tile(a, n0, j0);
        for (int64_t n = n0; n < n0 + 8; ++n)
          for (int64_t j = jFull; j < K; ++j) dequantElementScalar(a, n, j);
      } else {
        for (int64_t n = n0; n < n1; ++n)
          for (int64_t j = 0; j < K; ++j) dequantElementScalar(a, n, j);
      }
    }
  });
  return Status::kOk;
}

Status qMakeSequential(const QuantFormat& f, const uint32_t* qweightIn, int32_t* gIdx, int32_t* perm,
                       uint32_t* qweightOut, bool forward, int64_t* badIndex) {
  if (Status s = qCheckFormat(f); s != Status::kOk) return s;
  const int64_t K = f.K, N = f.N, G = qEffectiveGroup(f), ng = qGroupCount(f);
  if (forward) {
    // Counting sort by group: stable, O(K), and it checks the group sizes on the way.
    std::vector<int64_t> count(size_t(ng) + 1, 0);
    for (int64_t k = 0; k < K; ++k) {
      if (gIdx[k] < 0 || gIdx[k] >= ng) {
        if (badIndex) *badIndex = k;
        return Status::kRange;
      }
      ++count[size_t(gIdx[k]) + 1];
    }
    for (int64_t g = 0; g < ng; ++g)
      if (count[size_t(g) + 1] != std::min(G, K - g * G)) {
        if (badIndex) *badIndex = g;
        return Status::kFormat;
      }
    for (int64_t g = 0; g < ng; ++g) count[size_t(g) + 1] += count[size_t(g)];
    for (int64_t k = 0; k < K; ++k) perm[count[size_t(gIdx[k])]++] = int32_t(k);
  } else {
    std::vector<uint8_t> seen(size_t(K), 0);
    for (int64_t j = 0; j < K; ++j) {
      if (perm[j] < 0 || perm[j] >= K || seen[size_t(perm[j])]) {
        if (badIndex) *badIndex = j;
        return Status::kRange;
      }
      seen[size_t(perm[j])] = 1;
      gIdx[perm[j]] = int32_t(j / G);
    }
  }
  std::memset(qweightOut, 0, size_t(qWeightRows(f) * N) * 4);
  // Tasks own whole output columns (a qweight word belongs to one column n).
  threadPool().parallelFor(size_t((N + kColsPerTask - 1) / kColsPerTask), [&](size_t t) {
    const int64_t n1 = std::min<int64_t>(N, int64_t(t + 1) * kColsPerTask);
    for (int64_t n = int64_t(t) * kColsPerTask; n < n1; ++n)
      for (int64_t j = 0; j < K; ++j) {
        const int64_t from = forward ? perm[j] : j, to = forward ? j : perm[j];
        qStreamOr(qweightOut + n, N, to, f.bits, qStreamGet(qweightIn + n, N, from, f.bits));
      }
  });
  return Status::kOk;
}

}  // namespace kvant
