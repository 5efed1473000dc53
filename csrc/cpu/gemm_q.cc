// Fused dequant GEMV/GEMM: the scalar reference, activation preparation, dispatch and
// threading, and the grouped MoE MLP. The math is spelled out in gemm_q.h.
#include "gemm_q.h"

#include <cmath>
#include <climits>
#include <cstdint>
#include <cstring>

#include "gemm.h"
#include "kvant/half.h"
#include "thread_pool.h"

namespace kvant {
namespace {

// Code `idx` along the packed dimension, whose words for packing unit u live at
// base[(u*unitWords + word) * stride]. Generic over the bit layouts of quant_format.h.
inline uint32_t packedCode(const uint32_t* base, size_t stride, size_t idx, int bits) {
  const size_t U = size_t(qUnitCodes(bits)), W = size_t(qUnitWords(bits));
  const size_t unit = idx / U;
  const unsigned pos = unsigned(bits) * unsigned(idx % U);
  const size_t word = unit * W + pos / 32;
  const unsigned s = pos % 32;
  uint32_t v = base[word * stride] >> s;
  if (s + unsigned(bits) > 32) v |= base[(word + 1) * stride] << (32 - s);  // 3-bit code split across words
  return v & ((1u << bits) - 1);
}

inline float zeroOf(const QMatrix& w, size_t g, size_t n) {
  const int bits = w.fmt.bits;
  const uint32_t z = packedCode(w.qzeros + g * size_t(qZeroCols(w.fmt)), 1, n, bits);
  // v1 stores zero − 1; the mask matters for asymmetric zero 0 (stored −1 = all ones).
  return float(w.fmt.zeroFormat == int32_t(ZeroFormat::kGptqV1) ? (z + 1) & ((1u << bits) - 1) : z);
}

}  // namespace

namespace scalar {
namespace {

// The reference: the exact operation sequence of gemm_q.h with std::fma, one output at a time.
void columns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  const int bits = w.fmt.bits;
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt)), U = size_t(qUnitCodes(bits));
  for (size_t n = n0; n < n1; ++n)
    for (size_t m = 0; m < a.M; ++m) {
      const float* xs = a.xs + m * K;
      float acc_y = 0;
      for (size_t g = 0; g * G < K; ++g) {
        const size_t k1 = (g + 1) * G < K ? (g + 1) * G : K;
        float acc = 0;
        for (size_t k = g * G; k < k1; ++k) {
          const uint32_t c = packedCode(w.qweight + n, N, k, bits) << qInPlaceShift(bits, int(k % U));
          acc = std::fma(xs[k], float(c), acc);
        }
        const float t = std::fma(-zeroOf(w, g, n), a.xsum[m * a.ng + g], acc);
        acc_y = std::fma(f16ToF32(w.scales[g * N + n]), t, acc_y);
      }
      y[m * ldy + n] = acc_y;
    }
}

void fmaRow(float a, const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);
}

}  // namespace
const QGemmKernels kQGemmKernels = {columns, fmaRow};
}  // namespace scalar

const QGemmKernels* qgemmKernelsFor(Isa isa) {
  if (int(isa) < 0) isa = isaChoice().isa;
#if defined(__x86_64__) || defined(_M_X64)
  // No AVX-512 table: it could not be tested here, so AVX-512 machines use the AVX2 one.
  if (isa == Isa::kAvx512) return isaSupported(isa) ? &avx2::kQGemmKernels : nullptr;
  return tableForIsa<QGemmKernels>(isa, scalar::kQGemmKernels, &avx2::kQGemmKernels, nullptr);
#else
  return tableForIsa<QGemmKernels>(isa, scalar::kQGemmKernels, nullptr, nullptr);
#endif
}

