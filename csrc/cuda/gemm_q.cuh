// Fused dequant GEMM family on the GPU: the GEMV of decode y[m] = x[m] · dequant(W)ᵀ for
// M = 1..8 rows, never materializing the float weights (and the WMMA GEMM of prefill below).
// The format is the one of csrc/include/kvant/quant_format.h (SPEC §2.5): kernel row j of the
// packed matrix belongs to group j / G and holds input channel perm[j] (act-order made
// sequential at load; perm = null means the identity).
//
// GEMV design (decode is memory-bound: the packed weights are read exactly once):
// - A block of 128 threads owns 512 output columns; each thread owns 4 consecutive columns and
//   reads them with one 128-bit load per packed row (qweight rows are N words: 4 columns = 16 B,
//   consecutive threads read consecutive 16 B, so a warp reads 512 contiguous bytes).
// - grid.y splits K into slabs of 128 kernel rows (a multiple of 32, so 3-bit triples and every
//   word boundary align with slab edges). Each slab writes its partial sums to scratch; a second
//   kernel adds the slabs in slab order, so the result does not depend on block order (atomics
//   would make the bits vary from run to run).
// - Per block, the slab's activations (gathered through perm: act-order costs one indexed load
//   per activation, not per weight) and the scales and scaled zeros of the groups that intersect
//   the slab are staged in shared memory; codes are unpacked and dequantized in registers:
//   w = code·scale − zero·scale, exact in f32 (code, zero < 256 and scale has an 11-bit
//   significand, so both products and their difference fit in 24 bits).
#pragma once
#include "qformat.cuh"

