// The addon object and the two native classes JS holds: NativeMemory (64-byte aligned
// allocations and file mappings, reported to V8) and CancelToken (an AbortSignal's flag).
#pragma once
#include <napi.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kvant/status.h"

namespace kvant::napi {

// One allocation or mapping; freed when the last owner (the NativeMemory, a JS view, a
// running job) lets go, so neither dispose() nor GC can pull memory out from under a user.
struct MemoryBlock {
  uint8_t* data = nullptr;
  size_t size = 0;
  bool mapped = false;
  ~MemoryBlock();
};
using BlockRef = std::shared_ptr<MemoryBlock>;

class NativeMemory : public Napi::ObjectWrap<NativeMemory> {
 public:
  static Napi::Function define(Napi::Env env);
  static NativeMemory* unwrapOrNull(Napi::Env env, Napi::Value v);
  explicit NativeMemory(const Napi::CallbackInfo& info);
  ~NativeMemory() override;
  void Finalize(Napi::Env env) override;  // collected without dispose(): un-report the bytes

  uint8_t* data() const { return block_ ? block_->data : nullptr; }
  size_t size() const { return size_; }
  bool disposed() const { return disposed_; }
  BlockRef block() const { return block_; }

 private:
  Napi::Value byteLength(const Napi::CallbackInfo& info);
  Napi::Value isDisposed(const Napi::CallbackInfo& info);
  Napi::Value kind(const Napi::CallbackInfo& info);
  Napi::Value view(const Napi::CallbackInfo& info);
  Napi::Value dispose(const Napi::CallbackInfo& info);
  void release(Napi::Env env);

  BlockRef block_;
  std::string kind_;  // "alloc" or "mmap"
  size_t size_ = 0;
  bool disposed_ = false;
  int64_t reported_ = 0;  // bytes reported to V8 with AdjustExternalMemory
  // ArrayBuffers handed out by view(); detached on dispose so no JS view can dangle.
  std::vector<Napi::Reference<Napi::ArrayBuffer>> views_;
};

class CancelToken : public Napi::ObjectWrap<CancelToken> {
 public:
  static Napi::Function define(Napi::Env env);
  static CancelToken* unwrapOrNull(Napi::Env env, Napi::Value v);
  explicit CancelToken(const Napi::CallbackInfo& info);
  std::shared_ptr<std::atomic<bool>> flag() const { return flag_; }

 private:
  Napi::Value cancel(const Napi::CallbackInfo& info);
  Napi::Value isCancelled(const Napi::CallbackInfo& info);
  std::shared_ptr<std::atomic<bool>> flag_ = std::make_shared<std::atomic<bool>>(false);
};

// Per-environment data (the addon is context-aware: each worker thread has its own).
struct AddonData {
  Napi::FunctionReference nativeMemory;
  Napi::FunctionReference cancelToken;
};
AddonData& addonData(Napi::Env env);

// Run `work` on kvant's job queue (off the event loop and off libuv's pool) and settle a
// promise: resolved with `onOk(env)` when work returns kOk, rejected with a KvantError-shaped
// Error otherwise. `keepAlive` values (the JS storages of the tensors involved) are
// referenced until the promise settles so the GC cannot free memory the job is using.
struct AsyncResult {
  Status status = Status::kOk;
  std::string message;
};
Napi::Promise runAsync(Napi::Env env, const char* name, std::vector<Napi::Value> keepAlive,
                       std::function<AsyncResult()> work, std::function<Napi::Value(Napi::Env)> onOk);

// Each binding file registers its exports with a static Registration, so adding a kernel
// family never edits this header or addon.cc:
//   static Registration reg("convert", registerConvert);
// Order: registrations with a lower `order` run first (memory classes before users).
using RegisterFn = void (*)(Napi::Env env, Napi::Object exports);
struct Registration {
  Registration(const char* name, RegisterFn fn, int order = 100);
};

}  // namespace kvant::napi
