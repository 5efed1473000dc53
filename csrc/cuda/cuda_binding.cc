// N-API layer of the CUDA addon: argument checks and status mapping only (no math). The same
// source builds kvant_cuda.node (with runtime_cuda.cu and the nvcc-compiled kernels) and the
// test-only kvant_cuda_emu.node (with runtime_emu.cc and the kernels under the SIMT emulation).
//
// JS holds two native classes:
//   DeviceBuffer(byteLength)  device memory from the budgeted allocator (runtime.h); free()
//                             releases it at once, the finalizer if JS forgets; any use after
//                             free is KVANT_RANGE.
//   Stream()                  an in-order work queue (cudaStream_t); synchronize(), destroy().
// Tensors cross as (DeviceBuffer, byteOffset, byteLength) triples, like the CPU bindings'
// (storage, byteOffset, byteLength), and every size is re-checked against the shapes here
// before a kernel sees a pointer. Status mapping: the entry points' own checks keep their code
// (KVANT_SHAPE, KVANT_DTYPE, ...); a launch beyond the device's limits is KVANT_RANGE with the
// limit; a CUDA failure is KVANT_BACKEND with CUDA's own error name and text; the allocator's
// budget is KVANT_OOM with the bytes needed and available.
#include <napi.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "kvant/dtype.h"
#include "kvant/quant_format.h"
#include "kvant/status.h"
#include "ops.h"
#include "runtime.h"

namespace kvant::cudanapi {
namespace {

namespace rt = ::kvant::cuda::rt;
namespace ops = ::kvant::cuda::ops;

#ifdef KVANT_CUDA_EMULATED
constexpr bool kEmulated = true;
#else
constexpr bool kEmulated = false;
#endif

[[noreturn]] void throwKvant(Napi::Env env, const char* code, const std::string& message) {
  Napi::Error err = Napi::Error::New(env, message);
  err.Set("code", Napi::String::New(env, code));
  throw err;
}
[[noreturn]] void throwStatus(Napi::Env env, Status s, const std::string& message) { throwKvant(env, statusCode(s), message); }

// A runtime call failed: its own message (CUDA's words, or the budget's numbers).
void checkRt(Napi::Env env, Status s, const std::string& what) {
  if (s != Status::kOk) throwStatus(env, s, what + ": " + rt::lastError());
}

// A kernel entry point returned s. Launch-limit and CUDA failures carry the launch wrapper's
// message; the entry points' own argument checks get `context`, which names the arguments.
void checkLaunch(Napi::Env env, Status s, const std::string& op, const std::string& context) {
  if (s == Status::kOk) return;
  const std::string launch = ops::lastLaunchMessage();
  if ((s == Status::kRange || s == Status::kBackend) && !launch.empty()) throwStatus(env, s, op + ": " + launch);
  throwStatus(env, s, op + ": " + context);
}

bool isNil(const Napi::Value& v) { return v.IsNull() || v.IsUndefined(); }

uint64_t getSize(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  if (!info[i].IsNumber()) throwKvant(info.Env(), "KVANT_RANGE", "Expected a non-negative integer for " + name);
  const double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= 0) || v > 9007199254740992.0 || v != double(uint64_t(v)))  // range first: the cast needs v < 2^64
    throwKvant(info.Env(), "KVANT_RANGE", "Expected a non-negative integer for " + name + " but received " + std::to_string(v));
  return uint64_t(v);
}
int getInt(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  const uint64_t v = getSize(info, i, name);
  if (v > 0x7fffffffu) throwKvant(info.Env(), "KVANT_RANGE", "Expected " + name + " below 2^31 but received " + std::to_string(v));
  return int(v);
}
float getFloat(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  if (!info[i].IsNumber()) throwKvant(info.Env(), "KVANT_RANGE", "Expected a number for " + name);
  return info[i].As<Napi::Number>().FloatValue();
}
DType getDType(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  const uint64_t v = getSize(info, i, name);
  if (v >= uint64_t(kNumDTypes)) throwKvant(info.Env(), "KVANT_DTYPE", "Unknown dtype code for " + name + ": " + std::to_string(v));
  return DType(int(v));
}

// ---------------------------------------------------------------- DeviceBuffer

class DeviceBuffer : public Napi::ObjectWrap<DeviceBuffer> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "DeviceBuffer",
                       {InstanceAccessor<&DeviceBuffer::byteLength>("byteLength"), InstanceAccessor<&DeviceBuffer::isFreed>("freed"),
                        InstanceMethod<&DeviceBuffer::freeB>("free")});
  }
  explicit DeviceBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceBuffer>(info) {
    Napi::Env env = info.Env();
    size_ = size_t(getSize(info, 0, "byteLength"));
    checkRt(env, rt::alloc(size_, &data_), "DeviceBuffer(" + std::to_string(size_) + ")");
  }
  ~DeviceBuffer() override { release(); }
  void Finalize(Napi::Env) override { release(); }

  uint8_t* data() const { return static_cast<uint8_t*>(data_); }
  size_t size() const { return size_; }
  bool freed() const { return data_ == nullptr; }
  // K of the permutation this buffer was last checked to hold at `offset` (0: not checked since
  // the last write through this addon).
  uint64_t permK = 0, permOffset = 0;

 private:
  Napi::Value byteLength(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(size_)); }
  Napi::Value isFreed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), freed()); }
  Napi::Value freeB(const Napi::CallbackInfo& info) {
    const bool was = !freed();
    if (was) {
      void* p = data_;
      data_ = nullptr;
      checkRt(info.Env(), rt::free(p), "DeviceBuffer.free");
    }
    return Napi::Boolean::New(info.Env(), was);
  }
  void release() {
    if (data_) rt::free(data_);  // at teardown CUDA may already be gone: nothing to report to
    data_ = nullptr;
  }
  void* data_ = nullptr;
  size_t size_ = 0;
};

// ---------------------------------------------------------------- Stream

class Stream : public Napi::ObjectWrap<Stream> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "Stream",
                       {InstanceMethod<&Stream::synchronize>("synchronize"), InstanceMethod<&Stream::destroyB>("destroy"),
                        InstanceAccessor<&Stream::isDestroyed>("destroyed")});
  }
  explicit Stream(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Stream>(info) {
    checkRt(info.Env(), rt::streamCreate(&stream_), "Stream()");
  }
  ~Stream() override { release(); }
  void Finalize(Napi::Env) override { release(); }
  void* handle() const { return stream_; }
  bool destroyed() const { return stream_ == nullptr; }

 private:
  Napi::Value synchronize(const Napi::CallbackInfo& info) {
    if (destroyed()) throwKvant(info.Env(), "KVANT_RANGE", "Stream.synchronize: the stream was destroyed");
    checkRt(info.Env(), rt::streamSynchronize(stream_), "Stream.synchronize");
    return info.Env().Undefined();
  }
  Napi::Value destroyB(const Napi::CallbackInfo& info) {
    const bool was = !destroyed();
    if (was) {
      void* s = stream_;
      stream_ = nullptr;
      checkRt(info.Env(), rt::streamDestroy(s), "Stream.destroy");
    }
    return Napi::Boolean::New(info.Env(), was);
  }
  Napi::Value isDestroyed(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), destroyed()); }
  void release() {
    if (stream_) rt::streamDestroy(stream_);
    stream_ = nullptr;
  }
  void* stream_ = nullptr;
};

struct ClassRefs {
  Napi::FunctionReference buffer, stream;
};
ClassRefs& classes(Napi::Env env) { return *env.GetInstanceData<ClassRefs>(); }

template <class T>
T* unwrapOrNull(Napi::Env env, const Napi::FunctionReference& ctor, Napi::Value v) {
  if (!v.IsObject()) return nullptr;
  Napi::Object o = v.As<Napi::Object>();
  if (!o.InstanceOf(ctor.Value())) return nullptr;
  return T::Unwrap(o);
}

// ---------------------------------------------------------------- argument resolution

struct DevSpan {
  uint8_t* data = nullptr;
  size_t bytes = 0;
  DeviceBuffer* buf = nullptr;
};

// (DeviceBuffer, byteOffset, byteLength) at info[i..i+2]: a live buffer, the range inside it,
// aligned to `align` bytes (the element size).
DevSpan getDev(const Napi::CallbackInfo& info, size_t i, const std::string& name, size_t align) {
  Napi::Env env = info.Env();
  DeviceBuffer* b = unwrapOrNull<DeviceBuffer>(env, classes(env).buffer, info[i]);
  if (!b) throwKvant(env, "KVANT_DTYPE", "Expected a DeviceTensor (device memory) for " + name);
  if (b->freed()) throwKvant(env, "KVANT_RANGE", "The device memory of " + name + " was freed");
  const uint64_t off = getSize(info, i + 1, name + ".byteOffset"), bytes = getSize(info, i + 2, name + ".byteLength");
  if (off > b->size() || bytes > b->size() - off)
    throwKvant(env, "KVANT_SHAPE", "Expected " + name + " to fit its device buffer: byteOffset " + std::to_string(off) + " + byteLength " +
                                       std::to_string(bytes) + " > buffer size " + std::to_string(b->size()));
  DevSpan s{b->data() + off, size_t(bytes), b};
  if (align > 1 && reinterpret_cast<uintptr_t>(s.data) % align != 0)
    throwKvant(env, "KVANT_RANGE", "Expected " + name + " to be aligned to " + std::to_string(align) + " bytes but its byteOffset is " + std::to_string(off));
  return s;
}
DevSpan optDev(const Napi::CallbackInfo& info, size_t i, const std::string& name, size_t align) {
  if (isNil(info[i])) return DevSpan{};
  return getDev(info, i, name, align);
}
// An output: whatever was checked about the buffer's contents no longer holds.
DevSpan outDev(const Napi::CallbackInfo& info, size_t i, const std::string& name, size_t align) {
  DevSpan s = getDev(info, i, name, align);
  s.buf->permK = 0;
  return s;
}

void need(Napi::Env env, const DevSpan& s, uint64_t bytes, const std::string& name) {
  if (s.bytes != bytes)
    throwKvant(env, "KVANT_SHAPE", "Expected " + name + " to hold " + std::to_string(bytes) + " bytes but it holds " + std::to_string(s.bytes));
}
bool overlaps(const DevSpan& a, const DevSpan& b) {
  if (!a.bytes || !b.bytes) return false;
  return a.data < b.data + b.bytes && b.data < a.data + a.bytes;
}

