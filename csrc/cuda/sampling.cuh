// Token sampling on the GPU: repetition penalty, greedy, temperature, top-k and top-p from rows of
// logits, one block per row, deterministic (a counter-based generator and fixed reduction orders:
// the same token for the same logits, parameters, seed and counter, on any device or schedule).
//
// Semantics (the definition the host reference in test/simt/sampling_test.cc implements; it follows
// lib/generate/sampler.ts, the CPU path, step by step — where it differs, it says so):
// 1. Penalty: work = logits; for every history token t in [0, V) (duplicates allowed, out-of-range
//    ids ignored): work[t] = f32(x / r) if x > 0 else f32(x · r), x = logits[t], in f64 (HF/CTRL
//    rule; the CPU's Float32Array store of the same f64 quotient). Each history token once, as the
//    CPU's Set does: duplicates rewrite the same value, so the result does not depend on them.
// 2. temperature == 0: greedy argmax of work (NaN skipped, ties to the lower id). No draw.
// 3. Else m = max of the non-NaN work values and each weight e_i = expNonPositive((work_i − m) / T)
//    in f64 (0 for NaN), expNonPositive being sampler.ts's function bit for bit (round to nearest
//    of n = round(y), Taylor degree 8 with unfused multiply/add, 2^n exact). The random number of
//    draw `counter` (1-based) of seed s is the CPU SeededRandom's counter-th next():
//    u = mix64((s ^ γ) + counter·γ) >> 11 · 2^-53 (splitmix64; γ = 0x9e3779b97f4a7c15).
// 4a. topK > 0 (<= kSampleMaxTopK): candidates = the topK best tokens by (value desc, id asc), NaN
//    never, −0 equal to +0 (as topKIndices); p_i = e_i in candidate order, z = Σ p_i in that order;
//    with topP < 1 keep the first i+1 candidates where Σ_{j<=i} p_j / z first reaches topP; then
//    u·mass over the kept ones, subtracting p_i in candidate order until negative (sampler.ts's
//    draw/pick). Differs from the CPU only in the weights: the CPU takes Math.exp there,
//    expNonPositive here (~1e-10 relative), which can change a draw only when u falls within that
//    distance of a boundary.
// 4b. topK == 0, topP < 1: the kept set is {i : key_i >= K}, key_i = (order-preserving bits of
//    work_i) << 32 | (2^32 − 1 − i) (distinct; larger = more likely, then lower id), K the largest
//    key with mass(>= K) >= topP · mass(>= 0), mass summed by the block's fixed tree (thread t sums
//    i ≡ t mod threads in order, then butterfly trees over lanes and warps). That is the CPU's
//    "shortest prefix in (logit desc, id asc) order whose mass reaches topP·z"; the CPU sums that
//    prefix in another order, so the two can differ by rounding at the boundary. Then the draw of
//    4c over the kept weights.
// 4c. Otherwise (and after 4b): walk the tokens in id order. Thread t owns the contiguous chunk
//    [t·C, (t+1)·C), C = ceil(V / threads), and sums its weights in order; total = Σ chunk sums in
//    chunk order; u·total selects the first chunk c with residual < S_c (subtracting the chunk sums
//    before it), then the residual is reduced by e_i in id order from the chunk's start until it is
//    negative; if rounding runs off the end, the last token of positive weight. The CPU subtracts
//    every e_i from the start (a different rounding of the same walk) and falls back to the last
//    non-NaN token.
// A row whose logits are all −inf (or NaN) but not all NaN gives its first non-NaN token (the CPU
// would compute NaN weights there).
// Rows that cannot be sampled — every logit NaN, a +inf logit (the CPU would produce NaN weights),
// out-of-range parameters (T < 0 or not finite, topP not in (0, 1], r <= 0 or not finite, topK
// outside [0, kSampleMaxTopK]) — get token −1 and lower *badRow to their index (atomicMin).
#pragma once
#include "launch.h"

