// Argument helpers for the N-API layer: typed errors carrying a stable `code`, and the
// resolution of tensor storage (typed arrays or NativeMemory) into checked raw spans.
// No math lives here.
#pragma once
#include <napi.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "kvant/dtype.h"
#include "kvant/status.h"

namespace kvant::napi {

// Throws a JS Error whose `code` is e.g. "KVANT_SHAPE"; lib/errors.ts turns it into a KvantError.
[[noreturn]] void throwKvant(Napi::Env env, const char* code, const std::string& message);
[[noreturn]] void throwStatus(Napi::Env env, Status s, const std::string& message);

// A checked byte range of tensor storage.
struct Span {
  uint8_t* data = nullptr;
  size_t bytes = 0;
};

// Resolve (storage, byteOffset, byteLength) at info[i], info[i+1], info[i+2]. storage is a
// TypedArray/DataView (over an ArrayBuffer or SharedArrayBuffer) or a NativeMemory.
// Checks: storage kind, not detached/disposed, integral non-negative offset and length,
// range inside the storage, and alignment to `align` bytes.
Span getSpan(const Napi::CallbackInfo& info, size_t i, const char* name, size_t align);
// The same for a storage value held elsewhere (a kept reference) with its offset and length.
Span spanOf(Napi::Env env, Napi::Value storage, uint64_t offset, uint64_t bytes, const char* name, size_t align);

// Integral, non-negative, <= 2^53 number at info[i].
uint64_t getSize(const Napi::CallbackInfo& info, size_t i, const char* name);
DType getDType(const Napi::CallbackInfo& info, size_t i, const char* name);

// True when the two byte ranges share any byte.
bool overlaps(const Span& a, const Span& b);

// A cancellation flag shared between a JS AbortSignal listener and a running job.
using CancelFlag = std::shared_ptr<std::atomic<bool>>;
// info[i] is undefined or a CancelToken object; returns its flag (never null).
CancelFlag getCancelFlag(const Napi::CallbackInfo& info, size_t i);

}  // namespace kvant::napi
