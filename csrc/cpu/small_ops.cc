#include "small_ops.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kvant/half.h"
#include "thread_pool.h"

namespace kvant {
namespace scalar {
namespace {

double sumSquares(const float* x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(x[i]) * x[i];
  return s;
}
void scaleMul(const float* x, const float* w, float s, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = x[i] * s * w[i];
}
void siluMul(const float* g, const float* u, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
}
void axpyRow(float a, const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] += a * x[i];
}
double expShift(const float* x, float m, float* y, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) {
    y[i] = std::exp(x[i] - m);
    s += y[i];
  }
  return s;
}

}  // namespace
const SmallOpsKernels kSmallOpsKernels = {sumSquares, scaleMul, siluMul, axpyRow, expShift};
}  // namespace scalar

const SmallOpsKernels* smallOpsKernelsFor(Isa isa) {
  if (int(isa) < 0) isa = isaChoice().isa;
#if defined(__x86_64__) || defined(_M_X64)
  return tableForIsa(isa, scalar::kSmallOpsKernels, &avx2::kSmallOpsKernels, &avx512::kSmallOpsKernels);
#else
  return tableForIsa<SmallOpsKernels>(isa, scalar::kSmallOpsKernels, nullptr, nullptr);
#endif
}

namespace {

// Rows per pool task: enough work per task (>= ~16K values) to amortize the hand-off.
size_t rowsPerTask(size_t n) { return n >= 16384 ? 1 : (16384 + n - 1) / n; }

template <class Fn>
void forRows(size_t rows, size_t n, Fn fn) {
  const size_t per = rowsPerTask(n);
  threadPool().parallelFor((rows + per - 1) / per, [&](size_t c) {
    const size_t e = (c + 1) * per < rows ? (c + 1) * per : rows;
    for (size_t r = c * per; r < e; ++r) fn(r);
  });
}

// Widen a weight vector to f32 once per call (norm weights are small: H values).
bool widen(const void* w, DType t, size_t n, std::vector<float>& out) {
  out.resize(n);
  switch (t) {
    case DType::kF32: std::memcpy(out.data(), w, n * 4); return true;
    case DType::kF16: for (size_t i = 0; i < n; ++i) out[i] = f16ToF32(static_cast<const uint16_t*>(w)[i]); return true;
    case DType::kBF16: for (size_t i = 0; i < n; ++i) out[i] = bf16ToF32(static_cast<const uint16_t*>(w)[i]); return true;
    default: return false;
  }
}

// One row of RMSNorm: y = w ⊙ x / sqrt(mean(x²) + eps), the mean of squares summed in f64.
void normRow(const SmallOpsKernels& k, const float* xr, const float* wf, float eps, float* yr, size_t n) {
  const double ms = k.sumSquares(xr, n) / double(n);
  k.scaleMul(xr, wf, float(1.0 / std::sqrt(ms + double(eps))), yr, n);
}

}  // namespace

Status rmsNorm(const float* x, const void* w, DType wType, float eps, float* y, size_t rows, size_t n, Isa isa) {
  const SmallOpsKernels* k = smallOpsKernelsFor(isa);
  if (!k) return Status::kBackend;
  std::vector<float> wf;
  if (!widen(w, wType, n, wf)) return Status::kDtype;
  forRows(rows, n, [&](size_t r) { normRow(*k, x + r * n, wf.data(), eps, y + r * n, n); });
  return Status::kOk;
}

Status addRmsNorm(float* x, const float* d, const void* w, DType wType, float eps, float* y, size_t rows, size_t n, Isa isa) {
  const SmallOpsKernels* k = smallOpsKernelsFor(isa);
  if (!k) return Status::kBackend;
  std::vector<float> wf;
  if (!widen(w, wType, n, wf)) return Status::kDtype;
  forRows(rows, n, [&](size_t r) {
    k->axpy(1.0f, d + r * n, x + r * n, n);  // elementwise, so the same bits as axpy's 64K-value chunks
    normRow(*k, x + r * n, wf.data(), eps, y + r * n, n);
  });
  return Status::kOk;
}

Status ropeInterleaved(float* x, size_t rows, size_t heads, size_t stride, size_t offset, size_t pairs,
                       const int32_t* pos, const float* invFreq, float amp) {
  if (offset + 2 * pairs > stride) return Status::kShape;
  forRows(rows, heads * stride, [&](size_t r) {
    // cos/sin once per (row, pair), shared by all heads of the row.
    float cs[512], sn[512];
    for (size_t base = 0; base < pairs; base += 512) {
      const size_t m = pairs - base < 512 ? pairs - base : 512;
      for (size_t i = 0; i < m; ++i) {
        const double ang = double(pos[r]) * double(invFreq[base + i]);
        cs[i] = float(std::cos(ang)) * amp;
        sn[i] = float(std::sin(ang)) * amp;
      }
      for (size_t h = 0; h < heads; ++h) {
        float* v = x + (r * heads + h) * stride + offset + 2 * base;
        for (size_t i = 0; i < m; ++i) {
          const float a = v[2 * i], b = v[2 * i + 1];
          v[2 * i] = a * cs[i] - b * sn[i];
          v[2 * i + 1] = a * sn[i] + b * cs[i];
        }
      }
    }
  });
  return Status::kOk;
}

Status siluGate(const float* g, const float* u, size_t inStride, float* y, size_t rows, size_t n, Isa isa) {
  const SmallOpsKernels* k = smallOpsKernelsFor(isa);
  if (!k) return Status::kBackend;
  forRows(rows, n, [&](size_t r) { k->siluMul(g + r * inStride, u + r * inStride, y + r * n, n); });
  return Status::kOk;
}

