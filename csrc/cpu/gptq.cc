#include "gptq.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>

#include "thread_pool.h"

namespace kvant {

namespace {

// One register tile of any size (mr <= MR, nr <= NR) in plain C++: the scalar level's tile and
// every level's edges. Sums over p in order, then one C += alpha * sum, like the vector tiles.
template <class T, int NR>
void tileGeneric(const T* A, int64_t rsA, int64_t csA, const T* B, int64_t ldb, int64_t kc, T alpha, T* C, int64_t ldc,
                 int64_t mr, int64_t nr) {
  T acc[kGptqMr][NR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    const T* b = B + p * ldb;
    for (int64_t i = 0; i < mr; ++i) {
      const T a = A[i * rsA + p * csA];
      for (int64_t j = 0; j < nr; ++j) acc[i][j] += a * b[j];
    }
  }
  for (int64_t i = 0; i < mr; ++i)
    for (int64_t j = 0; j < nr; ++j) C[i * ldc + j] += alpha * acc[i][j];
}

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

namespace scalar {
namespace {
void tileF32(const float* A, int64_t rsA, int64_t csA, const float* B, int64_t ldb, int64_t kc, float alpha, float* C, int64_t ldc) {
  tileGeneric<float, kGptqNrF32>(A, rsA, csA, B, ldb, kc, alpha, C, ldc, kGptqMr, kGptqNrF32);
}
void tileF64(const double* A, int64_t rsA, int64_t csA, const double* B, int64_t ldb, int64_t kc, double alpha, double* C, int64_t ldc) {
  tileGeneric<double, kGptqNrF64>(A, rsA, csA, B, ldb, kc, alpha, C, ldc, kGptqMr, kGptqNrF64);
}
void axpyNeg(float a, const float* x, float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] -= a * x[i];
}
}  // namespace
const GptqKernels kGptqKernels = {tileF32, tileF64, axpyNeg};
}  // namespace scalar

const GptqKernels* gptqKernelsFor(Isa isa) {
  if (int(isa) < 0) isa = isaChoice().isa;
#if defined(__x86_64__) || defined(_M_X64)
  return tableForIsa<GptqKernels>(isa, scalar::kGptqKernels, &avx2::kGptqKernels, &avx512::kGptqKernels);
#else
  return tableForIsa<GptqKernels>(isa, scalar::kGptqKernels, nullptr, nullptr);
#endif
}

template <class T>
void gptqGemm(const GptqKernels& kk, int64_t M, int64_t Nc, int64_t Kc, T alpha, const T* A, int64_t rsA, int64_t csA, const T* B,
              int64_t ldb, T* C, int64_t ldc, GemmMode mode) {
  // Blocks: 96 rows x 128 columns of C; k in blocks of 256. A 256 x 128 f32 slice of B is
  // 128 KB (f64: 256 KB), inside the 512 KB L2 of the machines measured, while the A rows of
  // a micro-tile (6 x 256) stay in L1.
  constexpr int64_t kRowsBlock = 480, kColsBlock = 128, kKBlock = 256;
  constexpr int64_t NR = sizeof(T) == 4 ? kGptqNrF32 : kGptqNrF64;
  if (M <= 0 || Nc <= 0 || Kc <= 0) return;
  const int64_t rb = (M + kRowsBlock - 1) / kRowsBlock, cb = (Nc + kColsBlock - 1) / kColsBlock;
  std::vector<std::pair<int64_t, int64_t>> tasks;
  tasks.reserve(size_t(rb * cb));
  for (int64_t r = 0; r < rb; ++r)
    for (int64_t c = 0; c < cb; ++c)
      if (mode != GemmMode::kLowerTiles || c * kColsBlock < (r + 1) * kRowsBlock) tasks.push_back({r, c});
  threadPool().parallelFor(tasks.size(), [&](size_t t) {
    const int64_t i0 = tasks[t].first * kRowsBlock, i1 = std::min(M, i0 + kRowsBlock);
    const int64_t j0 = tasks[t].second * kColsBlock, j1 = std::min(Nc, j0 + kColsBlock);
    // B's k-block is packed tile by tile ([tile][p][NR], contiguous): the rows of B are often
    // a whole matrix row apart (8-90 KB), so unpacked every p of a micro-tile would touch a new
    // page and thrash the TLB. Packing costs 1/16 of the tile work (16 row tiles reuse it).
    thread_local std::vector<T> pack;
    pack.resize(size_t(kKBlock * kColsBlock));
    for (int64_t p0 = 0; p0 < Kc; p0 += kKBlock) {
      const int64_t p1 = std::min(Kc, p0 + kKBlock);
      for (int64_t j = j0, tile = 0; j < j1; j += NR, ++tile) {
        const int64_t nr = std::min(NR, j1 - j);
        T* dst = pack.data() + tile * kKBlock * NR;
        for (int64_t p = p0; p < p1; ++p) {
          const T* src = B + p * ldb + j;
          T* d = dst + (p - p0) * NR;
          for (int64_t c = 0; c < nr; ++c) d[c] = src[c];
          for (int64_t c = nr; c < NR; ++c) d[c] = T(0);  // edge tiles run the full kernel
        }
      }
      for (int64_t i = i0; i < i1; i += kGptqMr) {
        const int64_t mr = std::min(kGptqMr, i1 - i);
        for (int64_t j = j0, tile = 0; j < j1; j += NR, ++tile) {
          const int64_t nr = std::min(NR, j1 - j);
          // B lower triangular: rows p < j of this column tile are zero.
          const int64_t ps = mode == GemmMode::kBLower ? std::max(p0, j) : p0;
          if (ps >= p1) continue;
          const T* a = A + i * rsA + ps * csA;
          const T* b = pack.data() + (tile * kKBlock + (ps - p0)) * NR;
          T* c = C + i * ldc + j;
          if (mr == kGptqMr && nr == NR) {
            if constexpr (sizeof(T) == 4) kk.tileF32(a, rsA, csA, b, NR, p1 - ps, alpha, c, ldc);
            else kk.tileF64(a, rsA, csA, b, NR, p1 - ps, alpha, c, ldc);
          } else {
            // Edge tile: zero-padded copies of its A rows and C block through the same vector
            // kernel (a scalar edge took ~15% of the time at K = 3072).
            const int64_t kc = p1 - ps;
            T abuf[kGptqMr * kKBlock], cbuf[kGptqMr * NR];
            for (int64_t r = 0; r < kGptqMr; ++r)
              for (int64_t p = 0; p < kc; ++p) abuf[r * kc + p] = r < mr ? a[r * rsA + p * csA] : T(0);
            for (int64_t r = 0; r < kGptqMr; ++r)
              for (int64_t q = 0; q < NR; ++q) cbuf[r * NR + q] = r < mr && q < nr ? c[r * ldc + q] : T(0);
            if constexpr (sizeof(T) == 4) kk.tileF32(abuf, kc, 1, b, NR, kc, alpha, cbuf, NR);
            else kk.tileF64(abuf, kc, 1, b, NR, kc, alpha, cbuf, NR);
            for (int64_t r = 0; r < mr; ++r)
              for (int64_t q = 0; q < nr; ++q) c[r * ldc + q] = cbuf[r * NR + q];
          }
        }
      }
    }
  });
}

template void gptqGemm<float>(const GptqKernels&, int64_t, int64_t, int64_t, float, const float*, int64_t, int64_t, const float*, int64_t,
                              float*, int64_t, GemmMode);
template void gptqGemm<double>(const GptqKernels&, int64_t, int64_t, int64_t, double, const double*, int64_t, int64_t, const double*,
                               int64_t, double*, int64_t, GemmMode);

Status hessianAdd(float* H, int64_t K, const float* X, int64_t T, double n, double b, float* scratch, int64_t* badIndex,
                  Isa isa) {
  const GptqKernels* kk = gptqKernelsFor(isa);
  if (!kk) return Status::kBackend;
  if (!(b > 0) || !(n >= 0)) return Status::kRange;
  for (int64_t i = 0; i < T * K; ++i)
    if (!std::isfinite(X[i])) {
      if (badIndex) *badIndex = i;
      return Status::kRange;
    }
  const float keep = float(n / (n + b)), alpha = float(2.0 / (n + b));
  threadPool().parallelFor(size_t((K + 63) / 64), [&](size_t t) {
    for (int64_t i = int64_t(t) * 64; i < std::min(K, int64_t(t + 1) * 64); ++i)
      for (int64_t j = 0; j < K; ++j) H[i * K + j] *= keep;
  });
  // X^T X: A = X^T (transposed once into scratch), B = X. Lower blocks only, then mirrored, so H
  // stays exactly symmetric.
  float* Xt = scratch;
  threadPool().parallelFor(size_t((K + 63) / 64), [&](size_t t) {
    const int64_t k0 = int64_t(t) * 64, k1 = std::min(K, k0 + 64);
    for (int64_t p = 0; p < T; ++p)
      for (int64_t k = k0; k < k1; ++k) Xt[k * T + p] = X[p * K + k];
  });
  gptqGemm<float>(*kk, K, K, T, alpha, Xt, T, 1, X, K, H, K, GemmMode::kLowerTiles);
  // Mirror in 64 x 64 tiles: a row-by-row copy would read the lower half down columns, one cache
  // line (and at K = 10944 one page) per element.
  threadPool().parallelFor(size_t((K + 63) / 64), [&](size_t t) {
    const int64_t i0 = int64_t(t) * 64, i1 = std::min(K, i0 + 64);
    for (int64_t j0 = i0; j0 < K; j0 += 64) {
      const int64_t j1 = std::min(K, j0 + 64);
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = std::max(j0, i + 1); j < j1; ++j) H[i * K + j] = H[j * K + i];
    }
  });
  return Status::kOk;
}