#ifndef SMP_ENTRY
#ifdef __CUDACC__
#define SMP_ENTRY  // entry points: defined once, in sampling.cu
#else
#define SMP_ENTRY inline
#endif
#endif

namespace kvant::cuda {

// Per-row parameters (device memory, one per row). 48 bytes, 8-byte aligned; f64 where the CPU
// computes in JS numbers so the arithmetic is the same.
struct SampleRow {
  double temperature;        // 0 = greedy
  double topP;               // (0, 1]; 1 = off
  double repetitionPenalty;  // > 0; 1 = off
  uint64_t seed;
  uint64_t counter;  // which draw of the sequence's generator this is (1 = the first)
  int32_t topK;      // 0 = off
  int32_t reserved;
};
static_assert(sizeof(SampleRow) == 48, "SampleRow: 3 doubles, 2 u64, 2 i32");

constexpr int kSampleMaxTopK = 1024;  // candidates sorted in shared memory: 1024 x 12 bytes
constexpr uint32_t kSampleThreads = 256;

// Unfused f64 arithmetic: nvcc would contract a·b + c into an FMA, which rounds once where JS
// (and the host reference) round twice. __dmul_rn / __dadd_rn are never contracted.
__device__ __forceinline__ double dmul(double a, double b) {
#ifdef __CUDACC__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
__device__ __forceinline__ double dadd(double a, double b) {
#ifdef __CUDACC__
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

// sampler.ts expNonPositive, the same operations in the same order.
__device__ inline double sampleExpNonPositive(double x) {
  const double y = dmul(x, 1.4426950408889634);
  if (!(y >= -1075.0)) return y != y ? y : 0.0;  // n < -1074 (NaN passes through, as in JS)
  double n = floor(y);
  if (dadd(y, -n) >= 0.5) n = dadd(n, 1.0);  // Math.round: half rounds up
  if (n < -1074) return 0.0;
  const double t = dmul(dadd(y, -n), 0.6931471805599453);
  double p = dadd(1.0 / 5040, dmul(t, 1.0 / 40320));
  p = dadd(1.0 / 720, dmul(t, p));
  p = dadd(1.0 / 120, dmul(t, p));
  p = dadd(1.0 / 24, dmul(t, p));
  p = dadd(1.0 / 6, dmul(t, p));
  p = dadd(0.5, dmul(t, p));
  p = dadd(1.0, dmul(t, p));
  p = dadd(1.0, dmul(t, p));
  return dmul(p, ldexp(1.0, int(n)));  // 2^n is exact for n >= -1074
}

// The counter-th uniform double of SeededRandom(seed) (splitmix64): the CPU's state after
// `counter` calls is (seed ^ γ) + counter·γ, so any draw can be computed directly.
__host__ __device__ inline double sampleUniform(uint64_t seed, uint64_t counter) {
  uint64_t z = (seed ^ 0x9e3779b97f4a7c15ull) + counter * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return double(z >> 11) * 0x1.0p-53;
}

// Order-preserving key of a float (−0 as +0: they tie, as in topKIndices) joined with the id.
__device__ __forceinline__ uint64_t sampleKey(float v, int i) {
  uint32_t b = v == 0.f ? 0u : __float_as_uint(v);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (uint64_t(b) << 32) | uint64_t(0xffffffffu - uint32_t(i));
}

// The bitwise searches below find the largest key K with a monotone property, greedily from bit 63
// down. The low 32 bits of every key are 2^32 − 1 − id with id < V, so their bits at and above
// idBits(V) are all ones: the greedy search would set each of them (a token's key has them), so
// they are set at once and only idBits(V) low bits are searched — 32 + 17 passes for V = 102400
// instead of 64, the same K.
__device__ __forceinline__ int sampleNextBit(int bit, int V, uint64_t* K) {
  if (bit != 32) return bit - 1;
  int b = 0;
  while (b < 32 && (uint64_t(1) << b) < uint64_t(V)) ++b;  // bits of ids 0..V-1
  *K |= 0xffffffffull & ~((uint64_t(1) << b) - 1);
  return b - 1;
}

struct SampleScratch {  // block-shared reduction slots
  double d[32];
  int i[32];
  float f[32];
};

__device__ inline double sampleBlockSumD(double v, SampleScratch* s) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  const unsigned lane = threadIdx.x % 32, nw = (blockDim.x + 31) / 32;
  if (lane == 0) s->d[threadIdx.x / 32] = v;
  __syncthreads();
  double r = lane < nw ? s->d[lane] : 0.0;
  for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(kFullMask, r, o);
  __syncthreads();
  return r;
}
__device__ inline int sampleBlockSumI(int v, SampleScratch* s) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  const unsigned lane = threadIdx.x % 32, nw = (blockDim.x + 31) / 32;
  if (lane == 0) s->i[threadIdx.x / 32] = v;
  __syncthreads();
  int r = lane < nw ? s->i[lane] : 0;
  for (int o = 16; o > 0; o >>= 1) r += __shfl_xor_sync(kFullMask, r, o);
  __syncthreads();
  return r;
}
// (value, id) best: NaN never, larger value, then lower id; id −1 = nothing.
__device__ __forceinline__ void sampleBetter(float& bv, int& bi, float v, int i) {
  if (i < 0 || v != v) return;
  if (bi < 0 || v > bv || (v == bv && i < bi)) bv = v, bi = i;
}
__device__ inline int sampleBlockArgmax(float bv, int bi, SampleScratch* s, float* best) {
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, bv, o);
    const int oi = __shfl_xor_sync(kFullMask, bi, o);
    sampleBetter(bv, bi, ov, oi);
  }
  const unsigned lane = threadIdx.x % 32, nw = (blockDim.x + 31) / 32;
  if (lane == 0) s->f[threadIdx.x / 32] = bv, s->i[threadIdx.x / 32] = bi;
  __syncthreads();
  bv = lane < nw ? s->f[lane] : 0.f;
  bi = lane < nw ? s->i[lane] : -1;
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, bv, o);
    const int oi = __shfl_xor_sync(kFullMask, bi, o);
    sampleBetter(bv, bi, ov, oi);
  }
  __syncthreads();
  *best = bv;
  return bi;
}