Status softmaxRows(float* x, size_t rows, size_t n, Isa isa) {
  const SmallOpsKernels* k = smallOpsKernelsFor(isa);
  if (!k) return Status::kBackend;
  forRows(rows, n, [&](size_t r) {
    float* v = x + r * n;
    float m = -std::numeric_limits<float>::infinity();
    for (size_t i = 0; i < n; ++i) m = v[i] > m ? v[i] : m;
    if (m == -std::numeric_limits<float>::infinity()) {  // nothing to attend: all zero
      for (size_t i = 0; i < n; ++i) v[i] = 0;
      return;
    }
    const float inv = float(1.0 / k->expShift(v, m, v, n));
    for (size_t i = 0; i < n; ++i) v[i] *= inv;
  });
  return Status::kOk;
}

Status routeTopK(const float* logits, size_t rows, size_t experts, size_t k, size_t nGroup, size_t topkGroup,
                 bool groupLimited, bool normTopk, float scaling, int32_t* idx, float* w) {
  if (k == 0 || k > experts || nGroup == 0 || experts % nGroup != 0 || topkGroup == 0 || topkGroup > nGroup)
    return Status::kShape;
  if (groupLimited && k > topkGroup * (experts / nGroup)) return Status::kShape;
  const size_t per = experts / nGroup;
  for (size_t r = 0; r < rows; ++r) {
    // Softmax in f64 over f32 logits: routing decisions should not hinge on rounding.
    const float* l = logits + r * experts;
    std::vector<double> s(experts);
    double m = -INFINITY, z = 0;
    for (size_t e = 0; e < experts; ++e) m = l[e] > m ? l[e] : m;
    for (size_t e = 0; e < experts; ++e) z += (s[e] = std::exp(double(l[e]) - m));
    for (size_t e = 0; e < experts; ++e) s[e] /= z;
    std::vector<double> masked = s;
    if (groupLimited) {
      std::vector<char> keep(nGroup, 0);
      std::vector<double> gs(nGroup, -1);
      for (size_t g = 0; g < nGroup; ++g)
        for (size_t e = g * per; e < (g + 1) * per; ++e) gs[g] = s[e] > gs[g] ? s[e] : gs[g];
      for (size_t j = 0; j < topkGroup; ++j) {
        size_t best = nGroup;
        for (size_t g = 0; g < nGroup; ++g)
          if (!keep[g] && (best == nGroup || gs[g] > gs[best])) best = g;  // strict: ties keep the lower group
        keep[best] = 1;
      }
      for (size_t e = 0; e < experts; ++e)
        if (!keep[e / per]) masked[e] = 0;
    }
    std::vector<char> taken(experts, 0);
    double sum = 0;
    for (size_t j = 0; j < k; ++j) {
      size_t best = experts;
      for (size_t e = 0; e < experts; ++e)
        if (!taken[e] && (best == experts || masked[e] > masked[best])) best = e;  // ties -> lower index
      taken[best] = 1;
      idx[r * k + j] = int32_t(best);
      w[r * k + j] = float(masked[best]);
      sum += masked[best];
    }
    for (size_t j = 0; j < k; ++j) {
      if (k > 1 && normTopk) w[r * k + j] = float(double(w[r * k + j]) / (sum + 1e-20));
      else w[r * k + j] *= scaling;
    }
  }
  return Status::kOk;
}

Status embeddingGather(const void* table, DType type, size_t vocab, size_t dim, const int32_t* ids, size_t n,
                       float* out, size_t* badIndex) {
  for (size_t t = 0; t < n; ++t)
    if (ids[t] < 0 || size_t(ids[t]) >= vocab) {
      if (badIndex) *badIndex = t;
      return Status::kRange;
    }
  if (type != DType::kF32 && type != DType::kF16 && type != DType::kBF16) return Status::kDtype;
  forRows(n, dim, [&](size_t t) {
    const size_t row = size_t(ids[t]);
    float* o = out + t * dim;
    if (type == DType::kF32) std::memcpy(o, static_cast<const float*>(table) + row * dim, dim * 4);
    else if (type == DType::kF16) for (size_t i = 0; i < dim; ++i) o[i] = f16ToF32(static_cast<const uint16_t*>(table)[row * dim + i]);
    else for (size_t i = 0; i < dim; ++i) o[i] = bf16ToF32(static_cast<const uint16_t*>(table)[row * dim + i]);
  });
  return Status::kOk;
}

Status argmaxRows(const float* x, size_t rows, size_t n, int32_t* out) {
  for (size_t r = 0; r < rows; ++r) {
    const float* v = x + r * n;
    int32_t best = -1;
    for (size_t i = 0; i < n; ++i)
      if (!std::isnan(v[i]) && (best < 0 || v[i] > v[best])) best = int32_t(i);
    out[r] = best;
  }
  return Status::kOk;
}

Status axpy(float a, const float* x, float* y, size_t n, Isa isa) {
  const SmallOpsKernels* k = smallOpsKernelsFor(isa);
  if (!k) return Status::kBackend;
  constexpr size_t kChunk = 1 << 16;
  threadPool().parallelFor((n + kChunk - 1) / kChunk, [&](size_t c) {
    const size_t b = c * kChunk, m = n - b < kChunk ? n - b : kChunk;
    k->axpy(a, x + b, y + b, m);
  });
  return Status::kOk;
}

}  // namespace kvant
