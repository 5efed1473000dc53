// Group quantization family on the GPU: dequantize and round-to-nearest (RTN) quantize + pack,
// in the GPTQ packed format of qformat.cuh / csrc/include/kvant/quant_format.h.
#pragma once
#include "qformat.cuh"

namespace kvant::cuda {

// Dequantize W to out [N, K] (f32, or f16 bits when outF16), in input-channel order: kernel row j
// lands in column perm[j]. One thread per (32-row unit, column): it reads bits consecutive words
// of one column.
__global__ void gptqDequantKernel(QMatrix q, void* out, int outF16) {
  const int64_t K = q.fmt.K, N = q.fmt.N, G = q.fmt.groupSize < 0 ? K : q.fmt.groupSize;
  const int bits = q.fmt.bits, maxq = (1 << bits) - 1;
  const int64_t units = (K + 31) / 32;
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= units * N) return;
  const int64_t n = e % N, u = e / N;
  for (int i = 0; i < 32; ++i) {
    const int64_t j = u * 32 + i;
    if (j >= K) break;
    uint32_t code;
    if (bits == 3) {
      const uint32_t* w = q.qweight + (u * 3) * N + n;
      code = code3(w[0], w[N], w[2 * N], i);
    } else {
      const int f = 32 / bits;
      code = (q.qweight[(j / f) * N + n] >> (bits * (j % f))) & uint32_t(maxq);
    }
    const int64_t g = j / G;
    const float s = __half2float(__ushort_as_half(q.scales[g * N + n]));
    const float w = float(int(code) - zeroOf(q, g, n)) * s;
    const int64_t k = q.perm ? q.perm[j] : j;
    if (outF16) static_cast<uint16_t*>(out)[n * K + k] = __half_as_ushort(__float2half_rn(w));
    else static_cast<float*>(out)[n * K + k] = w;
  }
}

