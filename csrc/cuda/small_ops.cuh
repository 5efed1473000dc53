// The small ops of the decode loop on the GPU: RMSNorm, rotary (interleaved pairs), SiLU-gate,
// softmax, argmax, embedding gather. Same contracts as csrc/cpu/small_ops.h (the reference).
//
// Row ops use one block per row: decode rows are a few thousand values, so one block of 256
// threads streams a row with coalesced loads and reduces it with warp shuffles plus one shared
// memory hop. Every reduction tree is fixed by the block size alone, so the bits never depend on
// scheduling (the emulation runs threads in seeded orders to check exactly that).
#pragma once
#include "kvant/dtype.h"
#include "launch.h"

namespace kvant::cuda {

constexpr uint32_t kRowThreads = 256;  // 8 warps: enough loads in flight per SM for a row of ~5K

// Sum over the block; every thread gets the result. Warps reduce by butterfly, lane 0 of each
// publishes to red[warp], then every warp reduces the partials itself (same tree, same bits),
// which saves the broadcast barrier. The trailing barrier makes `red` reusable.
__device__ inline float blockSum(float v, float* red) {
  v = warpSum(v);
  const unsigned lane = threadIdx.x % 32, nw = (blockDim.x + 31) / 32;
  if (lane == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float r = lane < nw ? red[lane] : 0.f;
  r = warpSum(r);
  __syncthreads();
  return r;
}
__device__ inline float blockMax(float v, float* red) {
  v = warpMax(v);
  const unsigned lane = threadIdx.x % 32, nw = (blockDim.x + 31) / 32;
  if (lane == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  float r = lane < nw ? red[lane] : -INFINITY;
  r = warpMax(r);
  __syncthreads();
  return r;
}

template <int WT>  // DType of the weight / table: kF32, kF16, kBF16
__device__ __forceinline__ float loadAs(const void* p, size_t i) {
  if (WT == int(DType::kF32)) return static_cast<const float*>(p)[i];
  if (WT == int(DType::kF16)) return loadF16(static_cast<const uint16_t*>(p), i);
  return loadBf16(static_cast<const uint16_t*>(p), i);
}

// y = w * x / sqrt(mean(x^2) + eps), one block per row; y may alias x (every read of the row
// happens before the barrier inside blockSum, every write after it).
template <int WT>
__global__ void rmsNormKernel(const float* x, const void* w, float eps, float* y, size_t n) {
  float* red = dynamicSmem<float>();
  const float* xr = x + size_t(blockIdx.x) * n;
  float* yr = y + size_t(blockIdx.x) * n;
  float s = 0.f;
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) s = fmaf(xr[i], xr[i], s);
  s = blockSum(s, red);
  const float inv = rsqrtf(s / float(n) + eps);
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * loadAs<WT>(w, i);
}

// Rotary on x [rows, heads, stride]: pairs (x[2i], x[2i+1]) of dims [offset, offset + 2*pairs)
// rotated by pos[row] * invFreq[i] with amplitude amp. The angle is formed and its cos/sin taken
// in f64, as the CPU reference does: positions up to 2^20 times frequencies near 1 would lose
// the angle's low bits in f32. One block per (row, head); a few pairs per thread.
__global__ void ropeKernel(float* x, size_t heads, size_t stride, size_t offset, size_t pairs, const int32_t* pos,
                           const float* invFreq, float amp) {
  const size_t rh = blockIdx.x, row = rh / heads;
  float* v = x + rh * stride + offset;
  for (size_t i = threadIdx.x; i < pairs; i += blockDim.x) {
    const double ang = double(pos[row]) * double(invFreq[i]);
    const float cs = float(cos(ang)) * amp, sn = float(sin(ang)) * amp;
    const float a = v[2 * i], b = v[2 * i + 1];
    v[2 * i] = a * cs - b * sn;
    v[2 * i + 1] = a * sn + b * cs;
  }
}

// y[r][i] = silu(g[r][i]) * u[r][i], g and u rows inStride apart (gate | up halves of one row).
__global__ void siluGateKernel(const float* g, const float* u, size_t inStride, float* y, size_t rows, size_t n) {
  const size_t total = rows * n, step = size_t(gridDim.x) * blockDim.x;
  for (size_t e = size_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += step) {
    const size_t r = e / n, i = e % n;
    const float gv = g[r * inStride + i];
    y[e] = gv / (1.0f + expf(-gv)) * u[r * inStride + i];
  }
}

// Row softmax in place; a row of -inf only becomes zeros (nothing to attend).
__global__ void softmaxKernel(float* x, size_t n) {
  float* red = dynamicSmem<float>();
  float* v = x + size_t(blockIdx.x) * n;
  float m = -INFINITY;
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) m = fmaxf(m, v[i]);
  m = blockMax(m, red);
  if (m == -INFINITY) {
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) v[i] = 0.f;
    return;
  }
  float s = 0.f;
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) {
    const float e = expf(v[i] - m);
    v[i] = e;  // each thread rereads only its own elements below
    s += e;
  }
  s = blockSum(s, red);
  const float inv = 1.0f / s;
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) v[i] *= inv;
}