// A host TypedArray or DataView: its bytes.
struct HostSpan {
  uint8_t* data = nullptr;
  size_t bytes = 0;
};
HostSpan getHost(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  Napi::Env env = info.Env();
  Napi::Value v = info[i];
  void* data = nullptr;
  size_t bytes = 0;
  napi_value ab;
  if (v.IsTypedArray()) {
    napi_typedarray_type type;
    size_t count, offset;
    NAPI_THROW_IF_FAILED(env, napi_get_typedarray_info(env, v, &type, &count, &data, &ab, &offset), HostSpan{});
    bytes = count * Napi::TypedArray(env, v).ElementSize();
  } else if (v.IsDataView()) {
    size_t offset;
    NAPI_THROW_IF_FAILED(env, napi_get_dataview_info(env, v, &bytes, &data, &ab, &offset), HostSpan{});
  } else {
    throwKvant(env, "KVANT_DTYPE", "Expected a TypedArray or DataView for " + name);
  }
  bool detached = false;
  napi_is_detached_arraybuffer(env, ab, &detached);
  if (detached) throwKvant(env, "KVANT_RANGE", "The storage of " + name + " is a detached ArrayBuffer");
  return HostSpan{static_cast<uint8_t*>(data), bytes};
}

void* getStream(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || isNil(info[i])) return nullptr;
  Stream* s = unwrapOrNull<Stream>(env, classes(env).stream, info[i]);
  if (!s) throwKvant(env, "KVANT_DTYPE", "Expected a Stream or undefined for stream");
  if (s->destroyed()) throwKvant(env, "KVANT_RANGE", "The stream was destroyed");
  return s->handle();
}

// The device's limits (queried once) and the stream of this call.
ops::Target target(Napi::Env env, void* stream) {
  rt::DeviceProps p;
  // No usable device: CUDA's own words, starting with the call that failed.
  const Status s = rt::properties(&p);
  if (s != Status::kOk) throwStatus(env, s, rt::lastError());
  ops::Target t;
  t.sm = p.sm;
  t.maxThreads = p.maxThreadsPerBlock;
  t.smemDefault = p.smemPerBlock;
  t.smemOptInMax = p.smemPerBlockOptIn;
  t.stream = stream;
  return t;
}

// Device scratch for one call, accounted against the budget (KVANT_OOM when it does not fit).
// Released after the call's stream has drained, so no queued kernel still uses it.
class Scratch {
 public:
  Scratch(Napi::Env env, size_t bytes, void* stream, const char* what) : stream_(stream) {
    checkRt(env, rt::alloc(bytes, &p_), std::string(what) + " scratch");
  }
  ~Scratch() {
    if (!p_) return;
    rt::streamSynchronize(stream_);
    rt::free(p_);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T>
  T* as(size_t byteOffset = 0) const {
    return reinterpret_cast<T*>(static_cast<uint8_t*>(p_) + byteOffset);
  }

 private:
  void* p_ = nullptr;
  void* stream_;
};

template <class T>
T readBack(Napi::Env env, const void* dev, void* stream, const char* what) {
  T v{};
  checkRt(env, rt::copy(&v, dev, sizeof(T), rt::CopyKind::kDeviceToHost, stream, false), what);
  return v;
}

// ---------------------------------------------------------------- device, memory, copies

// deviceQuery(): what the child-process test load reports (never throws).
Napi::Value deviceQuery(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  int count = 0;
  const Status s = rt::deviceCount(&count);
  o.Set("count", count);
  o.Set("emulated", kEmulated);
  if (s != Status::kOk) {
    o.Set("error", rt::lastError());
    return o;
  }
  if (count > 0) {
    rt::DeviceProps p;
    if (rt::properties(&p) == Status::kOk) {
      o.Set("name", p.name);
      o.Set("sm", p.sm);
      o.Set("totalMemory", double(p.totalMemory));
    } else {
      o.Set("error", rt::lastError());
    }
  }
  return o;
}

Napi::Value properties(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  rt::DeviceProps p;
  checkRt(env, rt::properties(&p), "CUDA device");
  Napi::Object o = Napi::Object::New(env);
  o.Set("name", p.name);
  o.Set("sm", p.sm);
  o.Set("multiprocessors", p.multiprocessors);
  o.Set("totalMemory", double(p.totalMemory));
  o.Set("maxThreadsPerBlock", double(p.maxThreadsPerBlock));
  o.Set("smemPerBlock", double(p.smemPerBlock));
  o.Set("smemPerBlockOptIn", double(p.smemPerBlockOptIn));
  o.Set("emulated", p.emulated);
  return o;
}

Napi::Value memoryStats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const rt::MemoryStats m = rt::memoryStats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("budget", double(m.budget));
  o.Set("allocated", double(m.allocated));
  o.Set("peak", double(m.peak));
  o.Set("allocations", double(m.allocations));
  o.Set("deviceTotal", double(m.deviceTotal));
  return o;
}

Napi::Value setMemoryBudget(const Napi::CallbackInfo& info) {
  checkRt(info.Env(), rt::setBudget(size_t(getSize(info, 0, "budget"))), "setMemoryBudget");
  return info.Env().Undefined();
}

Napi::Value synchronize(const Napi::CallbackInfo& info) {
  checkRt(info.Env(), rt::deviceSynchronize(), "synchronize");
  return info.Env().Undefined();
}

// upload(dst, dstOffset, dstBytes, host, stream): host bytes -> device (returns once the host
// bytes were read; the copy is ordered on the stream).
Napi::Value upload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan d = outDev(info, 0, "dst", 1);
  const HostSpan h = getHost(info, 3, "src");
  if (h.bytes != d.bytes) throwKvant(env, "KVANT_SHAPE", "Expected the host source to hold " + std::to_string(d.bytes) + " bytes like the device range but it holds " + std::to_string(h.bytes));
  checkRt(env, rt::copy(d.data, h.data, d.bytes, rt::CopyKind::kHostToDevice, getStream(info, 4), true), "upload");
  return env.Undefined();
}

// download(src, srcOffset, srcBytes, host, stream): device -> host, complete on return.
Napi::Value download(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan s = getDev(info, 0, "src", 1);
  const HostSpan h = getHost(info, 3, "dst");
  if (h.bytes != s.bytes) throwKvant(env, "KVANT_SHAPE", "Expected the host destination to hold " + std::to_string(s.bytes) + " bytes like the device range but it holds " + std::to_string(h.bytes));
  checkRt(env, rt::copy(h.data, s.data, s.bytes, rt::CopyKind::kDeviceToHost, getStream(info, 4), false), "download");
  return env.Undefined();
}

// copyDevice(dst.., src.., stream): device -> device, ordered on the stream (async).
Napi::Value copyDevice(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan d = outDev(info, 0, "dst", 1), s = getDev(info, 3, "src", 1);
  need(env, d, s.bytes, "dst");
  if (overlaps(d, s) && d.data != s.data) throwKvant(env, "KVANT_RANGE", "Expected dst and src of a device copy not to overlap");
  checkRt(env, rt::copy(d.data, s.data, s.bytes, rt::CopyKind::kDeviceToDevice, getStream(info, 6), true), "copyDevice");
  return env.Undefined();
}

// memset(dst.., byteValue, stream)
Napi::Value memsetB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan d = outDev(info, 0, "dst", 1);
  const uint64_t v = getSize(info, 3, "value");
  if (v > 255) throwKvant(env, "KVANT_RANGE", "Expected a byte value 0..255 for value but received " + std::to_string(v));
  checkRt(env, rt::memset(d.data, int(v), d.bytes, getStream(info, 4), true), "memset");
  return env.Undefined();
}

// roundTripCopy(src: Uint8Array, dst: Uint8Array): host -> device, the copy kernel on the device,
// device -> host. A smoke test of the whole path (kept from the first addon).
Napi::Value roundTripCopy(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const HostSpan s = getHost(info, 0, "src"), d = getHost(info, 1, "dst");
  if (s.bytes != d.bytes) throwKvant(env, "KVANT_SHAPE", "Expected dst to have src's length " + std::to_string(s.bytes) + " but it has " + std::to_string(d.bytes));
  const ops::Target t = target(env, nullptr);
  Scratch a(env, s.bytes, nullptr, "roundTripCopy"), b(env, s.bytes, nullptr, "roundTripCopy");
  checkRt(env, rt::copy(a.as<void>(), s.data, s.bytes, rt::CopyKind::kHostToDevice, nullptr, false), "roundTripCopy");
  checkLaunch(env, ops::copyBytes(t, a.as<void>(), b.as<void>(), s.bytes), "roundTripCopy", "copy kernel");
  checkRt(env, rt::copy(d.data, b.as<void>(), s.bytes, rt::CopyKind::kDeviceToHost, nullptr, false), "roundTripCopy");
  return env.Undefined();
}

// ---------------------------------------------------------------- small ops

// rmsNorm(x.., w.., wDtype, y.., rows, n, eps, stream)
Napi::Value rmsNormB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType wt = getDType(info, 6, "w.dtype");
  if (wt != DType::kF32 && wt != DType::kF16 && wt != DType::kBF16)
    throwKvant(env, "KVANT_DTYPE", std::string("Expected an f32, f16 or bf16 weight for w.dtype but received ") + dtypeName(wt));
  const DevSpan x = getDev(info, 0, "x", 4), w = getDev(info, 3, "w", dtypeSize(wt)), y = outDev(info, 7, "y", 4);
  const uint64_t rows = getSize(info, 10, "rows"), n = getSize(info, 11, "n");
  need(env, x, rows * n * 4, "x");
  need(env, y, rows * n * 4, "y");
  need(env, w, n * dtypeSize(wt), "w");
  if (overlaps(y, w)) throwKvant(env, "KVANT_RANGE", "Expected y not to overlap w");
  if (overlaps(x, y) && x.data != y.data) throwKvant(env, "KVANT_RANGE", "Expected y to be x itself or disjoint from it");
  const float eps = getFloat(info, 12, "eps");
  const ops::Target t = target(env, getStream(info, 13));
  checkLaunch(env, ops::rmsNorm(t, reinterpret_cast<const float*>(x.data), w.data, wt, eps, reinterpret_cast<float*>(y.data), rows, n), "rmsNorm",
              "Expected n >= 1 and rows < 2^31 but received rows " + std::to_string(rows) + ", n " + std::to_string(n));
  return env.Undefined();
}

