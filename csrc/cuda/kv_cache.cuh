// The paged quantized KV cache on the GPU: append (token rows -> quantized pages), gather (pages ->
// f32 rows) and split-KV paged decode attention that reads the quantized pages directly.
//
// Formats are exactly the CPU cache's (csrc/cpu/kv_cache.h, lib/kv/format.ts, docs/kvcache.md):
// a row is a list of segments; f16 / bf16 segments store 2 bytes per value, q8 / q6 / q4 segments
// blocks of 32 values {f16 d; codes} (34 / 26 / 18 bytes) with d = f16(absmax / qmax) and codes
// q = clamp(rne(x · (1/d)), ±qmax), optionally after the unnormalized 32-point Walsh–Hadamard
// transform of the group. The bytes written here equal the CPU cache's bytes for the same input
// (tested byte for byte): every step is the same IEEE operation in the same order — the five
// butterfly stages are additions only, the scale a correctly rounded division and f16 rounding,
// the code a single multiply then round-half-even — so nothing depends on FMA contraction.
//
// Work split of append/gather: one block per token row, one warp per *item* = 32 consecutive
// values of one segment (a quantized block, or a chunk of a 16-bit segment). Lane l owns value l
// of the item: the Hadamard butterfly at distance h is a shuffle with lane l ^ h, the absmax a warp
// max, and the packing of q6 / q4 codes (which interleave codes l, l+8, l+16, l+24 / l, l+16 into
// one word / byte) gathers the partner codes by shuffles. A row that would fail on the CPU (a
// non-finite value, a scale or 16-bit value overflowing f16/bf16) writes nothing and reports its
// token index through *badRow (atomicMin: the first bad row whatever the block order); the CPU
// writer stops at the first bad row, so only the rows before it are comparable.
//
// Paged decode (the CPU's pagedDecode, csrc/cpu/attention.h): q [B, Hq, Dk] f32 over the cache
// rows of B sequences; a block owns one (sequence, kv head, split) and up to 16 query heads of that
// kv head's GQA group as its rows (4 per warp, as the FA2 kernel in attention.cuh). Tiles of 32
// cache rows are staged in shared memory *as stored bytes* (a q4 row of 576 values is 416 bytes, a
// tenth of its f32 form), then each lane dequantizes in registers: for the scores lane j decodes
// row j of the tile against the f32 query in shared memory; for P·V lane l owns output dims
// l + 32t, which for a quantized segment is code l of block t (one scale load per block). The
// whole cache is never dequantized. Hadamard-rotated keys are handled on the query side,
// q·x = (H·q)·y / 32, once per block; rotated values by rotating the merged output back once,
// x = H·(Σ p·y) / 32, in the split-merge kernel (the CPU does the same two tricks).
#pragma once
#include "kvant/dtype.h"
#include "launch.h"
#include "split_merge.cuh"

#ifndef KVC_ENTRY
#ifdef __CUDACC__
#define KVC_ENTRY  // entry points: defined once, in kv_cache.cu
#else
#define KVC_ENTRY inline
#endif
#endif

namespace kvant::cuda {

// Element type codes: the CPU's KvType (csrc/cpu/kv_cache.h) and lib/kv/format.ts KV_TYPE_CODE.
enum KvCode : int32_t { kKvF16 = 0, kKvBf16 = 1, kKvQ8 = 2, kKvQ6 = 3, kKvQ4 = 4 };
__host__ __device__ constexpr bool kvIsQuant(int t) { return t == kKvQ8 || t == kKvQ6 || t == kKvQ4; }
__host__ __device__ constexpr int kvQmaxOf(int t) { return t == kKvQ8 ? 127 : t == kKvQ6 ? 31 : 7; }
__host__ __device__ constexpr int kvBlockBytes(int t) { return t == kKvQ8 ? 34 : t == kKvQ6 ? 26 : 18; }
// Bytes of n values; 0 when invalid (quantized types need n % 32 == 0).
__host__ __device__ constexpr int64_t kvBytes(int t, int64_t n) {
  return t == kKvF16 || t == kKvBf16 ? 2 * n : (t < 0 || t > kKvQ4 || n % 32) ? 0 : n / 32 * kvBlockBytes(t);
}

// `count` segments of one shape: segment c holds n values of `type` at row byte
// offset + c·offsetStride, taken from / returned to dense float offset src + c·srcStride.
// One run describes all K (or V) heads of the standard cache; the MLA row is two runs
// (latent in the cache type, rope part bf16). Passed by value: no device copy of a segment list.
struct KvSegRun {
  int32_t type, n, hadamard, count;
  int64_t offset, offsetStride, src, srcStride;
};
constexpr int kKvMaxRuns = 4;

// One layer's pages, as the CPU's KvPages: token slot s lives at
// pool + (s / pageSize)·pageBytes + layerOffset + (s % pageSize)·rowBytes.
struct KvPagesDev {
  uint8_t* pool;
  int64_t numPages, pageSize, pageBytes, layerOffset, rowBytes;
};

__device__ __forceinline__ uint16_t kvLoadU16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }

