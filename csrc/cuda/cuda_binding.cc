// N-API layer of kvant_cuda.node: argument checks and status mapping only.
#include <napi.h>

#include "device.h"

namespace {

Napi::Value deviceQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int count = 0;
  const kvant::cuda::CudaStatus s = kvant::cuda::deviceCount(&count);
  Napi::Object o = Napi::Object::New(env);
  o.Set("count", count);
  if (s.code) o.Set("error", s.message);
  return o;
}

// roundTripCopy(src: Uint8Array, dst: Uint8Array)
Napi::Value roundTripCopy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsTypedArray() || !info[1].IsTypedArray()) {
    Napi::Error e = Napi::Error::New(env, "Expected two Uint8Arrays for src and dst");
    e.Set("code", "KVANT_DTYPE");
    throw e;
  }
  Napi::Uint8Array src = info[0].As<Napi::Uint8Array>(), dst = info[1].As<Napi::Uint8Array>();
  if (src.ByteLength() != dst.ByteLength()) {
    Napi::Error e = Napi::Error::New(env, "Expected dst to have src's length " + std::to_string(src.ByteLength()) +
                                              " but it has " + std::to_string(dst.ByteLength()));
    e.Set("code", "KVANT_SHAPE");
    throw e;
  }
  const kvant::cuda::CudaStatus s = kvant::cuda::roundTripCopy(src.Data(), dst.Data(), src.ByteLength());
  if (s.code) {
    Napi::Error e = Napi::Error::New(env, s.message);
    e.Set("code", "KVANT_BACKEND");
    throw e;
  }
  return env.Undefined();
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  exports.Set("deviceQuery", Napi::Function::New(env, deviceQuery, "deviceQuery"));
  exports.Set("roundTripCopy", Napi::Function::New(env, roundTripCopy, "roundTripCopy"));
  return exports;
}

}  // namespace

NODE_API_MODULE(kvant_cuda, init)