// rope(x.., rows, heads, stride, offset, pairs, pos.., invFreq.., amp, stream)
Napi::Value ropeB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan x = outDev(info, 0, "x", 4);
  const uint64_t rows = getSize(info, 3, "rows"), heads = getSize(info, 4, "heads"), stride = getSize(info, 5, "stride");
  const uint64_t offset = getSize(info, 6, "offset"), pairs = getSize(info, 7, "pairs");
  const DevSpan pos = getDev(info, 8, "positions", 4), inv = getDev(info, 11, "invFreq", 4);
  need(env, x, rows * heads * stride * 4, "x");
  need(env, pos, rows * 4, "positions");
  need(env, inv, pairs * 4, "invFreq");
  if (offset + 2 * pairs > stride) throwKvant(env, "KVANT_SHAPE", "Expected offset + 2*pairs <= head stride " + std::to_string(stride));
  if (overlaps(x, pos) || overlaps(x, inv)) throwKvant(env, "KVANT_RANGE", "Expected x not to overlap positions or invFreq");
  const float amp = getFloat(info, 14, "amplitude");
  const ops::Target t = target(env, getStream(info, 15));
  checkLaunch(env, ops::rope(t, reinterpret_cast<float*>(x.data), rows, heads, stride, offset, pairs, reinterpret_cast<const int32_t*>(pos.data),
                             reinterpret_cast<const float*>(inv.data), amp),
              "rope", "Expected rows * heads < 2^31 but received " + std::to_string(rows * heads));
  return env.Undefined();
}

// siluGate(g.., u.., inStride, y.., rows, n, stream)
Napi::Value siluGateB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan g = getDev(info, 0, "gate", 4), u = getDev(info, 3, "up", 4);
  const uint64_t stride = getSize(info, 6, "inStride");
  const DevSpan y = outDev(info, 7, "y", 4);
  const uint64_t rows = getSize(info, 10, "rows"), n = getSize(info, 11, "n");
  if (stride < n) throwKvant(env, "KVANT_SHAPE", "Expected inStride >= n (" + std::to_string(n) + ") but received " + std::to_string(stride));
  if (rows > 0 && (g.bytes < ((rows - 1) * stride + n) * 4 || u.bytes < ((rows - 1) * stride + n) * 4))
    throwKvant(env, "KVANT_SHAPE", "gate/up are too short for rows x n with the given stride");
  need(env, y, rows * n * 4, "y");
  if ((overlaps(y, g) && y.data != g.data) || (overlaps(y, u) && y.data != u.data))
    throwKvant(env, "KVANT_RANGE", "Expected y to be disjoint from gate and up (or to be gate itself)");
  const ops::Target t = target(env, getStream(info, 12));
  checkLaunch(env, ops::siluGate(t, reinterpret_cast<const float*>(g.data), reinterpret_cast<const float*>(u.data), stride,
                                 reinterpret_cast<float*>(y.data), rows, n),
              "siluGate", "inconsistent shapes");
  return env.Undefined();
}

// softmax(x.., rows, n, stream)
Napi::Value softmaxB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan x = outDev(info, 0, "x", 4);
  const uint64_t rows = getSize(info, 3, "rows"), n = getSize(info, 4, "n");
  need(env, x, rows * n * 4, "x");
  const ops::Target t = target(env, getStream(info, 5));
  checkLaunch(env, ops::softmax(t, reinterpret_cast<float*>(x.data), rows, n), "softmax",
              "Expected n >= 1 and rows < 2^31 but received rows " + std::to_string(rows) + ", n " + std::to_string(n));
  return env.Undefined();
}

// argmax(x.., rows, n, out.., stream)
Napi::Value argmaxB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan x = getDev(info, 0, "x", 4);
  const uint64_t rows = getSize(info, 3, "rows"), n = getSize(info, 4, "n");
  const DevSpan out = outDev(info, 5, "out", 4);
  need(env, x, rows * n * 4, "x");
  need(env, out, rows * 4, "out");
  if (overlaps(x, out)) throwKvant(env, "KVANT_RANGE", "Expected out not to overlap x");
  const ops::Target t = target(env, getStream(info, 8));
  checkLaunch(env, ops::argmax(t, reinterpret_cast<const float*>(x.data), rows, n, reinterpret_cast<int32_t*>(out.data)), "argmax",
              "Expected n in 1..2^31-1 and rows < 2^31 but received rows " + std::to_string(rows) + ", n " + std::to_string(n));
  return env.Undefined();
}

// embedding(table.., dtype, vocab, dim, ids.., out.., stream)
Napi::Value embeddingB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = getDType(info, 3, "table.dtype");
  if (dt != DType::kF32 && dt != DType::kF16 && dt != DType::kBF16)
    throwKvant(env, "KVANT_DTYPE", std::string("Expected an f32, f16 or bf16 table for table.dtype but received ") + dtypeName(dt));
  const DevSpan tab = getDev(info, 0, "table", dtypeSize(dt));
  const uint64_t vocab = getSize(info, 4, "vocab"), dim = getSize(info, 5, "dim");
  const DevSpan ids = getDev(info, 6, "ids", 4), out = outDev(info, 9, "out", 4);
  need(env, tab, vocab * dim * dtypeSize(dt), "table");
  const uint64_t n = ids.bytes / 4;
  need(env, out, n * dim * 4, "out");
  if (overlaps(out, tab) || overlaps(out, ids)) throwKvant(env, "KVANT_RANGE", "Expected out not to overlap table or ids");
  if (n > 0x7fffffffu) throwKvant(env, "KVANT_RANGE", "Expected fewer than 2^31 ids");
  void* stream = getStream(info, 12);
  const ops::Target t = target(env, stream);
  Scratch bad(env, 4, stream, "embedding");
  const int32_t n32 = int32_t(n);
  checkRt(env, rt::copy(bad.as<void>(), &n32, 4, rt::CopyKind::kHostToDevice, stream, false), "embedding");
  checkLaunch(env, ops::embedding(t, tab.data, dt, vocab, dim, reinterpret_cast<const int32_t*>(ids.data), n, reinterpret_cast<float*>(out.data), bad.as<int32_t>()),
              "embedding", "Expected dim >= 1");
  const int32_t first = readBack<int32_t>(env, bad.as<void>(), stream, "embedding");
  if (first >= 0 && first < n32) {
    const int32_t id = readBack<int32_t>(env, ids.data + size_t(first) * 4, stream, "embedding");
    throwKvant(env, "KVANT_RANGE", "Expected token ids in 0.." + std::to_string(int64_t(vocab) - 1) + " but ids[" + std::to_string(first) + "] = " + std::to_string(id));
  }
  return env.Undefined();
}

// routeTopK(logits.., rows, E, k, nGroup, topkGroup, groupLimited, normTopk, scaling, idx.., w.., stream)
Napi::Value routeB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan l = getDev(info, 0, "logits", 4);
  const uint64_t rows = getSize(info, 3, "rows"), E = getSize(info, 4, "experts"), k = getSize(info, 5, "k");
  const uint64_t nGroup = getSize(info, 6, "nGroup"), topkGroup = getSize(info, 7, "topkGroup");
  const bool gl = info[8].ToBoolean(), norm = info[9].ToBoolean();
  const float scaling = getFloat(info, 10, "routedScalingFactor");
  const DevSpan idx = outDev(info, 11, "idx", 4), w = outDev(info, 14, "weights", 4);
  need(env, l, rows * E * 4, "logits");
  need(env, idx, rows * k * 4, "idx");
  need(env, w, rows * k * 4, "weights");
  if (overlaps(idx, w) || overlaps(idx, l) || overlaps(w, l)) throwKvant(env, "KVANT_RANGE", "Expected logits, idx and weights not to overlap");
  const ops::Target t = target(env, getStream(info, 17));
  checkLaunch(env, ops::routeTopK(t, reinterpret_cast<const float*>(l.data), rows, E, k, nGroup, topkGroup, gl, norm, scaling,
                                  reinterpret_cast<int32_t*>(idx.data), reinterpret_cast<float*>(w.data)),
              "routeTopK", "k, n_group and topk_group are inconsistent with " + std::to_string(E) + " experts (at most 1024 experts and 256 groups on the GPU)");
  return env.Undefined();
}

// ---------------------------------------------------------------- group quantization

QuantFormat getFormat(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  Napi::Env env = info.Env();
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array ||
      info[i].As<Napi::TypedArray>().ByteLength() != sizeof(QuantFormat))
    throwKvant(env, "KVANT_FORMAT", "Expected a 32-byte encoded QuantFormat for " + name + ".format");
  QuantFormat f;
  std::memcpy(&f, info[i].As<Napi::Uint8Array>().Data(), sizeof f);
  if (!qBitsSupported(f.bits)) throwKvant(env, "KVANT_FORMAT", "Expected bits 2, 3, 4 or 8 for " + name + ".format.bits but received " + std::to_string(f.bits));
  if (f.groupSize == 0 || f.groupSize < -1)
    throwKvant(env, "KVANT_FORMAT", "Expected a positive group size or -1 for " + name + ".format.groupSize but received " + std::to_string(f.groupSize));
  if (f.zeroFormat != 0 && f.zeroFormat != 1) throwKvant(env, "KVANT_FORMAT", "Expected zero format 0 (gptq) or 1 (gptq_v2) for " + name);
  if (f.K <= 0 || f.N <= 0 || f.K > 0x7fffffff || f.N > 0x7fffffff)
    throwKvant(env, "KVANT_SHAPE", "Expected K and N in 1..2^31-1 for " + name + " but received K = " + std::to_string(f.K) + ", N = " + std::to_string(f.N));
  if (!qDimPackable(f.K, f.bits) || !qDimPackable(f.N, f.bits))
    throwKvant(env, "KVANT_SHAPE", "Expected " + name + ".K and N to fill whole int32 words at " + std::to_string(f.bits) + " bits but K = " +
                                       std::to_string(f.K) + ", N = " + std::to_string(f.N));
  const int unit = f.bits == 3 ? 32 : 32 / f.bits;
  if (f.groupSize > 0 && f.groupSize < f.K && f.groupSize % unit != 0)
    throwKvant(env, "KVANT_FORMAT", "Expected " + name + ".groupSize to be a multiple of " + std::to_string(unit) + " (codes per packed word at " +
                                        std::to_string(f.bits) + " bits) but it is " + std::to_string(f.groupSize));
  return f;
}