// ---- the codec, one warp per 32-value item ----

// y = H·y across the warp (lane l holds element l): stage h pairs lanes l and l ^ h; the lower
// one keeps a + b, the upper a - b, where a is the lower's value — the CPU's butterfly exactly.
__device__ __forceinline__ float warpHadamard32(float v, int lane) {
  for (int h = 1; h < 32; h <<= 1) {
    const float o = __shfl_xor_sync(kFullMask, v, h);
    v = (lane & h) ? o - v : v + o;
  }
  return v;
}

// Encodes (write = true) or only checks one item: n (<= 32) values x[0..n) into dst (the item's
// first byte: a block for quantized types, value 0 of the chunk for 16-bit types). Every lane of
// the warp must call it. Returns the CPU encoder's verdict (warp-uniform).
__device__ inline bool kvEncodeItem(int type, bool hadamard, const float* x, int n, uint8_t* dst, bool write) {
  const int lane = threadIdx.x % 32;
  float v = lane < n ? x[lane] : 0.f;
  bool ok = isfinite(v);
  if (type == kKvF16 || type == kKvBf16) {
    uint16_t h = 0;
    if (lane < n) {
      h = type == kKvF16 ? __half_as_ushort(__float2half_rn(v)) : __bfloat16_as_ushort(__float2bfloat16_rn(v));
      const uint16_t inf = type == kKvF16 ? 0x7c00u : 0x7f80u;
      if ((h & inf) == inf) ok = false;  // overflowed to Inf (or NaN)
    }
    ok = __all_sync(kFullMask, ok);
    if (ok && write && lane < n) {
      dst[2 * lane] = uint8_t(h);
      dst[2 * lane + 1] = uint8_t(h >> 8);
    }
    return ok;
  }
  ok = __all_sync(kFullMask, ok);
  if (hadamard) v = warpHadamard32(v, lane);
  const int qmax = kvQmaxOf(type);
  const float amax = warpMax(fabsf(v));
  const uint16_t dh = __half_as_ushort(__float2half_rn(amax / float(qmax)));
  if ((dh & 0x7c00u) == 0x7c00u) ok = false;  // scale overflows f16 (warp-uniform: amax is)
  if (!ok || !write) return ok;
  const float d = __half2float(__ushort_as_half(dh));
  const float inv = d != 0.f ? 1.0f / d : 0.0f;
  const float r = rintf(v * inv);  // round half to even, like std::nearbyint in the default mode
  const int q = r > float(qmax) ? qmax : r < float(-qmax) ? -qmax : int(r);
  if (lane == 0) {
    dst[0] = uint8_t(dh);
    dst[1] = uint8_t(dh >> 8);
  }
  if (type == kKvQ8) {
    dst[2 + lane] = uint8_t(int8_t(q));
  } else if (type == kKvQ6) {
    // word i (lanes 0..7) = codes i, 8+i, 16+i, 24+i, each + 32, at bits 0, 6, 12, 18.
    const int q1 = __shfl_sync(kFullMask, q, (lane + 8) & 31), q2 = __shfl_sync(kFullMask, q, (lane + 16) & 31),
              q3 = __shfl_sync(kFullMask, q, (lane + 24) & 31);
    if (lane < 8) {
      const uint32_t w = uint32_t(q + 32) | uint32_t(q1 + 32) << 6 | uint32_t(q2 + 32) << 12 | uint32_t(q3 + 32) << 18;
      dst[2 + 3 * lane] = uint8_t(w), dst[3 + 3 * lane] = uint8_t(w >> 8), dst[4 + 3 * lane] = uint8_t(w >> 16);
    }
  } else {
    // byte j (lanes 0..15) = code j + 8 (low nibble) | code 16 + j + 8 (high nibble).
    const int hi = __shfl_sync(kFullMask, q, (lane + 16) & 31);
    if (lane < 16) dst[2 + lane] = uint8_t((q + 8) | (hi + 8) << 4);
  }
  return true;
}

// Element e of a stored segment (as stored: the rotated domain for a rotated segment).
__device__ __forceinline__ float kvElem(int type, const uint8_t* s, int e) {
  if (type == kKvF16) return __half2float(__ushort_as_half(kvLoadU16(s + 2 * e)));
  if (type == kKvBf16) return __bfloat162float(__ushort_as_bfloat16(kvLoadU16(s + 2 * e)));
  const int g = e / 32, i = e % 32;
  const uint8_t* b = s + g * kvBlockBytes(type);
  const float d = __half2float(__ushort_as_half(kvLoadU16(b)));
  int c;
  if (type == kKvQ8) {
    c = int(int8_t(b[2 + i]));
  } else if (type == kKvQ6) {
    const uint8_t* w = b + 2 + 3 * (i % 8);
    const uint32_t word = uint32_t(w[0]) | uint32_t(w[1]) << 8 | uint32_t(w[2]) << 16;
    c = int((word >> (6 * (i / 8))) & 63u) - 32;
  } else {
    c = int((b[2 + (i % 16)] >> (i < 16 ? 0 : 4)) & 15u) - 8;
  }
  return float(c) * d;  // the CPU decoder's float(code) · d
}