struct SampleParams {
  const float* logits;  // [B, V]
  float* work;          // [B, V] scratch: the penalized row
  int B, V;
  const SampleRow* rows;
  const int32_t* histOffsets;  // [B+1] (may be null: no history)
  const int32_t* histIds;
  int32_t* tokens;  // [B]
  int32_t* badRow;
};

__device__ __forceinline__ double sampleWeight(float x, float m, double T) {
  return x != x ? 0.0 : sampleExpNonPositive((double(x) - double(m)) / T);
}

__global__ void sampleKernel(SampleParams p) {
  unsigned char* smem = dynamicSmem<unsigned char>();
  SampleScratch* red = reinterpret_cast<SampleScratch*>(smem);
  double* chunkSum = reinterpret_cast<double*>(smem + sizeof(SampleScratch));                 // [threads]
  uint64_t* candKey = reinterpret_cast<uint64_t*>(chunkSum + blockDim.x);                     // [kSampleMaxTopK]
  int* candId = reinterpret_cast<int*>(candKey + kSampleMaxTopK);                             // [kSampleMaxTopK]
  int* sorted = candId + kSampleMaxTopK;                                                      // [kSampleMaxTopK]
  int* counter = sorted + kSampleMaxTopK;                                                     // one int
  const int row = blockIdx.x, V = p.V, tid = threadIdx.x, nt = blockDim.x;
  const SampleRow sr = p.rows[row];
  const float* lg = p.logits + size_t(row) * V;
  float* w = p.work + size_t(row) * V;
  const bool okParams = sr.temperature >= 0 && sr.temperature < INFINITY && sr.topP > 0 && sr.topP <= 1 && sr.repetitionPenalty > 0 &&
                        sr.repetitionPenalty < INFINITY && sr.topK >= 0 && sr.topK <= kSampleMaxTopK;
  if (!okParams) {  // block-uniform
    if (tid == 0) p.tokens[row] = -1, atomicMin(p.badRow, int32_t(row));
    return;
  }
  for (int i = tid; i < V; i += nt) w[i] = lg[i];
  if (sr.repetitionPenalty != 1.0 && p.histOffsets) {
    __syncthreads();  // every plain copy lands before a penalized value may overwrite it
    const double r = sr.repetitionPenalty;
    for (int h = p.histOffsets[row] + tid; h < p.histOffsets[row + 1]; h += nt) {
      const int t = p.histIds[h];
      if (t < 0 || t >= V) continue;
      const double x = double(lg[t]);
      w[t] = float(x > 0 ? x / r : x * r);  // duplicates write the same bits
    }
  }
  __syncthreads();
  // The best token: the greedy answer, and the max m of the weights.
  float bv = 0.f;
  int bi = -1;
  for (int i = tid; i < V; i += nt) sampleBetter(bv, bi, w[i], i);
  float m;
  const int best = sampleBlockArgmax(bv, bi, red, &m);
  if (best < 0 || m == INFINITY) {
    if (tid == 0) p.tokens[row] = -1, atomicMin(p.badRow, int32_t(row));
    return;
  }
  if (sr.temperature == 0 || m == -INFINITY) {  // greedy; or every logit −inf: no weights, the first
    if (tid == 0) p.tokens[row] = best;
    return;
  }
  const double T = sr.temperature;
  const double u01 = sampleUniform(sr.seed, sr.counter);
  if (sr.topK > 0) {
    int valid = 0;
    for (int i = tid; i < V; i += nt) valid += w[i] == w[i];
    valid = sampleBlockSumI(valid, red);
    const int kk = sr.topK < valid ? sr.topK : valid;
    // The kk-th largest key: the largest K with #(key >= K) >= kk, bit by bit from the top (keys
    // are distinct, so exactly kk tokens have key >= K).
    uint64_t K = 0;
    for (int bit = 63; bit >= 0; bit = sampleNextBit(bit, V, &K)) {
      const uint64_t c = K | (uint64_t(1) << bit);
      int n = 0;
      for (int i = tid; i < V; i += nt) n += w[i] == w[i] && sampleKey(w[i], i) >= c;
      if (sampleBlockSumI(n, red) >= kk) K = c;
    }
    if (tid == 0) *counter = 0;
    __syncthreads();
    for (int i = tid; i < V; i += nt)
      if (w[i] == w[i] && sampleKey(w[i], i) >= K) {
        const int slot = atomicAdd(counter, 1);  // arrival order varies; the rank sort fixes the order
        candKey[slot] = sampleKey(w[i], i), candId[slot] = i;
      }
    __syncthreads();
    for (int s = tid; s < kk; s += nt) {
      int rank = 0;
      for (int o = 0; o < kk; ++o) rank += candKey[o] > candKey[s];
      sorted[rank] = candId[s];
    }
    __syncthreads();
    if (tid == 0) {
      double z = 0;
      for (int i = 0; i < kk; ++i) z += sampleWeight(w[sorted[i]], m, T);
      int keep = kk;
      if (sr.topP < 1) {
        double acc = 0;
        for (int i = 0; i < kk; ++i) {
          acc += sampleWeight(w[sorted[i]], m, T) / z;
          if (acc >= sr.topP) {
            keep = i + 1;
            break;
          }
        }
      }
      double mass = 0;
      for (int i = 0; i < keep; ++i) mass += sampleWeight(w[sorted[i]], m, T);
      double u = dmul(u01, mass);
      int tok = sorted[keep - 1];
      for (int i = 0; i < keep; ++i) {
        u -= sampleWeight(w[sorted[i]], m, T);
        if (u < 0) {
          tok = sorted[i];
          break;
        }
      }
      p.tokens[row] = tok;
    }
    return;
  }
  // Top-p over the whole vocabulary: the boundary key K by the same bitwise search, on mass.
  uint64_t K = 0;
  if (sr.topP < 1) {
    double all = 0;
    for (int i = tid; i < V; i += nt) all += sampleWeight(w[i], m, T);
    const double target = dmul(sr.topP, sampleBlockSumD(all, red));
    for (int bit = 63; bit >= 0; bit = sampleNextBit(bit, V, &K)) {
      const uint64_t c = K | (uint64_t(1) << bit);
      double s = 0;
      for (int i = tid; i < V; i += nt)
        if (w[i] == w[i] && sampleKey(w[i], i) >= c) s += sampleWeight(w[i], m, T);
      if (sampleBlockSumD(s, red) >= target) K = c;
    }
  }
  // The id-order walk over contiguous chunks (weights of tokens below K count as 0).
  const int C = (V + nt - 1) / nt;
  double s = 0;
  for (int i = tid * C; i < V && i < (tid + 1) * C; ++i)
    if (w[i] == w[i] && sampleKey(w[i], i) >= K) s += sampleWeight(w[i], m, T);
  chunkSum[tid] = s;
  __syncthreads();
  if (tid == 0) {
    double total = 0;
    for (int c = 0; c < nt; ++c) total += chunkSum[c];
    double u = dmul(u01, total);
    int c = 0;
    while (c < nt - 1 && !(u < chunkSum[c])) u -= chunkSum[c++];
    int tok = -1;
    for (int i = c * C; i < V; ++i) {
      const double e = w[i] == w[i] && sampleKey(w[i], i) >= K ? sampleWeight(w[i], m, T) : 0.0;
      if (e == 0) continue;
      tok = i;
      u -= e;
      if (u < 0) break;
    }
    if (tok < 0) tok = best;  // nothing positive after the chosen chunk (rounding): the best token
    p.tokens[row] = tok;
  }
}