uint64_t qweightBytes(const QuantFormat& f) { return uint64_t(qWeightRows(f)) * uint64_t(f.N) * 4; }
uint64_t qzerosBytes(const QuantFormat& f) { return uint64_t(qGroupCount(f)) * uint64_t(qZeroCols(f)) * 4; }
uint64_t scalesBytes(const QuantFormat& f) { return uint64_t(qGroupCount(f)) * uint64_t(f.N) * 2; }

struct QArgs {
  QMatrix q{};
  DevSpan qw, qz, sc, pm;
};

// fmt, qweight.., qzeros.., scales.., perm|null.. (13 arguments from info[i]). A permutation in
// device memory is read back once and checked (the GEMV gathers x through it: an index outside
// 0..K-1 would read out of bounds); the check is remembered until the buffer is written again.
QArgs getQMatrix(const Napi::CallbackInfo& info, size_t i, const std::string& name, void* stream) {
  Napi::Env env = info.Env();
  QArgs r;
  r.q.fmt = getFormat(info, i, name);
  const QuantFormat& f = r.q.fmt;
  r.qw = getDev(info, i + 1, name + ".qweight", 4);
  r.qz = getDev(info, i + 4, name + ".qzeros", 4);
  r.sc = getDev(info, i + 7, name + ".scales", 2);
  r.pm = optDev(info, i + 10, name + ".perm", 4);
  need(env, r.qw, qweightBytes(f), name + ".qweight (i32 [K*bits/32, N])");
  need(env, r.qz, qzerosBytes(f), name + ".qzeros (i32 [ng, N*bits/32])");
  need(env, r.sc, scalesBytes(f), name + ".scales (f16 [ng, N])");
  if (r.pm.data) {
    const uint64_t K = uint64_t(f.K);
    need(env, r.pm, K * 4, name + ".perm (i32 [K])");
    const uint64_t off = uint64_t(r.pm.data - r.pm.buf->data());
    if (r.pm.buf->permK != K || r.pm.buf->permOffset != off) {
      std::vector<int32_t> p(K);
      checkRt(env, rt::copy(p.data(), r.pm.data, K * 4, rt::CopyKind::kDeviceToHost, stream, false), name + ".perm");
      std::vector<bool> seen(K, false);
      for (uint64_t k = 0; k < K; ++k) {
        if (p[k] < 0 || uint64_t(p[k]) >= K || seen[size_t(p[k])])
          throwKvant(env, "KVANT_RANGE", "Expected " + name + ".perm to be a permutation of 0.." + std::to_string(K - 1) + " but perm[" + std::to_string(k) +
                                             "] = " + std::to_string(p[k]) + (p[k] >= 0 && uint64_t(p[k]) < K ? " repeats" : " is out of range"));
        seen[size_t(p[k])] = true;
      }
      r.pm.buf->permK = K;
      r.pm.buf->permOffset = off;
    }
  }
  r.q.qweight = reinterpret_cast<const uint32_t*>(r.qw.data);
  r.q.qzeros = reinterpret_cast<const uint32_t*>(r.qz.data);
  r.q.scales = reinterpret_cast<const uint16_t*>(r.sc.data);
  r.q.perm = reinterpret_cast<const int32_t*>(r.pm.data);
  return r;
}
bool overlapsQ(const DevSpan& s, const QArgs& q) { return overlaps(s, q.qw) || overlaps(s, q.qz) || overlaps(s, q.sc) || overlaps(s, q.pm); }

// dequantize(fmt, qw.., qz.., sc.., perm|null.., out.., outDtype, stream): out [N, K] f32 or f16.
Napi::Value dequantB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  void* stream = getStream(info, 17);
  const QArgs q = getQMatrix(info, 0, "w", stream);
  const DType ot = getDType(info, 16, "out.dtype");
  if (ot != DType::kF32 && ot != DType::kF16)
    throwKvant(env, "KVANT_DTYPE", std::string("Expected f32 or f16 for out.dtype on the GPU but received ") + dtypeName(ot));
  const DevSpan out = outDev(info, 13, "out", dtypeSize(ot));
  need(env, out, uint64_t(q.q.fmt.N) * uint64_t(q.q.fmt.K) * dtypeSize(ot), "out");
  if (overlapsQ(out, q)) throwKvant(env, "KVANT_RANGE", "Expected out not to overlap the quantized tensors");
  checkLaunch(env, ops::dequantize(target(env, stream), q.q, out.data, ot == DType::kF16), "dequantize", "unsupported format");
  return env.Undefined();
}

// quantizeRtn(fmt, w.., qw.., qz.., sc.., stream): W [N, K] f32 -> the packed tensors.
Napi::Value rtnB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const QuantFormat f = getFormat(info, 0, "w");
  const int64_t G = qEffectiveGroup(f);
  if (G != f.K && G % 32 != 0)
    throwKvant(env, "KVANT_FORMAT", "Expected a group size that is a multiple of 32 (or -1) for RTN quantization on the GPU but received " + std::to_string(f.groupSize));
  const DevSpan w = getDev(info, 1, "w", 4), qw = outDev(info, 4, "qweight", 4), qz = outDev(info, 7, "qzeros", 4), sc = outDev(info, 10, "scales", 2);
  need(env, w, uint64_t(f.N) * uint64_t(f.K) * 4, "w");
  need(env, qw, qweightBytes(f), "qweight");
  need(env, qz, qzerosBytes(f), "qzeros");
  need(env, sc, scalesBytes(f), "scales");
  if (overlaps(w, qw) || overlaps(w, qz) || overlaps(w, sc) || overlaps(qw, qz) || overlaps(qw, sc) || overlaps(qz, sc))
    throwKvant(env, "KVANT_RANGE", "Expected w, qweight, qzeros and scales not to overlap");
  void* stream = getStream(info, 13);
  const ops::Target t = target(env, stream);
  Scratch bad(env, 4, stream, "quantizeRtn");
  checkRt(env, rt::memset(bad.as<void>(), 0, 4, stream, false), "quantizeRtn");
  checkLaunch(env, ops::rtnQuantize(t, reinterpret_cast<const float*>(w.data), f, reinterpret_cast<uint32_t*>(qw.data), reinterpret_cast<uint32_t*>(qz.data),
                                    reinterpret_cast<uint16_t*>(sc.data), bad.as<int>()),
              "quantizeRtn", "unsupported format");
  if (readBack<int>(env, bad.as<void>(), stream, "quantizeRtn") != 0)
    throwKvant(env, "KVANT_RANGE", "Expected finite weights whose group scales fit f16, but w holds a non-finite value or a scale overflows f16");
  return env.Undefined();
}

// ---------------------------------------------------------------- fused dequant GEMV / GEMM

// qgemv / qgemm(x.., M, <13 QMatrix args>, y.., stream): y [M, N] f32 = x [M, K] f32 · dequant(W)ᵀ.
template <bool kGemm>
Napi::Value qmatmulB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = kGemm ? "qgemm" : "qgemv";
  void* stream = getStream(info, 20);
  const DevSpan x = getDev(info, 0, "x", 4);
  const uint64_t M = getSize(info, 3, "M");
  const QArgs q = getQMatrix(info, 4, "w", stream);
  const DevSpan y = outDev(info, 17, "y", 4);
  const uint64_t K = uint64_t(q.q.fmt.K), N = uint64_t(q.q.fmt.N);
  if (!kGemm && (M < 1 || M > uint64_t(ops::kGemvMaxRows)))
    throwKvant(env, "KVANT_SHAPE", "Expected M in 1.." + std::to_string(ops::kGemvMaxRows) + " rows for qgemv (use qgemm beyond) but received " + std::to_string(M));
  if (kGemm && (M < 1 || M > 0x7fffffffu)) throwKvant(env, "KVANT_SHAPE", "Expected M >= 1 rows for qgemm but received " + std::to_string(M));
  need(env, x, M * K * 4, "x (f32 [M, K])");
  need(env, y, M * N * 4, "y (f32 [M, N])");
  if (overlaps(y, x) || overlapsQ(y, q)) throwKvant(env, "KVANT_RANGE", "Expected y not to overlap x or the weights");
  const ops::Target t = target(env, stream);
  if (kGemm) {
    checkLaunch(env, ops::gemm(t, q.q, reinterpret_cast<const float*>(x.data), int64_t(M), reinterpret_cast<float*>(y.data)), op,
                "Expected at most 65535 * 64 rows but received " + std::to_string(M));
    return env.Undefined();
  }
  if (qEffectiveGroup(q.q.fmt) < 16)
    throwKvant(env, "KVANT_SHAPE", "Expected a group size of at least 16 for qgemv but received " + std::to_string(q.q.fmt.groupSize));
  const size_t scratchBytes = ops::gemvScratchBytes(q.q.fmt, int(M));
  Scratch scratch(env, scratchBytes, stream, op);
  checkLaunch(env, ops::gemv(t, q.q, reinterpret_cast<const float*>(x.data), int(M), reinterpret_cast<float*>(y.data), scratch.as<float>()), op,
              "unsupported shape");
  return env.Undefined();
}

// ---------------------------------------------------------------- attention

