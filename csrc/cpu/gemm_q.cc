// Fused dequant GEMV/GEMM: the scalar reference, activation preparation, dispatch and
// threading, and the grouped MoE MLP. The math is spelled out in gemm_q.h.
#include "gemm_q.h"

#include <atomic>
#include <cfloat>
#include <cmath>
#include <climits>
#include <cstdint>
#include <cstring>
#include <new>

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

// The combined term of group g for output (m, n): kF32: A − z·X; kInt8: Σ_b (I_b − z·Q_b)·d_b.
float term(const QMatrix& w, const QActs& a, size_t m, size_t g, size_t n) {
  const int bits = w.fmt.bits;
  const size_t N = size_t(w.fmt.N), K = a.K, G = size_t(qEffectiveGroup(w.fmt)), U = size_t(qUnitCodes(bits));
  const size_t k1 = (g + 1) * G < K ? (g + 1) * G : K;
  const float* xs = a.xs + m * K;
  const float z = zeroOf(w, g, n);
  if (a.act == QAct::kInt8) {
    float A = 0;
    for (size_t b = 0, kb = g * G; kb < k1; ++b, kb += kQ8Block) {
      const size_t kb1 = kb + kQ8Block < k1 ? kb + kQ8Block : k1;
      int32_t I = 0;
      for (size_t k = kb; k < kb1; ++k) I += int32_t(xs[k]) * int32_t(packedCode(w.qweight + n, N, k, bits));
      const size_t bi = m * a.nbt + g * a.bpg + b;
      A = std::fma(std::fma(-z, a.qsum[bi], float(I)), a.dx[bi], A);  // the inner fma is exact
    }
    return A;
  }
  float acc = 0;
  for (size_t k = g * G; k < k1; ++k) {
    const uint32_t c = packedCode(w.qweight + n, N, k, bits) << qInPlaceShift(bits, int(k % U));
    acc = std::fma(xs[k], float(c), acc);
  }
  return std::fma(-z, a.xsum[m * a.ng + g], acc);
}

// The reference: the exact operation sequence of gemm_q.h with std::fma, one output at a time.
void columns(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy) {
  const size_t N = size_t(w.fmt.N);
  for (size_t n = n0; n < n1; ++n)
    for (size_t m = 0; m < a.M; ++m) {
      float acc_y = 0;
      for (size_t g = 0; g < a.ng; ++g) acc_y = std::fma(f16ToF32(w.scales[g * N + n]), term(w, a, m, g, n), acc_y);
      y[m * ldy + n] = acc_y;
    }
}

void groupTerms(const QMatrix& w, const QActs& a, size_t g, size_t n0, size_t n1, float* T) {
  const size_t N = size_t(w.fmt.N);
  for (size_t m = 0; m < a.M; ++m)
    for (size_t n = n0; n < n1; ++n) T[(m * a.ng + g) * N + n] = term(w, a, m, g, n);
}

void groupCombine(const QMatrix& w, const float* T, size_t M, size_t n0, size_t n1, float* y, size_t ldy) {
  const size_t N = size_t(w.fmt.N), ng = size_t(qGroupCount(w.fmt));
  for (size_t m = 0; m < M; ++m)
    for (size_t n = n0; n < n1; ++n) {
      float acc_y = 0;
      for (size_t g = 0; g < ng; ++g) acc_y = std::fma(f16ToF32(w.scales[g * N + n]), T[(m * ng + g) * N + n], acc_y);
      y[m * ldy + n] = acc_y;
    }
}

void fmaRow(float a, const float* x, float* y, size_t n) {
  for (size_t i = 0; i < n; ++i) y[i] = std::fma(a, x[i], y[i]);
}

}  // namespace
const QGemmKernels kQGemmKernels = {columns, fmaRow, groupTerms, groupCombine};
}  // namespace scalar