// Item k of a row's runs -> (run, segment c, item g within the segment).
__device__ __forceinline__ bool kvItemAt(const KvSegRun* runs, int nRuns, int k, int* run, int* c, int* g) {
  for (int r = 0; r < nRuns; ++r) {
    const int per = (runs[r].n + 31) / 32, items = per * runs[r].count;
    if (k < items) {
      *run = r, *c = k / per, *g = k % per;
      return true;
    }
    k -= items;
  }
  return false;
}

struct KvRowsParams {
  KvPagesDev pages;
  KvSegRun runs[kKvMaxRuns];
  int nRuns, items;  // items per row (over all runs)
  const float* x;    // append: dense rows [T, width]
  float* y;          // gather: dense rows [T, width]
  int64_t width;
  int T;
  const int32_t* slots;
  int32_t* badRow;  // atomicMin'ed with the first failing row (bad slot or unencodable value)
};

__device__ __forceinline__ uint8_t* kvRowPtr(const KvPagesDev& p, int64_t slot) {
  return p.pool + (slot / p.pageSize) * p.pageBytes + p.layerOffset + (slot % p.pageSize) * p.rowBytes;
}

// Append: pass 1 checks every item of the row (nothing written), the block agrees through one
// shared flag, pass 2 encodes. The check costs a second quantization of the row; an append is a
// few KB per token, negligible next to the attention that reads it.
__global__ void kvAppendKernel(KvRowsParams p) {
  int* flag = dynamicSmem<int>();
  const int t = blockIdx.x, warp = threadIdx.x / 32, nw = blockDim.x / 32;
  const int64_t slot = p.slots[t];
  if (slot < 0 || slot >= p.pages.numPages * p.pages.pageSize) {  // block-uniform
    if (threadIdx.x == 0) atomicMin(p.badRow, int32_t(t));
    return;
  }
  uint8_t* row = kvRowPtr(p.pages, slot);
  const float* xr = p.x + int64_t(t) * p.width;
  if (threadIdx.x == 0) *flag = 0;
  __syncthreads();
  bool ok = true;
  for (int k = warp; k < p.items; k += nw) {
    int r = 0, c = 0, g = 0;  // always set by kvItemAt (k < items); initialized for -Wmaybe-uninitialized
    kvItemAt(p.runs, p.nRuns, k, &r, &c, &g);
    const KvSegRun& s = p.runs[r];
    const int n = s.n - 32 * g < 32 ? s.n - 32 * g : 32;
    ok = kvEncodeItem(s.type, s.hadamard != 0, xr + s.src + c * s.srcStride + 32 * g, n, nullptr, false) && ok;
  }
  if (!ok && threadIdx.x % 32 == 0) atomicOr(reinterpret_cast<unsigned*>(flag), 1u);
  __syncthreads();
  if (*flag) {
    if (threadIdx.x == 0) atomicMin(p.badRow, int32_t(t));
    return;
  }
  for (int k = warp; k < p.items; k += nw) {
    int r = 0, c = 0, g = 0;  // always set by kvItemAt (k < items); initialized for -Wmaybe-uninitialized
    kvItemAt(p.runs, p.nRuns, k, &r, &c, &g);
    const KvSegRun& s = p.runs[r];
    const int n = s.n - 32 * g < 32 ? s.n - 32 * g : 32;
    const int64_t itemBytes = kvIsQuant(s.type) ? kvBlockBytes(s.type) : 64;
    kvEncodeItem(s.type, s.hadamard != 0, xr + s.src + c * s.srcStride + 32 * g, n, row + s.offset + c * s.offsetStride + g * itemBytes, true);
  }
}