// flashAttention(q.., k.., v.., dtype, out.., lse|null.., B, Sq, Sk, Hq, Hkv, Dqk, Dv, scale, causal, keysPerSplit, stream)
Napi::Value flashB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = getDType(info, 9, "dtype");
  if (dt != DType::kF32 && dt != DType::kF16 && dt != DType::kBF16)
    throwKvant(env, "KVANT_DTYPE", std::string("Expected f32, f16 or bf16 q, k and v but received ") + dtypeName(dt));
  const size_t es = dtypeSize(dt);
  const DevSpan q = getDev(info, 0, "q", es), k = getDev(info, 3, "k", es), v = getDev(info, 6, "v", es);
  const DevSpan out = outDev(info, 10, "out", 4);
  DevSpan lse;
  if (!isNil(info[13])) lse = outDev(info, 13, "lse", 4);
  ops::FlashArgs a;
  a.B = getInt(info, 16, "B"), a.Sq = getInt(info, 17, "Sq"), a.Sk = getInt(info, 18, "Sk");
  a.Hq = getInt(info, 19, "Hq"), a.Hkv = getInt(info, 20, "Hkv"), a.Dqk = getInt(info, 21, "Dqk"), a.Dv = getInt(info, 22, "Dv");
  a.scale = getFloat(info, 23, "scale");
  a.causal = info[24].ToBoolean();
  a.keysPerSplit = getInt(info, 25, "keysPerSplit");
  if (a.Hq == 0 || a.Hkv == 0 || a.Hq % a.Hkv != 0)
    throwKvant(env, "KVANT_SHAPE", "Expected the query heads (" + std::to_string(a.Hq) + ") to be a positive multiple of the key/value heads (" + std::to_string(a.Hkv) + ")");
  const bool dimsOk = (a.Dqk == 64 && a.Dv == 64) || (a.Dqk == 128 && a.Dv == 128) || (a.Dqk == 192 && a.Dv == 128) || (a.Dqk == 256 && a.Dv == 256);
  if (!dimsOk)
    throwKvant(env, "KVANT_SHAPE", "Expected head dims (Dqk, Dv) in {(64, 64), (128, 128), (192, 128), (256, 256)} on the GPU but received (" +
                                       std::to_string(a.Dqk) + ", " + std::to_string(a.Dv) + ")");
  if (a.keysPerSplit % 32 != 0) throwKvant(env, "KVANT_SHAPE", "Expected keysPerSplit to be 0 or a multiple of 32 but received " + std::to_string(a.keysPerSplit));
  const uint64_t B = uint64_t(a.B), Sq = uint64_t(a.Sq), Sk = uint64_t(a.Sk);
  need(env, q, B * Sq * uint64_t(a.Hq) * uint64_t(a.Dqk) * es, "q ([B, Sq, Hq, Dqk])");
  need(env, k, B * Sk * uint64_t(a.Hkv) * uint64_t(a.Dqk) * es, "k ([B, Sk, Hkv, Dqk])");
  need(env, v, B * Sk * uint64_t(a.Hkv) * uint64_t(a.Dv) * es, "v ([B, Sk, Hkv, Dv])");
  need(env, out, B * Sq * uint64_t(a.Hq) * uint64_t(a.Dv) * 4, "out (f32 [B, Sq, Hq, Dv])");
  if (lse.buf) need(env, lse, B * uint64_t(a.Hq) * Sq * 4, "lse (f32 [B, Hq, Sq])");
  for (const DevSpan* in : {&q, &k, &v})
    if (overlaps(out, *in) || overlaps(lse, *in)) throwKvant(env, "KVANT_RANGE", "Expected out and lse not to overlap q, k or v");
  if (overlaps(out, lse)) throwKvant(env, "KVANT_RANGE", "Expected out and lse not to overlap");
  a.q = q.data, a.k = k.data, a.v = v.data, a.type = dt;
  a.out = reinterpret_cast<float*>(out.data);
  a.lse = lse.buf ? reinterpret_cast<float*>(lse.data) : nullptr;
  void* stream = getStream(info, 26);
  const ops::Target t = target(env, stream);
  std::unique_ptr<Scratch> scratch;
  if (const size_t bytes = ops::flashScratchBytes(a)) {
    scratch = std::make_unique<Scratch>(env, bytes, stream, "flashAttention");
    a.scratch = scratch->as<float>();
  }
  checkLaunch(env, ops::flash(t, a), "flashAttention", "Expected B * Hkv <= 65535 and B * Sq * Hq < 2^31");
  return env.Undefined();
}

// mlaDecode(q.., out.., lse|null.., B, H, L, R, scale, pool.., pageSize, maxPages, pageTable.., seqLens.., keysPerSplit, stream)
Napi::Value mlaB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ops::MlaArgs a;
  a.B = getInt(info, 9, "B"), a.H = getInt(info, 10, "H"), a.L = getInt(info, 11, "L"), a.R = getInt(info, 12, "R");
  a.scale = getFloat(info, 13, "scale");
  a.pageSize = getInt(info, 17, "pageSize"), a.maxPages = getInt(info, 18, "maxPages");
  a.keysPerSplit = getInt(info, 25, "keysPerSplit");
  if (!((a.L == 512 && a.R == 64) || (a.L == 64 && a.R == 32)))
    throwKvant(env, "KVANT_SHAPE", "Expected the latent shape (L, R) to be (512, 64) or (64, 32) on the GPU but received (" + std::to_string(a.L) + ", " + std::to_string(a.R) + ")");
  if (a.B < 1 || a.H < 1) throwKvant(env, "KVANT_SHAPE", "Expected B >= 1 and H >= 1");
  if (a.pageSize < 1 || a.maxPages < 1) throwKvant(env, "KVANT_SHAPE", "Expected pageSize >= 1 and maxPages >= 1");
  if (a.keysPerSplit < 32 || a.keysPerSplit % 32 != 0)
    throwKvant(env, "KVANT_SHAPE", "Expected keysPerSplit to be a positive multiple of 32 but received " + std::to_string(a.keysPerSplit));
  const uint64_t D = uint64_t(a.L + a.R), B = uint64_t(a.B), H = uint64_t(a.H);
  const DevSpan q = getDev(info, 0, "q", 4), out = outDev(info, 3, "out", 4);
  DevSpan lse;
  if (!isNil(info[6])) lse = outDev(info, 6, "lse", 4);
  const DevSpan pool = getDev(info, 14, "pool", 2), pt = getDev(info, 19, "pageTable", 4), sl = getDev(info, 22, "seqLens", 4);
  need(env, q, B * H * D * 4, "q (f32 [B, H, L+R])");
  need(env, out, B * H * uint64_t(a.L) * 4, "out (f32 [B, H, L])");
  if (lse.buf) need(env, lse, B * H * 4, "lse (f32 [B, H])");
  const uint64_t pageBytes = uint64_t(a.pageSize) * D * 2;
  if (pool.bytes % pageBytes != 0 || pool.bytes / pageBytes > 0x7fffffffu)
    throwKvant(env, "KVANT_SHAPE", "Expected pool to hold whole pages of " + std::to_string(pageBytes) + " bytes (pageSize x (L+R) bf16) but it holds " + std::to_string(pool.bytes));
  a.numPages = int(pool.bytes / pageBytes);
  need(env, pt, B * uint64_t(a.maxPages) * 4, "pageTable (i32 [B, maxPages])");
  need(env, sl, B * 4, "seqLens (i32 [B])");
  for (const DevSpan* in : {&q, &pool, &pt, &sl})
    if (overlaps(out, *in) || overlaps(lse, *in)) throwKvant(env, "KVANT_RANGE", "Expected out and lse not to overlap the inputs");
  if (overlaps(out, lse)) throwKvant(env, "KVANT_RANGE", "Expected out and lse not to overlap");
  void* stream = getStream(info, 26);
  // Sequence lengths decide the grid: read them back and bound them by the page table's reach.
  std::vector<int32_t> lens(B);
  checkRt(env, rt::copy(lens.data(), sl.data, B * 4, rt::CopyKind::kDeviceToHost, stream, false), "mlaDecode seqLens");
  const int64_t reach = int64_t(a.pageSize) * a.maxPages;
  for (uint64_t b = 0; b < B; ++b) {
    if (lens[b] < 0 || lens[b] > reach)
      throwKvant(env, "KVANT_RANGE", "Expected seqLens in 0.." + std::to_string(reach) + " (pageSize x maxPages) but seqLens[" + std::to_string(b) + "] = " + std::to_string(lens[b]));
    a.maxSeqLen = lens[b] > a.maxSeqLen ? lens[b] : a.maxSeqLen;
  }
  a.q = reinterpret_cast<const float*>(q.data), a.out = reinterpret_cast<float*>(out.data);
  a.lse = lse.buf ? reinterpret_cast<float*>(lse.data) : nullptr;
  a.pool = reinterpret_cast<const uint16_t*>(pool.data);
  a.pageTable = reinterpret_cast<const int32_t*>(pt.data), a.seqLens = reinterpret_cast<const int32_t*>(sl.data);
  const ops::Target t = target(env, stream);
  // One scratch allocation: the split partials, then B split counts, then the bad-page flag.
  const size_t partBytes = (ops::mlaScratchBytes(a) + 15) / 16 * 16, countBytes = (B * 4 + 15) / 16 * 16;
  Scratch scratch(env, partBytes + countBytes + 16, stream, "mlaDecode");
  a.scratch = scratch.as<float>();
  a.splitsPerBatch = scratch.as<int>(partBytes);
  a.badPage = scratch.as<int>(partBytes + countBytes);
  checkRt(env, rt::memset(a.badPage, 0, 4, stream, false), "mlaDecode");
  checkLaunch(env, ops::mla(t, a), "mlaDecode", "inconsistent shapes");
  if (readBack<int>(env, a.badPage, stream, "mlaDecode") != 0)
    throwKvant(env, "KVANT_RANGE", "Expected pageTable entries in 0.." + std::to_string(a.numPages - 1) + " (the pool's pages) for every page a sequence uses");
  return env.Undefined();
}

// ---------------------------------------------------------------- init

// ---------------------------------------------------------------- device forward plumbing (dense.cu, kv_cache.cu MLA)

// The last byte + 1 a strided [rows, heads, n] access reaches, in elements (0 for an empty one).
uint64_t reach(uint64_t rows, uint64_t rowStride, uint64_t heads, uint64_t headStride, uint64_t n) {
  if (rows == 0 || heads == 0 || n == 0) return 0;
  return (rows - 1) * rowStride + (heads - 1) * headStride + n;
}
void fits(Napi::Env env, const DevSpan& s, uint64_t bytes, const std::string& name) {
  if (bytes > s.bytes)
    throwKvant(env, "KVANT_SHAPE", "Expected " + name + " to hold at least " + std::to_string(bytes) + " bytes for the given shape and strides but it holds " +
                                       std::to_string(s.bytes));
}
// Device int32 indices read back and checked against 0..limit-1 (they address rows the binding bounded).
void checkIndices(Napi::Env env, const DevSpan& idx, uint64_t count, uint64_t limit, void* stream, const std::string& name) {
  need(env, idx, count * 4, name);
  std::vector<int32_t> v(count);
  if (count) checkRt(env, rt::copy(v.data(), idx.data, count * 4, rt::CopyKind::kDeviceToHost, stream, false), name);
  for (uint64_t i = 0; i < count; ++i)
    if (v[i] < 0 || uint64_t(v[i]) >= limit)
      throwKvant(env, "KVANT_RANGE", "Expected " + name + " in 0.." + std::to_string(int64_t(limit) - 1) + " but " + name + "[" + std::to_string(i) + "] = " + std::to_string(v[i]));
}

