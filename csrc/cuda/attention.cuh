// Attention on the GPU: FlashAttention-2 forward (prefill; split-KV for decode) and the
// absorbed MLA decode over the paged bf16 latent cache. Same contracts as csrc/cpu/attention.h
// (the reference): q [B, Sq, Hq, Dqk], k [B, Sk, Hkv, Dqk], v [B, Sk, Hkv, Dv] (f32, f16 or bf16),
// out [B, Sq, Hq, Dv] f32, lse [B, Hq, Sq] f32; causal masks are lower-right aligned (query i sees
// keys j <= i + Sk - Sq); a row that sees no key gets O = 0 and LSE = +inf.
//
// FA2 work split (SPEC §4.5): a block owns one KV head and a tile of 16 "query rows", 4 per warp
// (query tile per warp). A query row is a (query position, head of the GQA group) pair, so for
// decode (Sq = 1) the heads sharing a KV head are the rows of one block and each K/V tile is read
// once for all of them (SPEC §4.3's seqlen/ngroups swap, for free). K/V tiles of 32 keys are
// staged in shared memory by the whole block; each lane then owns one key of the tile for the
// scores and Dv/32 output dims for the accumulator, so the online softmax (running max m, sum l,
// rescale by exp(m_old - m_new)) is warp-local and needs no cross-warp reduction. All of it in
// f32; exp via expf (the CPU reference uses the same formula).
//
// Varlen (FlashAttention-2's cu_seqlens packed batches): the same kernel, each block first looks up
// its sequence's query / key range; the grid is planned for the longest sequence and the blocks
// past a shorter one's rows return at once. The causal mask is lower-right per sequence.
//
// Split-KV (flash-decoding, SPEC §4.6): grid.z cuts the keys into ranges of keysPerSplit; each
// split writes its normalized partial O_p and LSE_p (−inf if empty) to scratch and a combine
// kernel merges the splits in split order (fixed bits for any block order).
#pragma once
#include "kvant/dtype.h"
#include "launch.h"
#include "split_merge.cuh"