namespace kvant::cuda {

constexpr uint32_t kGemvThreads = 128;
constexpr uint32_t kGemvCols = kGemvThreads * 4;  // 512 output columns per block
constexpr uint32_t kGemvSlab = 128;               // kernel rows per block (K split)
constexpr int kGemvMaxRows = 8;                   // decode batch rows per launch
constexpr int64_t kGemvMinGroup = 16;             // bounds the groups staged per slab (smem)

// Groups that can intersect a window of kGemvSlab consecutive rows.
inline int64_t gemvGroupsPerSlab(int64_t G, int64_t ng) {
  const int64_t g = kGemvSlab / G + 2;
  return g < ng ? g : ng;
}

// Partial GEMV of one (512-column block, 128-row slab): part[slab][m][n] = Σ_{j in slab} x[m][perm[j]] w[n][j].
template <int BITS>
__global__ void __launch_bounds__(kGemvThreads) gptqGemvKernel(QMatrix q, const float* x, int M, float* part, int groupsPerSlab) {
  const int64_t K = q.fmt.K, N = q.fmt.N, G = q.fmt.groupSize < 0 ? K : q.fmt.groupSize;
  const int64_t j0 = int64_t(blockIdx.y) * kGemvSlab;
  const int64_t rows = K - j0 < int64_t(kGemvSlab) ? K - j0 : int64_t(kGemvSlab);
  const int64_t nBase = int64_t(blockIdx.x) * kGemvCols;
  const int64_t g0 = j0 / G, g1 = (j0 + rows - 1) / G;
  // Shared memory: xs[M][128] | sc[groupsPerSlab][512] | zs[groupsPerSlab][512]
  float* xs = dynamicSmem<float>();
  float* sc = xs + kGemvMaxRows * kGemvSlab;
  float* zs = sc + size_t(groupsPerSlab) * kGemvCols;
  for (int64_t i = threadIdx.x; i < int64_t(M) * rows; i += blockDim.x) {
    const int64_t m = i / rows, jj = i % rows, j = j0 + jj;
    xs[m * kGemvSlab + jj] = x[m * K + (q.perm ? q.perm[j] : j)];
  }
  for (int64_t i = threadIdx.x; i < (g1 - g0 + 1) * int64_t(kGemvCols); i += blockDim.x) {
    const int64_t gi = i / kGemvCols, c = i % kGemvCols, n = nBase + c;
    if (n >= N) continue;
    const float s = __half2float(__ushort_as_half(q.scales[(g0 + gi) * N + n]));
    sc[i] = s;
    zs[i] = float(zeroOf(q, g0 + gi, n)) * s;
  }
  __syncthreads();
  const int64_t n0 = nBase + int64_t(threadIdx.x) * 4;
  if (n0 >= N) return;  // no barrier follows
  float acc[kGemvMaxRows][4];
#pragma unroll
  for (int m = 0; m < kGemvMaxRows; ++m)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[m][c] = 0.f;
  const bool aligned = (reinterpret_cast<uintptr_t>(q.qweight) & 15) == 0;  // N % 4 == 0 always
  auto load4 = [&](int64_t packedRow) {
    const uint32_t* p = q.qweight + packedRow * N + n0;
    if (aligned) return *reinterpret_cast<const uint4*>(p);  // one 128-bit load
    uint4 v;
    v.x = p[0];
    v.y = p[1];
    v.z = p[2];
    v.w = p[3];
    return v;
  };
  const int cb = int(n0 - nBase);  // this thread's first column inside the block's 512
  // One weight row j (slab-local jj) with codes c[0..3] for the thread's four columns.
  auto accumulate = [&](int64_t jj, const uint32_t* code) {
    const int64_t gi = (j0 + jj) / G - g0;
    const float* s = sc + gi * kGemvCols + cb;
    const float* z = zs + gi * kGemvCols + cb;
    float w[4];
#pragma unroll
    for (int c = 0; c < 4; ++c) w[c] = fmaf(float(code[c]), s[c], -z[c]);  // exact (see top)
#pragma unroll
    for (int m = 0; m < kGemvMaxRows; ++m)
      if (m < M) {
        const float xv = xs[m * kGemvSlab + jj];
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[m][c] = fmaf(xv, w[c], acc[m][c]);
      }
  };
  const int64_t prBase = j0 * BITS / 32;
  if (BITS == 3) {
    for (int64_t t = 0; t * 32 < rows; ++t) {
      const uint4 a = load4(prBase + 3 * t), b = load4(prBase + 3 * t + 1), c = load4(prBase + 3 * t + 2);
      const uint32_t w0[4] = {a.x, a.y, a.z, a.w}, w1[4] = {b.x, b.y, b.z, b.w}, w2[4] = {c.x, c.y, c.z, c.w};
      for (int i = 0; i < 32; ++i) {
        uint32_t code[4];
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) code[cc] = code3(w0[cc], w1[cc], w2[cc], i);
        accumulate(t * 32 + i, code);
      }
    }
  } else {
    constexpr int F = 32 / (BITS == 3 ? 4 : BITS);
    constexpr uint32_t kMask = (1u << (BITS == 3 ? 4 : BITS)) - 1;
    for (int64_t pr = 0; pr * F < rows; ++pr) {
      const uint4 v = load4(prBase + pr);
      const uint32_t wv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int i = 0; i < F; ++i) {
        uint32_t code[4];
#pragma unroll
        for (int cc = 0; cc < 4; ++cc) code[cc] = (wv[cc] >> (BITS * i)) & kMask;
        accumulate(pr * F + i, code);
      }
    }
  }
  float* o = part + size_t(blockIdx.y) * size_t(M) * N;
#pragma unroll
  for (int m = 0; m < kGemvMaxRows; ++m)
    if (m < M)
#pragma unroll
      for (int c = 0; c < 4; ++c) o[m * N + n0 + c] = acc[m][c];
}

// y[m][n] = Σ_s part[s][m][n], slabs added in order (fixed bits for any block order).
__global__ void sumSlabsKernel(const float* part, int slabs, size_t MN, float* y) {
  const size_t e = size_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= MN) return;
  float s = part[e];
  for (int i = 1; i < slabs; ++i) s += part[size_t(i) * MN + e];
  y[e] = s;
}

