// Ceiling probes for the benchmark harness (async: they take around a second each).
#include "addon.h"
#include "args.h"
#include "probe.h"

#include <memory>
#include <vector>

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

// Every streaming-read variant over one buffer: [{ name, seconds, bytes, check }] (best reps).
Napi::Value readVariants(const Napi::CallbackInfo& info) {
  const size_t bytes = size_t(getSize(info, 0, "bytes"));
  const int reps = int(getSize(info, 1, "reps"));
  if (bytes < 4096 || bytes > (size_t(1) << 40)) throwKvant(info.Env(), "KVANT_RANGE", "Expected bytes in 4096..2^40 but received " + std::to_string(bytes));
  if (reps < 1 || reps > 1000) throwKvant(info.Env(), "KVANT_RANGE", "Expected reps in 1..1000 but received " + std::to_string(reps));
  const ReadProbeKernels* rk = &readProbeKernels();
  auto results = std::make_shared<std::vector<ProbeResult>>(size_t(rk->count));
  return runAsync(
      info.Env(), "kvant.probe", {},
      [=]() -> AsyncResult {
        if (!probeReadVariants(bytes, reps, results->data())) return {Status::kOom, "The probe could not allocate its buffer"};
        return {};
      },
      [results, rk](Napi::Env env) -> Napi::Value {
        Napi::Array a = Napi::Array::New(env, results->size());
        for (size_t v = 0; v < results->size(); ++v) {
          Napi::Object o = toJs(env, (*results)[v]);
          o.Set("name", rk->variants[v].name);
          a.Set(uint32_t(v), o);
        }
        return a;
      });
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
  exports.Set("probeReadVariants", Napi::Function::New(env, readVariants, "probeReadVariants"));
  exports.Set("probeCopyBandwidth", Napi::Function::New(env, copyBandwidth, "probeCopyBandwidth"));
  exports.Set("probeFmaPeak", Napi::Function::New(env, fmaPeak, "probeFmaPeak"));
}

static Registration registration("probe", registerProbe);

}  // namespace kvant::napi