namespace kvant::cuda {

constexpr int kAttnWarps = 4;
constexpr int kAttnRowsPerWarp = 4;
constexpr int kAttnBr = kAttnWarps * kAttnRowsPerWarp;  // 16 query rows per block
constexpr int kAttnBc = 32;                             // keys per tile: one per lane

__device__ __forceinline__ float toF32(float v) { return v; }
__device__ __forceinline__ float toF32(__half v) { return __half2float(v); }
__device__ __forceinline__ float toF32(__nv_bfloat16 v) { return __bfloat162float(v); }

// Shared-memory row stride of a tile of D elements of T: one extra 32-bit word per row, so the
// 32 lanes reading "their" key row at the same column hit 32 different banks (a stride of a
// multiple of 32 words would put them all in one bank: a 32-way conflict).
template <class T>
__host__ __device__ constexpr int tileStride(int D) {
  return D + int(4 / sizeof(T));
}

struct FlashParams {
  const void* q;
  const void* k;
  const void* v;
  float* out;  // final output (splits == 1) or partial O_p [splits, B, Sq, Hq, Dv]
  float* lse;  // final LSE (splits == 1, may be null) or partial LSE_p [splits, B, Hq, Sq]
  int B, Sq, Sk, Hq, Hkv;
  float scale;
  int causal;
  int keysPerSplit;  // keys of one split (a multiple of kAttnBc); Sk when not split
  int splits;
  // Varlen (cuQ non-null): sequence b is queries [cuQ[b], cuQ[b+1]) of q [totalQ, Hq, Dqk] and keys
  // [cuK[b], cuK[b+1]) of k/v [totalK, Hkv, D]; Sq / Sk are then the maximum lengths (the grid is
  // planned for Sq). out [totalQ, Hq, Dv], lse [Hq, totalQ]. A sequence whose offsets are not
  // ordered, leave the totals or exceed the maxima writes nothing and sets *badSeqlens.
  const int32_t* cuQ;
  const int32_t* cuK;
  int totalQ, totalK;
  int* badSeqlens;
};

template <int DQK, int DV, class T>
__global__ void __launch_bounds__(kAttnWarps * 32) flashForwardKernel(FlashParams p) {
  static_assert(DV % 32 == 0, "each lane owns DV/32 output dims");
  constexpr int KS = tileStride<T>(DQK), VS = tileStride<T>(DV), NV = DV / 32;
  const int group = p.Hq / p.Hkv;
  const int b = int(blockIdx.y) / p.Hkv, hk = int(blockIdx.y) % p.Hkv, split = int(blockIdx.z);
  // This sequence's lengths and first query / key token (fixed-length: b·Sq and b·Sk).
  int Sq = p.Sq, Sk = p.Sk;
  size_t qBase = size_t(b) * p.Sq, kBase = size_t(b) * p.Sk;
  if (p.cuQ) {
    const int q0 = p.cuQ[b], q1 = p.cuQ[b + 1], k0 = p.cuK[b], k1 = p.cuK[b + 1];
    if (q0 < 0 || q1 < q0 || q1 > p.totalQ || q1 - q0 > p.Sq || k0 < 0 || k1 < k0 || k1 > p.totalK || k1 - k0 > p.Sk) {
      if (threadIdx.x == 0 && blockIdx.x == 0 && hk == 0) atomicExch(p.badSeqlens, 1);
      return;  // block-uniform, before any barrier
    }
    Sq = q1 - q0, Sk = k1 - k0, qBase = size_t(q0), kBase = size_t(k0);
  }
  const int rowsTotal = Sq * group;
  const int r0 = int(blockIdx.x) * kAttnBr;
  if (r0 >= rowsTotal) return;  // varlen: a shorter sequence than the grid's maximum (block-uniform)
  float* qs = dynamicSmem<float>();                                 // [Br][DQK] f32
  T* ks = reinterpret_cast<T*>(qs + kAttnBr * DQK);                 // [Bc][KS]
  T* vs = ks + kAttnBc * KS;                                        // [Bc][VS]
  const T* Q = static_cast<const T*>(p.q);
  const T* K = static_cast<const T*>(p.k);
  const T* V = static_cast<const T*>(p.v);
  // Stage the block's query rows (row r = query i, head hk*group + g with r = i*group + g).
  for (int e = threadIdx.x; e < kAttnBr * DQK; e += blockDim.x) {
    const int r = r0 + e / DQK, d = e % DQK;
    float val = 0.f;
    if (r < rowsTotal) {
      const int i = r / group, h = hk * group + r % group;
      val = toF32(Q[((qBase + i) * p.Hq + h) * DQK + d]);
    }
    qs[e] = val;
  }
  // Keys this block may need: the split's range, cut by what its last row can see.
  const int shift = Sk - Sq;
  const int lastRow = (r0 + kAttnBr < rowsTotal ? r0 + kAttnBr : rowsTotal) - 1;
  int kEnd = Sk;
  if (p.causal) {
    const int vis = lastRow / group + 1 + shift;
    kEnd = vis < 0 ? 0 : vis < Sk ? vis : Sk;
  }
  const int kBegin = split * p.keysPerSplit;
  const int kStop = kBegin + p.keysPerSplit < kEnd ? kBegin + p.keysPerSplit : kEnd;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float m[kAttnRowsPerWarp], l[kAttnRowsPerWarp], acc[kAttnRowsPerWarp][NV];
#pragma unroll
  for (int rr = 0; rr < kAttnRowsPerWarp; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.f;
#pragma unroll
    for (int t = 0; t < NV; ++t) acc[rr][t] = 0.f;
  }
  for (int j0 = kBegin; j0 < kStop; j0 += kAttnBc) {
    __syncthreads();  // the previous tile (and, first time, nothing) is no longer read
    for (int e = threadIdx.x; e < kAttnBc * DQK; e += blockDim.x) {
      const int j = e / DQK, d = e % DQK;
      ks[j * KS + d] = j0 + j < kStop ? K[((kBase + j0 + j) * p.Hkv + hk) * DQK + d] : T{};
    }
    for (int e = threadIdx.x; e < kAttnBc * DV; e += blockDim.x) {
      const int j = e / DV, d = e % DV;
      vs[j * VS + d] = j0 + j < kStop ? V[((kBase + j0 + j) * p.Hkv + hk) * DV + d] : T{};
    }
    __syncthreads();
    const int key = j0 + lane;
#pragma unroll
    for (int rr = 0; rr < kAttnRowsPerWarp; ++rr) {
      const int r = r0 + warp * kAttnRowsPerWarp + rr;  // warp-uniform
      if (r >= rowsTotal) continue;                    // the whole warp skips: no collective lost
      const int i = r / group;
      const int visible = p.causal ? i + 1 + shift : Sk;  // keys [0, visible) for this row
      float s = -INFINITY;
      if (key < kStop && key < visible) {
        const float* qr = qs + (warp * kAttnRowsPerWarp + rr) * DQK;
        const T* kr = ks + lane * KS;
        float dot = 0.f;
        for (int d = 0; d < DQK; ++d) dot = fmaf(qr[d], toF32(kr[d]), dot);
        s = dot * p.scale;
      }
      const float mNew = fmaxf(m[rr], warpMax(s));
      if (mNew == -INFINITY) continue;  // nothing visible yet (warp-uniform: mNew is)
      const float pj = s == -INFINITY ? 0.f : expf(s - mNew);
      const float corr = m[rr] == -INFINITY ? 0.f : expf(m[rr] - mNew);
      l[rr] = l[rr] * corr + warpSum(pj);
      m[rr] = mNew;
#pragma unroll
      for (int t = 0; t < NV; ++t) acc[rr][t] *= corr;
      for (int j = 0; j < kAttnBc; ++j) {
        const float pb = __shfl_sync(kFullMask, pj, j);
        const T* vr = vs + j * VS + lane;
#pragma unroll
        for (int t = 0; t < NV; ++t) acc[rr][t] = fmaf(pb, toF32(vr[32 * t]), acc[rr][t]);
      }
    }
  }
  // Write this block's rows: normalized output, LSE (final: +inf when empty; partial: -inf).
#pragma unroll
  for (int rr = 0; rr < kAttnRowsPerWarp; ++rr) {
    const int r = r0 + warp * kAttnRowsPerWarp + rr;
    if (r >= rowsTotal) continue;
    const int i = r / group, h = hk * group + r % group;
    const bool empty = l[rr] == 0.f;
    const float inv = empty ? 0.f : 1.0f / l[rr];
    float* o = p.out + (size_t(split) * p.B * p.Sq + qBase + i) * p.Hq * DV + size_t(h) * DV;
#pragma unroll
    for (int t = 0; t < NV; ++t) o[lane + 32 * t] = acc[rr][t] * inv;
    if (lane == 0 && p.lse) {
      const float lse = empty ? (p.splits > 1 ? -INFINITY : INFINITY) : m[rr] + logf(l[rr]);
      p.lse[p.cuQ ? size_t(h) * p.totalQ + qBase + i : ((size_t(split) * p.B + b) * p.Hq + h) * p.Sq + i] = lse;
    }
  }
}

// Merge split partials (SPEC §4.6) in split order (split_merge.cuh: M = max LSE_p,
// S = Σ exp(LSE_p − M), LSE = M + ln S, +inf if every split was empty; O = Σ exp(LSE_p − LSE) O_p).
// One block per output row (rows = B·Sq·Hq for FA2, B·H for MLA), threads over the dims.
// Partial row `row` of split s is at opart[(s * rows + row) * D]; its LSE at the index
// lseIndex(row) of split s (LSE layouts differ from the row order: [B, Hq, Sq]).
__global__ void combineSplitsKernel(const float* opart, const float* lsePart, int splits, int rows, int D, int Sq, int Hq,
                                    const int* splitsPerBatch, int rowsPerBatch, float* out, float* lse) {
  const int row = blockIdx.x;
  // row = ((b * Sq) + i) * Hq + h  ->  LSE index (b * Hq + h) * Sq + i
  const int h = row % Hq, i = (row / Hq) % Sq, b = row / (Hq * Sq);
  const size_t li = (size_t(b) * Hq + h) * Sq + i;
  const int ns = splitsPerBatch ? splitsPerBatch[row / rowsPerBatch] : splits;
  const float L = splitMergeLse(lsePart + li, size_t(rows), ns);
  for (int d = threadIdx.x; d < D; d += blockDim.x)
    out[size_t(row) * D + d] = splitMergeValue(lsePart + li, size_t(rows), opart + size_t(row) * D + d, size_t(rows) * D, ns, L);
  if (threadIdx.x == 0 && lse) lse[li] = L;
}

// ---- MLA absorbed decode over the paged bf16 latent cache ----
// score(h, t) = scale (q[h,:L]·c_t + q[h,L:]·kpe_t), out[h] = Σ_t softmax_t c_t, where a cache
// row is [c (L) | k_pe (R)] bf16 and V is its first L columns: the K tile in shared memory is
// also the V tile (SPEC §4.4), which is what lets D = 576 fit (Q f32 36 KB + tile 36 KB).
// Rows of a block are heads (Sq = 1, H_kv = 1: the extreme GQA case, SPEC §4.3).
struct MlaParams {
  const float* q;          // [B, H, L+R]
  const uint16_t* pool;    // page p at pool + p * pageSize * (L+R)
  const int32_t* pageTable;
  const int32_t* seqLens;
  float* opart;            // [maxSplits, B, H, L]
  float* lsePart;          // [maxSplits, B, H]
  int B, H, pageSize, maxPages, numPages, keysPerSplit;
  float scale;
  int* badPage;            // set to 1 if a page index is out of range (the row reads nothing)
};

template <int L, int R>
__global__ void __launch_bounds__(kAttnWarps * 32) mlaDecodeKernel(MlaParams p) {
  constexpr int D = L + R, KS = tileStride<__nv_bfloat16>(D), NV = L / 32;
  const int b = blockIdx.y, split = blockIdx.z, h0 = int(blockIdx.x) * kAttnBr;
  float* qs = dynamicSmem<float>();
  __nv_bfloat16* ks = reinterpret_cast<__nv_bfloat16*>(qs + kAttnBr * D);
  for (int e = threadIdx.x; e < kAttnBr * D; e += blockDim.x) {
    const int h = h0 + e / D;
    qs[e] = h < p.H ? p.q[(size_t(b) * p.H + h) * D + e % D] : 0.f;
  }
  const int len = p.seqLens[b];
  const int kBegin = split * p.keysPerSplit;
  const int kStop = kBegin + p.keysPerSplit < len ? kBegin + p.keysPerSplit : len;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float m[kAttnRowsPerWarp], l[kAttnRowsPerWarp], acc[kAttnRowsPerWarp][NV];
#pragma unroll
  for (int rr = 0; rr < kAttnRowsPerWarp; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.f;
#pragma unroll
    for (int t = 0; t < NV; ++t) acc[rr][t] = 0.f;
  }
  for (int j0 = kBegin; j0 < kStop; j0 += kAttnBc) {
    __syncthreads();
    for (int e = threadIdx.x; e < kAttnBc * D; e += blockDim.x) {
      const int j = e / D, d = e % D, t = j0 + j;
      unsigned short bits = 0;
      if (t < kStop) {
        const int page = p.pageTable[size_t(b) * p.maxPages + t / p.pageSize];
        if (page >= 0 && page < p.numPages) bits = p.pool[(size_t(page) * p.pageSize + t % p.pageSize) * D + d];
        else if (d == 0) atomicExch(p.badPage, 1);
      }
      ks[j * KS + d] = __ushort_as_bfloat16(bits);
    }
    __syncthreads();
    const int key = j0 + lane;
#pragma unroll
    for (int rr = 0; rr < kAttnRowsPerWarp; ++rr) {
      const int h = h0 + warp * kAttnRowsPerWarp + rr;
      if (h >= p.H) continue;
      float s = -INFINITY;
      if (key < kStop) {
        const float* qr = qs + (warp * kAttnRowsPerWarp + rr) * D;
        const __nv_bfloat16* kr = ks + lane * KS;
        float dot = 0.f;
        for (int d = 0; d < D; ++d) dot = fmaf(qr[d], __bfloat162float(kr[d]), dot);
        s = dot * p.scale;
      }
      const float mNew = fmaxf(m[rr], warpMax(s));
      if (mNew == -INFINITY) continue;
      const float pj = s == -INFINITY ? 0.f : expf(s - mNew);
      const float corr = m[rr] == -INFINITY ? 0.f : expf(m[rr] - mNew);
      l[rr] = l[rr] * corr + warpSum(pj);
      m[rr] = mNew;
#pragma unroll
      for (int t = 0; t < NV; ++t) acc[rr][t] *= corr;
      for (int j = 0; j < kAttnBc; ++j) {
        const float pb = __shfl_sync(kFullMask, pj, j);
        const __nv_bfloat16* vr = ks + j * KS + lane;  // V = the first L columns of the K row
#pragma unroll
        for (int t = 0; t < NV; ++t) acc[rr][t] = fmaf(pb, __bfloat162float(vr[32 * t]), acc[rr][t]);
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < kAttnRowsPerWarp; ++rr) {
    const int h = h0 + warp * kAttnRowsPerWarp + rr;
    if (h >= p.H) continue;
    const bool empty = l[rr] == 0.f;
    const float inv = empty ? 0.f : 1.0f / l[rr];
    float* o = p.opart + ((size_t(split) * p.B + b) * p.H + h) * L;
#pragma unroll
    for (int t = 0; t < NV; ++t) o[lane + 32 * t] = acc[rr][t] * inv;
    if (lane == 0) p.lsePart[(size_t(split) * p.B + b) * p.H + h] = empty ? -INFINITY : m[rr] + logf(l[rr]);
  }
}

// ---- entry points ----

struct FlashDeviceArgs {
  const void* q;
  const void* k;
  const void* v;
  DType type;  // of q, k and v: kF32, kF16, kBF16
  float* out;
  float* lse;  // may be null
  int B, Sq, Sk, Hq, Hkv, Dqk, Dv;
  float scale;
  bool causal;
  int keysPerSplit;  // 0: no split; else a positive multiple of 32 (flash-decoding)
  float* scratch;    // splits > 1: flashScratchFloats floats
  // Varlen (FlashAttention-2's packed batch): cuQ / cuK [B+1] int32 (device) cumulative sequence
  // lengths; q [totalQ, Hq, Dqk], k / v [totalK, Hkv, D], out [totalQ, Hq, Dv], lse [Hq, totalQ]
  // (the CPU flashAttention's varlen layout). Sq / Sk are then the maximum per-sequence lengths
  // (max_seqlen_q / max_seqlen_k), the causal mask is lower-right per sequence, no split-KV.
  // *badSeqlens (device, 0 before) becomes 1 if any sequence's offsets are inconsistent.
  const int32_t* cuQ;
  const int32_t* cuK;
  int totalQ, totalK;
  int* badSeqlens;
};

inline int flashSplits(const FlashDeviceArgs& a) {
  if (a.keysPerSplit <= 0 || a.Sk <= a.keysPerSplit) return 1;
  return (a.Sk + a.keysPerSplit - 1) / a.keysPerSplit;
}
inline size_t flashScratchFloats(const FlashDeviceArgs& a) {
  const int s = flashSplits(a);
  return s == 1 ? 0 : size_t(s) * a.B * a.Sq * a.Hq * (size_t(a.Dv) + 1);
}
template <int DQK, int DV, class T>
constexpr size_t flashSmemBytes() {
  return size_t(kAttnBr) * DQK * sizeof(float) + size_t(kAttnBc) * (tileStride<T>(DQK) + tileStride<T>(DV)) * sizeof(T);
}

template <int DQK, int DV, class T>
Status flashLaunch(const Device& d, const FlashDeviceArgs& a) {
  const int splits = flashSplits(a);
  FlashParams p{a.q, a.k, a.v, a.out, a.lse, a.B, a.Sq, a.Sk, a.Hq, a.Hkv, a.scale, int(a.causal), splits == 1 ? (a.Sk > 0 ? a.Sk : 1) : a.keysPerSplit, splits,
                a.cuQ, a.cuK, a.totalQ, a.totalK, a.badSeqlens};
  const size_t rows = size_t(a.B) * a.Sq * a.Hq;
  float* lsePart = nullptr;
  if (splits > 1) {
    p.out = a.scratch;
    lsePart = a.scratch + size_t(splits) * rows * a.Dv;
    p.lse = lsePart;
  }
  LaunchConfig c;
  c.grid.x = ceilDiv(size_t(a.Sq) * (a.Hq / a.Hkv), kAttnBr);
  c.grid.y = uint32_t(a.B * a.Hkv);
  c.grid.z = uint32_t(splits);
  c.block.x = kAttnWarps * 32;
  c.smem = flashSmemBytes<DQK, DV, T>();
  Status s = launchKernel(d, c, flashForwardKernel<DQK, DV, T>, p);
  if (s != Status::kOk || splits == 1) return s;
  LaunchConfig m;
  m.grid.x = uint32_t(rows);
  m.block.x = a.Dv >= 128 ? 128 : 64;
  return launchKernel(d, m, combineSplitsKernel, static_cast<const float*>(a.scratch), static_cast<const float*>(lsePart), splits,
                      int(rows), a.Dv, a.Sq, a.Hq, static_cast<const int*>(nullptr), 1, a.out, a.lse);
}

template <int DQK, int DV>
Status flashForType(const Device& d, const FlashDeviceArgs& a) {
  switch (a.type) {
    case DType::kF32: return flashLaunch<DQK, DV, float>(d, a);
    case DType::kF16: return flashLaunch<DQK, DV, __half>(d, a);
    case DType::kBF16: return flashLaunch<DQK, DV, __nv_bfloat16>(d, a);
    default: return Status::kDtype;
  }
}

// The instantiated head dims (one kernel each per dtype keeps nvcc time bounded):
// (64, 64), (128, 128), (192, 128) DeepSeek MHA-mode prefill, (256, 256).
KV_ENTRY Status flashAttention(const Device& d, const FlashDeviceArgs& a) {
  if (a.B < 0 || a.Sq < 0 || a.Sk < 0 || a.Hq <= 0 || a.Hkv <= 0 || a.Hq % a.Hkv != 0) return Status::kShape;
  if (a.keysPerSplit < 0 || a.keysPerSplit % kAttnBc != 0) return Status::kShape;
  if (flashSplits(a) > 1 && !a.scratch) return Status::kShape;
  if (a.cuQ || a.cuK) {
    if (!a.cuQ || !a.cuK || !a.badSeqlens || a.keysPerSplit != 0 || a.totalQ < 0 || a.totalK < 0) return Status::kShape;
    if (size_t(a.totalQ) * a.Hq > 0x7fffffffu) return Status::kRange;
  }
  if (size_t(a.B) * a.Hkv > 65535 || size_t(a.B) * a.Sq * a.Hq > 0x7fffffffu) return Status::kRange;
  if (a.B == 0 || a.Sq == 0) return Status::kOk;
  if (a.Dqk == 64 && a.Dv == 64) return flashForType<64, 64>(d, a);
  if (a.Dqk == 128 && a.Dv == 128) return flashForType<128, 128>(d, a);
  if (a.Dqk == 192 && a.Dv == 128) return flashForType<192, 128>(d, a);
  if (a.Dqk == 256 && a.Dv == 256) return flashForType<256, 256>(d, a);
  return Status::kShape;
}

struct MlaDeviceArgs {
  const float* q;
  float* out;  // [B, H, L]
  float* lse;  // [B, H], may be null
  int B, H, L, R;
  float scale;
  const uint16_t* pool;
  int numPages, pageSize, maxPages;
  const int32_t* pageTable;
  const int32_t* seqLens;  // device memory; maxSeqLen bounds them (checked by the binding)
  int maxSeqLen;
  int keysPerSplit;        // multiple of 32
  float* scratch;          // mlaScratchFloats floats
  int* splitsPerBatch;     // B ints, written here (host-visible memory in the emulation)
  int* badPage;            // one int, 0 before the launch; 1 afterwards if a page index was bad
};
inline int mlaMaxSplits(const MlaDeviceArgs& a) {
  return a.maxSeqLen <= 0 ? 1 : (a.maxSeqLen + a.keysPerSplit - 1) / a.keysPerSplit;
}
inline size_t mlaScratchFloats(const MlaDeviceArgs& a) { return size_t(mlaMaxSplits(a)) * a.B * a.H * (size_t(a.L) + 1); }

__global__ void mlaSplitCountKernel(const int32_t* seqLens, int B, int keysPerSplit, int* splitsPerBatch) {
  const int b = int(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b < B) splitsPerBatch[b] = seqLens[b] <= 0 ? 1 : (seqLens[b] + keysPerSplit - 1) / keysPerSplit;
}

// The instantiated latent shape: DeepSeek-V2 (kv_lora_rank 512, rope dim 64), plus a small one
// (64, 32) for quick tests and small models.
KV_ENTRY Status mlaDecode(const Device& d, const MlaDeviceArgs& a) {
  if (a.B <= 0 || a.H <= 0 || a.pageSize <= 0 || a.maxPages <= 0 || a.keysPerSplit <= 0 || a.keysPerSplit % kAttnBc != 0) return Status::kShape;
  if (!a.scratch || !a.splitsPerBatch || !a.badPage) return Status::kShape;
  if (a.maxSeqLen < 0 || size_t(a.maxSeqLen) > size_t(a.pageSize) * a.maxPages) return Status::kRange;
  const int maxSplits = mlaMaxSplits(a);
  MlaParams p{a.q, a.pool, a.pageTable, a.seqLens, a.scratch, a.scratch + size_t(maxSplits) * a.B * a.H * a.L,
              a.B, a.H, a.pageSize, a.maxPages, a.numPages, a.keysPerSplit, a.scale, a.badPage};
  LaunchConfig c;
  c.grid.x = ceilDiv(size_t(a.H), kAttnBr);
  c.grid.y = uint32_t(a.B);
  c.grid.z = uint32_t(maxSplits);
  c.block.x = kAttnWarps * 32;
  Status s;
  LaunchConfig sc;
  sc.grid.x = ceilDiv(size_t(a.B), 128);
  sc.block.x = 128;
  s = launchKernel(d, sc, mlaSplitCountKernel, a.seqLens, a.B, a.keysPerSplit, a.splitsPerBatch);
  if (s != Status::kOk) return s;
  if (a.L == 512 && a.R == 64) {
    c.smem = size_t(kAttnBr) * 576 * 4 + size_t(kAttnBc) * tileStride<__nv_bfloat16>(576) * 2;
    s = launchKernel(d, c, mlaDecodeKernel<512, 64>, p);
  } else if (a.L == 64 && a.R == 32) {
    c.smem = size_t(kAttnBr) * 96 * 4 + size_t(kAttnBc) * tileStride<__nv_bfloat16>(96) * 2;
    s = launchKernel(d, c, mlaDecodeKernel<64, 32>, p);
  } else {
    return Status::kShape;
  }
  if (s != Status::kOk) return s;
  // Merge: rows are (b, h) = FA2's layout with Sq = 1, Hq = H; split counts per sequence.
  LaunchConfig m;
  m.grid.x = uint32_t(a.B * a.H);
  m.block.x = 128;
  return launchKernel(d, m, combineSplitsKernel, static_cast<const float*>(p.opart), static_cast<const float*>(p.lsePart), maxSplits,
                      a.B * a.H, a.L, 1, a.H, static_cast<const int*>(a.splitsPerBatch), a.H, a.out, a.lse);
}

}  // namespace kvant::cuda