// Round-to-nearest quantization of W [N, K] f32 (a Linear's weight, row n = output channel) into
// the packed format, one group at a time (SPEC §2.3, min-max, no act-order):
//   xmin = min(0, min x), xmax = max(0, max x); sym: xmax = max(-xmin, xmax), xmin = -xmax if < 0;
//   an all-zero group uses [-1, 1]; scale = (xmax - xmin) / maxq, rounded to the stored f16 *before*
//   the codes are computed, so dequantization reproduces exactly the grid the codes were chosen on;
//   zero = 2^(bits-1) (sym) or clamp(rint(-xmin / scale), 0, maxq); q = clamp(rint(x / scale) + zero, 0, maxq)
//   (rint: round half to even, as torch.round). A scale that rounds to 0 in f16 stores every code
//   at the zero point; a non-finite weight or a scale above f16's range sets *bad (KVANT_RANGE).
//   The same rules as the CPU reference (csrc/cpu/quant.cc), which the tests hold it to bit for bit.
// One thread per (group, chunk of columns sharing one qzeros word: 32/bits columns, or 32 for
// 3 bits), so every packed word has exactly one writer: qweight words need groups that start on
// a word boundary (G % 32 == 0, or one group of K). Reads are strided along K: quantization runs
// once per model, it is not the hot path.
__global__ void rtnQuantizeKernel(const float* W, QuantFormat f, uint32_t* qweight, uint32_t* qzeros, uint16_t* scales, int* bad) {
  const int64_t K = f.K, N = f.N, G = f.groupSize < 0 ? K : f.groupSize;
  const int bits = f.bits, maxq = (1 << bits) - 1;
  const int64_t chunk = bits == 3 ? 32 : 32 / bits;
  const int64_t chunks = N / chunk, ng = (K + G - 1) / G;
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e >= chunks * ng) return;
  const int64_t c0 = (e % chunks) * chunk, g = e / chunks;
  const int64_t k0 = g * G, k1 = k0 + G < K ? k0 + G : K;
  uint32_t zw[3] = {0, 0, 0};  // this chunk's qzeros word(s)
  for (int64_t cc = 0; cc < chunk; ++cc) {
    const int64_t n = c0 + cc;
    const float* x = W + n * K;
    float xmin = 0.f, xmax = 0.f;
    bool finite = true;
    for (int64_t k = k0; k < k1; ++k) {
      const float v = x[k];
      finite = finite && isfinite(v);
      xmin = fminf(xmin, v);
      xmax = fmaxf(xmax, v);
    }
    if (f.sym) {
      xmax = fmaxf(-xmin, xmax);
      if (xmin < 0.f) xmin = -xmax;
    }
    if (xmin == 0.f && xmax == 0.f) {
      xmin = -1.f;
      xmax = 1.f;
    }
    const unsigned short s16 = __half_as_ushort(__float2half_rn((xmax - xmin) / float(maxq)));
    if ((s16 & 0x7c00) == 0x7c00) finite = false;
    if (!finite) atomicExch(bad, 1);
    const float s = __half2float(__ushort_as_half(s16));
    scales[g * N + n] = s16;
    // A scale that rounds to 0 (the group is below f16's range) stores every code at the zero
    // point, which dequantizes to 0 (the CPU reference's rule).
    const int zero = f.sym ? (maxq + 1) / 2 : s == 0.f ? 0 : int(fminf(fmaxf(rintf(-xmin / s), 0.f), float(maxq)));
    const uint32_t stored = f.zeroFormat == int32_t(ZeroFormat::kGptqV1) ? uint32_t((zero - 1) & maxq) : uint32_t(zero);
    const int bit = int(bits * cc);  // 3 bits: cc < 32, bit < 96 over the 3-word triple
    zw[bit / 32] |= stored << (bit % 32);
    if (bit % 32 + bits > 32) zw[bit / 32 + 1] |= stored >> (32 - bit % 32);
    // Codes of this column, packed along K into whole words (groups start on word boundaries).
    uint32_t acc[3] = {0, 0, 0};
    const int64_t span = bits == 3 ? 32 : 32 / bits;  // codes per packed unit (1 word, or 3 for 3 bits)
    for (int64_t k = k0; k < k1; ++k) {
      const float qf = s == 0.f ? float(zero) : fminf(fmaxf(rintf(x[k] / s) + float(zero), 0.f), float(maxq));
      const uint32_t q = finite ? uint32_t(qf) : 0u;
      const int64_t i = (k - k0) % span;
      const int b = int(bits * i);
      acc[b / 32] |= q << (b % 32);
      if (b % 32 + bits > 32) acc[b / 32 + 1] |= q >> (32 - b % 32);
      if (i == span - 1 || k == k1 - 1) {
        const int64_t row = (k - i) * bits / 32;  // first packed row of this unit
        for (int w = 0; w < (bits == 3 ? 3 : 1); ++w) qweight[(row + w) * N + n] = acc[w];
        acc[0] = acc[1] = acc[2] = 0;
      }
    }
  }
  const int64_t zc = N * bits / 32, zcol = c0 * bits / 32;
  for (int w = 0; w < (bits == 3 ? 3 : 1); ++w) qzeros[g * zc + zcol + w] = zw[w];
}

// ---- entry points ----

KV_ENTRY Status gptqDequantize(const Device& d, const QMatrix& q, void* out, bool outF16) {
  const Status s = checkQMatrix(q);
  if (s != Status::kOk) return s;
  LaunchConfig c;
  c.block.x = 256;
  c.grid.x = ceilDiv(size_t((q.fmt.K + 31) / 32) * size_t(q.fmt.N), 256);
  return launchKernel(d, c, gptqDequantKernel, q, out, int(outF16));
}

// RTN quantize W [N, K] f32 into qweight/qzeros/scales sized for f (f.groupSize % 32 == 0 or -1).
// *bad must be 0 before the launch; it is 1 afterwards if W held a non-finite value.
KV_ENTRY Status rtnQuantize(const Device& d, const float* W, const QuantFormat& f, uint32_t* qweight, uint32_t* qzeros, uint16_t* scales,
                            int* bad) {
  const QMatrix probe{f, nullptr, nullptr, nullptr, nullptr};
  const Status s = checkQMatrix(probe);
  if (s != Status::kOk) return s;
  const int64_t G = qEffectiveGroup(f);
  if (G != f.K && G % 32 != 0) return Status::kShape;
  const int64_t chunk = f.bits == 3 ? 32 : 32 / f.bits;
  LaunchConfig c;
  c.block.x = 128;
  c.grid.x = ceilDiv(size_t(f.N / chunk) * size_t(qGroupCount(f)), 128);
  return launchKernel(d, c, rtnQuantizeKernel, W, f, qweight, qzeros, scales, bad);
}

}  // namespace kvant::cuda
