// NativeMemory: memory kvant owns outside the JS heap. Large tensors (over the 4 GiB a
// TypedArray can address on Node 20) and memory-mapped checkpoints live here; JS sees
// bounded ArrayBuffer views, which are detached when the memory is disposed.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "addon.h"
#include "args.h"

namespace kvant::napi {
namespace {

// Allocations this large come straight from mmap: page-aligned, zeroed lazily by the
// kernel and returned to the OS on dispose (malloc may keep them in its arenas).
constexpr size_t kMmapThreshold = size_t(2) << 20;
// A TypedArray on Node 20 holds at most 2^32 - 1 elements; views are bounded in bytes.
constexpr size_t kMaxViewBytes = (size_t(1) << 32) - 1;

}  // namespace

Napi::Function NativeMemory::define(Napi::Env env) {
  return DefineClass(env, "NativeMemory",
                     {InstanceAccessor<&NativeMemory::byteLength>("byteLength"),
                      InstanceAccessor<&NativeMemory::isDisposed>("disposed"),
                      InstanceAccessor<&NativeMemory::kind>("kind"),
                      InstanceMethod<&NativeMemory::view>("view"),
                      InstanceMethod<&NativeMemory::dispose>("dispose")});
}

// Every NativeMemory carries this type tag (set by its constructor), so an argument is
// recognised by one tag check instead of an instanceof against the class: every kernel call
// unwraps its storages this way (a grouped MoE call 84 of them), and the instanceof walk cost
// ~0.45 us per storage, the tag check a few tens of ns. Unlike instanceof it cannot be fooled
// by Object.setPrototypeOf / Object.create(NativeMemory.prototype) on a plain object.
static const napi_type_tag kNativeMemoryTag = {0x6b76616e745f6e6dULL, 0x656d6f72795f7631ULL};  // "kvant_nm" "emory_v1"

NativeMemory* NativeMemory::unwrapOrNull(Napi::Env, Napi::Value v) {
  if (!v.IsObject()) return nullptr;
  Napi::Object o = v.As<Napi::Object>();
  if (!o.CheckTypeTag(&kNativeMemoryTag)) return nullptr;
  return NativeMemory::Unwrap(o);
}

MemoryBlock::~MemoryBlock() {
  if (!data) return;
  if (mapped) munmap(data, size);
  else std::free(data);
}

// new NativeMemory("alloc", bytes) | new NativeMemory("map", path)
NativeMemory::NativeMemory(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeMemory>(info) {
  Napi::Env env = info.Env();
  info.This().As<Napi::Object>().TypeTag(&kNativeMemoryTag);
  const std::string mode = info[0].IsString() ? info[0].As<Napi::String>().Utf8Value() : "";
  auto block = std::make_shared<MemoryBlock>();
  if (mode == "alloc") {
    const uint64_t bytes = getSize(info, 1, "byteLength");
    if (bytes > (uint64_t(1) << 46))
      throwKvant(env, "KVANT_RANGE", "Expected byteLength <= 2^46 but received " + std::to_string(bytes));
    block->size = size_t(bytes);
    if (block->size >= kMmapThreshold) {
      void* p = mmap(nullptr, block->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throwKvant(env, "KVANT_OOM", "Could not allocate " + std::to_string(block->size) + " bytes of native memory");
      block->data = static_cast<uint8_t*>(p);
      block->mapped = true;
    } else if (block->size > 0) {
      block->data = static_cast<uint8_t*>(std::aligned_alloc(64, (block->size + 63) / 64 * 64));
      if (!block->data) throwKvant(env, "KVANT_OOM", "Could not allocate " + std::to_string(block->size) + " bytes of native memory");
      std::memset(block->data, 0, block->size);
    }
    reported_ = int64_t(block->size);
    Napi::MemoryManagement::AdjustExternalMemory(env, reported_);
  } else if (mode == "map") {
    if (!info[1].IsString()) throwKvant(env, "KVANT_IO", "Expected a file path string for path");
    const std::string path = info[1].As<Napi::String>().Utf8Value();
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throwKvant(env, "KVANT_IO", "Cannot open " + path + ": " + std::strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      close(fd);
      throwKvant(env, "KVANT_IO", "Not a regular file: " + path);
    }
    block->size = size_t(st.st_size);
    if (block->size > 0) {
      // MAP_PRIVATE + PROT_WRITE: a stray JS write to a view copies the page instead of
      // faulting (a read-only mapping would crash the process) and never reaches the file.
      void* p = mmap(nullptr, block->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int e = errno;
        close(fd);
        throwKvant(env, "KVANT_IO", "Cannot map " + path + ": " + std::strerror(e));
      }
      block->data = static_cast<uint8_t*>(p);
      block->mapped = true;
    }
    close(fd);
  } else {
    throwKvant(env, "KVANT_DTYPE", "NativeMemory is created by kvant (allocate/mapFile), not directly");
  }
  kind_ = mode == "map" ? "mmap" : "alloc";
  size_ = block->size;
  block_ = std::move(block);
}

NativeMemory::~NativeMemory() = default;

void NativeMemory::Finalize(Napi::Env env) {
  if (reported_) Napi::MemoryManagement::AdjustExternalMemory(env, -reported_);
  reported_ = 0;
}

void NativeMemory::release(Napi::Env env) {
  for (auto& ref : views_) {
    if (ref.IsEmpty()) continue;
    Napi::Value v = ref.Value();
    if (!v.IsEmpty() && v.IsArrayBuffer()) napi_detach_arraybuffer(env, v);
  }
  views_.clear();
  block_.reset();  // freed now, or when the last running job / view finalizer lets go
  if (reported_) {
    Napi::MemoryManagement::AdjustExternalMemory(env, -reported_);
    reported_ = 0;
  }
}

Napi::Value NativeMemory::byteLength(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(size_)); }
Napi::Value NativeMemory::isDisposed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), disposed_); }
Napi::Value NativeMemory::kind(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), kind_);
}