// denseLinear(x.., w.., wDtype, y.., M, H, N, K, xRow, xHead, wHead, wRow, yRow, yHead, stream)
Napi::Value denseLinearB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ops::DenseArgs a;
  a.wType = getDType(info, 6, "w.dtype");
  if (a.wType != DType::kF32 && a.wType != DType::kF16 && a.wType != DType::kBF16)
    throwKvant(env, "KVANT_DTYPE", std::string("Expected an f32, f16 or bf16 weight for w.dtype but received ") + dtypeName(a.wType));
  const size_t es = dtypeSize(a.wType);
  const DevSpan x = getDev(info, 0, "x", 4), w = getDev(info, 3, "w", es), y = outDev(info, 7, "y", 4);
  const uint64_t M = getSize(info, 10, "M"), H = getSize(info, 11, "H"), N = getSize(info, 12, "N"), K = getSize(info, 13, "K");
  const uint64_t xRow = getSize(info, 14, "xRow"), xHead = getSize(info, 15, "xHead"), wHead = getSize(info, 16, "wHead");
  const uint64_t wRow = getSize(info, 17, "wRow"), yRow = getSize(info, 18, "yRow"), yHead = getSize(info, 19, "yHead");
  if (H < 1 || N < 1 || K < 1) throwKvant(env, "KVANT_SHAPE", "Expected H, N and K >= 1 but received " + std::to_string(H) + ", " + std::to_string(N) + ", " + std::to_string(K));
  if (M > 0x7fffffffu || H > 0x7fffffffu || N > 0x7fffffffu || K > 0x7fffffffu) throwKvant(env, "KVANT_RANGE", "Expected M, H, N, K below 2^31");
  fits(env, x, reach(M, xRow, H, xHead, K) * 4, "x");
  fits(env, w, reach(N, wRow, H, wHead, K) * es, "w");
  fits(env, y, reach(M, yRow, H, yHead, N) * 4, "y");
  if (overlaps(y, x) || overlaps(y, w)) throwKvant(env, "KVANT_RANGE", "Expected y not to overlap x or w");
  a.x = reinterpret_cast<const float*>(x.data), a.w = w.data, a.y = reinterpret_cast<float*>(y.data);
  a.M = int64_t(M), a.H = int64_t(H), a.N = int64_t(N), a.K = int64_t(K);
  a.xRow = int64_t(xRow), a.xHead = int64_t(xHead), a.wHead = int64_t(wHead), a.wRow = int64_t(wRow), a.yRow = int64_t(yRow), a.yHead = int64_t(yHead);
  checkLaunch(env, ops::denseLinear(target(env, getStream(info, 20)), a), "denseLinear", "Expected M x H <= 65535 but received " + std::to_string(M * H));
  return env.Undefined();
}

// copyRows(src.., sRow, idx.. | null, dst.., dRow, rows, n, stream)
Napi::Value copyRowsB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan src = getDev(info, 0, "src", 4), dst = outDev(info, 7, "dst", 4);
  const uint64_t sRow = getSize(info, 3, "sRow"), dRow = getSize(info, 10, "dRow"), rows = getSize(info, 11, "rows"), n = getSize(info, 12, "n");
  void* stream = getStream(info, 13);
  if (rows > 0x7fffffffu || n > 0x7fffffffu) throwKvant(env, "KVANT_RANGE", "Expected rows and n below 2^31");
  const DevSpan idx = optDev(info, 4, "idx", 4);
  if (idx.buf) {
    if (n > 0 && src.bytes / 4 < n) throwKvant(env, "KVANT_SHAPE", "Expected src to hold at least one row of " + std::to_string(n) + " values");
    const uint64_t srcRows = n == 0 ? 0 : sRow == 0 ? 1 : (src.bytes / 4 - n) / sRow + 1;
    checkIndices(env, idx, rows, srcRows, stream, "idx");
  } else {
    fits(env, src, reach(rows, sRow, 1, 0, n) * 4, "src");
  }
  fits(env, dst, reach(rows, dRow, 1, 0, n) * 4, "dst");
  if (overlaps(dst, src) || overlaps(dst, idx)) throwKvant(env, "KVANT_RANGE", "Expected dst not to overlap src or idx");
  checkLaunch(env, ops::copyRows(target(env, stream), reinterpret_cast<const float*>(src.data), int64_t(sRow), idx.buf ? reinterpret_cast<const int32_t*>(idx.data) : nullptr,
                                 reinterpret_cast<float*>(dst.data), int64_t(dRow), int64_t(rows), int64_t(n)),
              "copyRows", "bad shape");
  return env.Undefined();
}

// accumulateRows(y.., rows, n, src.., idx.. | null, w.. | null, J, stream)
Napi::Value accumulateRowsB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan y = outDev(info, 0, "y", 4), src = getDev(info, 5, "src", 4);
  const uint64_t rows = getSize(info, 3, "rows"), n = getSize(info, 4, "n"), J = getSize(info, 14, "J");
  void* stream = getStream(info, 15);
  if (J < 1 || J > 1024) throwKvant(env, "KVANT_RANGE", "Expected J in 1..1024 but received " + std::to_string(J));
  if (rows > 0x7fffffffu || n > 0x7fffffffu) throwKvant(env, "KVANT_RANGE", "Expected rows and n below 2^31");
  need(env, y, rows * n * 4, "y (f32 [rows, n])");
  const DevSpan idx = optDev(info, 8, "idx", 4), w = optDev(info, 11, "w", 4);
  if (idx.buf) {
    checkIndices(env, idx, rows * J, n == 0 ? 0 : src.bytes / (n * 4), stream, "idx");
  } else {
    if (J != 1) throwKvant(env, "KVANT_SHAPE", "Expected J = 1 without idx but received " + std::to_string(J));
    need(env, src, rows * n * 4, "src (f32 [rows, n])");
  }
  if (w.buf) need(env, w, rows * J * 4, "w (f32 [rows, J])");
  if (overlaps(y, src) || overlaps(y, idx) || overlaps(y, w)) throwKvant(env, "KVANT_RANGE", "Expected y not to overlap src, idx or w");
  checkLaunch(env, ops::accumulateRows(target(env, stream), reinterpret_cast<float*>(y.data), int64_t(rows), int64_t(n), reinterpret_cast<const float*>(src.data),
                                       idx.buf ? reinterpret_cast<const int32_t*>(idx.data) : nullptr, w.buf ? reinterpret_cast<const float*>(w.data) : nullptr, int(J)),
              "accumulateRows", "bad shape");
  return env.Undefined();
}

// (pool.., pageSize, pageBytes, layerOffset, rowBytes, type, L, R, hadamard) at info[i..i+10]
ops::MlaPages getMlaPages(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  const DevSpan pool = outDev(info, i, "pool", 4);
  ops::MlaPages p;
  p.pool = pool.data;
  p.pageSize = getInt(info, i + 3, "pageSize"), p.pageBytes = getInt(info, i + 4, "pageBytes");
  p.layerOffset = getInt(info, i + 5, "layerOffset"), p.rowBytes = getInt(info, i + 6, "rowBytes");
  p.type = getInt(info, i + 7, "type"), p.L = getInt(info, i + 8, "L"), p.R = getInt(info, i + 9, "R");
  if (!info[i + 10].IsBoolean()) throwKvant(env, "KVANT_DTYPE", "Expected a boolean for hadamard");
  p.hadamard = info[i + 10].As<Napi::Boolean>().Value();
  if (p.type < 0 || p.type > 4) throwKvant(env, "KVANT_DTYPE", "Expected a cache type code in 0..4 (f16, bf16, q8, q6, q4) but received " + std::to_string(p.type));
  if (p.L < 1 || (p.type >= 2 && p.L % 32 != 0)) throwKvant(env, "KVANT_SHAPE", "Expected L >= 1 (a multiple of 32 for a quantized cache) but received " + std::to_string(p.L));
  if (p.pageSize < 1 || p.pageBytes < 1) throwKvant(env, "KVANT_SHAPE", "Expected pageSize and pageBytes >= 1");
  if (pool.bytes % uint64_t(p.pageBytes) != 0)
    throwKvant(env, "KVANT_SHAPE", "Expected pool to hold whole pages of " + std::to_string(p.pageBytes) + " bytes but it holds " + std::to_string(pool.bytes));
  p.numPages = int64_t(pool.bytes / uint64_t(p.pageBytes));
  return p;
}

// mlaAppend(pool.., pageSize, pageBytes, layerOffset, rowBytes, type, L, R, hadamard, x.., T, slots.., stream)
Napi::Value mlaAppendB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ops::MlaPages p = getMlaPages(info, 0);
  const DevSpan x = getDev(info, 11, "x", 4), slots = getDev(info, 15, "slots", 4);
  const uint64_t T = getSize(info, 14, "T");
  if (T > 0x7fffffffu) throwKvant(env, "KVANT_RANGE", "Expected T below 2^31");
  need(env, x, T * uint64_t(p.L + p.R) * 4, "x (f32 [T, L+R])");
  need(env, slots, T * 4, "slots (i32 [T])");
  void* stream = getStream(info, 18);
  Scratch bad(env, 4, stream, "mlaAppend");
  const int32_t t0 = int32_t(T);
  checkRt(env, rt::copy(bad.as<void>(), &t0, 4, rt::CopyKind::kHostToDevice, stream, false), "mlaAppend");
  checkLaunch(env, ops::mlaAppend(target(env, stream), p, reinterpret_cast<const float*>(x.data), T, reinterpret_cast<const int32_t*>(slots.data), bad.as<int32_t>()),
              "mlaAppend", "Expected every row (latent, then rope part) to fit its page of " + std::to_string(p.pageBytes) + " bytes");
  const int32_t first = readBack<int32_t>(env, bad.as<void>(), stream, "mlaAppend");
  if (first < t0)
    throwKvant(env, "KVANT_RANGE", "Expected finite rows representable in the cache type and slots in 0.." + std::to_string(p.numPages * p.pageSize - 1) +
                                       " but row " + std::to_string(first) + " was not written");
  return env.Undefined();
}

