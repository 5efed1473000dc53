// Ceiling probes for the benchmark harness (async: they take around a second each).
#include "addon.h"
#include "args.h"
#include "probe.h"

namespace kvant::napi {
namespace {

Napi::Object toJs(Napi::Env env, const ProbeResult& r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("seconds", r.seconds);
  o.Set("bytes", r.bytes);
  o.Set("flops", r.flops);
  o.Set("check", r.check);
  return o;
}

Napi::Value probeAsync(const Napi::CallbackInfo& info, std::function<ProbeResult()> fn) {
  auto result = std::make_shared<ProbeResult>();
  return runAsync(
      info.Env(), "kvant.probe", {},
      [fn, result]() -> AsyncResult {
        *result = fn();
        if (result->seconds <= 0) return {Status::kOom, "The probe could not allocate its buffer"};
        return {};
      },
      [result](Napi::Env env) -> Napi::Value { return toJs(env, *result); });
}

Napi::Value readBandwidth(const Napi::CallbackInfo& info) {
  const size_t bytes = size_t(getSize(info, 0, "bytes"));
  const int reps = int(getSize(info, 1, "reps"));
  return probeAsync(info, [=] { return probeReadBandwidth(bytes, reps); });
}

Napi::Value copyBandwidth(const Napi::CallbackInfo& info) {
  const size_t bytes = size_t(getSize(info, 0, "bytes"));
  const int reps = int(getSize(info, 1, "reps"));
  return probeAsync(info, [=] { return probeCopyBandwidth(bytes, reps); });
}

Napi::Value fmaPeak(const Napi::CallbackInfo& info) {
  const bool all = info[0].ToBoolean();
  const double seconds = info[1].IsNumber() ? info[1].As<Napi::Number>().DoubleValue() : 0.3;
  return probeAsync(info, [=] { return probeFmaPeak(all, seconds); });
}

}  // namespace

static void registerProbe(Napi::Env env, Napi::Object exports) {
  exports.Set("probeReadBandwidth", Napi::Function::New(env, readBandwidth, "probeReadBandwidth"));
  exports.Set("probeCopyBandwidth", Napi::Function::New(env, copyBandwidth, "probeCopyBandwidth"));
  exports.Set("probeFmaPeak", Napi::Function::New(env, fmaPeak, "probeFmaPeak"));
}

static Registration registration("probe", registerProbe);

}  // namespace kvant::napi