bool choleskyLower(const GptqKernels& kk, double* A, int64_t K, double* scratch, const std::atomic<bool>* cancel) {
  // Right-looking blocked Cholesky: factor the nb x nb diagonal block, solve the panel below
  // it, subtract panel * panel^T from the trailing matrix (the GEMM that carries the K^3/3).
  std::atomic<bool> ok{true};
  for (int64_t J0 = 0; J0 < K; J0 += kGptqNb) {
    if (cancel && cancel->load()) return false;
    const int64_t J1 = std::min(K, J0 + kGptqNb), nb = J1 - J0;
    for (int64_t j = J0; j < J1; ++j) {
      double d = A[j * K + j];
      for (int64_t p = J0; p < j; ++p) d -= A[j * K + p] * A[j * K + p];
      if (!(d > 0) || !std::isfinite(d)) return false;
      const double l = std::sqrt(d);
      A[j * K + j] = l;
      for (int64_t i = j + 1; i < J1; ++i) {
        double s = A[i * K + j];
        for (int64_t p = J0; p < j; ++p) s -= A[i * K + p] * A[j * K + p];
        A[i * K + j] = s / l;
      }
    }
    const int64_t m = K - J1;
    if (m == 0) break;
    // Panel L21 = A21 L11^-T as a GEMM (a row-by-row substitution would be a scalar dot product
    // per element: ~7% of the FLOPs at 1/20 of the speed). Li = L11^-1 (lower, nb^3/6, tiny).
    double* Li = scratch + kGptqNb * K;
    std::fill(Li, Li + nb * nb, 0.0);
    for (int64_t j = 0; j < nb; ++j) {
      Li[j * nb + j] = 1.0 / A[(J0 + j) * K + J0 + j];
      for (int64_t i = j + 1; i < nb; ++i) {
        double s = 0;
        for (int64_t p = j; p < i; ++p) s += A[(J0 + i) * K + J0 + p] * Li[p * nb + j];
        Li[i * nb + j] = -s / A[(J0 + i) * K + J0 + i];
      }
    }
    double* LiT = Li + kGptqNb * kGptqNb;
    for (int64_t i = 0; i < nb; ++i)
      for (int64_t j = 0; j < nb; ++j) LiT[i * nb + j] = Li[j * nb + i];
    double* P = scratch;  // new panel [m, nb]
    std::fill(P, P + m * nb, 0.0);
    gptqGemm<double>(kk, m, nb, nb, 1.0, A + J1 * K + J0, K, 1, LiT, nb, P, nb, GemmMode::kFull);
    threadPool().parallelFor(size_t((m + 63) / 64), [&](size_t t) {
      for (int64_t r = int64_t(t) * 64; r < std::min(m, int64_t(t + 1) * 64); ++r)
        std::memcpy(A + (J1 + r) * K + J0, P + r * nb, size_t(nb) * 8);
    });
    // Pt[p][r] = L[J1 + r][J0 + p]: the panel transposed, so the GEMM's B rows are contiguous.
    double* Pt = scratch;
    threadPool().parallelFor(size_t((m + 63) / 64), [&](size_t t) {
      const int64_t r0 = int64_t(t) * 64, r1 = std::min(m, r0 + 64);
      for (int64_t p0 = 0; p0 < nb; p0 += 64)  // 64 x 64 tiles: Pt's rows are m doubles apart
        for (int64_t r = r0; r < r1; ++r)
          for (int64_t p = p0; p < std::min(nb, p0 + 64); ++p) Pt[p * m + r] = A[(J1 + r) * K + J0 + p];
    });
    gptqGemm<double>(kk, m, m, nb, -1.0, A + J1 * K + J0, K, 1, Pt, m, A + J1 * K + J1, K, GemmMode::kLowerTiles);
  }
  threadPool().parallelFor(size_t((K + 63) / 64), [&](size_t t) {
    for (int64_t i = int64_t(t) * 64; i < std::min(K, int64_t(t + 1) * 64); ++i)
      for (int64_t j = i + 1; j < K; ++j) A[i * K + j] = 0;
  });
  return ok.load();
}