// The checks and scratch shared by the two paged decodes (MLA latent and standard K/V layout):
// q [B, H, Dk], out [B, H, Dv], lse [B, H] | null at info[0..8]; B, H, scale at info[9..11]; the
// page table, maxPages, seqLens and keysPerSplit at info[pt..pt+7]. Reads seqLens back (the
// grid is planned for their maximum), then runs `launch` with the scratch in place.
template <class ScratchBytes, class Launch>
void pagedDecodeCall(const Napi::CallbackInfo& info, ops::MlaPagedArgs& a, size_t pt0, uint64_t Dk, uint64_t Dv, int64_t pageSize, int64_t numPages,
                     const char* op, const char* qShape, const char* outShape, ScratchBytes scratchBytes, Launch launch) {
  Napi::Env env = info.Env();
  a.B = getInt(info, 9, "B"), a.H = getInt(info, 10, "H");
  a.scale = getFloat(info, 11, "scale");
  a.maxPages = getInt(info, pt0 + 3, "maxPages"), a.keysPerSplit = getInt(info, pt0 + 7, "keysPerSplit");
  if (a.B < 1 || a.H < 1 || a.maxPages < 1) throwKvant(env, "KVANT_SHAPE", "Expected B, H and maxPages >= 1");
  if (a.keysPerSplit < 32 || a.keysPerSplit % 32 != 0)
    throwKvant(env, "KVANT_SHAPE", "Expected keysPerSplit to be a positive multiple of 32 but received " + std::to_string(a.keysPerSplit));
  const uint64_t B = uint64_t(a.B), H = uint64_t(a.H);
  const DevSpan q = getDev(info, 0, "q", 4), out = outDev(info, 3, "out", 4), lse = optDev(info, 6, "lse", 4);
  const DevSpan pt = getDev(info, pt0, "pageTable", 4), sl = getDev(info, pt0 + 4, "seqLens", 4);
  need(env, q, B * H * Dk * 4, qShape);
  need(env, out, B * H * Dv * 4, outShape);
  if (lse.buf) need(env, lse, B * H * 4, "lse (f32 [B, H])");
  need(env, pt, B * uint64_t(a.maxPages) * 4, "pageTable (i32 [B, maxPages])");
  need(env, sl, B * 4, "seqLens (i32 [B])");
  for (const DevSpan* in : {&q, &pt, &sl})
    if (overlaps(out, *in) || overlaps(lse, *in)) throwKvant(env, "KVANT_RANGE", "Expected out and lse not to overlap the inputs");
  if (overlaps(out, lse)) throwKvant(env, "KVANT_RANGE", "Expected out and lse not to overlap");
  void* stream = getStream(info, pt0 + 8);
  std::vector<int32_t> lens(B);
  checkRt(env, rt::copy(lens.data(), sl.data, B * 4, rt::CopyKind::kDeviceToHost, stream, false), std::string(op) + " seqLens");
  const int64_t reachRows = pageSize * int64_t(a.maxPages);
  for (uint64_t b = 0; b < B; ++b) {
    if (lens[b] < 0 || lens[b] > reachRows)
      throwKvant(env, "KVANT_RANGE", "Expected seqLens in 0.." + std::to_string(reachRows) + " (pageSize x maxPages) but seqLens[" + std::to_string(b) + "] = " + std::to_string(lens[b]));
    a.maxSeqLen = lens[b] > a.maxSeqLen ? lens[b] : a.maxSeqLen;
  }
  a.q = reinterpret_cast<const float*>(q.data), a.out = reinterpret_cast<float*>(out.data), a.lse = lse.buf ? reinterpret_cast<float*>(lse.data) : nullptr;
  a.pageTable = reinterpret_cast<const int32_t*>(pt.data), a.seqLens = reinterpret_cast<const int32_t*>(sl.data);
  const size_t partBytes = (scratchBytes() + 15) / 16 * 16, countBytes = (B * 4 + 15) / 16 * 16;
  Scratch scratch(env, partBytes + countBytes + 16, stream, op);
  a.scratch = scratch.as<float>();
  a.splitsPerBatch = scratch.as<int>(partBytes);
  a.bad = scratch.as<int>(partBytes + countBytes);
  checkRt(env, rt::memset(a.bad, 0, 4, stream, false), op);
  launch(target(env, stream));
  if (readBack<int>(env, a.bad, stream, op) != 0)
    throwKvant(env, "KVANT_RANGE", "Expected pageTable entries in 0.." + std::to_string(numPages - 1) + " (the pool's pages) for every page a sequence uses");
}

// mlaPagedDecode(q.., out.., lse.. | null, B, H, scale, pool.., pageSize, pageBytes, layerOffset, rowBytes, type, L, R, hadamard,
//                pageTable.., maxPages, seqLens.., keysPerSplit, stream)
Napi::Value mlaPagedDecodeB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ops::MlaPages p = getMlaPages(info, 12);
  ops::MlaPagedArgs a;
  pagedDecodeCall(info, a, 23, uint64_t(p.L + p.R), uint64_t(p.L), p.pageSize, p.numPages, "mlaPagedDecode", "q (f32 [B, H, L+R])", "out (f32 [B, H, L])",
                  [&] { return ops::mlaPagedScratchBytes(p, a); },
                  [&](const ops::Target& t) {
                    checkLaunch(env, ops::mlaPagedDecode(t, p, a), "mlaPagedDecode",
                                "Expected (L + R, L) in {(576, 512), (96, 64), (64, 64), (128, 128)} and rows that fit the pages");
                  });
  return env.Undefined();
}

// (pool.., pageSize, pageBytes, layerOffset, type, kvHeads, headDim, hadamard) at info[i..i+9]:
// one layer of the standard K/V layout (ops.h KvHeadPages).
ops::KvHeadPages getKvHeadPages(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  const DevSpan pool = outDev(info, i, "pool", 4);
  ops::KvHeadPages p;
  p.pool = pool.data;
  p.pageSize = getInt(info, i + 3, "pageSize"), p.pageBytes = getInt(info, i + 4, "pageBytes"), p.layerOffset = getInt(info, i + 5, "layerOffset");
  p.type = getInt(info, i + 6, "type"), p.kvHeads = getInt(info, i + 7, "kvHeads"), p.headDim = getInt(info, i + 8, "headDim");
  if (!info[i + 9].IsBoolean()) throwKvant(env, "KVANT_DTYPE", "Expected a boolean for hadamard");
  p.hadamard = info[i + 9].As<Napi::Boolean>().Value();
  if (p.type < 0 || p.type > 4) throwKvant(env, "KVANT_DTYPE", "Expected a cache type code in 0..4 (f16, bf16, q8, q6, q4) but received " + std::to_string(p.type));
  if (p.kvHeads < 1) throwKvant(env, "KVANT_SHAPE", "Expected kvHeads >= 1 but received " + std::to_string(p.kvHeads));
  if (p.headDim < 1 || (p.type >= 2 && p.headDim % 32 != 0))
    throwKvant(env, "KVANT_SHAPE", "Expected headDim >= 1 (a multiple of 32 for a quantized cache) but received " + std::to_string(p.headDim));
  if (p.pageSize < 1 || p.pageBytes < 1) throwKvant(env, "KVANT_SHAPE", "Expected pageSize and pageBytes >= 1");
  if (pool.bytes % uint64_t(p.pageBytes) != 0)
    throwKvant(env, "KVANT_SHAPE", "Expected pool to hold whole pages of " + std::to_string(p.pageBytes) + " bytes but it holds " + std::to_string(pool.bytes));
  p.numPages = int64_t(pool.bytes / uint64_t(p.pageBytes));
  return p;
}

// kvHeadsAppend / kvHeadsGather(pool.., pageSize, pageBytes, layerOffset, type, kvHeads, headDim, hadamard, k.., v.., T, slots.., stream):
// append quantizes k and v f32 [T, kvHeads, headDim] into their slots (K first, then V, each
// checked: a bad row stops the call as the CPU writer does); gather decodes them back.
template <bool kAppend>
Napi::Value kvHeadsRowsB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const char* op = kAppend ? "kvHeadsAppend" : "kvHeadsGather";
  const ops::KvHeadPages p = getKvHeadPages(info, 0);
  const DevSpan k = kAppend ? getDev(info, 10, "k", 4) : outDev(info, 10, "k", 4), v = kAppend ? getDev(info, 13, "v", 4) : outDev(info, 13, "v", 4);
  const DevSpan slots = getDev(info, 17, "slots", 4);
  const uint64_t T = getSize(info, 16, "T");
  if (T > 0x7fffffffu) throwKvant(env, "KVANT_RANGE", "Expected T below 2^31");
  const uint64_t rowFloats = uint64_t(p.kvHeads) * uint64_t(p.headDim);
  need(env, k, T * rowFloats * 4, "k (f32 [T, kvHeads, headDim])");
  need(env, v, T * rowFloats * 4, "v (f32 [T, kvHeads, headDim])");
  need(env, slots, T * 4, "slots (i32 [T])");
  if (!kAppend && (overlaps(k, v) || overlaps(k, slots) || overlaps(v, slots))) throwKvant(env, "KVANT_RANGE", "Expected k, v and slots not to overlap");
  void* stream = getStream(info, 20);
  if (T == 0) return env.Undefined();
  Scratch bad(env, 4, stream, op);
  const int32_t t0 = int32_t(T);
  for (int part = 0; part < 2; ++part) {
    const DevSpan& x = part ? v : k;
    checkRt(env, rt::copy(bad.as<void>(), &t0, 4, rt::CopyKind::kHostToDevice, stream, false), op);
    const Status s = kAppend ? ops::kvHeadsWrite(target(env, stream), p, part == 1, reinterpret_cast<const float*>(x.data), T, reinterpret_cast<const int32_t*>(slots.data), bad.as<int32_t>())
                             : ops::kvHeadsRead(target(env, stream), p, part == 1, reinterpret_cast<float*>(x.data), T, reinterpret_cast<const int32_t*>(slots.data), bad.as<int32_t>());
    checkLaunch(env, s, op, "Expected every row (kvHeads x headDim of K, then of V) to fit its page of " + std::to_string(p.pageBytes) + " bytes");
    const int32_t first = readBack<int32_t>(env, bad.as<void>(), stream, op);
    if (first < t0)
      throwKvant(env, "KVANT_RANGE", std::string(kAppend ? "Expected finite rows representable in the cache type and " : "Expected ") + "slots in 0.." +
                                         std::to_string(p.numPages * p.pageSize - 1) + " but row " + std::to_string(first) + " of " + (part ? "v" : "k") +
                                         (kAppend ? " was not written" : " was not read"));
  }
  return env.Undefined();
}