Status qgemmValidate(const QMatrix& w) {
  const QuantFormat& f = w.fmt;
  if (!qBitsSupported(f.bits)) return Status::kFormat;
  if (f.groupSize == 0 || f.groupSize < -1) return Status::kFormat;
  if (f.zeroFormat != int32_t(ZeroFormat::kGptqV1) && f.zeroFormat != int32_t(ZeroFormat::kGptqV2)) return Status::kFormat;
  if (!qDimPackable(f.K, f.bits) || !qDimPackable(f.N, f.bits)) return Status::kShape;
  // A group must start on a packing unit so kernels never split a word between two groups.
  if (f.groupSize > 0 && f.groupSize < f.K && f.groupSize % qUnitCodes(f.bits) != 0) return Status::kFormat;
  if (!w.qweight || !w.qzeros || !w.scales) return Status::kShape;
  return Status::kOk;
}

size_t qgemmScratchFloats(const QuantFormat& f, size_t M) { return M * size_t(f.K) + M * size_t(qGroupCount(f)); }

QActs qgemmPrepare(const QMatrix& w, const void* x, DType xType, size_t ldx, size_t M, float* scratch) {
  const size_t K = size_t(w.fmt.K), G = size_t(qEffectiveGroup(w.fmt)), ng = size_t(qGroupCount(w.fmt));
  const int bits = w.fmt.bits;
  const size_t U = size_t(qUnitCodes(bits));
  float* xs = scratch;
  float* xsum = scratch + M * K;
  // 2^−e for each position inside a packing unit (exact powers of two).
  float inv[32];
  for (size_t j = 0; j < U; ++j) inv[j] = std::ldexp(1.0f, -qInPlaceShift(bits, int(j)));
  for (size_t m = 0; m < M; ++m) {
    float* xr = xs + m * K;
    for (size_t k = 0; k < K; ++k) {
      const size_t src = m * ldx + (w.perm ? size_t(w.perm[k]) : k);
      float v;
      if (xType == DType::kF32) v = static_cast<const float*>(x)[src];
      else if (xType == DType::kF16) v = f16ToF32(static_cast<const uint16_t*>(x)[src]);
      else v = bf16ToF32(static_cast<const uint16_t*>(x)[src]);
      xr[k] = v;
    }
    for (size_t g = 0; g < ng; ++g) {
      const size_t k1 = (g + 1) * G < K ? (g + 1) * G : K;
      float s = 0;
      for (size_t k = g * G; k < k1; ++k) s += xr[k];
      xsum[m * ng + g] = s;
    }
    for (size_t k = 0; k < K; ++k) xr[k] *= inv[k % U];
  }
  return QActs{xs, xsum, M, K, ng};
}

Status qgemm(const QMatrix& w, const void* x, DType xType, size_t M, const float* bias, float* y, float* scratch, Isa isa) {
  const Status v = qgemmValidate(w);
  if (v != Status::kOk) return v;
  if (xType != DType::kF32 && xType != DType::kF16 && xType != DType::kBF16) return Status::kDtype;
  const QGemmKernels* kt = qgemmKernelsFor(isa);
  if (!kt) return Status::kBackend;
  if (M == 0) return Status::kOk;
  const size_t K = size_t(w.fmt.K), N = size_t(w.fmt.N);
  const QActs a = qgemmPrepare(w, x, xType, K, M, scratch);
  const size_t tasks = (N + kQGemmColsPerTask - 1) / kQGemmColsPerTask;
  threadPool().parallelFor(tasks, [&](size_t t) {
    const size_t n0 = t * kQGemmColsPerTask, n1 = n0 + kQGemmColsPerTask < N ? n0 + kQGemmColsPerTask : N;
    kt->columns(w, a, n0, n1, y, N);
    if (bias)
      for (size_t m = 0; m < M; ++m)
        for (size_t n = n0; n < n1; ++n) y[m * N + n] += bias[n];
  });
  return Status::kOk;
}