// Gather: decode to f32 in the original domain, x = H·y / 32 for rotated groups (the CPU's
// kvReadRows: decode, the same butterflies, then the exact power-of-two scaling).
__global__ void kvGatherKernel(KvRowsParams p) {
  const int t = blockIdx.x, warp = threadIdx.x / 32, nw = blockDim.x / 32, lane = threadIdx.x % 32;
  const int64_t slot = p.slots[t];
  if (slot < 0 || slot >= p.pages.numPages * p.pages.pageSize) {
    if (threadIdx.x == 0) atomicMin(p.badRow, int32_t(t));
    return;
  }
  const uint8_t* row = kvRowPtr(p.pages, slot);
  float* yr = p.y + int64_t(t) * p.width;
  for (int k = warp; k < p.items; k += nw) {
    int r = 0, c = 0, g = 0;  // always set by kvItemAt (k < items); initialized for -Wmaybe-uninitialized
    kvItemAt(p.runs, p.nRuns, k, &r, &c, &g);
    const KvSegRun& s = p.runs[r];
    const int n = s.n - 32 * g < 32 ? s.n - 32 * g : 32;
    const uint8_t* seg = row + s.offset + c * s.offsetStride;
    float v = lane < n ? kvElem(s.type, seg, 32 * g + lane) : 0.f;
    if (s.hadamard && kvIsQuant(s.type)) v = warpHadamard32(v, lane) * (1.0f / 32);
    if (lane < n) yr[s.src + c * s.srcStride + 32 * g + lane] = v;
  }
}

// ---- paged decode attention ----

constexpr int kPdWarps = 4, kPdRowsPerWarp = 4, kPdBr = kPdWarps * kPdRowsPerWarp, kPdBc = 32;

// One segment of the key / value inside a kv head's part of the row (+ h·headStride).
struct KvSegDev {
  int32_t type, n, hadamard;
  int64_t offset;
};

struct PagedDecodeParams {
  const float* q;  // [B, Hq, Dk]
  float* opart;    // [maxSplits, B, Hq, Dv] normalized partial outputs (rotated domain)
  float* lsePart;  // [maxSplits, B, Hq]
  int B, Hq, Hkv;
  KvSegDev k0, k1, v;
  int vFromKey;
  int64_t headStride;
  KvPagesDev pages;
  const int32_t* pageTable;
  int maxPages;
  const int32_t* seqLens;
  int maxSeqLen, keysPerSplit;
  int stageBytes, kb0, kb1, vb;  // staged row stride (k0 | k1 | v bytes, padded) and the three parts' bytes
  float scale;
  int* bad;  // set to 1 on a page index outside the pool or a length outside [0, maxSeqLen]
};

// Σ q[e]·x[e] over a stored segment, in element order (one FMA per term).
__device__ __forceinline__ float kvSegDot(int type, const uint8_t* s, const float* q, int n, float dot) {
  if (kvIsQuant(type)) {
    const int bb = kvBlockBytes(type);
    for (int g = 0; g < n / 32; ++g) {
      const uint8_t* b = s + g * bb;
      const float d = __half2float(__ushort_as_half(kvLoadU16(b)));
      for (int i = 0; i < 32; ++i) {
        int c;
        if (type == kKvQ8) {
          c = int(int8_t(b[2 + i]));
        } else if (type == kKvQ6) {
          const uint8_t* w = b + 2 + 3 * (i % 8);
          c = int(((uint32_t(w[0]) | uint32_t(w[1]) << 8 | uint32_t(w[2]) << 16) >> (6 * (i / 8))) & 63u) - 32;
        } else {
          c = int((b[2 + (i % 16)] >> (i < 16 ? 0 : 4)) & 15u) - 8;
        }
        dot = fmaf(q[32 * g + i], float(c) * d, dot);
      }
    }
    return dot;
  }
  for (int e = 0; e < n; ++e) dot = fmaf(q[e], kvElem(type, s, e), dot);
  return dot;
}

// acc[t] += Σ_j p_j · v_j[lane + 32t] over the 32 staged rows (p_j broadcast from lane j).
template <int TYPE, int NV>
__device__ __forceinline__ void kvPvStep(float* acc, float pj, const uint8_t* vt, int SB, int lane) {
  for (int j = 0; j < kPdBc; ++j) {
    const float pb = __shfl_sync(kFullMask, pj, j);
    const uint8_t* vr = vt + j * SB;
#pragma unroll
    for (int t = 0; t < NV; ++t) acc[t] = fmaf(pb, kvElem(TYPE, vr, lane + 32 * t), acc[t]);
  }
}