// kvHeadsPagedDecode(q.., out.., lse.. | null, B, Hq, scale, pool.., pageSize, pageBytes, layerOffset, type, kvHeads, headDim, hadamard,
//                    pageTable.., maxPages, seqLens.., keysPerSplit, stream)
Napi::Value kvHeadsPagedDecodeB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const ops::KvHeadPages p = getKvHeadPages(info, 12);
  ops::MlaPagedArgs a;
  const int Hq = getInt(info, 10, "Hq");
  if (Hq % p.kvHeads != 0)
    throwKvant(env, "KVANT_SHAPE", "Expected the query heads (" + std::to_string(Hq) + ") to be a multiple of kvHeads (" + std::to_string(p.kvHeads) + ")");
  pagedDecodeCall(info, a, 22, uint64_t(p.headDim), uint64_t(p.headDim), p.pageSize, p.numPages, "kvHeadsPagedDecode", "q (f32 [B, Hq, headDim])",
                  "out (f32 [B, Hq, headDim])", [&] { return ops::kvHeadsPagedScratchBytes(p, a); },
                  [&](const ops::Target& t) {
                    checkLaunch(env, ops::kvHeadsPagedDecode(t, p, a), "kvHeadsPagedDecode", "Expected headDim in {64, 128} and rows that fit the pages");
                  });
  return env.Undefined();
}

// sampleTokens(logits.., B, V, rows (host bytes, 48 per row), histOffsets (host i32 [B+1]) | null, histIds (host i32) | null, tokens.., stream)
Napi::Value sampleTokensB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan logits = getDev(info, 0, "logits", 4);
  const int B = getInt(info, 3, "B"), V = getInt(info, 4, "V");
  if (B < 1 || V < 1) throwKvant(env, "KVANT_SHAPE", "Expected B >= 1 and V >= 1");
  need(env, logits, uint64_t(B) * uint64_t(V) * 4, "logits (f32 [B, V])");
  const HostSpan rows = getHost(info, 5, "rows");
  if (rows.bytes != size_t(B) * ops::kSampleRowBytes)
    throwKvant(env, "KVANT_SHAPE", "Expected rows to hold " + std::to_string(size_t(B) * ops::kSampleRowBytes) + " bytes (48 per row) but it holds " + std::to_string(rows.bytes));
  const bool hist = !isNil(info[6]);
  HostSpan offs, ids;
  std::vector<int32_t> off;
  if (hist) {
    offs = getHost(info, 6, "histOffsets");
    ids = getHost(info, 7, "histIds");
    if (offs.bytes != size_t(B + 1) * 4) throwKvant(env, "KVANT_SHAPE", "Expected histOffsets to hold B + 1 int32 values");
    off.resize(size_t(B) + 1);
    std::memcpy(off.data(), offs.data, offs.bytes);
    for (int b = 0; b < B; ++b)
      if (off[0] != 0 || off[size_t(b) + 1] < off[size_t(b)]) throwKvant(env, "KVANT_RANGE", "Expected histOffsets to start at 0 and never decrease");
    if (size_t(off[size_t(B)]) * 4 != ids.bytes) throwKvant(env, "KVANT_SHAPE", "Expected histIds to hold histOffsets[B] int32 values");
  }
  const DevSpan tokens = outDev(info, 8, "tokens", 4);
  need(env, tokens, uint64_t(B) * 4, "tokens (i32 [B])");
  if (overlaps(tokens, logits)) throwKvant(env, "KVANT_RANGE", "Expected tokens not to overlap logits");
  void* stream = getStream(info, 11);
  // One scratch: work [B, V] f32 | rows | histOffsets | histIds | badRow, each 16-byte aligned.
  const auto up16 = [](size_t n) { return (n + 15) / 16 * 16; };
  const size_t workB = up16(size_t(B) * size_t(V) * 4), rowsB = up16(rows.bytes), offB = up16(offs.bytes), idsB = up16(ids.bytes);
  Scratch scratch(env, workB + rowsB + offB + idsB + 16, stream, "sampleTokens");
  ops::SampleArgs a;
  a.logits = reinterpret_cast<const float*>(logits.data), a.work = scratch.as<float>(), a.B = B, a.V = V;
  a.rows = scratch.as<void>(workB);
  checkRt(env, rt::copy(scratch.as<void>(workB), rows.data, rows.bytes, rt::CopyKind::kHostToDevice, stream, false), "sampleTokens rows");
  if (hist) {
    a.histOffsets = scratch.as<int32_t>(workB + rowsB);
    a.histIds = scratch.as<int32_t>(workB + rowsB + offB);
    checkRt(env, rt::copy(scratch.as<void>(workB + rowsB), offs.data, offs.bytes, rt::CopyKind::kHostToDevice, stream, false), "sampleTokens history");
    if (ids.bytes) checkRt(env, rt::copy(scratch.as<void>(workB + rowsB + offB), ids.data, ids.bytes, rt::CopyKind::kHostToDevice, stream, false), "sampleTokens history");
  }
  a.tokens = reinterpret_cast<int32_t*>(tokens.data);
  a.badRow = scratch.as<int32_t>(workB + rowsB + offB + idsB);
  const int32_t b0 = B;
  checkRt(env, rt::copy(a.badRow, &b0, 4, rt::CopyKind::kHostToDevice, stream, false), "sampleTokens");
  checkLaunch(env, ops::sample(target(env, stream), a), "sampleTokens", "bad shape");
  const int32_t bad = readBack<int32_t>(env, a.badRow, stream, "sampleTokens");
  if (bad < B)
    throwKvant(env, "KVANT_RANGE", "Cannot sample row " + std::to_string(bad) + ": every logit is NaN, a logit is +inf, or its parameters are out of range (temperature >= 0, topP in (0, 1], repetitionPenalty > 0, topK in 0..1024)");
  return env.Undefined();
}

// tensorCorePeak(out.., blocks, warps, iters, a, b, stream): the bench's f16 tensor-core ceiling
// (csrc/cuda/probe.cuh); out (f32, 32-byte aligned) receives every warp's accumulators.
Napi::Value tensorCorePeakB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DevSpan o = outDev(info, 0, "out", 32);
  const uint64_t blocks = getSize(info, 3, "blocks"), warps = getSize(info, 4, "warps");
  const int iters = getInt(info, 5, "iters");
  if (blocks < 1 || blocks > 0x7fffffffu) throwKvant(env, "KVANT_RANGE", "Expected blocks in 1..2^31-1 but received " + std::to_string(blocks));
  if (warps < 1 || warps > ops::kPeakMaxWarps)
    throwKvant(env, "KVANT_RANGE", "Expected warps in 1.." + std::to_string(ops::kPeakMaxWarps) + " but received " + std::to_string(warps));
  if (iters < 0) throwKvant(env, "KVANT_RANGE", "Expected iters >= 0 but received " + std::to_string(iters));
  need(env, o, ops::tensorCorePeakOutFloats(blocks, warps) * 4, "out");
  const float a = getFloat(info, 6, "a"), b = getFloat(info, 7, "b");
  const ops::Target t = target(env, getStream(info, 8));
  checkLaunch(env, ops::tensorCorePeak(t, blocks, warps, iters, a, b, reinterpret_cast<float*>(o.data)), "tensorCorePeak",
              "blocks " + std::to_string(blocks) + ", warps " + std::to_string(warps) + ", iters " + std::to_string(iters));
  return env.Undefined();
}

Napi::Object init(Napi::Env env, Napi::Object exports) {
  ClassRefs* refs = new ClassRefs();
  Napi::Function buffer = DeviceBuffer::define(env), stream = Stream::define(env);
  refs->buffer = Napi::Persistent(buffer);
  refs->stream = Napi::Persistent(stream);
  env.SetInstanceData(refs);
  exports.Set("DeviceBuffer", buffer);
  exports.Set("Stream", stream);
  exports.Set("emulated", Napi::Boolean::New(env, kEmulated));
  const std::pair<const char*, Napi::Function::Callback> fns[] = {
      {"deviceQuery", deviceQuery}, {"properties", properties}, {"memoryStats", memoryStats}, {"setMemoryBudget", setMemoryBudget},
      {"synchronize", synchronize}, {"upload", upload}, {"download", download}, {"copyDevice", copyDevice}, {"memset", memsetB},
      {"roundTripCopy", roundTripCopy}, {"rmsNorm", rmsNormB}, {"rope", ropeB}, {"siluGate", siluGateB}, {"softmax", softmaxB},
      {"argmax", argmaxB}, {"embedding", embeddingB}, {"routeTopK", routeB}, {"dequantize", dequantB}, {"quantizeRtn", rtnB},
      {"qgemv", qmatmulB<false>}, {"qgemm", qmatmulB<true>}, {"flashAttention", flashB}, {"mlaDecode", mlaB},
      {"denseLinear", denseLinearB}, {"copyRows", copyRowsB}, {"accumulateRows", accumulateRowsB}, {"mlaAppend", mlaAppendB},
      {"mlaPagedDecode", mlaPagedDecodeB}, {"sampleTokens", sampleTokensB},
      {"kvHeadsAppend", kvHeadsRowsB<true>}, {"kvHeadsGather", kvHeadsRowsB<false>}, {"kvHeadsPagedDecode", kvHeadsPagedDecodeB},
      {"tensorCorePeak", tensorCorePeakB},
  };
  for (const auto& f : fns) exports.Set(f.first, Napi::Function::New(env, f.second, f.first));
  return exports;
}

}  // namespace
}  // namespace kvant::cudanapi

static Napi::Object kvantCudaInit(Napi::Env env, Napi::Object exports) { return kvant::cudanapi::init(env, exports); }
NODE_API_MODULE(kvant_cuda, kvantCudaInit)
