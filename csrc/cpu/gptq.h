// GPTQ (Frantar et al., IST-DASLab/gptq; AutoGPTQ's fasterquant, SPEC §2.1-2.2): Hessian
// accumulation, damping with retry, dead columns, act-order, static groups, the upper factor
// U of H^-1 and the lazy block updates, writing the AutoGPTQ tensor set directly.
//
// Numerics: H is accumulated in f32 (as AutoGPTQ does). The factorization runs in f64: with
// 1% damping H's condition number can reach ~100*K (1e6 at K = 10944), which would leave an
// f32 Cholesky with ~6% relative error. U = chol_upper(H^-1) is computed without forming H^-1:
// if J reverses the index order and J H J = L L^T (lower Cholesky), then H = V V^T with
// V = J L J upper, so H^-1 = U^T U with U = V^-1 = J L^-1 J — one Cholesky and one triangular
// inverse (2/3 K^3 flops) instead of AutoGPTQ's Cholesky, cholesky_inverse and a second
// Cholesky (the factor with a positive diagonal is unique, so it is the same U). U and the
// weights are then f32 for the updates, where the lazy update W[:, i2:] -= Err * U[i1:i2, i2:]
// is a GEMM and takes almost all of the time for large K.
//
// Every output row n is quantized by the same instructions whatever the thread count: rows
// are independent given U, row tasks own 32 rows (whole qzeros words), the GEMM tiles are
// fixed and each output's k-sum runs in a fixed order.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "isa.h"
#include "kvant/quant_format.h"
#include "kvant/status.h"
#include "quant.h"