// (value, index) maximum: NaN never wins, ties go to the lower index, -1 = nothing yet.
__device__ __forceinline__ void argBetter(float& bv, int& bi, float v, int i) {
  if (i < 0 || v != v) return;
  if (bi < 0 || v > bv || (v == bv && i < bi)) {
    bv = v;
    bi = i;
  }
}

__global__ void argmaxKernel(const float* x, size_t n, int32_t* out) {
  float* red = dynamicSmem<float>();
  int* redi = reinterpret_cast<int*>(red + 32);
  const float* v = x + size_t(blockIdx.x) * n;
  float bv = 0.f;
  int bi = -1;
  for (size_t i = threadIdx.x; i < n; i += blockDim.x) argBetter(bv, bi, v[i], int(i));
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, bv, o);
    const int oi = __shfl_xor_sync(kFullMask, bi, o);
    argBetter(bv, bi, ov, oi);
  }
  const unsigned lane = threadIdx.x % 32, nw = (blockDim.x + 31) / 32;
  if (lane == 0) {
    red[threadIdx.x / 32] = bv;
    redi[threadIdx.x / 32] = bi;
  }
  __syncthreads();
  if (threadIdx.x < 32) {
    bv = lane < nw ? red[lane] : 0.f;
    bi = lane < nw ? redi[lane] : -1;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(kFullMask, bv, o);
      const int oi = __shfl_xor_sync(kFullMask, bi, o);
      argBetter(bv, bi, ov, oi);
    }
    if (threadIdx.x == 0) out[blockIdx.x] = bi;
  }
}

// out[t] = table[ids[t]] widened to f32. An id outside [0, vocab) gives a zero row and lowers
// *badToken to t (atomicMin: the first bad token wins whatever the block order).
template <int WT>
__global__ void embeddingKernel(const void* table, size_t vocab, size_t dim, const int32_t* ids, float* out, int32_t* badToken) {
  const size_t t = blockIdx.x;
  const int32_t id = ids[t];
  float* o = out + t * dim;
  const bool bad = id < 0 || size_t(id) >= vocab;
  if (bad && threadIdx.x == 0 && blockIdx.y == 0) atomicMin(badToken, int32_t(t));
  for (size_t i = size_t(blockIdx.y) * blockDim.x + threadIdx.x; i < dim; i += size_t(gridDim.y) * blockDim.x)
    o[i] = bad ? 0.f : loadAs<WT>(table, size_t(id) * dim + i);
}

