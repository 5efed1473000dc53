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

void registerGemm(Napi::Env env, Napi::Object exports) { exports.Set("gemm", Napi::Function::New(env, gemmB, "gemm")); }

}  // namespace

static Registration registration("gemm", registerGemm);

}  // namespace kvant::napi