// ---- Grouped MoE MLP ----------------------------------------------------------------------
namespace {

// Scratch layout of moeMlp, computed identically for sizing and for the run. Pairs are
// grouped by MLP (stable: pair order kept inside an MLP), so MLP e owns rows
// [off[e], off[e] + cnt[e]) of the gathered activations Xg, of its gate/up outputs and of D.
struct MoeLayout {
  size_t ints = 0, floats = 0;
  // int offsets
  size_t cnt = 0, off = 0, pos = 0, tasksA = 0, tasksB = 0;
  // float offsets
  size_t xg = 0, d = 0;
  size_t total = 0;
};

inline size_t prepFloats(const MlpProj& p, size_t m) { return p.q ? qgemmScratchFloats(p.q->fmt, m) : 0; }

constexpr size_t kDenseColsPerTask = 64;  // a multiple of the dense tile width (4)
constexpr size_t kAccumCols = 256;        // columns per task of the final accumulation

}  // namespace

// perE (when given; 5 per MLP) receives the float offsets of [gate out, up out, gate prep,
// up prep, down prep]. The scratch starts with perE (as 64-bit slots), then the int arrays,
// then the 64-byte aligned float buffers. No allocation: counts are recounted per MLP.
static MoeLayout moeLayout(const MlpDesc* mlps, size_t E, const int32_t* mlp, size_t P, size_t H, uint64_t* perE) {
  MoeLayout L;
  const size_t head = E * 5 * 2;  // perE in float-sized slots
  L.cnt = head;
  L.off = L.cnt + E;
  L.pos = L.off + E + 1;
  L.tasksA = L.pos + P;
  L.tasksB = L.tasksA + E + 1;
  L.ints = L.tasksB + E + 1;
  size_t f = (L.ints + 15) / 16 * 16;
  L.xg = f;
  f += P * H;
  L.d = f;
  f += P * H;
  for (size_t e = 0; e < E; ++e) {
    size_t m = 0;
    for (size_t i = 0; i < P; ++i) m += size_t(mlp[i]) == e;
    const size_t I = mlps[e].gate.N;
    const size_t sizes[5] = {m * I, m * I, prepFloats(mlps[e].gate, m), prepFloats(mlps[e].up, m), prepFloats(mlps[e].down, m)};
    for (int j = 0; j < 5; ++j) {
      if (perE) perE[e * 5 + j] = f;
      f += m ? (sizes[j] + 15) / 16 * 16 : 0;
    }
  }
  L.total = f;
  return L;
}

size_t moeScratchFloats(const MlpDesc* mlps, size_t E, const int32_t* mlp, size_t P, size_t H) {
  return moeLayout(mlps, E, mlp, P, H, nullptr).total;
}

static void denseColumns(const GemmKernels& gk, const float* x, size_t M, const MlpProj& p, size_t n0, size_t n1, float* y, size_t ldy) {
  const size_t K = p.K, es = dtypeSize(p.denseType);
  const GemmTileFn tile = p.denseType == DType::kF32 ? gk.tileF32 : p.denseType == DType::kF16 ? gk.tileF16 : gk.tileBf16;
  const auto* wb = static_cast<const uint8_t*>(p.dense);
  // The same tiles as gemm() (linear()), so a dense MLP here matches linear() bit for bit.
  for (size_t m0 = 0; m0 < M; m0 += 4) {
    const size_t mr = M - m0 < 4 ? M - m0 : 4;
    for (size_t j = n0; j < n1; j += 4) {
      const size_t nr = n1 - j < 4 ? n1 - j : 4;
      tile(x + m0 * K, K, mr, wb + j * K * es, K, nr, K, y + m0 * ldy + j, ldy);
    }
  }
}

static size_t colsPerTask(const MlpProj& p) { return p.q ? kQGemmColsPerTask : kDenseColsPerTask; }