// __launch_bounds__(128, 1): without the minimum of one block per SM, ptxas aimed the small
// instantiations at 48-56 registers (an occupancy heuristic) and spilled to local memory; with it
// they take 70-77 registers and spill nothing (ptxas -v, sm_80..sm_90).
template <int DK, int DV>
__global__ void __launch_bounds__(kPdWarps * 32, 1) pagedDecodeKernel(PagedDecodeParams p) {
  static_assert(DV % 32 == 0, "each lane owns DV/32 output dims");
  constexpr int NV = DV / 32;
  const int group = p.Hq / p.Hkv;
  const int b = int(blockIdx.y) / p.Hkv, hk = int(blockIdx.y) % p.Hkv, split = blockIdx.z;
  const int h0 = int(blockIdx.x) * kPdBr;  // first row of the block within the group
  float* qs = dynamicSmem<float>();                                   // [Br][DK] f32
  uint8_t* tile = reinterpret_cast<uint8_t*>(qs + kPdBr * DK);        // [Bc][stageBytes]
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int e = threadIdx.x; e < kPdBr * DK; e += blockDim.x) {
    const int r = h0 + e / DK;
    qs[e] = r < group ? p.q[(size_t(b) * p.Hq + hk * group + r) * DK + e % DK] : 0.f;
  }
  // Rotated keys: q·x = (H·q)·y / 32 on the k0 part, each group of 32 by one warp.
  if (p.k0.hadamard && kvIsQuant(p.k0.type)) {
    __syncthreads();
    const int groups = p.k0.n / 32;
    for (int it = warp; it < kPdBr * groups; it += kPdWarps) {
      float* qg = qs + (it / groups) * DK + (it % groups) * 32;
      const float v = warpHadamard32(qg[lane], lane) * (1.0f / 32);
      qg[lane] = v;  // each lane rewrites only its own element, after the shuffles read them all
    }
  }
  int len = p.seqLens[b];
  if (len < 0 || len > p.maxSeqLen) {
    if (threadIdx.x == 0) atomicExch(p.bad, 1);
    len = len < 0 ? 0 : p.maxSeqLen;
  }
  const int kBegin = split * p.keysPerSplit;
  const int kStop = kBegin + p.keysPerSplit < len ? kBegin + p.keysPerSplit : len;
  float m[kPdRowsPerWarp], l[kPdRowsPerWarp], acc[kPdRowsPerWarp][NV];
#pragma unroll
  for (int rr = 0; rr < kPdRowsPerWarp; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.f;
#pragma unroll
    for (int t = 0; t < NV; ++t) acc[rr][t] = 0.f;
  }
  const int SB = p.stageBytes, halfWords = SB / 2;
  const int kb01 = p.kb0 + p.kb1;
  for (int j0 = kBegin; j0 < kStop; j0 += kPdBc) {
    __syncthreads();  // the previous tile is no longer read (first time: q staged / rotated)
    // Stage 32 rows' k0 | k1 | v bytes as 16-bit words (every segment size and offset is even);
    // rows past the split are zeros, which decode to 0 in every format (no NaN into P·V).
    for (int e = threadIdx.x; e < kPdBc * halfWords; e += blockDim.x) {
      const int j = e / halfWords, w = e % halfWords, t = j0 + j;
      uint16_t bits = 0;
      if (t < kStop && 2 * w < kb01 + p.vb) {
        const int page = p.pageTable[size_t(b) * p.maxPages + t / p.pages.pageSize];
        if (page >= 0 && page < p.pages.numPages) {
          const uint8_t* row = p.pages.pool + int64_t(page) * p.pages.pageBytes + p.pages.layerOffset + int64_t(t % p.pages.pageSize) * p.pages.rowBytes +
                               int64_t(hk) * p.headStride;
          const int byte = 2 * w;
          const uint8_t* src = byte < p.kb0 ? row + p.k0.offset + byte : byte < kb01 ? row + p.k1.offset + (byte - p.kb0) : row + p.v.offset + (byte - kb01);
          bits = kvLoadU16(src);
        } else if (w == 0) {
          atomicExch(p.bad, 1);
        }
      }
      tile[j * SB + 2 * w] = uint8_t(bits);
      tile[j * SB + 2 * w + 1] = uint8_t(bits >> 8);
    }
    __syncthreads();
    const int key = j0 + lane;
    const uint8_t* kr = tile + lane * SB;
#pragma unroll
    for (int rr = 0; rr < kPdRowsPerWarp; ++rr) {
      const int r = h0 + warp * kPdRowsPerWarp + rr;  // warp-uniform
      if (r >= group) continue;
      float s = -INFINITY;
      if (key < kStop) {
        const float* qr = qs + (warp * kPdRowsPerWarp + rr) * DK;
        float dot = kvSegDot(p.k0.type, kr, qr, p.k0.n, 0.f);
        if (p.k1.n) dot = kvSegDot(p.k1.type, kr + p.kb0, qr + p.k0.n, p.k1.n, dot);
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
      const uint8_t* vt = tile + (p.vFromKey ? 0 : kb01);
      switch (p.vFromKey ? p.k0.type : p.v.type) {  // one loop per type: no type test per element
        case kKvF16: kvPvStep<kKvF16, NV>(acc[rr], pj, vt, SB, lane); break;
        case kKvBf16: kvPvStep<kKvBf16, NV>(acc[rr], pj, vt, SB, lane); break;
        case kKvQ8: kvPvStep<kKvQ8, NV>(acc[rr], pj, vt, SB, lane); break;
        case kKvQ6: kvPvStep<kKvQ6, NV>(acc[rr], pj, vt, SB, lane); break;
        default: kvPvStep<kKvQ4, NV>(acc[rr], pj, vt, SB, lane); break;
      }
    }
  }
#pragma unroll
  for (int rr = 0; rr < kPdRowsPerWarp; ++rr) {
    const int r = h0 + warp * kPdRowsPerWarp + rr;
    if (r >= group) continue;
    const int h = hk * group + r;
    const bool empty = l[rr] == 0.f;
    const float inv = empty ? 0.f : 1.0f / l[rr];
    float* o = p.opart + ((size_t(split) * p.B + b) * p.Hq + h) * DV;
#pragma unroll
    for (int t = 0; t < NV; ++t) o[lane + 32 * t] = acc[rr][t] * inv;
    if (lane == 0) p.lsePart[(size_t(split) * p.B + b) * p.Hq + h] = empty ? -INFINITY : m[rr] + logf(l[rr]);
  }
}

