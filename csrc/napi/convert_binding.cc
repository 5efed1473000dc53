// convert / convertAsync: dtype conversion between tensors (f32 <-> f16/bf16).
#include "addon.h"
#include "args.h"
#include "convert.h"

namespace kvant::napi {
namespace {

struct ConvertArgs {
  Span src, dst;
  DType srcType, dstType;
  size_t count;
  Isa isa;
};

// (src, srcOff, srcBytes, srcDtype, dst, dstOff, dstBytes, dstDtype, count, isa)
ConvertArgs parse(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ConvertArgs a;
  a.srcType = getDType(info, 3, "src.dtype");
  a.dstType = getDType(info, 7, "dst.dtype");
  a.src = getSpan(info, 0, "src", dtypeSize(a.srcType));
  a.dst = getSpan(info, 4, "dst", dtypeSize(a.dstType));
  a.count = size_t(getSize(info, 8, "count"));
  const double isa = info[9].IsNumber() ? info[9].As<Napi::Number>().DoubleValue() : -1;
  a.isa = Isa(int(isa));
  if (a.src.bytes != a.count * dtypeSize(a.srcType) || a.dst.bytes != a.count * dtypeSize(a.dstType))
    throwKvant(env, "KVANT_SHAPE", "Expected src and dst to hold " + std::to_string(a.count) + " elements but they hold " +
                                       std::to_string(a.src.bytes / dtypeSize(a.srcType)) + " and " +
                                       std::to_string(a.dst.bytes / dtypeSize(a.dstType)));
  if (a.srcType != a.dstType && overlaps(a.src, a.dst))
    throwKvant(env, "KVANT_RANGE", "Expected dst not to overlap src (in-place conversion between dtypes is not allowed)");
  if (int(a.isa) >= 0 && !convertKernelsFor(a.isa))
    throwKvant(env, "KVANT_BACKEND", std::string("ISA level ") + isaName(a.isa) + " is not supported on this CPU");
  return a;
}

Napi::Value convertSync(const Napi::CallbackInfo& info) {
  const ConvertArgs a = parse(info);
  const Status s = convertElements(a.src.data, a.srcType, a.dst.data, a.dstType, a.count, nullptr, a.isa);
  if (s != Status::kOk)
    throwStatus(info.Env(), s, std::string("Cannot convert ") + dtypeName(a.srcType) + " to " + dtypeName(a.dstType));
  return info.Env().Undefined();
}

Napi::Value convertAsync(const Napi::CallbackInfo& info) {
  const ConvertArgs a = parse(info);
  CancelFlag cancel = getCancelFlag(info, 10);
  return runAsync(
      info.Env(), "kvant.convert", {info[0], info[4]},
      [a, cancel]() -> AsyncResult {
        const Status s = convertElements(a.src.data, a.srcType, a.dst.data, a.dstType, a.count, cancel.get(), a.isa);
        if (s == Status::kAborted) return {s, "The conversion was aborted"};
        if (s != Status::kOk) return {s, std::string("Cannot convert ") + dtypeName(a.srcType) + " to " + dtypeName(a.dstType)};
        return {};
      },
      [](Napi::Env env) { return env.Undefined(); });
}

}  // namespace

static void registerConvert(Napi::Env env, Napi::Object exports) {
  exports.Set("convert", Napi::Function::New(env, convertSync, "convert"));
  exports.Set("convertAsync", Napi::Function::New(env, convertAsync, "convertAsync"));
}

static Registration registration("convert", registerConvert);

}  // namespace kvant::napi