namespace kvant {

// Register tiles of the GEMMs: C[i][j] += alpha * sum_p A(i, p) * B[p][j] over kc terms, with
// A(i, p) = A[i*rsA + p*csA] (so a transposed A is free) and B rows ldb apart. MR = 6 rows x
// 16 f32 (or 8 f64) columns: 12 accumulators hide the FMA latency (4-5 cycles, 2 per cycle)
// with 2 vector loads + 6 broadcasts per 12 FMAs, inside the 16 ymm registers.
constexpr int64_t kGptqMr = 6, kGptqNrF32 = 16, kGptqNrF64 = 8;
constexpr int64_t kGptqSuper = 4;  // blocks per super-block of the two-level lazy update (gptq.cc)
struct GptqKernels {
  void (*tileF32)(const float* A, int64_t rsA, int64_t csA, const float* B, int64_t ldb, int64_t kc, float alpha, float* C, int64_t ldc);
  void (*tileF64)(const double* A, int64_t rsA, int64_t csA, const double* B, int64_t ldb, int64_t kc, double alpha, double* C, int64_t ldc);
  // y[i] -= a * x[i]
  void (*axpyNeg)(float a, const float* x, float* y, int64_t n);
};
namespace scalar { extern const GptqKernels kGptqKernels; }
namespace avx2 { extern const GptqKernels kGptqKernels; }
namespace avx512 { extern const GptqKernels kGptqKernels; }
const GptqKernels* gptqKernelsFor(Isa isa);  // Isa(-1): chosen level; nullptr if unsupported

enum class GemmMode { kFull, kLowerTiles, kBLower };
// C[M, Nc] += alpha * A[M, Kc] * B[Kc, Nc] on the pool, fixed tiles (96 x 128, k blocks of 256).
// kLowerTiles skips blocks strictly above the diagonal (SYRK); kBLower treats B as lower
// triangular (B[p][j] == 0 for p < j, and skips those terms).
template <class T>
void gptqGemm(const GptqKernels& kk, int64_t M, int64_t Nc, int64_t Kc, T alpha, const T* A, int64_t rsA, int64_t csA, const T* B,
              int64_t ldb, T* C, int64_t ldc, GemmMode mode);

// H = H * n/(n+b) + 2/(n+b) * X^T X for a batch X [T, K] of b sequences seen after n.
// X must be finite (kRange, *badIndex = flat index). scratch: T * K floats (X transposed, so the
// GEMM's A rows are contiguous instead of a page apart).
Status hessianAdd(float* H, int64_t K, const float* X, int64_t T, double n, double b, float* scratch, int64_t* badIndex,
                  Isa isa = Isa(-1));

// Panel width of the factorization. The trailing update streams the rest of the matrix once
// per panel (K^3 / (3 nb) f64 reads + writes: 73 GB at K = 10944 with nb = 96, 27 GB with 256),
// so a wide panel keeps it compute-bound; the panel's own scalar work grows as K nb^2 / 3.
constexpr int64_t kGptqNb = 256;
// Scratch of choleskyLower / invertLower, in doubles.
inline int64_t gptqFactorScratch(int64_t K) { return kGptqNb * K + 3 * kGptqNb * kGptqNb; }

// In-place lower Cholesky of the f64 matrix A [K, K] (ld K); strict upper part zeroed.
// Returns false when a pivot is not positive (not positive definite) or *cancel was set
// (checked between panels: a 10944-wide factorization takes tens of seconds).
bool choleskyLower(const GptqKernels& kk, double* A, int64_t K, double* scratch, const std::atomic<bool>* cancel = nullptr);
// In-place inverse of a lower-triangular L (upper part zero).
void invertLower(const GptqKernels& kk, double* L, int64_t K, double* scratch, const std::atomic<bool>* cancel = nullptr);

struct GptqOptions {
  double dampPercent = 0.01;
  int64_t blockSize = 128;
  bool actOrder = false;
  bool staticGroups = false;
  bool errorStats = true;  // compute ||(W - Q) X|| / ||W X|| from H (2 N K^2 more FLOPs)
};

struct GptqStats {
  double dampPercent = 0;     // damping finally used
  int32_t retries = 0;        // Cholesky failures before it
  int64_t deadColumns = 0;    // diag(H) == 0
  double loss = 0;            // sum (w - q)^2 / d^2 / 2 (GPTQ's objective)
  double errNum = 0, errDen = 0;  // sum_n d_n H d_n^T and w_n H w_n^T (relative error = sqrt(num/den))
  double secondsFactor = 0, secondsQuant = 0, secondsUpdate = 0, secondsError = 0;
  double flopsFactor = 0, flopsUpdate = 0;
};

// Explicit scratch, sized once by the caller (reserve may throw std::bad_alloc).
struct GptqWorkspace {
  std::vector<float> w, u, err, s;
  std::vector<double> m, t, rowLoss;
  std::vector<int32_t> perm, inv;
  std::vector<QuantGrid> grids, staticGrids;
  void reserve(const QuantFormat& f, const GptqOptions& o);
};

// w f32 [N, K] (not modified), H f32 [K, K] symmetric (not modified). Outputs qweight/qzeros
// (zeroed here), scales, gIdx [K]. kRange: non-finite w (*badIndex) or H, all-zero H, or no
// damping up to 64% makes H positive definite. kAborted when *cancel becomes true.
Status gptqQuantize(const QuantFormat& f, const float* w, const float* H, const GptqOptions& o, GptqWorkspace& ws,
                    uint32_t* qweight, uint32_t* qzeros, uint16_t* scales, int32_t* gIdx, GptqStats* stats,
                    const std::atomic<bool>* cancel, int64_t* badIndex, Isa isa = Isa(-1));

// Benchmark bodies (lib/bench/quant-cases.ts), on caller-owned buffers. Factor: fills M [K, K]
// with a diagonally dominant SPD matrix (O(K^2), cheap next to the K^3 work) and runs the
// reversed Cholesky + triangular inverse; returns false if it was not positive definite.
// Update: the lazy block updates of a whole GPTQ pass, W[:, i2:] -= Err * U[i1:i2, i2:] for
// every block of B columns (two-level, as gptqQuantize), on W [N, K], U [K, K], Err [N, B * kGptqSuper].
bool gptqBenchFactor(double* M, int64_t K, double* scratch, Isa isa = Isa(-1));
void gptqBenchUpdate(float* W, const float* U, const float* Err, int64_t N, int64_t K, int64_t B, Isa isa = Isa(-1));

}  // namespace kvant
