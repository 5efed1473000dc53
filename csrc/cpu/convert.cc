#include "convert.h"

#include <cstring>
#include <vector>

#include "kvant/half.h"
#include "thread_pool.h"

namespace kvant {
namespace scalar {
namespace {

void f32ToF16(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = kvant::f32ToF16(src[i]);
}
void f16ToF32(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = kvant::f16ToF32(src[i]);
}
void f32ToBf16(const float* src, uint16_t* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = kvant::f32ToBf16(src[i]);
}
void bf16ToF32(const uint16_t* src, float* dst, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = kvant::bf16ToF32(src[i]);
}

}  // namespace
const ConvertKernels kConvertKernels = {f32ToF16, f16ToF32, f32ToBf16, bf16ToF32};
}  // namespace scalar

const ConvertKernels* convertKernelsFor(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  return tableForIsa(isa, scalar::kConvertKernels, &avx2::kConvertKernels, &avx512::kConvertKernels);
#else
  return tableForIsa<ConvertKernels>(isa, scalar::kConvertKernels, nullptr, nullptr);
#endif
}

const ConvertKernels& convertKernels() {
  static const ConvertKernels& k = *convertKernelsFor(isaChoice().isa);
  return k;
}

namespace {

// One chunk: 64 Ki elements (256 KiB of f32) is large enough to amortize the pool's
// hand-off and small enough that an abort is noticed within a fraction of a millisecond.
constexpr size_t kChunk = size_t(1) << 16;

bool isFloat16(DType t) { return t == DType::kF16 || t == DType::kBF16; }

// Convert one contiguous block; f16 <-> bf16 goes through a small f32 buffer on the stack.
void convertBlock(const ConvertKernels& k, const uint8_t* src, DType s, uint8_t* dst, DType d, size_t n) {
  if (s == d) { std::memmove(dst, src, n * dtypeSize(s)); return; }
  if (s == DType::kF32) {
    if (d == DType::kF16) k.f32ToF16(reinterpret_cast<const float*>(src), reinterpret_cast<uint16_t*>(dst), n);
    else k.f32ToBf16(reinterpret_cast<const float*>(src), reinterpret_cast<uint16_t*>(dst), n);
    return;
  }
  if (d == DType::kF32) {
    if (s == DType::kF16) k.f16ToF32(reinterpret_cast<const uint16_t*>(src), reinterpret_cast<float*>(dst), n);
    else k.bf16ToF32(reinterpret_cast<const uint16_t*>(src), reinterpret_cast<float*>(dst), n);
    return;
  }
  float tmp[1024];
  for (size_t i = 0; i < n; i += 1024) {
    const size_t m = n - i < 1024 ? n - i : 1024;
    convertBlock(k, src + 2 * i, s, reinterpret_cast<uint8_t*>(tmp), DType::kF32, m);
    convertBlock(k, reinterpret_cast<const uint8_t*>(tmp), DType::kF32, dst + 2 * i, d, m);
  }
}

}  // namespace

Status convertElements(const void* src, DType s, void* dst, DType d, size_t n,
                       const std::atomic<bool>* cancel, Isa isa) {
  const bool ok = (s == d) || ((s == DType::kF32 || isFloat16(s)) && (d == DType::kF32 || isFloat16(d)));
  if (!ok) return Status::kDtype;
  const ConvertKernels* k = int(isa) < 0 ? &convertKernels() : convertKernelsFor(isa);
  if (!k) return Status::kBackend;
  const size_t ss = dtypeSize(s), ds = dtypeSize(d);
  const auto* in = static_cast<const uint8_t*>(src);
  auto* out = static_cast<uint8_t*>(dst);
  const size_t bytes = n * ss;
  if (s == d && in < out + bytes && out < in + bytes) {  // overlapping: one memmove, never split
    std::memmove(out, in, bytes);
    return Status::kOk;
  }
  const size_t chunks = (n + kChunk - 1) / kChunk;
  std::atomic<bool> aborted{false};
  threadPool().parallelFor(chunks, [&](size_t c) {
    if (cancel && cancel->load(std::memory_order_relaxed)) { aborted = true; return; }
    const size_t b = c * kChunk, m = n - b < kChunk ? n - b : kChunk;
    if (s == d) std::memcpy(out + b * ss, in + b * ss, m * ss);
    else convertBlock(*k, in + b * ss, s, out + b * ds, d, m);
  });
  return aborted ? Status::kAborted : Status::kOk;
}

}  // namespace kvant