// ---- prefill: WMMA GEMM over tiles dequantized into shared memory ----
// y [M, N] = x [M, K] · dequant(W)ᵀ for prefill-sized M (Marlin/ExLlama's rule: from M ≈ 16 on,
// tensor cores beat the GEMV's FMA chains). Block tile 64 x 64 x 32, 4 warps in a 2 x 2 grid,
// each warp 32 x 32 = 2 x 2 m16n16k16 fragments with f32 accumulators. Per k-step the block
// stages x (rounded to f16, gathered through perm for act-order) and the dequantized weight tile
// (f16: (code − zero)·scale rounded once) into one of two shared-memory buffers while the warps
// multiply the other one: the double buffer needs one barrier per k-step (the
// barrier that ends step t both publishes buffer t+1 and frees buffer t for step t+2).
// Rows are padded by 8 halves (16 B) so fragment rows do not all start in the same bank, and
// every fragment pointer stays 32-byte aligned as load_matrix_sync requires.
constexpr int kGemmBM = 64, kGemmBN = 64, kGemmBK = 32;
constexpr int kGemmAS = kGemmBK + 8;  // A tile row stride (halves)
constexpr int kGemmBS = kGemmBN + 8;  // B tile row stride (halves)
constexpr int kGemmCS = kGemmBN + 4;  // C staging row stride (floats)
constexpr size_t kGemmSmem = size_t(2) * kGemmBM * kGemmAS * 2 + size_t(2) * kGemmBK * kGemmBS * 2 + size_t(kGemmBM) * kGemmCS * 4;

// Code of (kernel row j, column n).
__device__ __forceinline__ uint32_t codeAt(const QMatrix& q, int64_t j, int64_t n) {
  const int64_t N = q.fmt.N;
  const int bits = q.fmt.bits;
  if (bits == 3) {
    const uint32_t* w = q.qweight + (j / 32) * 3 * N + n;
    return code3(w[0], w[N], w[2 * N], int(j % 32));
  }
  const int f = 32 / bits;
  return (q.qweight[(j / f) * N + n] >> (bits * (j % f))) & ((1u << bits) - 1);
}

__global__ void __launch_bounds__(128) gptqGemmKernel(QMatrix q, const float* x, int M, float* y) {
  using namespace nvcuda;
  const int64_t K = q.fmt.K, N = q.fmt.N, G = q.fmt.groupSize < 0 ? K : q.fmt.groupSize;
  const int64_t m0 = int64_t(blockIdx.y) * kGemmBM, n0 = int64_t(blockIdx.x) * kGemmBN;
  __half* As = dynamicSmem<__half>();                  // [2][BM][AS]
  __half* Bs = As + 2 * kGemmBM * kGemmAS;             // [2][BK][BS]
  float* Cs = reinterpret_cast<float*>(Bs + 2 * kGemmBK * kGemmBS);  // [BM][CS]
  const int warp = threadIdx.x / 32, wm = warp / 2, wn = warp % 2;
  auto stage = [&](int64_t k0, int buf) {
    __half* a = As + buf * kGemmBM * kGemmAS;
    for (int e = threadIdx.x; e < kGemmBM * kGemmBK; e += blockDim.x) {
      const int r = e / kGemmBK, c = e % kGemmBK;
      const int64_t m = m0 + r, j = k0 + c;
      const float v = m < M && j < K ? x[m * K + (q.perm ? q.perm[j] : j)] : 0.f;
      a[r * kGemmAS + c] = __float2half_rn(v);
    }
    __half* b = Bs + buf * kGemmBK * kGemmBS;
    for (int e = threadIdx.x; e < kGemmBK * kGemmBN; e += blockDim.x) {
      const int r = e / kGemmBN, c = e % kGemmBN;  // consecutive threads: consecutive columns (coalesced qweight words)
      const int64_t j = k0 + r, n = n0 + c;
      float w = 0.f;
      if (j < K && n < N) {
        const int64_t g = j / G;
        w = float(int(codeAt(q, j, n)) - zeroOf(q, g, n)) * __half2float(__ushort_as_half(q.scales[g * N + n]));
      }
      b[r * kGemmBS + c] = __float2half_rn(w);
    }
  };
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int jf = 0; jf < 2; ++jf) wmma::fill_fragment(acc[i][jf], 0.0f);
  const int64_t steps = (K + kGemmBK - 1) / kGemmBK;
  stage(0, 0);
  __syncthreads();
  for (int64_t t = 0; t < steps; ++t) {
    const int cur = int(t & 1);
    if (t + 1 < steps) stage((t + 1) * kGemmBK, cur ^ 1);  // the other buffer: freed by the last barrier
    const __half* a = As + cur * kGemmBM * kGemmAS;
    const __half* b = Bs + cur * kGemmBK * kGemmBS;
#pragma unroll
    for (int kk = 0; kk < kGemmBK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa[2];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], a + (wm * 32 + i * 16) * kGemmAS + kk, kGemmAS);
