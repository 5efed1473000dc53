// The CUDA addon's device runtime: one interface, two implementations.
//   runtime_cuda.cu  the CUDA runtime (kvant_cuda.node, nvcc);
//   runtime_emu.cc   the host-emulated device of the test-only kvant_cuda_emu.node: "device"
//                    memory is host memory, streams run their work in order on the calling
//                    thread, and kernels run under the SIMT emulation (csrc/cuda/simt).
// Every function returns a Status and never throws; on failure lastError() says why, with
// CUDA's own error name and text when CUDA failed (the N-API layer maps kBackend to
// KVANT_BACKEND and kOom to KVANT_OOM with that message).
//
// Both implementations keep every allocation in one table (AllocationTable below) so that
//  - a memory budget can be enforced before the device is asked (alloc beyond it -> kOom with
//    the bytes needed and available), and
//  - a pointer handed to a copy, memset or free must lie inside a live allocation: a freed or
//    foreign pointer is kRange, never a crash (or, on a device, a sticky context error).
#pragma once
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "kvant/status.h"

namespace kvant::cuda::rt {

struct DeviceProps {
  std::string name;
  int sm = 0;                 // compute capability as major * 10 + minor
  int multiprocessors = 0;
  size_t totalMemory = 0;     // bytes of device memory
  uint32_t maxThreadsPerBlock = 0;
  size_t smemPerBlock = 0;       // dynamic shared memory without the opt-in
  size_t smemPerBlockOptIn = 0;  // with cudaFuncAttributeMaxDynamicSharedMemorySize
  bool emulated = false;
};

struct MemoryStats {
  size_t budget = 0;       // bytes the allocator may hand out (default: the device's memory)
  size_t allocated = 0;    // bytes in live allocations (as requested)
  size_t peak = 0;         // highest `allocated` since load
  size_t allocations = 0;  // live allocations
  size_t deviceTotal = 0;
};

// ---- implemented by runtime_cuda.cu / runtime_emu.cc ----

// Devices visible (0 with a reason in lastError() when the driver or device is missing).
Status deviceCount(int* count);
// Selects device 0 on first use and describes it.
Status properties(DeviceProps* out);
Status deviceSynchronize();

// Device memory, accounted against the budget. alloc(0) returns a unique 1-byte allocation.
Status alloc(size_t bytes, void** out);
Status free(void* p);  // kRange unless p is the start of a live allocation
// True when [p, p + bytes) lies inside one live allocation.
bool owns(const void* p, size_t bytes);
Status setBudget(size_t bytes);  // kOom if below what is allocated now
MemoryStats memoryStats();

// Streams (opaque: a cudaStream_t on a device). Work on one stream runs in order.
Status streamCreate(void** stream);
Status streamSynchronize(void* stream);  // null: the default stream
Status streamDestroy(void* stream);      // kRange if not a live stream
bool streamLive(void* stream);           // null (the default stream) is always live

enum class CopyKind { kHostToDevice, kDeviceToHost, kDeviceToDevice };
// async: enqueue on `stream` and return. Host memory here is pageable (JS memory), for which
// CUDA's async copies are staged: host->device returns once the source was read, device->host
// once the data arrived, so the host buffer may be reused as soon as the call returns.
Status copy(void* dst, const void* src, size_t bytes, CopyKind kind, void* stream, bool async);
Status memset(void* dst, int value, size_t bytes, void* stream, bool async);

// ---- shared by both implementations ----

// Why the last failing call on this OS thread failed.
inline std::string& lastError() {
  static thread_local std::string e;
  return e;
}
inline Status fail(Status s, const std::string& message) {
  lastError() = message;
  return s;
}

// Live allocations, the budget and the accounting (one per process; thread-safe).
class AllocationTable {
 public:
  // kOom (with the numbers) when `bytes` more would exceed the budget. On success the bytes are
  // reserved; commit() records the pointer, or release() gives the reservation back.
  Status reserve(size_t bytes) {
    std::lock_guard<std::mutex> g(mu_);
    if (bytes > budget_ || allocated_ > budget_ - bytes)
      return fail(Status::kOom, "device memory budget exceeded: needed " + std::to_string(bytes) + " bytes but only " +
                                    std::to_string(budget_ > allocated_ ? budget_ - allocated_ : 0) + " of the budget's " +
                                    std::to_string(budget_) + " bytes are available (" + std::to_string(allocated_) +
                                    " allocated in " + std::to_string(live_.size()) + " buffers)");
    allocated_ += bytes;
    if (allocated_ > peak_) peak_ = allocated_;
    return Status::kOk;
  }
  void release(size_t bytes) {
    std::lock_guard<std::mutex> g(mu_);
    allocated_ -= bytes;
  }
  void commit(void* p, size_t bytes) {
    std::lock_guard<std::mutex> g(mu_);
    live_[reinterpret_cast<uintptr_t>(p)] = bytes;
  }
  // Removes p (which must start a live allocation); returns false otherwise. *bytes: its size.
  bool remove(void* p, size_t* bytes) {
    std::lock_guard<std::mutex> g(mu_);
    auto it = live_.find(reinterpret_cast<uintptr_t>(p));
    if (it == live_.end()) return false;
    *bytes = it->second;
    allocated_ -= it->second;
    live_.erase(it);
    return true;
  }
  bool owns(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> g(mu_);
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    auto it = live_.upper_bound(a);
    if (it == live_.begin()) return false;
    --it;
    // A zero-byte allocation (backed by one byte) owns only the empty range at its start.
    const size_t size = it->second;
    return a >= it->first && a - it->first <= size && bytes <= size - (a - it->first);
  }
  Status setBudget(size_t bytes) {
    std::lock_guard<std::mutex> g(mu_);
    if (bytes < allocated_)
      return fail(Status::kOom, "memory budget of " + std::to_string(bytes) + " bytes is below the " + std::to_string(allocated_) +
                                    " bytes already allocated");
    budget_ = bytes;
    return Status::kOk;
  }
  void initBudget(size_t bytes) {
    std::lock_guard<std::mutex> g(mu_);
    if (!budgetSet_) budget_ = bytes, budgetSet_ = true;
  }
  MemoryStats stats(size_t deviceTotal) {
    std::lock_guard<std::mutex> g(mu_);
    return MemoryStats{budget_, allocated_, peak_, live_.size(), deviceTotal};
  }

