// KV cache codecs (scalar reference) and the row writer/reader over pages.
#include "kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kvant/half.h"

namespace kvant {

size_t kvSegmentBytes(KvType t, size_t n) {
  switch (t) {
    case KvType::kF16:
    case KvType::kBf16: return 2 * n;
    case KvType::kQ8: return n % kKvGroup ? 0 : n / kKvGroup * sizeof(KvBlockQ8);
    case KvType::kQ6: return n % kKvGroup ? 0 : n / kKvGroup * sizeof(KvBlockQ6);
    case KvType::kQ4: return n % kKvGroup ? 0 : n / kKvGroup * sizeof(KvBlockQ4);
  }
  return 0;
}

namespace scalar {
namespace {

// y = H·y on each group of 32: five butterfly stages (distance 1, 2, 4, 8, 16); the lower
// element of a pair becomes a + b, the upper a - b. Additions only, so any ISA that performs
// the same stages gets the same bits.
void hadamard32(float* x, size_t n) {
  for (size_t g = 0; g < n; g += kKvGroup) {
    float* v = x + g;
    for (size_t h = 1; h < kKvGroup; h <<= 1)
      for (size_t i = 0; i < kKvGroup; i += 2 * h)
        for (size_t j = i; j < i + h; ++j) {
          const float a = v[j], b = v[j + h];
          v[j] = a + b;
          v[j + h] = a - b;
        }
  }
}

// Codes of one group: d = f16(absmax / qmax); q = clamp(rne(x / d), ±qmax) computed as
// x · (1/d) with the *stored* scale, so the decoder's d·q is what the encoder aimed at.
// |x - d·q| <= d/2 (+ the clamp, at most d·qmax·2^-11 when f16 rounded d down).
bool groupCodes(const float* x, int qmax, int32_t* q, uint16_t* dOut) {
  float amax = 0;
  for (size_t i = 0; i < kKvGroup; ++i) amax = std::fabs(x[i]) > amax ? std::fabs(x[i]) : amax;
  const uint16_t dh = f32ToF16(amax / float(qmax));
  if ((dh & 0x7c00u) == 0x7c00u) return false;  // scale overflows f16
  const float d = f16ToF32(dh);
  const float inv = d != 0 ? 1.0f / d : 0.0f;
  for (size_t i = 0; i < kKvGroup; ++i) {
    const float r = std::nearbyint(x[i] * inv);
    q[i] = r > float(qmax) ? qmax : r < float(-qmax) ? -qmax : int32_t(r);
  }
  *dOut = dh;
  return true;
}

bool encode(KvType t, bool hadamard, const float* x, size_t n, uint8_t* dst) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  if (t == KvType::kF16 || t == KvType::kBf16) {
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = t == KvType::kF16 ? f32ToF16(x[i]) : f32ToBf16(x[i]);
      if (((t == KvType::kF16 ? 0x7c00u : 0x7f80u) & ~h) == 0) return false;  // overflowed to Inf
      std::memcpy(dst + 2 * i, &h, 2);
    }
    return true;
  }
  const int qmax = kvQmax(t);
  for (size_t g = 0; g < n; g += kKvGroup) {
    float v[kKvGroup];
    int32_t q[kKvGroup];
    uint16_t d;
    std::memcpy(v, x + g, sizeof(v));
    if (hadamard) hadamard32(v, kKvGroup);
    if (!groupCodes(v, qmax, q, &d)) return false;
    if (t == KvType::kQ8) {
      KvBlockQ8 b;
      b.d = d;
      for (size_t i = 0; i < 32; ++i) b.qs[i] = int8_t(q[i]);
      std::memcpy(dst + g / 32 * sizeof(b), &b, sizeof(b));
    } else if (t == KvType::kQ6) {
      KvBlockQ6 b;
      b.d = d;
      for (size_t i = 0; i < 8; ++i) {
        const uint32_t w = uint32_t(q[i] + 32) | uint32_t(q[8 + i] + 32) << 6 | uint32_t(q[16 + i] + 32) << 12 | uint32_t(q[24 + i] + 32) << 18;
        b.qs[3 * i] = uint8_t(w), b.qs[3 * i + 1] = uint8_t(w >> 8), b.qs[3 * i + 2] = uint8_t(w >> 16);
      }
      std::memcpy(dst + g / 32 * sizeof(b), &b, sizeof(b));
    } else {
      KvBlockQ4 b;
      b.d = d;
      for (size_t j = 0; j < 16; ++j) b.qs[j] = uint8_t((q[j] + 8) | (q[16 + j] + 8) << 4);
      std::memcpy(dst + g / 32 * sizeof(b), &b, sizeof(b));
    }
  }
  return true;
}

void decode(KvType t, const uint8_t* src, size_t n, float* y) {
  if (t == KvType::kF16 || t == KvType::kBf16) {
    for (size_t i = 0; i < n; ++i) {
      uint16_t h;
      std::memcpy(&h, src + 2 * i, 2);
      y[i] = t == KvType::kF16 ? f16ToF32(h) : bf16ToF32(h);
    }
    return;
  }
  for (size_t g = 0; g < n; g += kKvGroup) {
    float* o = y + g;
    if (t == KvType::kQ8) {
      KvBlockQ8 b;
      std::memcpy(&b, src + g / 32 * sizeof(b), sizeof(b));
      const float d = f16ToF32(b.d);
      for (size_t i = 0; i < 32; ++i) o[i] = float(b.qs[i]) * d;
    } else if (t == KvType::kQ6) {
      KvBlockQ6 b;
      std::memcpy(&b, src + g / 32 * sizeof(b), sizeof(b));
      const float d = f16ToF32(b.d);
      for (size_t i = 0; i < 8; ++i) {
        const uint32_t w = uint32_t(b.qs[3 * i]) | uint32_t(b.qs[3 * i + 1]) << 8 | uint32_t(b.qs[3 * i + 2]) << 16;
        for (size_t k = 0; k < 4; ++k) o[8 * k + i] = float(int32_t((w >> (6 * k)) & 63u) - 32) * d;
      }
    } else {
      KvBlockQ4 b;
      std::memcpy(&b, src + g / 32 * sizeof(b), sizeof(b));
      const float d = f16ToF32(b.d);
      for (size_t j = 0; j < 16; ++j) {
        o[j] = float(int32_t(b.qs[j] & 15u) - 8) * d;
        o[16 + j] = float(int32_t(b.qs[j] >> 4) - 8) * d;
      }
    }
  }
}

// Reference fused forms: decode a group at a time into a small stack buffer.
float dot(KvType t, const uint8_t* src, const float* q, size_t n) {
  const size_t step = kvQuantized(t) ? kKvGroup : 1;
  const size_t bytes = kvSegmentBytes(t, step);
  float s = 0, x[kKvGroup];
  for (size_t g = 0; g < n; g += step) {
    decode(t, src + g / step * bytes, step, x);
    for (size_t i = 0; i < step; ++i) s += q[g + i] * x[i];
  }
  return s;
}

void axpy(KvType t, const uint8_t* src, float p, float* acc, size_t n) {
  const size_t step = kvQuantized(t) ? kKvGroup : 1;
  const size_t bytes = kvSegmentBytes(t, step);
  float x[kKvGroup];
  for (size_t g = 0; g < n; g += step) {
    decode(t, src + g / step * bytes, step, x);
    for (size_t i = 0; i < step; ++i) acc[g + i] += p * x[i];
  }
}

}  // namespace
// f16 / bf16: nrows axpy calls. Quantized: the scale folded into the row weight,
// acc += (p·d)·code per row in row order (one product per row and group, the codes exact).
void axpyRows(KvType t, const uint8_t* const* rows, size_t off, size_t nrows, const float* p, float* acc, size_t n) {
  if (!kvQuantized(t)) {
    for (size_t r = 0; r < nrows; ++r) axpy(t, rows[r] + off, p[r], acc, n);
    return;
  }
  const size_t bytes = kvSegmentBytes(t, kKvGroup);
  float x[kKvGroup];
  for (size_t r = 0; r < nrows; ++r)
    for (size_t g = 0; g < n; g += kKvGroup) {
      const uint8_t* blk = rows[r] + off + g / kKvGroup * bytes;
      uint16_t h;
      std::memcpy(&h, blk, 2);
      const float w = p[r] * f16ToF32(h);
      // Codes via decode with the scale replaced by 1 (a copy of the block with d = 1.0).
      uint8_t one[sizeof(KvBlockQ8)];
      std::memcpy(one, blk, bytes);
      const uint16_t h1 = 0x3c00;  // f16 1.0
      std::memcpy(one, &h1, 2);
      decode(t, one, kKvGroup, x);
      for (size_t i = 0; i < kKvGroup; ++i) acc[g + i] += w * x[i];
    }
}

