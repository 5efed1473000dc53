// backendInfo pieces, thread count, and the seeded random fill.
#include "addon.h"
#include "args.h"
#include "isa.h"
#include "random.h"
#include "thread_pool.h"

namespace kvant::napi {
namespace {

Napi::Value cpuInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const IsaChoice& c = isaChoice();
  const CpuFeatures& f = cpuFeatures();
  Napi::Object o = Napi::Object::New(env);
  o.Set("isa", isaName(c.isa));
  o.Set("bestIsa", isaName(c.best));
  o.Set("isaReason", c.reason);
  Napi::Object feat = Napi::Object::New(env);
  feat.Set("avx2", f.avx2);
  feat.Set("fma", f.fma);
  feat.Set("f16c", f.f16c);
  feat.Set("avxVnni", f.avxVnni);
  feat.Set("avx512f", f.avx512f);
  feat.Set("avx512bw", f.avx512bw);
  feat.Set("avx512vl", f.avx512vl);
  feat.Set("avx512dq", f.avx512dq);
  feat.Set("avx512Vnni", f.avx512Vnni);
  feat.Set("avx512Bf16", f.avx512Bf16);
  feat.Set("osYmm", f.osYmm);
  feat.Set("osZmm", f.osZmm);
  o.Set("features", feat);
  const ThreadCountInfo t = defaultThreadCount();
  o.Set("threads", threadPool().threads());
  o.Set("defaultThreads", t.chosen);
  o.Set("threadsReason", t.reason);
  o.Set("physicalCores", t.physicalCores);
  o.Set("affinityCpus", t.affinityCpus);
  o.Set("cgroupLimit", t.cgroupLimit);
  return o;
}

Napi::Value setThreads(const Napi::CallbackInfo& info) {
  const uint64_t n = getSize(info, 0, "threads");
  if (n < 1 || n > 1024)
    throwKvant(info.Env(), "KVANT_RANGE", "Expected threads in 1..1024 but received " + std::to_string(n));
  threadPool().resize(int(n));
  return info.Env().Undefined();
}

// fillRandom(storage, byteOffset, byteLength, dtype, seed, dist, a, b)
Napi::Value fillRandomBinding(const Napi::CallbackInfo& info) {
  const DType t = getDType(info, 3, "dtype");
  const Span s = getSpan(info, 0, "tensor", dtypeSize(t));
  const uint64_t seed = getSize(info, 4, "seed");
  const uint64_t dist = getSize(info, 5, "dist");
  const double a = info[6].As<Napi::Number>().DoubleValue(), b = info[7].As<Napi::Number>().DoubleValue();
  const Status st = fillRandom(s.data, t, s.bytes / dtypeSize(t), seed, RandomDist(int(dist)), a, b);
  if (st != Status::kOk) throwStatus(info.Env(), st, "fillRandom: unknown distribution " + std::to_string(dist));
  return info.Env().Undefined();
}

// V8's running total of external memory (what AdjustExternalMemory reports), for tests:
// process.memoryUsage().external does not include it on Node 20.
Napi::Value externalMemory(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), double(Napi::MemoryManagement::AdjustExternalMemory(info.Env(), 0)));
}

// addressMod64(view): the view's data address modulo 64, so JS can place a tensor at a
// 64-byte boundary inside an ArrayBuffer it allocated with 63 bytes of slack.
Napi::Value addressMod64(const Napi::CallbackInfo& info) {
  const Span s = getSpan(info, 0, "view", 1);
  return Napi::Number::New(info.Env(), double(reinterpret_cast<uintptr_t>(s.data) % 64));
}

}  // namespace

static void registerSystem(Napi::Env env, Napi::Object exports) {
  exports.Set("cpuInfo", Napi::Function::New(env, cpuInfo, "cpuInfo"));
  exports.Set("setThreads", Napi::Function::New(env, setThreads, "setThreads"));
  exports.Set("addressMod64", Napi::Function::New(env, addressMod64, "addressMod64"));
  exports.Set("externalMemory", Napi::Function::New(env, externalMemory, "externalMemory"));
  exports.Set("fillRandom", Napi::Function::New(env, fillRandomBinding, "fillRandom"));
}

static Registration registration("system", registerSystem);

}  // namespace kvant::napi