// view(byteOffset, byteLength) -> ArrayBuffer aliasing the native memory (no copy).
Napi::Value NativeMemory::view(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed_) throwKvant(env, "KVANT_RANGE", "Cannot view disposed native memory");
  const uint64_t offset = getSize(info, 0, "byteOffset");
  const uint64_t bytes = getSize(info, 1, "byteLength");
  if (offset > size_ || bytes > size_ - offset)
    throwKvant(env, "KVANT_SHAPE", "Expected byteOffset + byteLength <= " + std::to_string(size_) + " but received " +
                                       std::to_string(offset) + " + " + std::to_string(bytes));
  if (bytes > kMaxViewBytes)
    throwKvant(env, "KVANT_RANGE", "Expected a view of at most " + std::to_string(kMaxViewBytes) +
                                       " bytes (the TypedArray limit) but received " + std::to_string(bytes));
  if (bytes == 0) return Napi::ArrayBuffer::New(env, 0);
  // The view owns a share of the block: it stays valid even if this object is collected.
  auto* owner = new BlockRef(block_);
  Napi::ArrayBuffer ab = Napi::ArrayBuffer::New(env, block_->data + offset, size_t(bytes),
                                                [](Napi::Env, void*, BlockRef* o) { delete o; }, owner);
  views_.push_back(Napi::Reference<Napi::ArrayBuffer>::New(ab, 0));  // weak: views may be collected
  return ab;
}

Napi::Value NativeMemory::dispose(const Napi::CallbackInfo& info) {
  if (!disposed_) {
    disposed_ = true;
    release(info.Env());
  }
  return info.Env().Undefined();
}

Napi::Function CancelToken::define(Napi::Env env) {
  return DefineClass(env, "CancelToken",
                     {InstanceMethod<&CancelToken::cancel>("cancel"),
                      InstanceAccessor<&CancelToken::isCancelled>("cancelled")});
}

CancelToken* CancelToken::unwrapOrNull(Napi::Env env, Napi::Value v) {
  if (!v.IsObject()) return nullptr;
  AddonData& d = addonData(env);
  if (d.cancelToken.IsEmpty() || !v.As<Napi::Object>().InstanceOf(d.cancelToken.Value())) return nullptr;
  return CancelToken::Unwrap(v.As<Napi::Object>());
}

CancelToken::CancelToken(const Napi::CallbackInfo& info) : Napi::ObjectWrap<CancelToken>(info) {}
Napi::Value CancelToken::cancel(const Napi::CallbackInfo& info) {
  flag_->store(true);
  return info.Env().Undefined();
}
Napi::Value CancelToken::isCancelled(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), flag_->load()); }

static void registerMemory(Napi::Env env, Napi::Object exports) {
  AddonData& d = addonData(env);
  Napi::Function mem = NativeMemory::define(env);
  Napi::Function tok = CancelToken::define(env);
  d.nativeMemory = Napi::Persistent(mem);
  d.cancelToken = Napi::Persistent(tok);
  exports.Set("NativeMemory", mem);
  exports.Set("CancelToken", tok);
}

static Registration registration("memory", registerMemory, 0);

}  // namespace kvant::napi