float dotI8(KvType t, const uint8_t* src, const int8_t* q8, const float* qd, size_t n) {
  const size_t bytes = kvSegmentBytes(t, kKvGroup);
  float s = 0;
  for (size_t g = 0; g < n / 32; ++g, src += bytes) {
    uint16_t h;
    std::memcpy(&h, src, 2);
    int32_t isum = 0;
    for (size_t i = 0; i < 32; ++i) {
      // q8: int8 codes after the scale; q4: byte j holds code j (low nibble) and 16 + j, offset 8.
      const int c = t == KvType::kQ8 ? int(int8_t(src[2 + i])) : int((src[2 + (i & 15)] >> (i < 16 ? 0 : 4)) & 15) - 8;
      isum += c * q8[g * 32 + i];
    }
    s += float(isum) * (qd[g] * f16ToF32(h));
  }
  return s;
}

void dotRows(KvType t, const uint8_t* const* rows, size_t off, size_t nrows, const float* q, const int8_t* q8, const float* qd, size_t n,
             float* out) {
  for (size_t r = 0; r < nrows; ++r) out[r] = q8 ? dotI8(t, rows[r] + off, q8, qd, n) : dot(t, rows[r] + off, q, n);
}

const KvKernels kKvKernels = {encode, decode, hadamard32, dot, axpy, axpyRows, dotI8, dotRows};
}  // namespace scalar