 private:
  std::mutex mu_;
  std::map<uintptr_t, size_t> live_;
  size_t budget_ = 0, allocated_ = 0, peak_ = 0;
  bool budgetSet_ = false;
};

// Live streams, so a destroyed stream is an error instead of undefined behaviour.
class StreamTable {
 public:
  void add(void* s) {
    std::lock_guard<std::mutex> g(mu_);
    live_.insert(s);
  }
  bool remove(void* s) {
    std::lock_guard<std::mutex> g(mu_);
    return live_.erase(s) == 1;
  }
  bool live(void* s) {
    if (!s) return true;
    std::lock_guard<std::mutex> g(mu_);
    return live_.count(s) == 1;
  }

 private:
  std::mutex mu_;
  std::set<void*> live_;
};

// The process's tables and the checks both runtimes make before touching memory or a stream
// (a freed or foreign pointer, a destroyed stream: kRange with the numbers, never a crash).
inline AllocationTable& allocations() {
  static AllocationTable t;
  return t;
}
inline StreamTable& liveStreams() {
  static StreamTable s;
  return s;
}
inline Status checkDevice(const void* p, size_t bytes, const char* what) {
  if (allocations().owns(p, bytes)) return Status::kOk;
  return fail(Status::kRange, std::string(what) + ": " + std::to_string(bytes) + " bytes at device address " +
                                  std::to_string(reinterpret_cast<uintptr_t>(p)) + " are not inside a live allocation (freed or foreign pointer)");
}
inline Status checkStream(void* s) {
  if (liveStreams().live(s)) return Status::kOk;
  return fail(Status::kRange, "the stream was destroyed");
}
// A copy's stream and its device side(s).
inline Status checkCopy(void* dst, const void* src, size_t bytes, CopyKind kind, void* stream) {
  Status s = checkStream(stream);
  if (s != Status::kOk) return s;
  if (kind != CopyKind::kHostToDevice && (s = checkDevice(src, bytes, "copy source")) != Status::kOk) return s;
  if (kind != CopyKind::kDeviceToHost && (s = checkDevice(dst, bytes, "copy destination")) != Status::kOk) return s;
  return Status::kOk;
}
// Drops a live allocation from the table before the runtime releases it (kRange otherwise).
inline Status forgetAllocation(void* p) {
  size_t bytes = 0;
  if (allocations().remove(p, &bytes)) return Status::kOk;
  return fail(Status::kRange, "cudaFree: device address " + std::to_string(reinterpret_cast<uintptr_t>(p)) + " is not a live allocation (double free or foreign pointer)");
}
// Drops a live stream before the runtime destroys it (kRange for null or a dead one).
inline Status forgetStream(void* stream) {
  if (stream && liveStreams().remove(stream)) return Status::kOk;
  return fail(Status::kRange, "cudaStreamDestroy: not a live stream (destroyed twice?)");
}

}  // namespace kvant::cuda::rt