#pragma unroll
      for (int jf = 0; jf < 2; ++jf) wmma::load_matrix_sync(fb[jf], b + kk * kGemmBS + wn * 32 + jf * 16, kGemmBS);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int jf = 0; jf < 2; ++jf) wmma::mma_sync(acc[i][jf], fa[i], fb[jf], acc[i][jf]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int jf = 0; jf < 2; ++jf)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kGemmCS + wn * 32 + jf * 16, acc[i][jf], kGemmCS, wmma::mem_row_major);
  __syncthreads();
  for (int e = threadIdx.x; e < kGemmBM * kGemmBN; e += blockDim.x) {
    const int r = e / kGemmBN, c = e % kGemmBN;
    const int64_t m = m0 + r, n = n0 + c;
    if (m < M && n < N) y[m * N + n] = Cs[r * kGemmCS + c];
  }
}

// ---- entry points ----

// Floats of scratch gptqGemv needs for M rows (the per-slab partial sums).
inline size_t gptqGemvScratchFloats(const QuantFormat& f, int M) {
  return size_t((f.K + kGemvSlab - 1) / kGemvSlab) * size_t(M) * size_t(f.N);
}

inline LaunchConfig gptqGemvConfig(const QuantFormat& f, int* groupsPerSlab) {
  const int64_t G = qEffectiveGroup(f);
  *groupsPerSlab = int(gemvGroupsPerSlab(G, qGroupCount(f)));
  LaunchConfig c;
  c.grid.x = ceilDiv(size_t(f.N), kGemvCols);
  c.grid.y = ceilDiv(size_t(f.K), kGemvSlab);
  c.block.x = kGemvThreads;
  c.smem = (size_t(kGemvMaxRows) * kGemvSlab + 2 * size_t(*groupsPerSlab) * kGemvCols) * sizeof(float);
  return c;
}

// y [M, N] f32 = x [M, K] f32 · dequant(W)ᵀ; scratch holds gptqGemvScratchFloats floats
// (y itself when K fits one slab). Group sizes below 16 are not supported here (kShape).
KV_ENTRY Status gptqGemv(const Device& d, const QMatrix& q, const float* x, int M, float* y, float* scratch) {
  Status s = checkQMatrix(q);
  if (s != Status::kOk) return s;
  if (M < 1 || M > kGemvMaxRows) return Status::kShape;
  if (qEffectiveGroup(q.fmt) < kGemvMinGroup) return Status::kShape;
  int gps = 0;
  const LaunchConfig c = gptqGemvConfig(q.fmt, &gps);
  const int slabs = int(c.grid.y);
  float* part = slabs == 1 ? y : scratch;
  if (!part) return Status::kShape;
  s = launchKernel(d, c, q.fmt.bits == 2   ? gptqGemvKernel<2>
                         : q.fmt.bits == 3 ? gptqGemvKernel<3>
                         : q.fmt.bits == 4 ? gptqGemvKernel<4>
                                           : gptqGemvKernel<8>,
                   q, x, M, part, gps);
  if (s != Status::kOk || slabs == 1) return s;
  const size_t MN = size_t(M) * size_t(q.fmt.N);
  LaunchConfig r;
  r.block.x = 256;
  r.grid.x = ceilDiv(MN, 256);
  return launchKernel(d, r, sumSlabsKernel, static_cast<const float*>(scratch), slabs, MN, y);
}

// y [M, N] f32 = x [M, K] f32 · dequant(W)ᵀ through tensor cores (x and the weights rounded to
// f16, f32 accumulation); any M >= 1, meant for prefill (decode uses gptqGemv).
KV_ENTRY Status gptqGemm(const Device& d, const QMatrix& q, const float* x, int64_t M, float* y) {
  const Status s = checkQMatrix(q);
  if (s != Status::kOk) return s;
  if (M < 1) return Status::kShape;
  if ((M + kGemmBM - 1) / kGemmBM > 65535) return Status::kRange;
  LaunchConfig c;
  c.grid.x = ceilDiv(size_t(q.fmt.N), kGemmBN);
  c.grid.y = ceilDiv(size_t(M), kGemmBM);
  c.block.x = 128;
  c.smem = kGemmSmem;
  return launchKernel(d, c, gptqGemmKernel, q, x, int(M), y);
}

}  // namespace kvant::cuda