__global__ void pagedSplitCountKernel(const int32_t* seqLens, int B, int keysPerSplit, int maxSplits, int* splitsPerBatch) {
  const int b = int(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b < B) {
    const int n = seqLens[b] <= 0 ? 1 : (seqLens[b] + keysPerSplit - 1) / keysPerSplit;
    splitsPerBatch[b] = n < maxSplits ? n : maxSplits;  // a length past maxSeqLen was clamped
  }
}

// Merge one output row (b, h) over its sequence's splits in split order (split_merge.cuh, the
// same merge as FlashAttention's split-KV decode), then, for a rotated value segment, x = H·O / 32 per group of 32 (warp butterflies on the row
// staged in shared memory). One block per row, the merge over the dims by all threads.
__global__ void pagedMergeKernel(const float* opart, const float* lsePart, int rows, int Dv, int Hq, const int* splitsPerBatch, int rotate,
                                 float* out, float* lse) {
  float* o = dynamicSmem<float>();  // [Dv]
  const int row = blockIdx.x, ns = splitsPerBatch[row / Hq];
  const float L = splitMergeLse(lsePart + row, size_t(rows), ns);
  for (int d = threadIdx.x; d < Dv; d += blockDim.x) o[d] = splitMergeValue(lsePart + row, size_t(rows), opart + size_t(row) * Dv + d, size_t(rows) * Dv, ns, L);
  __syncthreads();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  if (rotate) {
    for (int g = warp; g < Dv / 32; g += nw) out[size_t(row) * Dv + 32 * g + lane] = warpHadamard32(o[32 * g + lane], lane) * (1.0f / 32);
  } else {
    for (int d = threadIdx.x; d < Dv; d += blockDim.x) out[size_t(row) * Dv + d] = o[d];
  }
  if (threadIdx.x == 0 && lse) lse[row] = L;
}

// ---- entry points ----

struct KvRowsDeviceArgs {
  KvPagesDev pages;
  const KvSegRun* runs;  // host memory: copied into the launch parameters
  int nRuns;
  const float* x;  // kvAppend: [T, width] (device)
  float* y;        // kvGather: [T, width] (device)
  size_t width, T;
  const int32_t* slots;  // [T] (device)
  int32_t* badRow;       // one int (device), T or more before the launch; the first bad row afterwards
};

// The CPU's segmentsFit for runs: every byte a segment can reach, for any slot, inside its page,
// and every source range inside the dense row. kShape otherwise (kDtype on an unknown type).
inline Status kvCheckRuns(const KvPagesDev& p, const KvSegRun* runs, int nRuns, size_t width, int* items) {
  if (nRuns < 0 || nRuns > kKvMaxRuns || (nRuns && !runs)) return Status::kShape;
  if (p.pageSize <= 0 || p.numPages < 0 || p.pageBytes < 0 || p.layerOffset < 0 || p.rowBytes < 0) return Status::kShape;
  const int64_t lastRow = p.layerOffset + (p.pageSize - 1) * p.rowBytes;
  int64_t total = 0;
  for (int r = 0; r < nRuns; ++r) {
    const KvSegRun& s = runs[r];
    if (s.type < kKvF16 || s.type > kKvQ4) return Status::kDtype;
    if (s.n < 0 || s.count < 0 || s.offset < 0 || s.src < 0 || s.offsetStride < 0 || s.srcStride < 0) return Status::kShape;
    const int64_t bytes = kvBytes(s.type, s.n);
    if (bytes == 0 && s.n != 0) return Status::kShape;
    if (s.count == 0 || s.n == 0) continue;
    const int64_t lastOff = s.offset + (s.count - 1) * s.offsetStride, lastSrc = s.src + (s.count - 1) * s.srcStride;
    if (lastRow + lastOff + bytes > p.pageBytes || lastSrc + s.n > int64_t(width)) return Status::kShape;
    total += int64_t((s.n + 31) / 32) * s.count;
  }
  if (total > 0x7fffffff) return Status::kRange;
  *items = int(total);
  return Status::kOk;
}

