// The host-emulated device of the test-only addon kvant_cuda_emu.node (never shipped): the
// runtime.h interface over host memory, so the whole CUDA addon (bindings, allocator, streams,
// copies, kernel launches under the SIMT emulation) runs in CI without a GPU.
//
// - "Device" memory is host memory from aligned_alloc, 256-byte aligned like cudaMalloc's. Every
//   copy, memset and free checks its device pointers against the allocation table first, so a
//   freed or foreign pointer is kRange, not a crash.
// - Streams are tokens; work submitted to a stream runs to completion on the calling thread
//   before the call returns, which is one legal schedule of in-order streams (synchronize is a
//   no-op beyond checking the stream).
// - The device reports sm_80 limits (1024 threads, 48 KB / 163 KB dynamic shared memory) and a
//   memory size from KVANT_CUDA_EMU_MEMORY (bytes; default 4 GiB). Memory is not reserved up
//   front: only what is allocated exists.
#include <cstdlib>
#include <cstring>
#include <new>

#include "runtime.h"

namespace kvant::cuda::rt {
namespace {

constexpr size_t kAlign = 256;
constexpr size_t kDefaultMemory = size_t(4) << 30;

AllocationTable& table() { return allocations(); }

size_t emulatedMemory() {
  static const size_t bytes = [] {
    const char* v = std::getenv("KVANT_CUDA_EMU_MEMORY");
    if (!v || !*v) return kDefaultMemory;
    char* end = nullptr;
    const unsigned long long n = std::strtoull(v, &end, 10);
    return (end && *end == 0 && n > 0) ? size_t(n) : kDefaultMemory;
  }();
  return bytes;
}

void initOnce() { table().initBudget(emulatedMemory()); }


}  // namespace

Status deviceCount(int* count) {
  *count = 1;
  return Status::kOk;
}

Status properties(DeviceProps* p) {
  initOnce();
  p->name = "kvant SIMT emulator (host, sm_80 limits)";
  p->sm = 80;
  p->multiprocessors = 1;
  p->totalMemory = emulatedMemory();
  p->maxThreadsPerBlock = 1024;
  p->smemPerBlock = 48 * 1024;
  p->smemPerBlockOptIn = 163 * 1024;
  p->emulated = true;
  return Status::kOk;
}

Status deviceSynchronize() { return Status::kOk; }

Status alloc(size_t bytes, void** out) {
  initOnce();
  *out = nullptr;
  if (bytes > emulatedMemory())
    return fail(Status::kOom, "cudaMalloc(" + std::to_string(bytes) + "): cudaErrorMemoryAllocation: out of memory (emulated device of " +
                                  std::to_string(emulatedMemory()) + " bytes)");
  Status s = table().reserve(bytes);
  if (s != Status::kOk) return s;
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  void* p = std::aligned_alloc(kAlign, rounded ? rounded : kAlign);
  if (!p) {
    table().release(bytes);
    return fail(Status::kOom, "cudaMalloc(" + std::to_string(bytes) + "): cudaErrorMemoryAllocation: out of memory (host allocation failed)");
  }
  // Fresh device memory holds garbage on a GPU; 0xFF bytes (NaN as f32) make unwritten output show.
  std::memset(p, 0xFF, rounded ? rounded : kAlign);
  table().commit(p, bytes);
  *out = p;
  return Status::kOk;
}

Status free(void* p) {
  const Status s = forgetAllocation(p);
  if (s != Status::kOk) return s;
  std::free(p);
  return Status::kOk;
}

bool owns(const void* p, size_t bytes) { return table().owns(p, bytes); }

Status setBudget(size_t bytes) {
  initOnce();
  return table().setBudget(bytes);
}

MemoryStats memoryStats() {
  initOnce();
  return table().stats(emulatedMemory());
}

Status streamCreate(void** stream) {
  // A distinct address per stream; the byte itself is never read.
  void* s = ::operator new(1, std::nothrow);
  if (!s) return fail(Status::kOom, "cudaStreamCreate: out of host memory");
  liveStreams().add(s);
  *stream = s;
  return Status::kOk;
}

Status streamSynchronize(void* stream) { return checkStream(stream); }

Status streamDestroy(void* stream) {
  const Status s = forgetStream(stream);
  if (s != Status::kOk) return s;
  ::operator delete(stream);
  return Status::kOk;
}

bool streamLive(void* stream) { return liveStreams().live(stream); }

Status copy(void* dst, const void* src, size_t bytes, CopyKind kind, void* stream, bool async) {
  (void)async;  // the emulated stream finishes the copy before returning
  const Status s = checkCopy(dst, src, bytes, kind, stream);
  if (s != Status::kOk) return s;
  if (bytes) std::memmove(dst, src, bytes);
  return Status::kOk;
}

Status memset(void* dst, int value, size_t bytes, void* stream, bool async) {
  (void)async;
  Status s = checkStream(stream);
  if (s != Status::kOk) return s;
  if ((s = checkDevice(dst, bytes, "memset")) != Status::kOk) return s;
  if (bytes) std::memset(dst, value, bytes);
  return Status::kOk;
}

}  // namespace kvant::cuda::rt