// MoE routing from router logits [rows, E] (same contract and tie rules as the CPU reference):
// softmax in f64 (routing decisions should not hinge on rounding), then greedy top-k or
// group-limited top-k (group score = max of its experts, keep topkGroup groups, ties to the lower
// group), experts ties to the lower index; weights renormalized (k > 1 and normTopk) or scaled.
// One warp per row: E is small (64 to 160 experts), so lanes share the exp and the argmax scans;
// the sums run on lane 0 in expert order, the CPU's order, so weights agree bit for bit.
// Shared memory per warp: E doubles (probabilities) + nGroup doubles + E chars (taken flags).
__global__ void routeTopKKernel(const float* logits, int rows, int E, int k, int nGroup, int topkGroup, int groupLimited, int normTopk,
                                float scaling, int32_t* idx, float* w) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, wpb = blockDim.x / 32;
  const int row = int(blockIdx.x) * wpb + warp;
  double* base = dynamicSmem<double>() + size_t(warp) * (E + nGroup + (E + 7) / 8);
  double* s = base;
  double* gs = s + E;
  char* keep = reinterpret_cast<char*>(gs + nGroup);  // E bytes: 1 = still eligible
  if (row >= rows) return;  // warp-uniform; no block barrier follows
  const float* l = logits + size_t(row) * E;
  double m = -INFINITY;
  for (int e = lane; e < E; e += 32) m = fmax(m, double(l[e]));
  for (int o = 16; o > 0; o >>= 1) m = fmax(m, __shfl_xor_sync(kFullMask, m, o));
  for (int e = lane; e < E; e += 32) s[e] = exp(double(l[e]) - m);
  __syncwarp();
  if (lane == 0) {
    double z = 0;
    for (int e = 0; e < E; ++e) z += s[e];
    for (int e = 0; e < E; ++e) s[e] /= z;
  }
  __syncwarp();
  const int per = E / nGroup;
  for (int e = lane; e < E; e += 32) keep[e] = 1;
  if (groupLimited) {
    for (int g = lane; g < nGroup; g += 32) {
      double best = -1;
      for (int e = g * per; e < (g + 1) * per; ++e) best = s[e] > best ? s[e] : best;
      gs[g] = best;
    }
    __syncwarp();
    if (lane == 0) {
      // Keep topkGroup groups (strictly greater wins: ties keep the lower group), mask the rest.
      char* gk = keep;  // reuse: mark groups first in a local loop
      unsigned long long chosen[4] = {0, 0, 0, 0};  // up to 256 groups
      for (int j = 0; j < topkGroup; ++j) {
        int best = -1;
        for (int g = 0; g < nGroup; ++g)
          if (!((chosen[g / 64] >> (g % 64)) & 1) && (best < 0 || gs[g] > gs[best])) best = g;
        chosen[best / 64] |= 1ull << (best % 64);
      }
      for (int e = 0; e < E; ++e) gk[e] = char((chosen[(e / per) / 64] >> ((e / per) % 64)) & 1);
    }
    __syncwarp();
  }
  // k rounds of a warp argmax over the eligible experts (masked ones score 0, as on the CPU).
  double sum = 0;
  for (int j = 0; j < k; ++j) {
    double bv = -1;
    int bi = -1;
    for (int e = lane; e < E; e += 32) {
      if (keep[e] == 2) continue;  // already taken
      const double v = keep[e] ? s[e] : 0.0;
      if (bi < 0 || v > bv) {  // lanes scan increasing e: strict > keeps the lower index
        bv = v;
        bi = e;
      }
    }
    for (int o = 16; o > 0; o >>= 1) {
      const double ov = __shfl_xor_sync(kFullMask, bv, o);
      const int oi = __shfl_xor_sync(kFullMask, bi, o);
      if (oi >= 0 && (bi < 0 || ov > bv || (ov == bv && oi < bi))) {
        bv = ov;
        bi = oi;
      }
    }
    if (lane == 0) {
      idx[size_t(row) * k + j] = bi;
      w[size_t(row) * k + j] = float(bv);
      sum += bv;
      keep[bi] = 2;
    }
    __syncwarp();
  }
  if (lane == 0)
    for (int j = 0; j < k; ++j) {
      float& wj = w[size_t(row) * k + j];
      if (k > 1 && normTopk) wj = float(double(wj) / (sum + 1e-20));
      else wj *= scaling;
    }
}

// ---- entry points (host side; identical in the device build and under the emulation) ----

inline LaunchConfig rowConfig(size_t rows, size_t n, size_t smemBytes) {
  LaunchConfig c;
  // One warp for tiny rows, up to 8: never more threads than 32-rounded elements.
  const size_t t = n >= kRowThreads ? kRowThreads : ((n + 31) / 32) * 32;
  c.grid.x = uint32_t(rows);
  c.block.x = uint32_t(t ? t : 32);
  c.smem = smemBytes;
  return c;
}

KV_ENTRY Status rmsNorm(const Device& d, const float* x, const void* w, DType wType, float eps, float* y, size_t rows, size_t n) {
  if (n == 0) return Status::kShape;
  if (rows > 0x7fffffffu) return Status::kRange;
  const LaunchConfig c = rowConfig(rows, n, 32 * sizeof(float));
  switch (wType) {
    case DType::kF32: return launchKernel(d, c, rmsNormKernel<int(DType::kF32)>, x, w, eps, y, n);
    case DType::kF16: return launchKernel(d, c, rmsNormKernel<int(DType::kF16)>, x, w, eps, y, n);
    case DType::kBF16: return launchKernel(d, c, rmsNormKernel<int(DType::kBF16)>, x, w, eps, y, n);
    default: return Status::kDtype;
  }
}