inline Status kvRowsLaunch(const Device& d, const KvRowsDeviceArgs& a, bool append) {
  if (a.T > 0x7fffffffu) return Status::kRange;
  if (a.T > 0 && (!a.slots || !a.badRow || !(append ? static_cast<const void*>(a.x) : a.y))) return Status::kShape;
  KvRowsParams p{};
  const Status s = kvCheckRuns(a.pages, a.runs, a.nRuns, a.width, &p.items);
  if (s != Status::kOk) return s;
  p.pages = a.pages;
  for (int r = 0; r < a.nRuns; ++r) p.runs[r] = a.runs[r];
  p.nRuns = a.nRuns, p.x = a.x, p.y = a.y, p.width = int64_t(a.width), p.T = int(a.T), p.slots = a.slots, p.badRow = a.badRow;
  LaunchConfig c;
  c.grid.x = uint32_t(a.T);
  // 4 warps: a standard-cache row of 8 heads x 128 is 64 items (16 per warp); an MLA row 18.
  c.block.x = 128;
  c.smem = append ? sizeof(int) : 0;
  return launchKernel(d, c, append ? kvAppendKernel : kvGatherKernel, p);
}

// Quantize and write T dense rows into their slots (the CPU's kvWriteRows, byte for byte).
// Afterwards *badRow < T names the first row that had a bad slot or an unencodable value
// (kRange for the binding); that row and only the failing rows are left unwritten.
KVC_ENTRY Status kvAppend(const Device& d, const KvRowsDeviceArgs& a) { return kvRowsLaunch(d, a, true); }
// Decode the rows at slots into y [T, width] in the original (unrotated) domain (kvReadRows).
KVC_ENTRY Status kvGather(const Device& d, const KvRowsDeviceArgs& a) { return kvRowsLaunch(d, a, false); }

struct PagedDecodeDeviceArgs {
  const float* q;  // [B, Hq, Dk], Dk = k0.n + k1.n
  float* out;      // [B, Hq, Dv]
  float* lse;      // [B, Hq], may be null
  int B, Hq, Hkv;
  KvSegDev k0, k1, v;  // v ignored with vFromKey (MLA: V = the first v.n values of the key)
  bool vFromKey;
  size_t headStride;
  KvPagesDev pages;
  const int32_t* pageTable;  // [B, maxPages] (device)
  int maxPages;
  const int32_t* seqLens;  // [B] (device); maxSeqLen bounds them (a larger one is clamped, flagged)
  int maxSeqLen;
  int keysPerSplit;      // a positive multiple of 32 (the CPU uses 512)
  float scale;
  float* scratch;        // pagedDecodeScratchFloats floats (device)
  int* splitsPerBatch;   // B ints (device)
  int* bad;              // one int (device), 0 before; 1 after a bad page index or length
};
inline int pagedDecodeMaxSplits(const PagedDecodeDeviceArgs& a) {
  return a.maxSeqLen <= 0 || a.keysPerSplit <= 0 ? 1 : (a.maxSeqLen + a.keysPerSplit - 1) / a.keysPerSplit;
}
inline size_t pagedDecodeScratchFloats(const PagedDecodeDeviceArgs& a) {
  return size_t(pagedDecodeMaxSplits(a)) * size_t(a.B) * size_t(a.Hq) * (size_t(a.v.n) + 1);
}

template <int DK, int DV>
Status pagedDecodeLaunch(const Device& d, const PagedDecodeDeviceArgs& a, PagedDecodeParams& p, int maxSplits) {
  LaunchConfig c;
  c.grid.x = ceilDiv(size_t(a.Hq / a.Hkv), kPdBr);
  c.grid.y = uint32_t(a.B * a.Hkv);
  c.grid.z = uint32_t(maxSplits);
  c.block.x = kPdWarps * 32;
  c.smem = size_t(kPdBr) * DK * sizeof(float) + size_t(kPdBc) * p.stageBytes;
  return launchKernel(d, c, pagedDecodeKernel<DK, DV>, p);
}

