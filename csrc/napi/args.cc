#include "args.h"

#include <cmath>

#include "addon.h"

namespace kvant::napi {

void throwKvant(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  throw err;
}

void throwStatus(Napi::Env env, Status s, const std::string& message) { throwKvant(env, statusCode(s), message); }

uint64_t getSize(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber())
    throwKvant(info.Env(), "KVANT_RANGE", std::string("Expected a non-negative integer for ") + name);
  const double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v != std::floor(v) || v > 9007199254740992.0)
    throwKvant(info.Env(), "KVANT_RANGE",
               std::string("Expected a non-negative integer for ") + name + " but received " + std::to_string(v));
  return uint64_t(v);
}

DType getDType(const Napi::CallbackInfo& info, size_t i, const char* name) {
  const uint64_t v = getSize(info, i, name);
  if (v >= uint64_t(kNumDTypes))
    throwKvant(info.Env(), "KVANT_DTYPE", std::string("Unknown dtype code for ") + name + ": " + std::to_string(v));
  return DType(int(v));
}

Span getSpan(const Napi::CallbackInfo& info, size_t i, const char* name, size_t align) {
  return spanOf(info.Env(), info[i], getSize(info, i + 1, name), getSize(info, i + 2, name), name, align);
}

Span spanOf(Napi::Env env, Napi::Value storage, uint64_t offset, uint64_t bytes, const char* name, size_t align) {
  uint8_t* base = nullptr;
  size_t limit = 0;
  if (storage.IsTypedArray() || storage.IsDataView()) {
    napi_value ab;
    void* data = nullptr;
    size_t length = 0;
    if (storage.IsTypedArray()) {
      napi_typedarray_type type;
      size_t count, offset;
      NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, storage, &type, &count, &data, &ab, &offset), Span{});
      length = count * Napi::TypedArray(env, storage).ElementSize();
    } else {
      size_t offset;
      NAPI_THROW_IF_FAILED(env, napi_get_dataview_info(env, storage, &length, &data, &ab, &offset), Span{});
    }
    bool detached = false;
    // A SharedArrayBuffer is never detached; napi_is_detached_arraybuffer reports false for it.
    napi_is_detached_arraybuffer(env, ab, &detached);
    if (detached)
      throwKvant(env, "KVANT_RANGE", std::string("The storage of ") + name + " is a detached ArrayBuffer");
    base = static_cast<uint8_t*>(data);
    limit = length;
  } else if (NativeMemory* m = NativeMemory::unwrapOrNull(env, storage)) {
    if (m->disposed()) throwKvant(env, "KVANT_RANGE", std::string("The native memory of ") + name + " was disposed");
    base = m->data();
    limit = m->size();
  } else {
    throwKvant(env, "KVANT_DTYPE", std::string("Expected a Tensor storage (TypedArray or NativeMemory) for ") + name);
  }
  if (offset > limit || bytes > limit - offset)
    throwKvant(env, "KVANT_SHAPE",
               std::string("Expected ") + name + " to fit its storage: byteOffset " + std::to_string(offset) +
                   " + byteLength " + std::to_string(bytes) + " > storage size " + std::to_string(limit));
  Span s{base + offset, size_t(bytes)};
  if (align > 1 && (reinterpret_cast<uintptr_t>(s.data) % align) != 0)
    throwKvant(env, "KVANT_RANGE",
               std::string("Expected ") + name + " to be aligned to " + std::to_string(align) +
                   " bytes (its element size) but its address is " + std::to_string(reinterpret_cast<uintptr_t>(s.data) % align) +
                   " bytes past a boundary");
  return s;
}

bool overlaps(const Span& a, const Span& b) {
  if (a.bytes == 0 || b.bytes == 0) return false;
  return a.data < b.data + b.bytes && b.data < a.data + a.bytes;
}

CancelFlag getCancelFlag(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() > i && !info[i].IsUndefined() && !info[i].IsNull()) {
    if (CancelToken* t = CancelToken::unwrapOrNull(info.Env(), info[i])) return t->flag();
    throwKvant(info.Env(), "KVANT_DTYPE", "Expected a CancelToken or undefined for the cancel argument");
  }
  return std::make_shared<std::atomic<bool>>(false);
}

}  // namespace kvant::napi