// Output columns [n0, n1) of projection p over m rows: prepared acts (quantized) or raw x (dense).
static void projColumns(const QGemmKernels& qk, const GemmKernels& gk, const MlpProj& p, const float* x, size_t m, float* prep,
                        size_t n0, size_t n1, float* y) {
  if (p.q) {
    const QuantFormat& f = p.q->fmt;
    const QActs a{prep, prep + m * size_t(f.K), m, size_t(f.K), size_t(qGroupCount(f))};
    qk.columns(*p.q, a, n0, n1, y, p.N);
  } else {
    denseColumns(gk, x, m, p, n0, n1, y, p.N);
  }
}

Status moeMlp(const float* x, size_t M, size_t H, const MlpDesc* mlps, size_t E, const int32_t* mlp, const int32_t* row,
              const float* weight, size_t P, float* out, float* scratch, size_t scratchFloats, Isa isa) {
  const QGemmKernels* qk = qgemmKernelsFor(isa);
  const GemmKernels* gk = gemmKernelsFor(isa);
  if (!qk || !gk) return Status::kBackend;
  for (size_t e = 0; e < E; ++e) {
    const MlpDesc& d = mlps[e];
    const MlpProj* ps[3] = {&d.gate, &d.up, &d.down};
    for (const MlpProj* p : ps) {
      if (p->q) {
        const Status v = qgemmValidate(*p->q);
        if (v != Status::kOk) return v;
        if (size_t(p->q->fmt.N) != p->N || size_t(p->q->fmt.K) != p->K) return Status::kShape;
      } else if (!p->dense || (p->denseType != DType::kF32 && p->denseType != DType::kF16 && p->denseType != DType::kBF16)) {
        return Status::kDtype;
      }
    }
    if (d.gate.K != H || d.up.K != H || d.down.N != H || d.gate.N != d.up.N || d.down.K != d.gate.N) return Status::kShape;
  }
  for (size_t i = 0; i < P; ++i)
    if (mlp[i] < 0 || size_t(mlp[i]) >= E || row[i] < 0 || size_t(row[i]) >= M) return Status::kRange;
  if (P > size_t(INT32_MAX) / 2) return Status::kRange;
  if (scratchFloats < moeLayout(mlps, E, mlp, P, H, nullptr).total) return Status::kShape;
  if (reinterpret_cast<uintptr_t>(scratch) % 8 != 0) return Status::kRange;  // perE holds 64-bit slots
  uint64_t* perE = reinterpret_cast<uint64_t*>(scratch);
  const MoeLayout L = moeLayout(mlps, E, mlp, P, H, perE);
  int32_t* ints = reinterpret_cast<int32_t*>(scratch);
  int32_t* cnt = ints + L.cnt;
  int32_t* off = ints + L.off;
  int32_t* pos = ints + L.pos;
  int32_t* tA = ints + L.tasksA;  // prefix sums of gate+up tasks per MLP
  int32_t* tB = ints + L.tasksB;  // prefix sums of down tasks per MLP
  for (size_t e = 0; e < E; ++e) cnt[e] = 0;
  for (size_t i = 0; i < P; ++i) ++cnt[mlp[i]];
  off[0] = 0;
  for (size_t e = 0; e < E; ++e) off[e + 1] = off[e] + cnt[e];
  for (size_t e = 0; e < E; ++e) cnt[e] = 0;
  for (size_t i = 0; i < P; ++i) pos[i] = off[mlp[i]] + cnt[mlp[i]]++;
  tA[0] = tB[0] = 0;
  for (size_t e = 0; e < E; ++e) {
    const MlpDesc& d = mlps[e];
    const size_t a = cnt[e] ? (d.gate.N + colsPerTask(d.gate) - 1) / colsPerTask(d.gate) + (d.up.N + colsPerTask(d.up) - 1) / colsPerTask(d.up) : 0;
    const size_t b = cnt[e] ? (H + colsPerTask(d.down) - 1) / colsPerTask(d.down) : 0;
    tA[e + 1] = tA[e] + int32_t(a);
    tB[e + 1] = tB[e] + int32_t(b);
  }
  float* xg = scratch + L.xg;
  float* dOut = scratch + L.d;
  ThreadPool& pool = threadPool();
  auto ownerOf = [&](const int32_t* pre, size_t t) {
    size_t e = 0;
    while (size_t(pre[e + 1]) <= t) ++e;
    return e;
  };

  // Phase 1: gather each pair's x row into its MLP's slot, then prepare gate/up activations.
  pool.parallelFor(P, [&](size_t i) { std::memcpy(xg + size_t(pos[i]) * H, x + size_t(row[i]) * H, H * sizeof(float)); });
  pool.parallelFor(2 * E, [&](size_t t) {
    const size_t e = t / 2;
    const MlpProj& p = t % 2 ? mlps[e].up : mlps[e].gate;
    if (cnt[e] && p.q) qgemmPrepare(*p.q, xg + size_t(off[e]) * H, DType::kF32, H, size_t(cnt[e]), scratch + perE[e * 5 + 2 + t % 2]);
  });
  // Phase 2: every gate and up column block of every MLP in one parallel loop.
  pool.parallelFor(size_t(tA[E]), [&](size_t t) {
    const size_t e = ownerOf(tA, t);
    const MlpDesc& d = mlps[e];
    size_t local = t - size_t(tA[e]);
    const size_t gateTasks = (d.gate.N + colsPerTask(d.gate) - 1) / colsPerTask(d.gate);
    const bool isUp = local >= gateTasks;
    if (isUp) local -= gateTasks;
    const MlpProj& p = isUp ? d.up : d.gate;
    const size_t n0 = local * colsPerTask(p), n1 = n0 + colsPerTask(p) < p.N ? n0 + colsPerTask(p) : p.N;
    projColumns(*qk, *gk, p, xg + size_t(off[e]) * H, size_t(cnt[e]), scratch + perE[e * 5 + 2 + isUp], n0, n1, scratch + perE[e * 5 + isUp]);
  });
  // Phase 3: h = silu(gate) ⊙ up (in the gate buffer), then the down projection's activations.
  pool.parallelFor(E, [&](size_t e) {
    if (!cnt[e]) return;
    const MlpDesc& d = mlps[e];
    float* g = scratch + perE[e * 5];
    const float* u = scratch + perE[e * 5 + 1];
    const size_t n = size_t(cnt[e]) * d.gate.N;
    for (size_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    if (d.down.q) qgemmPrepare(*d.down.q, g, DType::kF32, d.down.K, size_t(cnt[e]), scratch + perE[e * 5 + 4]);
  });
  // Phase 4: every down column block.
  pool.parallelFor(size_t(tB[E]), [&](size_t t) {
    const size_t e = ownerOf(tB, t);
    const MlpProj& p = mlps[e].down;
    const size_t n0 = (t - size_t(tB[e])) * colsPerTask(p), n1 = n0 + colsPerTask(p) < H ? n0 + colsPerTask(p) : H;
    // D rows of MLP e start at off[e]; its rows are H apart, as projColumns writes with ld = N = H.
    projColumns(*qk, *gk, p, scratch + perE[e * 5], size_t(cnt[e]), scratch + perE[e * 5 + 4], n0, n1, dOut + size_t(off[e]) * H);
  });
  // Phase 5: out = Σ_i weight[i] · D[pos[i]], pairs in the order given, per column block.
  pool.parallelFor((H + kAccumCols - 1) / kAccumCols, [&](size_t t) {
    const size_t c0 = t * kAccumCols, c1 = c0 + kAccumCols < H ? c0 + kAccumCols : H;
    for (size_t r = 0; r < M; ++r)
      for (size_t c = c0; c < c1; ++c) out[r * H + c] = 0;
    for (size_t i = 0; i < P; ++i) qk->fmaRow(weight[i], dOut + size_t(pos[i]) * H + c0, out + size_t(row[i]) * H + c0, c1 - c0);
  });
  return Status::kOk;
}

}  // namespace kvant