// The instantiated (Dk, Dv): (64, 64) and (128, 128) standard heads, (576, 512) the DeepSeek-V2
// latent + rope, (96, 64) a small latent for tests and small models. Types are runtime (each is
// a warp-uniform branch around the decode), so the list does not multiply by five.
KVC_ENTRY Status pagedDecode(const Device& d, const PagedDecodeDeviceArgs& a) {
  if (a.B <= 0 || a.Hq <= 0 || a.Hkv <= 0 || a.Hq % a.Hkv != 0 || a.maxPages <= 0) return Status::kShape;
  if (a.keysPerSplit <= 0 || a.keysPerSplit % kPdBc != 0) return Status::kShape;
  if (!a.q || !a.out || !a.scratch || !a.splitsPerBatch || !a.bad || !a.pageTable || !a.seqLens) return Status::kShape;
  for (const KvSegDev* s : {&a.k0, &a.k1, &a.v})
    if (s->type < kKvF16 || s->type > kKvQ4) return Status::kDtype;
  const KvPagesDev& P = a.pages;
  if (P.pageSize <= 0 || P.numPages < 0 || P.layerOffset < 0 || P.rowBytes < 0) return Status::kShape;
  const int Dk = a.k0.n + a.k1.n, Dv = a.v.n;
  if (a.k0.n <= 0 || a.k1.n < 0 || Dv <= 0) return Status::kShape;
  if (a.vFromKey && (a.Hkv != 1 || a.v.n > a.k0.n || a.v.type != a.k0.type || a.v.hadamard != a.k0.hadamard)) return Status::kShape;
  const KvSegDev* segs[3] = {&a.k0, &a.k1, &a.v};
  for (int i = 0; i < 3; ++i) {
    const KvSegDev& s = *segs[i];
    if (i == 2 && a.vFromKey) continue;
    const int64_t bytes = kvBytes(s.type, s.n);
    if ((bytes == 0 && s.n != 0) || s.offset < 0 ||
        P.layerOffset + (P.pageSize - 1) * P.rowBytes + s.offset + int64_t(a.Hkv - 1) * int64_t(a.headStride) + bytes > P.pageBytes)
      return Status::kShape;
  }
  if (a.maxSeqLen < 0 || int64_t(a.maxSeqLen) > int64_t(P.pageSize) * a.maxPages) return Status::kRange;
  if (size_t(a.B) * a.Hkv > 65535 || size_t(a.B) * a.Hq > 0x7fffffffu) return Status::kRange;
  const int maxSplits = pagedDecodeMaxSplits(a);
  if (maxSplits > 65535) return Status::kRange;
  PagedDecodeParams p{};
  p.q = a.q, p.opart = a.scratch, p.lsePart = a.scratch + size_t(maxSplits) * a.B * a.Hq * Dv;
  p.B = a.B, p.Hq = a.Hq, p.Hkv = a.Hkv, p.k0 = a.k0, p.k1 = a.k1, p.v = a.v, p.vFromKey = a.vFromKey;
  p.headStride = int64_t(a.headStride), p.pages = P, p.pageTable = a.pageTable, p.maxPages = a.maxPages, p.seqLens = a.seqLens;
  p.maxSeqLen = a.maxSeqLen, p.keysPerSplit = a.keysPerSplit, p.scale = a.scale, p.bad = a.bad;
  p.kb0 = int(kvBytes(a.k0.type, a.k0.n)), p.kb1 = int(kvBytes(a.k1.type, a.k1.n));
  const int vb = a.vFromKey ? 0 : int(kvBytes(a.v.type, a.v.n));
  p.vb = vb;
  // Staged row stride: the bytes rounded up to whole 32-bit words, and to an odd number of words,
  // so the 32 lanes of a warp (one row each, same column) hit 32 different banks (a q4 V2 latent
  // row of 416 bytes = 104 words would put lanes 0, 4, 8, ... in one bank).
  int sb = (p.kb0 + p.kb1 + vb + 3) / 4 * 4;
  if ((sb / 4) % 2 == 0) sb += 4;
  p.stageBytes = sb;
  LaunchConfig sc;
  sc.grid.x = ceilDiv(size_t(a.B), 128);
  sc.block.x = 128;
  Status s = launchKernel(d, sc, pagedSplitCountKernel, a.seqLens, a.B, a.keysPerSplit, maxSplits, a.splitsPerBatch);
  if (s != Status::kOk) return s;
  if (Dk == 64 && Dv == 64) s = pagedDecodeLaunch<64, 64>(d, a, p, maxSplits);
  else if (Dk == 128 && Dv == 128) s = pagedDecodeLaunch<128, 128>(d, a, p, maxSplits);
  else if (Dk == 576 && Dv == 512) s = pagedDecodeLaunch<576, 512>(d, a, p, maxSplits);
  else if (Dk == 96 && Dv == 64) s = pagedDecodeLaunch<96, 64>(d, a, p, maxSplits);
  else return Status::kShape;
  if (s != Status::kOk) return s;
  LaunchConfig m;
  m.grid.x = uint32_t(a.B * a.Hq);
  m.block.x = 128;
  m.smem = size_t(Dv) * sizeof(float);
  const int rotate = (a.vFromKey ? a.k0.hadamard : a.v.hadamard) && kvIsQuant(a.vFromKey ? a.k0.type : a.v.type);
  return launchKernel(d, m, pagedMergeKernel, static_cast<const float*>(p.opart), static_cast<const float*>(p.lsePart), a.B * a.Hq, Dv, a.Hq,
                      static_cast<const int*>(a.splitsPerBatch), rotate, a.out, a.lse);
}

}  // namespace kvant::cuda