void invertLower(const GptqKernels& kk, double* L, int64_t K, double* scratch, const std::atomic<bool>* cancel) {
  // Block row I of X = L^-1:  X[I, I] = L[I, I]^-1,  X[I, :I0] = -X[I, I] (L[I, :I0] X[:I0, :I0]).
  // Rows above I0 already hold X (lower triangular, zeros above: the GEMM skips those terms).
  double* Xd = scratch + kGptqNb * K;
  for (int64_t I0 = 0; I0 < K; I0 += kGptqNb) {
    if (cancel && cancel->load()) return;
    const int64_t I1 = std::min(K, I0 + kGptqNb), m = I1 - I0;
    std::fill(Xd, Xd + m * m, 0.0);
    for (int64_t j = 0; j < m; ++j) {
      Xd[j * m + j] = 1.0 / L[(I0 + j) * K + I0 + j];
      for (int64_t i = j + 1; i < m; ++i) {
        double s = 0;
        for (int64_t p = j; p < i; ++p) s += L[(I0 + i) * K + I0 + p] * Xd[p * m + j];
        Xd[i * m + j] = -s / L[(I0 + i) * K + I0 + i];
      }
    }
    if (I0 > 0) {
      double* T = scratch;  // [m, I0]
      std::fill(T, T + m * I0, 0.0);
      gptqGemm<double>(kk, m, I0, I0, 1.0, L + I0 * K, K, 1, L, K, T, I0, GemmMode::kBLower);
      for (int64_t i = 0; i < m; ++i) std::fill(L + (I0 + i) * K, L + (I0 + i) * K + I0, 0.0);
      gptqGemm<double>(kk, m, I0, m, -1.0, Xd, m, 1, T, I0, L + I0 * K, K, GemmMode::kFull);
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j <= i; ++j) L[(I0 + i) * K + I0 + j] = Xd[i * m + j];
  }
}