KV_ENTRY Status ropeInterleaved(const Device& d, float* x, size_t rows, size_t heads, size_t stride, size_t offset, size_t pairs,
                                const int32_t* pos, const float* invFreq, float amp) {
  if (offset + 2 * pairs > stride) return Status::kShape;
  if (rows * heads > 0x7fffffffu) return Status::kRange;
  LaunchConfig c;
  c.grid.x = uint32_t(rows * heads);
  c.block.x = pairs >= 64 ? 64 : 32;  // 32 pairs (DeepSeek's rope dim 64) fill one warp
  return launchKernel(d, c, ropeKernel, x, heads, stride, offset, pairs, pos, invFreq, amp);
}

KV_ENTRY Status siluGate(const Device& d, const float* g, const float* u, size_t inStride, float* y, size_t rows, size_t n) {
  if (inStride < n) return Status::kShape;
  LaunchConfig c;
  const size_t blocks = (rows * n + 255) / 256;
  c.grid.x = uint32_t(blocks < 4096 ? blocks : 4096);  // grid-stride beyond 1M values
  c.block.x = 256;
  return launchKernel(d, c, siluGateKernel, g, u, inStride, y, rows, n);
}

KV_ENTRY Status softmaxRows(const Device& d, float* x, size_t rows, size_t n) {
  if (n == 0) return Status::kShape;
  if (rows > 0x7fffffffu) return Status::kRange;
  return launchKernel(d, rowConfig(rows, n, 32 * sizeof(float)), softmaxKernel, x, n);
}

KV_ENTRY Status argmaxRows(const Device& d, const float* x, size_t rows, size_t n, int32_t* out) {
  if (n == 0 || n > 0x7fffffffu) return Status::kShape;
  if (rows > 0x7fffffffu) return Status::kRange;
  return launchKernel(d, rowConfig(rows, n, 64 * sizeof(float)), argmaxKernel, x, n, out);
}

// *badToken must hold n (or any value >= n) before the launch; afterwards it is the first token
// whose id was out of range, or unchanged. The binding reads it back and raises KVANT_RANGE.
KV_ENTRY Status embeddingGather(const Device& d, const void* table, DType type, size_t vocab, size_t dim, const int32_t* ids, size_t n,
                                float* out, int32_t* badToken) {
  if (dim == 0) return Status::kShape;
  if (n > 0x7fffffffu) return Status::kRange;
  LaunchConfig c;
  c.grid.x = uint32_t(n);
  c.grid.y = dim > 256 * 8 ? 8 : ceilDiv(dim, 256);
  c.block.x = 256;
  switch (type) {
    case DType::kF32: return launchKernel(d, c, embeddingKernel<int(DType::kF32)>, table, vocab, dim, ids, out, badToken);
    case DType::kF16: return launchKernel(d, c, embeddingKernel<int(DType::kF16)>, table, vocab, dim, ids, out, badToken);
    case DType::kBF16: return launchKernel(d, c, embeddingKernel<int(DType::kBF16)>, table, vocab, dim, ids, out, badToken);
    default: return Status::kDtype;
  }
}

// Routing: idx [rows, k] int32 and w [rows, k] f32 from logits [rows, experts].
KV_ENTRY Status routeTopK(const Device& d, const float* logits, size_t rows, size_t experts, size_t k, size_t nGroup, size_t topkGroup,
                          bool groupLimited, bool normTopk, float scaling, int32_t* idx, float* w) {
  if (k == 0 || k > experts || nGroup == 0 || experts % nGroup != 0 || topkGroup == 0 || topkGroup > nGroup) return Status::kShape;
  if (groupLimited && k > topkGroup * (experts / nGroup)) return Status::kShape;
  if (experts > 1024 || nGroup > 256) return Status::kShape;  // one warp's shared scratch per row
  if (rows > 0x7fffffffu) return Status::kRange;
  constexpr uint32_t kWarps = 4;
  LaunchConfig c;
  c.block.x = 32 * kWarps;
  c.grid.x = ceilDiv(rows, kWarps);
  c.smem = kWarps * (experts + nGroup + (experts + 7) / 8) * sizeof(double);
  return launchKernel(d, c, routeTopKKernel, logits, int(rows), int(experts), int(k), int(nGroup), int(topkGroup), int(groupLimited),
                      int(normTopk), scaling, idx, w);
}

}  // namespace kvant::cuda
