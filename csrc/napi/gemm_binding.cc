// linear(): dense y = x · Wᵀ (+ bias). Shapes are validated in lib/ops/linear.ts and again here.
#include "addon.h"
#include "args.h"
#include "gemm.h"

namespace kvant::napi {
namespace {

// gemm(x, xo, xb, M, K, w, wo, wb, wDtype, N, bias|null, bo, bb, y, yo, yb, isa)
Napi::Value gemmB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const size_t M = getSize(info, 3, "M"), K = getSize(info, 4, "K"), N = getSize(info, 9, "N");
  const DType wt = getDType(info, 8, "w.dtype");
  const Span x = getSpan(info, 0, "x", 4), w = getSpan(info, 5, "w", dtypeSize(wt)), y = getSpan(info, 13, "y", 4);
  if (x.bytes != M * K * 4) throwKvant(env, "KVANT_SHAPE", "Expected x to hold M*K f32 values");
  if (w.bytes != N * K * dtypeSize(wt)) throwKvant(env, "KVANT_SHAPE", "Expected w to hold N*K values");
  if (y.bytes != M * N * 4) throwKvant(env, "KVANT_SHAPE", "Expected y to hold M*N f32 values");
  Span b;
  if (!info[10].IsNull() && !info[10].IsUndefined()) {
    b = getSpan(info, 10, "bias", 4);
    if (b.bytes != N * 4) throwKvant(env, "KVANT_SHAPE", "Expected bias to hold N f32 values");
  }
  if (overlaps(y, x) || overlaps(y, w) || overlaps(y, b)) throwKvant(env, "KVANT_RANGE", "Expected the output not to overlap x, w or bias");
  const Isa isa = info[16].IsNumber() ? Isa(info[16].As<Napi::Number>().Int32Value()) : Isa(-1);
  if (int(isa) >= 0 && !gemmKernelsFor(isa)) throwKvant(env, "KVANT_BACKEND", std::string("ISA level ") + isaName(isa) + " is not supported on this CPU");
  const Status s = gemm(reinterpret_cast<const float*>(x.data), M, K, w.data, wt, N, b.data ? reinterpret_cast<const float*>(b.data) : nullptr,
                        reinterpret_cast<float*>(y.data), isa);
  if (s != Status::kOk) throwStatus(env, s, std::string("linear: unsupported weight dtype ") + dtypeName(wt));
  return env.Undefined();
}

// Elements a strided access touches: the last index + 1 of a[i*ld0 + j*ld1 + c], i < n0, j < n1,
// c < len (0 when any extent is 0). Saturates instead of wrapping, so huge strides fail the bound.
uint64_t stridedExtent(uint64_t n0, uint64_t ld0, uint64_t n1, uint64_t ld1, uint64_t len) {
  if (n0 == 0 || n1 == 0 || len == 0) return 0;
  const unsigned __int128 e = (unsigned __int128)(n0 - 1) * ld0 + (unsigned __int128)(n1 - 1) * ld1 + len;
  return e > (unsigned __int128)UINT64_MAX ? UINT64_MAX : uint64_t(e);
}

// gemmHeads(x, xo, xb, M, H, ldxM, ldxH, K, w, wo, wb, wDtype, ldwH, N, y, yo, yb, ldyM, ldyH, isa)
Napi::Value gemmHeadsB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t M = getSize(info, 3, "M"), H = getSize(info, 4, "H"), ldxM = getSize(info, 5, "ldxM"), ldxH = getSize(info, 6, "ldxH");
  const uint64_t K = getSize(info, 7, "K"), ldwH = getSize(info, 12, "ldwH"), N = getSize(info, 13, "N");
  const uint64_t ldyM = getSize(info, 17, "ldyM"), ldyH = getSize(info, 18, "ldyH");
  const DType wt = getDType(info, 11, "w.dtype");
  const Span x = getSpan(info, 0, "x", 4), w = getSpan(info, 8, "w", dtypeSize(wt)), y = getSpan(info, 14, "y", 4);
  auto need = [&](const char* what, uint64_t elems, uint64_t have) {
    if (elems > have)
      throwKvant(env, "KVANT_SHAPE", std::string("Expected ") + what + " to hold at least " + std::to_string(elems) + " values for these strides but it has " +
                                        std::to_string(have));
  };
  need("x", stridedExtent(M, ldxM, H, ldxH, K), x.bytes / 4);
  need("w", stridedExtent(1, 0, H, ldwH, N * K), w.bytes / dtypeSize(wt));
  need("y", stridedExtent(M, ldyM, H, ldyH, N), y.bytes / 4);
  // Output rows must be disjoint: each head's N values fit in its stride, all heads in a row's.
  if (M > 0 && H > 0 && N > 0 && ((H > 1 && ldyH < N) || (M > 1 && ldyM < (H - 1) * ldyH + N)))
    throwKvant(env, "KVANT_RANGE", "Expected out's strides to keep every (row, head) slice disjoint (ldyH >= N, ldyM >= (H-1)*ldyH + N)");
  if (overlaps(y, x) || overlaps(y, w)) throwKvant(env, "KVANT_RANGE", "Expected the output not to overlap x or w");
  const Isa isa = info[19].IsNumber() ? Isa(info[19].As<Napi::Number>().Int32Value()) : Isa(-1);
  if (int(isa) >= 0 && !gemmKernelsFor(isa)) throwKvant(env, "KVANT_BACKEND", std::string("ISA level ") + isaName(isa) + " is not supported on this CPU");
  const Status s = gemmHeads(reinterpret_cast<const float*>(x.data), M, H, ldxM, ldxH, K, w.data, wt, ldwH, N, reinterpret_cast<float*>(y.data), ldyM,
                             ldyH, isa);
  if (s != Status::kOk) throwStatus(env, s, std::string("linearHeads: unsupported weight dtype ") + dtypeName(wt));
  return env.Undefined();
}

void registerGemm(Napi::Env env, Napi::Object exports) {
  exports.Set("gemm", Napi::Function::New(env, gemmB, "gemm"));
  exports.Set("gemmHeads", Napi::Function::New(env, gemmHeadsB, "gemmHeads"));
}

}  // namespace

static Registration registration("gemm", registerGemm);

}  // namespace kvant::napi