void GptqWorkspace::reserve(const QuantFormat& f, const GptqOptions& o) {
  const size_t K = size_t(f.K), N = size_t(f.N), B = size_t(o.blockSize);
  w.resize(N * K);
  u.resize(K * K);
  err.resize(N * B * size_t(kGptqSuper));
  m.resize(K * K);
  t.resize(size_t(gptqFactorScratch(f.K)));
  rowLoss.resize(N);
  perm.resize(K);
  inv.resize(K);
  grids.resize(N);
  if (o.staticGroups) staticGrids.resize(size_t(qGroupCount(f)) * N);
  if (o.errorStats) s.resize(size_t(4 * 192) * K);
}

namespace {
constexpr int64_t kRowsPerTask = 32;  // whole qzeros words for every width (see quant.cc)
}

Status gptqQuantize(const QuantFormat& f, const float* w, const float* H, const GptqOptions& o, GptqWorkspace& ws,
                    uint32_t* qweight, uint32_t* qzeros, uint16_t* scales, int32_t* gIdx, GptqStats* stats,
                    const std::atomic<bool>* cancel, int64_t* badIndex, Isa isa) {
  if (Status s = qCheckFormat(f); s != Status::kOk) return s;
  const GptqKernels* kkp = gptqKernelsFor(isa);
  if (!kkp) return Status::kBackend;
  const GptqKernels& kk = *kkp;
  const int64_t K = f.K, N = f.N, G = qEffectiveGroup(f), ng = qGroupCount(f), B = o.blockSize;
  if (B <= 0 || !(o.dampPercent > 0 && o.dampPercent < 1)) return Status::kRange;
  const int bits = f.bits;
  const int32_t maxq = int32_t(qMaxCode(f));
  GptqStats st;
  for (int64_t i = 0; i < N * K; ++i)
    if (!std::isfinite(w[i])) {
      if (badIndex) *badIndex = i;
      return Status::kRange;
    }
  for (int64_t i = 0; i < K * K; ++i)
    if (!std::isfinite(H[i])) {
      if (badIndex) *badIndex = -1 - i;
      return Status::kRange;
    }

  // Dead columns (never activated): H[k][k] = 1 and W[:, k] = 0, unless H is all zero.
  std::vector<double> diag(static_cast<size_t>(K));
  bool any = false;
  for (int64_t k = 0; k < K; ++k) {
    diag[size_t(k)] = H[k * K + k];
    any = any || diag[size_t(k)] != 0;
  }
  if (!any) return Status::kRange;
  std::vector<uint8_t> dead(size_t(K), 0);
  for (int64_t k = 0; k < K; ++k)
    if (diag[size_t(k)] == 0) dead[size_t(k)] = 1, diag[size_t(k)] = 1, ++st.deadColumns;

  // Act-order: columns by decreasing diag(H), ties by index (stable).
  int32_t* perm = ws.perm.data();
  std::iota(perm, perm + K, 0);
  if (o.actOrder) std::stable_sort(perm, perm + K, [&](int32_t a, int32_t b) { return diag[size_t(a)] > diag[size_t(b)]; });
  for (int64_t c = 0; c < K; ++c) ws.inv[size_t(perm[c])] = int32_t(c);

  // Working weights in processing order: Wk[n][c] = W[n][perm[c]] (dead columns 0).
  float* Wk = ws.w.data();
  threadPool().parallelFor(size_t((N + kRowsPerTask - 1) / kRowsPerTask), [&](size_t t) {
    for (int64_t n = int64_t(t) * kRowsPerTask; n < std::min(N, int64_t(t + 1) * kRowsPerTask); ++n)
      for (int64_t c = 0; c < K; ++c) Wk[n * K + c] = dead[size_t(perm[c])] ? 0.0f : w[n * K + perm[c]];
  });
  std::memset(qweight, 0, size_t(qWeightRows(f) * N) * 4);
  std::memset(qzeros, 0, size_t(ng * qZeroCols(f)) * 4);

  // Static groups: every grid fitted on the original (dead-zeroed) contiguous columns first.
  std::atomic<int> rangeFail{0};
  if (o.staticGroups) {
    threadPool().parallelFor(size_t((N + kRowsPerTask - 1) / kRowsPerTask), [&](size_t t) {
      std::vector<float> tmp(size_t(std::min(G, K)));
      for (int64_t n = int64_t(t) * kRowsPerTask; n < std::min(N, int64_t(t + 1) * kRowsPerTask); ++n)
        for (int64_t g = 0; g < ng; ++g) {
          const int64_t k0 = g * G, k1 = std::min(K, k0 + G);
          for (int64_t k = k0; k < k1; ++k) tmp[size_t(k - k0)] = dead[size_t(k)] ? 0.0f : w[n * K + k];
          QuantGrid& gr = ws.staticGrids[size_t(g * N + n)];
          if (qFitGrid(tmp.data(), k1 - k0, 1, bits, f.sym != 0, &gr) != Status::kOk) rangeFail.store(1);
          qStoreGrid(f, g, n, gr, qzeros, scales);
        }
    });
    if (rangeFail.load()) return Status::kRange;
  }

  // U = chol_upper(H^-1) via the reversed Cholesky (header comment), damping raised x4 on failure.
  double t0 = seconds();
  double meanDiag = 0;
  for (int64_t k = 0; k < K; ++k) meanDiag += diag[size_t(k)];
  meanDiag /= double(K);
  double damp = o.dampPercent;
  double* M = ws.m.data();
  for (;;) {
    const double lambda = damp * meanDiag;
    // M[i][j] = Hp[K-1-i][K-1-j], Hp = H permuted with dead diagonals set to 1.
    threadPool().parallelFor(size_t((K + 63) / 64), [&](size_t t) {
      for (int64_t i = int64_t(t) * 64; i < std::min(K, int64_t(t + 1) * 64); ++i) {
        const int64_t pi = perm[K - 1 - i];
        for (int64_t j = 0; j <= i; ++j) M[i * K + j] = double(H[pi * K + perm[K - 1 - j]]);
        M[i * K + i] = diag[size_t(pi)] + lambda;
      }
    });
    if (choleskyLower(kk, M, K, ws.t.data(), cancel)) break;
    if (cancel && cancel->load()) return Status::kAborted;
    ++st.retries;
    damp *= 4;
    if (damp >= 1.0) return Status::kRange;
  }
  st.dampPercent = damp;
  invertLower(kk, M, K, ws.t.data(), cancel);
  if (cancel && cancel->load()) return Status::kAborted;
  float* U = ws.u.data();
  threadPool().parallelFor(size_t((K + 63) / 64), [&](size_t t) {
    for (int64_t i = int64_t(t) * 64; i < std::min(K, int64_t(t + 1) * 64); ++i)
      for (int64_t j = 0; j < K; ++j) U[i * K + j] = j >= i ? float(M[(K - 1 - i) * K + (K - 1 - j)]) : 0.0f;
  });
  st.flopsFactor = 2.0 / 3.0 * double(K) * double(K) * double(K);
  double t1 = seconds();
  st.secondsFactor = t1 - t0;

  // Column blocks: quantize column by column inside the block (rows independent), then the
  // lazy GEMM update of the columns to the right. Two levels: after a block only the columns up
  // to the end of its super-block (kGptqSuper blocks) are updated, the columns beyond once per
  // super-block with all its errors at once — the same sums in another order, but W's far
  // columns are streamed from memory 4x less often (at K = 10944 a pass over W is 90 MB).
  float* Err = ws.err.data();
  const int64_t S = B * kGptqSuper;
  std::fill(ws.rowLoss.begin(), ws.rowLoss.end(), 0.0);
  double tq = 0, tu = 0;
  for (int64_t i1 = 0; i1 < K; i1 += B) {
    if (cancel && cancel->load()) return Status::kAborted;
    const int64_t i2 = std::min(K, i1 + B), count = i2 - i1;
    const int64_t s1 = i1 / S * S, s2 = std::min(K, s1 + S);
    const double ta = seconds();
    threadPool().parallelFor(size_t((N + kRowsPerTask - 1) / kRowsPerTask), [&](size_t t) {
      for (int64_t n = int64_t(t) * kRowsPerTask; n < std::min(N, int64_t(t + 1) * kRowsPerTask); ++n) {
        float* row = Wk + n * K;
        float* er = Err + n * S + (i1 - s1);
        QuantGrid& grid = ws.grids[size_t(n)];
        double loss = 0;
        for (int64_t i = 0; i < count; ++i) {
          const int64_t c = i1 + i;
          if (o.staticGroups) {
            grid = ws.staticGrids[size_t((o.actOrder ? perm[c] : c) / G * N + n)];
          } else if (c % G == 0) {
            // Fitted on the group's current weights: lazy updates of earlier blocks and the
            // intra-block updates so far (AutoGPTQ fits on W without the latter; equal for
            // G = B = 128, see SPEC §2.2 note).
            if (qFitGrid(row + c, std::min(G, K - c), 1, bits, f.sym != 0, &grid) != Status::kOk) {
              rangeFail.store(1);
              return;
            }
            qStoreGrid(f, c / G, n, grid, qzeros, scales);
          }
          const float x = row[c];
          const int32_t code = qCode(x, grid, maxq);
          const float q = qValue(code, grid);
          qStreamOr(qweight + n, N, perm[c], bits, uint32_t(code));
          const float d = U[c * K + c];
          const float e = (x - q) / d;
          loss += double(x - q) * double(x - q) / (double(d) * double(d)) / 2;
          row[c] = q;  // Wk ends up holding Q (in processing order)
          kk.axpyNeg(e, U + c * K + c + 1, row + c + 1, i2 - c - 1);
          er[i] = e;
        }
        ws.rowLoss[size_t(n)] += loss;
      }
    });
    if (rangeFail.load()) return Status::kRange;
    const double tb = seconds();
    if (i2 < s2) gptqGemm<float>(kk, N, s2 - i2, count, -1.0f, Err + (i1 - s1), S, 1, U + i1 * K + i2, K, Wk + i2, K, GemmMode::kFull);
    if (i2 == s2 && s2 < K) gptqGemm<float>(kk, N, K - s2, s2 - s1, -1.0f, Err, S, 1, U + s1 * K + s2, K, Wk + s2, K, GemmMode::kFull);
    const double tc = seconds();
    tq += tb - ta;
    tu += tc - tb;
    st.flopsUpdate += 2.0 * double(N) * double(count) * double(K - i2);
  }
  st.secondsQuant = tq;
  st.secondsUpdate = tu;
  for (int64_t n = 0; n < N; ++n) st.loss += ws.rowLoss[size_t(n)];
  for (int64_t k = 0; k < K; ++k) gIdx[k] = int32_t((o.actOrder && !o.staticGroups ? ws.inv[size_t(k)] : k) / G);

  // ||(W - Q) X||^2 = sum_n d_n H d_n^T (H = 2/n sum x x^T up to a common factor), likewise for
  // W: R rows of D and R of W at a time through one GEMM with the original H.
  if (o.errorStats) {
    const double te = seconds();
    constexpr int64_t R = 192;  // 384 GEMM rows per pass over H (H is 479 MB at K = 10944)
    float* S = ws.s.data();
    float* C = S + 2 * R * K;
    for (int64_t r0 = 0; r0 < N; r0 += R) {
      const int64_t r1 = std::min(N, r0 + R), m = r1 - r0;
      for (int64_t r = 0; r < m; ++r)
        for (int64_t k = 0; k < K; ++k) {
          const float wv = w[(r0 + r) * K + k];
          S[r * K + k] = wv - Wk[(r0 + r) * K + ws.inv[size_t(k)]];
          S[(m + r) * K + k] = wv;
        }
      std::fill(C, C + 2 * m * K, 0.0f);
      gptqGemm<float>(kk, 2 * m, K, K, 1.0f, S, K, 1, H, K, C, K, GemmMode::kFull);
      for (int64_t r = 0; r < m; ++r) {
        double a = 0, b = 0;
        for (int64_t k = 0; k < K; ++k) {
          a += double(S[r * K + k]) * C[r * K + k];
          b += double(S[(m + r) * K + k]) * C[(m + r) * K + k];
        }
        st.errNum += a;
        st.errDen += b;
      }
    }
    st.secondsError = seconds() - te;
  }
  if (stats) *stats = st;
  return Status::kOk;
}