const QGemmKernels* qgemmKernelsFor(Isa isa) {
  if (int(isa) < 0) isa = isaChoice().isa;
#if defined(__x86_64__) || defined(_M_X64)
  return tableForIsa<QGemmKernels>(isa, scalar::kQGemmKernels, &avx2::kQGemmKernels,
                                   avx512VnniUsable() ? &avx512::kQGemmKernelsVnni : &avx512::kQGemmKernels);
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

namespace {
inline size_t up16(size_t n) { return (n + 15) / 16 * 16; }
inline size_t blocksPerGroup(const QuantFormat& f) { return (size_t(qEffectiveGroup(f)) + kQ8Block - 1) / kQ8Block; }

inline bool useSplitK(const QuantFormat& f, size_t M) { return M >= 1 && M <= kQSplitMaxM && size_t(qGroupCount(f)) >= kQSplitMinGroups; }

inline size_t packedRows(size_t M) { return M > kQSplitMaxM ? (M + kQGemmTileRows - 1) / kQGemmTileRows * kQGemmTileRows : 0; }

size_t qgemmActsFloats(const QuantFormat& f, size_t M, QAct act) {
  const size_t K = size_t(f.K), ng = size_t(qGroupCount(f));
  const size_t packed = up16(packedRows(M) * K);  // the GEMM's tile-packed copy (0 for decode)
  if (qActFor(f.bits, act) == QAct::kInt8)
    return up16(M * K) + up16((M * K + 3) / 4) + 2 * up16(M * ng * blocksPerGroup(f)) + packed + up16((packedRows(M) * K + 3) / 4);
  return up16(M * K) + up16(M * ng) + packed;
}
}  // namespace

size_t qgemmScratchFloats(const QuantFormat& f, size_t M, QAct act) {
  // Split-K: the group terms T, then one completion counter per column block (qgemm).
  return qgemmActsFloats(f, M, act) + (useSplitK(f, M) ? M * size_t(qGroupCount(f)) * size_t(f.N) + (size_t(f.N) + kQSplitCols - 1) / kQSplitCols : 0);
}

QActs qgemmActsView(const QuantFormat& f, size_t M, QAct act, float* scratch) {
  const size_t K = size_t(f.K), ng = size_t(qGroupCount(f));
  QActs a{};
  a.M = M;
  a.K = K;
  a.ng = ng;
  a.act = qActFor(f.bits, act);
  a.xs = scratch;
  if (a.act == QAct::kInt8) {
    a.bpg = blocksPerGroup(f);
    a.nbt = ng * a.bpg;
    float* p = scratch + up16(M * K);
    a.qx = reinterpret_cast<const int8_t*>(p);
    p += up16((M * K + 3) / 4);
    a.dx = p;
    a.qsum = p + up16(M * a.nbt);
    if (packedRows(M)) {
      a.xp = a.qsum + up16(M * a.nbt);
      a.xq = reinterpret_cast<const int8_t*>(a.xp + up16(packedRows(M) * K));
    }
  } else {
    a.xsum = scratch + up16(M * K);
    if (packedRows(M)) a.xp = a.xsum + up16(M * ng);
  }
  a.Mp = packedRows(M);
  return a;
}

namespace {
// clamp(nearbyint(v), −127, 127) in the default rounding mode (half to even), bit for bit,
// without the libm call: nearbyintf is an out-of-line call that saves and restores the FP
// environment (~20-25 cycles per element), which made the activation prepare the largest
// serial part of a decode call (measured: 27% of a 512x64 call, ~17 us for K = 2048 at one
// thread). For |v| < 2^22, (|v| + 1.5·2^23) − 1.5·2^23 is |v| rounded half to even: the sum
// has ulp 1, so the addition itself performs the rounding, and the subtraction is exact.
// copysign restores the sign nearbyint keeps (−0.3 -> −0). NaN stays NaN and ±Inf stays ±Inf
// (then clamped), as with nearbyint. This file is compiled for baseline x86-64 (no FMA), so
// the compiler cannot contract v's product into the addition; values above 2^22 (only
// reachable through an overflowing 127/max) are clamped like before, since the magic sum is
// then >= 2^22 as well.
inline float roundQ8(float v) {
  const float a = std::fabs(v);
  float r = a < 4194304.0f ? (a + 12582912.0f) - 12582912.0f : a;
  r = std::copysign(r, v);
  return r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
}
}  // namespace

namespace {
// qgemmPrepare for rows [m0, m1) and, for the GEMM's packed copies, row tiles [t0, t1) (each
// tile's rows must be prepared first). Every row and tile is independent of the others.
void prepareRange(const QMatrix& w, const void* x, DType xType, size_t ldx, const QActs& a, float* scratch, size_t m0, size_t m1,
                  size_t t0, size_t t1) {
  const size_t M = a.M, K = a.K, G = size_t(qEffectiveGroup(w.fmt)), ng = a.ng;
  const int bits = w.fmt.bits;
  const size_t U = size_t(qUnitCodes(bits));
  float* xs = scratch;
  for (size_t m = m0; m < m1; ++m) {
    float* xr = xs + m * K;
    // One loop per source type (the type test used to sit inside the per-element loop).
    const int32_t* perm = w.perm;
    if (xType == DType::kF32) {
      const float* xm = static_cast<const float*>(x) + m * ldx;
      if (perm) for (size_t k = 0; k < K; ++k) xr[k] = xm[perm[k]];
      else std::memcpy(xr, xm, K * sizeof(float));
    } else {
      const uint16_t* xm = static_cast<const uint16_t*>(x) + m * ldx;
      const bool f16 = xType == DType::kF16;
      for (size_t k = 0; k < K; ++k) {
        const uint16_t h = xm[perm ? size_t(perm[k]) : k];
        xr[k] = f16 ? f16ToF32(h) : bf16ToF32(h);
      }
    }
    if (a.act == QAct::kInt8) {
      int8_t* qx = const_cast<int8_t*>(a.qx) + m * K;
      float* dx = const_cast<float*>(a.dx) + m * a.nbt;
      float* qs = const_cast<float*>(a.qsum) + m * a.nbt;
      // Byte position of each code of a packing unit in the unit's word-order activations:
      // 2/4/8 bits, code jj = (8/bits)·i + j (byte i after the shift by bits·j) goes to 4j + i;
      // 3 bits, the quads of kQ3Quads (gemm_q.h). A table, so the loop has no divisions.
      uint8_t ord[32];
      if (bits == 3) {
        for (int j = 0; j < 8; ++j)
          for (int p = 0; p < 4; ++p) ord[kQ3Quads[j][p]] = uint8_t(4 * j + p);
      } else {
        const size_t perByte = size_t(8 / bits);  // codes per byte of a packed word
        for (size_t jj = 0; jj < U; ++jj) ord[jj] = uint8_t(((jj % perByte) << 2) + jj / perByte);
      }
      for (size_t g = 0; g < ng; ++g) {
        const size_t k1 = (g + 1) * G < K ? (g + 1) * G : K;
        for (size_t b = 0, kb = g * G; kb < k1; ++b, kb += kQ8Block) {
          const size_t kb1 = kb + kQ8Block < k1 ? kb + kQ8Block : k1;
          float mx = 0;
          bool finite = true;
          for (size_t k = kb; k < kb1; ++k) {
            const float ax = std::fabs(xr[k]);
            finite = finite & (ax <= FLT_MAX);  // false for NaN and ±Inf
            mx = ax > mx ? ax : mx;             // = fmax(mx, ax): NaN is skipped the same way
          }
          // Non-finite input: d = NaN poisons exactly the outputs this block feeds, like kF32.
          const float d = finite ? mx / 127.0f : NAN, inv = finite && mx > 0 ? 127.0f / mx : 0.0f;
          int32_t sum = 0;
          for (size_t k = kb; k < kb1; ++k) {
            const float q = roundQ8(xr[k] * inv);
            xr[k] = q;
            sum += int32_t(q);
            const size_t jj = k & (U - 1);  // U is a power of two (4, 16, 32)
            qx[(k - jj) + ord[jj]] = int8_t(q);
          }
          dx[g * a.bpg + b] = d;
          qs[g * a.bpg + b] = float(sum);
        }
        for (size_t b = (k1 - g * G + kQ8Block - 1) / kQ8Block; b < a.bpg; ++b) dx[g * a.bpg + b] = qs[g * a.bpg + b] = 0;
      }
    } else {
      float* xsum = const_cast<float*>(a.xsum);
      for (size_t g = 0; g < ng; ++g) {
        const size_t k1 = (g + 1) * G < K ? (g + 1) * G : K;
        float s = 0;
        for (size_t k = g * G; k < k1; ++k) s += xr[k];
        xsum[m * ng + g] = s;
      }
      // 2^−e for each position inside a packing unit (exact powers of two).
      float inv[32];
      for (size_t j = 0; j < U; ++j) inv[j] = std::ldexp(1.0f, -qInPlaceShift(bits, int(j)));
      for (size_t k = 0; k < K; ++k) xr[k] *= inv[k & (U - 1)];  // U is a power of two (4, 8, 16, 32)
    }
  }
  if (a.xp) {
    // The GEMM's copy (layout in gemm_q.h): per group, per 6-row tile, k-major, so the
    // micro-kernel's broadcasts walk one contiguous run and a group's slice of all rows is one
    // contiguous block (row-major rows K·4 bytes apart would map a group's slice onto a few L1
    // and L2 sets). Padding rows are 0 (computed, never stored).
    constexpr size_t R = kQGemmTileRows;
    float* xp = const_cast<float*>(a.xp);
    for (size_t g = 0; g < ng; ++g) {
      const size_t k0 = g * G, k1 = (g + 1) * G < K ? (g + 1) * G : K, kn = k1 - k0;
      for (size_t t = t0; t < t1; ++t) {
        float* dst = xp + k0 * a.Mp + t * kn * R;
        for (size_t i = 0; i < R; ++i) {
          const size_t m = t * R + i;
          if (m < M) {
            const float* src = xs + m * K + k0;
            for (size_t k = 0; k < kn; ++k) dst[k * R + i] = src[k];
          } else {
            for (size_t k = 0; k < kn; ++k) dst[k * R + i] = 0.0f;
          }
        }
        if (a.xq) {  // the word-order int8 activations, 4-byte quads (kn is a multiple of 4)
          int8_t* dq = const_cast<int8_t*>(a.xq) + k0 * a.Mp + t * kn * R;
          for (size_t i = 0; i < R; ++i) {
            const size_t m = t * R + i;
            for (size_t r = 0; r < kn / 4; ++r) {
              if (m < M) std::memcpy(dq + r * 4 * R + 4 * i, a.qx + m * K + k0 + 4 * r, 4);
              else std::memset(dq + r * 4 * R + 4 * i, 0, 4);
            }
          }
        }
      }
    }
  }
}
}  // namespace

QActs qgemmPrepare(const QMatrix& w, const void* x, DType xType, size_t ldx, size_t M, float* scratch, QAct act) {
  const QActs a = qgemmActsView(w.fmt, M, act, scratch);
  prepareRange(w, x, xType, ldx, a, scratch, 0, M, 0, a.Mp / kQGemmTileRows);
  return a;
}

Status qgemmTyped(const QMatrix& w, const void* x, DType xType, size_t M, const float* bias, void* yOut, DType yType, float* scratch,
                  Isa isa, QAct act) {
  const Status v = qgemmValidate(w);
  if (v != Status::kOk) return v;
  if (xType != DType::kF32 && xType != DType::kF16 && xType != DType::kBF16) return Status::kDtype;
  const QGemmKernels* kt = qgemmKernelsFor(isa);
  if (!kt) return Status::kBackend;
  if (yType != DType::kF32 && yType != DType::kF16 && yType != DType::kBF16) return Status::kDtype;
  if (M == 0) return Status::kOk;
  const size_t K = size_t(w.fmt.K), N = size_t(w.fmt.N);
  // f16/bf16 y: the kernels form the f32 result after qgemmScratchFloats (M·N floats), and the
  // task that finishes a column range adds the bias and converts it once (round to nearest
  // even). The f32 math, and so every bit before the final rounding, is that of an f32 y.
  float* y = yType == DType::kF32 ? static_cast<float*>(yOut) : scratch + qgemmScratchFloats(w.fmt, M, act);
  auto finish = [&](size_t n0, size_t n1) {
    if (bias)
      for (size_t m = 0; m < M; ++m)
        for (size_t n = n0; n < n1; ++n) y[m * N + n] += bias[n];
    if (yType == DType::kF32) return;
    auto* o = static_cast<uint16_t*>(yOut);
    for (size_t m = 0; m < M; ++m)
      for (size_t n = n0; n < n1; ++n) o[m * N + n] = yType == DType::kF16 ? f32ToF16(y[m * N + n]) : f32ToBf16(y[m * N + n]);
  };
  // Prefill (M > kQSplitMaxM): the activation prepare runs on the pool, 8 row tiles (48 rows)
  // per task (serial, it took ~3-7% of a 512-row call at 2 threads). Rows and tiles are
  // prepared independently, so the scratch holds the same bytes either way.
  QActs a;
  if (M > kQSplitMaxM) {
    a = qgemmActsView(w.fmt, M, act, scratch);
    constexpr size_t kTilesPerTask = 8, R = kQGemmTileRows;
    const size_t tiles = a.Mp / R;
    threadPool().parallelFor((tiles + kTilesPerTask - 1) / kTilesPerTask, [&](size_t c) {
      const size_t t0 = c * kTilesPerTask, t1 = t0 + kTilesPerTask < tiles ? t0 + kTilesPerTask : tiles;
      prepareRange(w, x, xType, K, a, scratch, t0 * R, t1 * R < M ? t1 * R : M, t0, t1);
    });
  } else {
    a = qgemmPrepare(w, x, xType, K, M, scratch, act);
  }
  const size_t cpt = kQGemmColsPerTask;
  const size_t tasks = (N + cpt - 1) / cpt;
  if (useSplitK(w.fmt, M)) {
    // One parallel phase: group × column-block tasks write the group terms, and the task that
    // completes a column block's last group (an atomic count per block) combines that block,
    // groups ascending. Who combines varies, what is computed does not (the same chain per
    // output). One pool wake-up per call instead of two: on a small matrix (kv_a, 2048x576)
    // the second wake-up cost about as much as the work.
    float* T = scratch + qgemmActsFloats(w.fmt, M, act);
    const size_t colBlocks = (N + kQSplitCols - 1) / kQSplitCols;
    auto* left = reinterpret_cast<std::atomic<uint32_t>*>(T + M * a.ng * N);
    static_assert(sizeof(std::atomic<uint32_t>) == sizeof(float) && alignof(std::atomic<uint32_t>) <= alignof(float), "counter slots");
    for (size_t cb = 0; cb < colBlocks; ++cb) new (&left[cb]) std::atomic<uint32_t>(uint32_t(a.ng));
    const bool blockMajor = qSplitBlockMajor(w.fmt.bits, a.act, M, a.ng, N);
    threadPool().parallelFor(a.ng * colBlocks, [&](size_t t) {
      const size_t g = blockMajor ? t % a.ng : t / colBlocks, cb = blockMajor ? t / a.ng : t % colBlocks;
      const size_t n0 = cb * kQSplitCols, n1 = n0 + kQSplitCols < N ? n0 + kQSplitCols : N;
      kt->groupTerms(w, a, g, n0, n1, T);
      // acq_rel: each task releases its T writes; the last one acquires all of them.
      if (left[cb].fetch_sub(1, std::memory_order_acq_rel) != 1) return;
      kt->groupCombine(w, T, M, n0, n1, y, N);
      finish(n0, n1);
    });
    return Status::kOk;
  }
  threadPool().parallelFor(tasks, [&](size_t t) {
    const size_t n0 = t * cpt, n1 = n0 + cpt < N ? n0 + cpt : N;
    kt->columns(w, a, n0, n1, y, N);
    finish(n0, n1);
  });
  return Status::kOk;
}

Status qgemm(const QMatrix& w, const void* x, DType xType, size_t M, const float* bias, float* y, float* scratch, Isa isa,
             QAct act) {
  return qgemmTyped(w, x, xType, M, bias, y, DType::kF32, scratch, isa, act);
}


// ---- Grouped MoE MLP ----------------------------------------------------------------------
namespace {

// Scratch layout of moeMlp, computed identically for sizing and for the run. Pairs are
// grouped by MLP (stable: pair order kept inside an MLP), so MLP e owns rows
// [off[e], off[e] + cnt[e]) of the gathered activations Xg, of its gate/up outputs and of D.
struct MoeLayout {
  size_t ints = 0, floats = 0;
  // int offsets
  size_t cnt = 0, off = 0, pos = 0, tasks = 0;  // tasks: 4 prefix arrays of E + 1
  // float offsets
  size_t xg = 0, d = 0;
  size_t total = 0;
};

// Prepared activations, plus the split-K group terms when that path applies (qgemmScratchFloats).
inline size_t prepFloats(const MlpProj& p, size_t m, QAct act) { return p.q ? qgemmScratchFloats(p.q->fmt, m, act) : 0; }

constexpr size_t kDenseColsPerTask = 64;  // a multiple of the dense tile width (4)
constexpr size_t kAccumCols = 256;        // columns per task of the final accumulation

}  // namespace

// perE (when given; 5 per MLP) receives the float offsets of [gate out, up out, gate prep,
// up prep, down prep]. The scratch starts with perE (as 64-bit slots), then the int arrays,
// then the 64-byte aligned float buffers. No allocation: counts are recounted per MLP.
static MoeLayout moeLayout(const MlpDesc* mlps, size_t E, const int32_t* mlp, size_t P, size_t H, QAct act, uint64_t* perE) {
  MoeLayout L;
  const size_t head = E * 5 * 2;  // perE in float-sized slots
  L.cnt = head;
  L.off = L.cnt + E;
  L.pos = L.off + E + 1;
  L.tasks = L.pos + P;
  L.ints = L.tasks + 4 * (E + 1);
  size_t f = (L.ints + 15) / 16 * 16;
  L.xg = f;
  f += P * H;
  L.d = f;
  f += P * H;
  for (size_t e = 0; e < E; ++e) {
    size_t m = 0;
    for (size_t i = 0; i < P; ++i) m += size_t(mlp[i]) == e;
    const size_t I = mlps[e].gate.N;
    const size_t sizes[5] = {m * I, m * I, prepFloats(mlps[e].gate, m, act), prepFloats(mlps[e].up, m, act), prepFloats(mlps[e].down, m, act)};
    for (int j = 0; j < 5; ++j) {
      if (perE) perE[e * 5 + j] = f;
      f += m ? (sizes[j] + 15) / 16 * 16 : 0;
    }
  }
  L.total = f;
  return L;
}

size_t moeScratchFloats(const MlpDesc* mlps, size_t E, const int32_t* mlp, size_t P, size_t H, QAct act) {
  return moeLayout(mlps, E, mlp, P, H, act, nullptr).total;
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
                        size_t n0, size_t n1, float* y, QAct act) {
  if (p.q) {
    const QActs a = qgemmActsView(p.q->fmt, m, act, prep);
    qk.columns(*p.q, a, n0, n1, y, p.N);
  } else {
    denseColumns(gk, x, m, p, n0, n1, y, p.N);
  }
}

Status moeMlp(const float* x, size_t M, size_t H, const MlpDesc* mlps, size_t E, const int32_t* mlp, const int32_t* row,
              const float* weight, size_t P, float* out, float* scratch, size_t scratchFloats, Isa isa, QAct act) {
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
  if (scratchFloats < moeLayout(mlps, E, mlp, P, H, act, nullptr).total) return Status::kShape;
  if (reinterpret_cast<uintptr_t>(scratch) % 8 != 0) return Status::kRange;  // perE holds 64-bit slots
  uint64_t* perE = reinterpret_cast<uint64_t*>(scratch);
  const MoeLayout L = moeLayout(mlps, E, mlp, P, H, act, perE);
  int32_t* ints = reinterpret_cast<int32_t*>(scratch);
  int32_t* cnt = ints + L.cnt;
  int32_t* off = ints + L.off;
  int32_t* pos = ints + L.pos;
  // Task counts per MLP, as prefix sums: [0] gate+up step 1, [1] gate+up combine (split-K),
  // [2] down step 1, [3] down combine. Step 1 is split-K group terms (decode, >= 4 groups) or
  // whole column blocks (prefill, dense weights, few groups).
  int32_t* pre[4];
  for (int j = 0; j < 4; ++j) pre[j] = ints + L.tasks + size_t(j) * (E + 1);
  for (size_t e = 0; e < E; ++e) cnt[e] = 0;
  for (size_t i = 0; i < P; ++i) ++cnt[mlp[i]];
  off[0] = 0;
  for (size_t e = 0; e < E; ++e) off[e + 1] = off[e] + cnt[e];
  for (size_t e = 0; e < E; ++e) cnt[e] = 0;
  for (size_t i = 0; i < P; ++i) pos[i] = off[mlp[i]] + cnt[mlp[i]]++;
  auto split = [&](const MlpProj& p, size_t m) { return p.q && useSplitK(p.q->fmt, m); };
  auto step1 = [&](const MlpProj& p, size_t m) -> size_t {
    if (!m) return 0;
    if (split(p, m)) return size_t(qGroupCount(p.q->fmt)) * ((p.N + kQSplitCols - 1) / kQSplitCols);
    return (p.N + colsPerTask(p) - 1) / colsPerTask(p);
  };
  auto step2 = [&](const MlpProj& p, size_t m) -> size_t { return split(p, m) ? (p.N + kQGemmColsPerTask - 1) / kQGemmColsPerTask : 0; };
  for (int j = 0; j < 4; ++j) pre[j][0] = 0;
  for (size_t e = 0; e < E; ++e) {
    const MlpDesc& d = mlps[e];
    const size_t m = size_t(cnt[e]);
    pre[0][e + 1] = pre[0][e] + int32_t(step1(d.gate, m) + step1(d.up, m));
    pre[1][e + 1] = pre[1][e] + int32_t(step2(d.gate, m) + step2(d.up, m));
    pre[2][e + 1] = pre[2][e] + int32_t(step1(d.down, m));
    pre[3][e + 1] = pre[3][e] + int32_t(step2(d.down, m));
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
    if (cnt[e] && p.q) qgemmPrepare(*p.q, xg + size_t(off[e]) * H, DType::kF32, H, size_t(cnt[e]), scratch + perE[e * 5 + 2 + t % 2], act);
  });
  // Step 1 / step 2 of one projection: local task index within that projection.
  auto runStep1 = [&](const MlpProj& p, size_t m, const float* xin, float* prep, float* yout, size_t local) {
    if (split(p, m)) {
      const size_t colBlocks = (p.N + kQSplitCols - 1) / kQSplitCols, g = local / colBlocks, n0 = (local % colBlocks) * kQSplitCols;
      const QActs a = qgemmActsView(p.q->fmt, m, act, prep);
      qk->groupTerms(*p.q, a, g, n0, n0 + kQSplitCols < p.N ? n0 + kQSplitCols : p.N, prep + qgemmActsFloats(p.q->fmt, m, act));
      return;
    }
    const size_t n0 = local * colsPerTask(p), n1 = n0 + colsPerTask(p) < p.N ? n0 + colsPerTask(p) : p.N;
    projColumns(*qk, *gk, p, xin, m, prep, n0, n1, yout, act);
  };
  auto runStep2 = [&](const MlpProj& p, size_t m, float* prep, float* yout, size_t local) {
    const size_t n0 = local * kQGemmColsPerTask, n1 = n0 + kQGemmColsPerTask < p.N ? n0 + kQGemmColsPerTask : p.N;
    qk->groupCombine(*p.q, prep + qgemmActsFloats(p.q->fmt, m, act), m, n0, n1, yout, p.N);
  };
  // Phase 2: every gate and up task of every MLP in one parallel loop (then their combines).
  for (int stepIdx = 0; stepIdx < 2; ++stepIdx)
    pool.parallelFor(size_t(pre[stepIdx][E]), [&](size_t t) {
      const size_t e = ownerOf(pre[stepIdx], t), m = size_t(cnt[e]);
      const MlpDesc& d = mlps[e];
      size_t local = t - size_t(pre[stepIdx][e]);
      const size_t gateTasks = stepIdx == 0 ? step1(d.gate, m) : step2(d.gate, m);
      const bool isUp = local >= gateTasks;
      if (isUp) local -= gateTasks;
      const MlpProj& p = isUp ? d.up : d.gate;
      float* prep = scratch + perE[e * 5 + 2 + isUp];
      float* yout = scratch + perE[e * 5 + isUp];
      if (stepIdx == 0) runStep1(p, m, xg + size_t(off[e]) * H, prep, yout, local);
      else runStep2(p, m, prep, yout, local);
    });
  // Phase 3: h = silu(gate) ⊙ up (in the gate buffer), then the down projection's activations.
  pool.parallelFor(E, [&](size_t e) {
    if (!cnt[e]) return;
    const MlpDesc& d = mlps[e];
    float* g = scratch + perE[e * 5];
    const float* u = scratch + perE[e * 5 + 1];
    const size_t n = size_t(cnt[e]) * d.gate.N;
    for (size_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    if (d.down.q) qgemmPrepare(*d.down.q, g, DType::kF32, d.down.K, size_t(cnt[e]), scratch + perE[e * 5 + 4], act);
  });
  // Phase 4: every down task (then their combines). D rows of MLP e start at off[e], H apart.
  for (int stepIdx = 2; stepIdx < 4; ++stepIdx)
    pool.parallelFor(size_t(pre[stepIdx][E]), [&](size_t t) {
      const size_t e = ownerOf(pre[stepIdx], t), m = size_t(cnt[e]);
      const MlpProj& p = mlps[e].down;
      const size_t local = t - size_t(pre[stepIdx][e]);
      float* prep = scratch + perE[e * 5 + 4];
      if (stepIdx == 2) runStep1(p, m, scratch + perE[e * 5], prep, dOut + size_t(off[e]) * H, local);
      else runStep2(p, m, prep, dOut + size_t(off[e]) * H, local);
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