void kvQuantizeQuery(const float* q, size_t n, int8_t* q8, float* qd) {
  for (size_t g = 0; g < n / 32; ++g) {
    float amax = 0;
    for (size_t i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(q[g * 32 + i]));
    qd[g] = amax / 127;
    const float inv = amax > 0 ? 127 / amax : 0.f;
    // Round to nearest even without a libm call per value (baseline x86-64 has no roundps, and
    // the nearbyint calls were ~4% of a q4 decode): adding and subtracting 1.5·2^23 rounds any
    // |x| < 2^22 in the current rounding mode, exactly as nearbyint; here |x| <= 127·(1 + ε).
    // (Without -ffast-math the compiler may not fold (x + c) - c back to x.)
    for (size_t i = 0; i < 32; ++i) {
      const float r = (q[g * 32 + i] * inv + 12582912.0f) - 12582912.0f;
      q8[g * 32 + i] = int8_t(std::max(-127.f, std::min(127.f, r)));
    }
  }
}

const KvKernels* kvKernelsFor(Isa isa) {
  if (int(isa) < 0) isa = isaChoice().isa;
#if defined(__x86_64__) || defined(_M_X64)
  return tableForIsa<KvKernels>(isa, scalar::kKvKernels, &avx2::kKvKernels, nullptr);
#else
  return tableForIsa<KvKernels>(isa, scalar::kKvKernels, nullptr, nullptr);
#endif
}

namespace {

bool segmentsFit(const KvPages& p, const KvSegment* segs, size_t nSegs, size_t width) {
  if (p.pageSize == 0) return false;
  // Every byte a segment can touch, for any slot of any page, must lie inside its page.
  const size_t lastRow = p.layerOffset + (p.pageSize - 1) * p.rowBytes;
  for (size_t s = 0; s < nSegs; ++s) {
    const size_t bytes = kvSegmentBytes(segs[s].type, segs[s].n);
    if ((bytes == 0 && segs[s].n != 0) || lastRow + segs[s].offset + bytes > p.pageBytes || segs[s].src + segs[s].n > width) return false;
  }
  return true;
}

}  // namespace

Status kvWriteRows(const KvPages& p, const KvSegment* segs, size_t nSegs, const float* x, size_t width, size_t T,
                   const int32_t* slots, Isa isa) {
  const KvKernels* k = kvKernelsFor(isa);
  if (!k) return Status::kBackend;
  if (!segmentsFit(p, segs, nSegs, width)) return Status::kShape;
  for (size_t t = 0; t < T; ++t) {
    if (slots[t] < 0 || size_t(slots[t]) >= p.numPages * p.pageSize) return Status::kRange;
    uint8_t* row = p.pool + size_t(slots[t]) / p.pageSize * p.pageBytes + p.layerOffset + size_t(slots[t]) % p.pageSize * p.rowBytes;
    for (size_t s = 0; s < nSegs; ++s)
      if (!k->encode(segs[s].type, segs[s].hadamard && kvQuantized(segs[s].type), x + t * width + segs[s].src, segs[s].n, row + segs[s].offset))
        return Status::kRange;
  }
  return Status::kOk;
}

Status kvReadRows(const KvPages& p, const KvSegment* segs, size_t nSegs, float* y, size_t width, size_t T,
                  const int32_t* slots, Isa isa) {
  const KvKernels* k = kvKernelsFor(isa);
  if (!k) return Status::kBackend;
  if (!segmentsFit(p, segs, nSegs, width)) return Status::kShape;
  for (size_t t = 0; t < T; ++t)
    if (slots[t] < 0 || size_t(slots[t]) >= p.numPages * p.pageSize) return Status::kRange;
  for (size_t t = 0; t < T; ++t) {
    const uint8_t* row = p.pool + size_t(slots[t]) / p.pageSize * p.pageBytes + p.layerOffset + size_t(slots[t]) % p.pageSize * p.rowBytes;
    for (size_t s = 0; s < nSegs; ++s) {
      float* o = y + t * width + segs[s].src;
      k->decode(segs[s].type, row + segs[s].offset, segs[s].n, o);
      if (segs[s].hadamard && kvQuantized(segs[s].type)) {
        k->hadamard32(o, segs[s].n);  // x = H·y / 32 (exact power-of-two scaling)
        for (size_t i = 0; i < segs[s].n; ++i) o[i] *= 1.0f / 32;
      }
    }
  }
  return Status::kOk;
}

}  // namespace kvant