bool gptqBenchFactor(double* M, int64_t K, double* scratch, Isa isa) {
  const GptqKernels* kk = gptqKernelsFor(isa);
  if (!kk) return false;
  threadPool().parallelFor(size_t((K + 63) / 64), [&](size_t t) {
    for (int64_t i = int64_t(t) * 64; i < std::min(K, int64_t(t + 1) * 64); ++i)
      for (int64_t j = 0; j < K; ++j) M[i * K + j] = i == j ? double(K) : double(uint32_t(uint64_t(i * 7919 + j * 104729) * 2654435761u) >> 8) * (1.0 / 16777216.0) - 0.5;
  });
  if (!choleskyLower(*kk, M, K, scratch)) return false;
  invertLower(*kk, M, K, scratch);
  return true;
}

void gptqBenchUpdate(float* W, const float* U, const float* Err, int64_t N, int64_t K, int64_t B, Isa isa) {
  const GptqKernels* kk = gptqKernelsFor(isa);
  if (!kk) return;
  const int64_t S = B * kGptqSuper;  // the same two-level schedule as gptqQuantize
  for (int64_t i1 = 0; i1 < K; i1 += B) {
    const int64_t i2 = std::min(K, i1 + B), s1 = i1 / S * S, s2 = std::min(K, s1 + S);
    if (i2 < s2) gptqGemm<float>(*kk, N, s2 - i2, i2 - i1, -1.0f, Err + (i1 - s1), S, 1, U + i1 * K + i2, K, W + i2, K, GemmMode::kFull);
    if (i2 == s2 && s2 < K) gptqGemm<float>(*kk, N, K - s2, s2 - s1, -1.0f, Err, S, 1, U + s1 * K + s2, K, W + s2, K, GemmMode::kFull);
  }
}

}  // namespace kvant