// ---- entry point ----

struct SampleDeviceArgs {
  const float* logits;  // [B, V] (device)
  float* work;          // [B, V] (device scratch)
  int B, V;
  const SampleRow* rows;       // [B] (device)
  const int32_t* histOffsets;  // [B+1] (device) or null
  const int32_t* histIds;      // [histOffsets[B]] (device)
  int32_t* tokens;             // [B] (device)
  int32_t* badRow;             // one int (device), B or more before; the first unsampleable row after
};

inline size_t sampleSmemBytes(uint32_t threads) {
  return sizeof(SampleScratch) + threads * sizeof(double) + size_t(kSampleMaxTopK) * (8 + 4 + 4) + 16;
}

// Block size from V alone (the chunk partition is part of the definition): 256 threads, fewer
// (a multiple of 32) for a vocabulary under 256.
inline uint32_t sampleThreads(int V) { return V >= int(kSampleThreads) ? kSampleThreads : uint32_t((V + 31) / 32 * 32); }

SMP_ENTRY Status sampleTokens(const Device& d, const SampleDeviceArgs& a) {
  if (a.V <= 0 || a.B < 0) return Status::kShape;
  if (a.B > 0x7fffffff / 2 || size_t(a.B) * size_t(a.V) > (size_t(1) << 40)) return Status::kRange;
  if (a.B > 0 && (!a.logits || !a.work || !a.rows || !a.tokens || !a.badRow || (a.histOffsets && !a.histIds))) return Status::kShape;
  SampleParams p{a.logits, a.work, a.B, a.V, a.rows, a.histOffsets, a.histIds, a.tokens, a.badRow};
  LaunchConfig c;
  c.grid.x = uint32_t(a.B);
  c.block.x = sampleThreads(a.V);
  c.smem = sampleSmemBytes(c.block.x);
  return launchKernel(d, c, sampleKernel, p);
}

}  // namespace kvant::cuda
