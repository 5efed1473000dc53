// runtime.h over the CUDA runtime (kvant_cuda.node). Every cudaError_t becomes a Status with
// the call, cudaGetErrorName and cudaGetErrorString in lastError(): memory errors are kOom,
// everything else kBackend. Nothing here throws or exits (llm.c's cudaCheck -> exit() would
// take the whole Node process down).
#include <cuda_runtime.h>

#include <mutex>

#include "runtime.h"

namespace kvant::cuda::rt {
namespace {

AllocationTable& table() { return allocations(); }

Status fromCuda(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return Status::kOk;
  const Status s = e == cudaErrorMemoryAllocation ? Status::kOom : Status::kBackend;
  return fail(s, what + ": " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

// Device 0 is selected once; its properties are cached (they never change while loaded).
struct Selected {
  Status status = Status::kOk;
  std::string error;
  DeviceProps props;
};
const Selected& selected() {
  static Selected s;
  static std::once_flag once;
  std::call_once(once, [] {
    cudaDeviceProp p{};
    Status st = fromCuda(cudaSetDevice(0), "cudaSetDevice(0)");
    if (st == Status::kOk) st = fromCuda(cudaGetDeviceProperties(&p, 0), "cudaGetDeviceProperties(0)");
    int optIn = 0;
    if (st == Status::kOk) st = fromCuda(cudaDeviceGetAttribute(&optIn, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0), "cudaDeviceGetAttribute");
    if (st != Status::kOk) {
      s.status = st;
      s.error = lastError();
      return;
    }
    s.props.name = p.name;
    s.props.sm = p.major * 10 + p.minor;
    s.props.multiprocessors = p.multiProcessorCount;
    s.props.totalMemory = p.totalGlobalMem;
    s.props.maxThreadsPerBlock = uint32_t(p.maxThreadsPerBlock);
    s.props.smemPerBlock = p.sharedMemPerBlock;
    s.props.smemPerBlockOptIn = size_t(optIn);
    s.props.emulated = false;
    table().initBudget(p.totalGlobalMem);
  });
  return s;
}
Status ready() {
  const Selected& s = selected();
  if (s.status != Status::kOk) return fail(s.status, s.error);
  return Status::kOk;
}


}  // namespace

Status deviceCount(int* count) {
  *count = 0;
  const cudaError_t e = cudaGetDeviceCount(count);
  if (e != cudaSuccess) *count = 0;
  return fromCuda(e, "cudaGetDeviceCount");
}

Status properties(DeviceProps* out) {
  const Status s = ready();
  if (s != Status::kOk) return s;
  *out = selected().props;
  return Status::kOk;
}

Status deviceSynchronize() {
  const Status s = ready();
  if (s != Status::kOk) return s;
  return fromCuda(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

Status alloc(size_t bytes, void** out) {
  *out = nullptr;
  Status s = ready();
  if (s != Status::kOk) return s;
  if ((s = table().reserve(bytes)) != Status::kOk) return s;
  void* p = nullptr;
  s = fromCuda(cudaMalloc(&p, bytes ? bytes : 1), "cudaMalloc(" + std::to_string(bytes) + ")");
  if (s != Status::kOk) {
    table().release(bytes);
    return s;
  }
  table().commit(p, bytes);
  *out = p;
  return Status::kOk;
}

Status free(void* p) {
  const Status s = forgetAllocation(p);
  if (s != Status::kOk) return s;
  // cudaFree waits for the device to finish with the memory (it synchronizes implicitly), so a
  // buffer dropped while a kernel still reads it is safe.
  return fromCuda(cudaFree(p), "cudaFree");
}

bool owns(const void* p, size_t bytes) { return table().owns(p, bytes); }

Status setBudget(size_t bytes) {
  const Status s = ready();
  if (s != Status::kOk) return s;
  return table().setBudget(bytes);
}

MemoryStats memoryStats() {
  ready();
  return table().stats(selected().props.totalMemory);
}

Status streamCreate(void** stream) {
  Status s = ready();
  if (s != Status::kOk) return s;
  cudaStream_t st = nullptr;
  // A blocking stream (not cudaStreamNonBlocking): the legacy default stream waits for it and it
  // for the default stream, so work a caller queued without a stream (an upload, a memset) is
  // ordered before what it then queues on this stream, as JS code reads.
  if ((s = fromCuda(cudaStreamCreateWithFlags(&st, cudaStreamDefault), "cudaStreamCreate")) != Status::kOk) return s;
  liveStreams().add(st);
  *stream = st;
  return Status::kOk;
}

Status streamSynchronize(void* stream) {
  Status s = checkStream(stream);
  if (s != Status::kOk) return s;
  return fromCuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cudaStreamSynchronize");
}

Status streamDestroy(void* stream) {
  const Status s = forgetStream(stream);
  if (s != Status::kOk) return s;
  return fromCuda(cudaStreamDestroy(static_cast<cudaStream_t>(stream)), "cudaStreamDestroy");
}

bool streamLive(void* stream) { return liveStreams().live(stream); }

Status copy(void* dst, const void* src, size_t bytes, CopyKind kind, void* stream, bool async) {
  Status s = ready();
  if (s != Status::kOk) return s;
  if ((s = checkCopy(dst, src, bytes, kind, stream)) != Status::kOk) return s;
  if (bytes == 0) return Status::kOk;
  const cudaMemcpyKind k = kind == CopyKind::kHostToDevice   ? cudaMemcpyHostToDevice
                           : kind == CopyKind::kDeviceToHost ? cudaMemcpyDeviceToHost
                                                             : cudaMemcpyDeviceToDevice;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (async) return fromCuda(cudaMemcpyAsync(dst, src, bytes, k, st), "cudaMemcpyAsync");
  // Synchronous on the given stream: enqueue there (ordered after its kernels), then wait.
  if ((s = fromCuda(cudaMemcpyAsync(dst, src, bytes, k, st), "cudaMemcpyAsync")) != Status::kOk) return s;
  return fromCuda(cudaStreamSynchronize(st), "cudaStreamSynchronize");
}

Status memset(void* dst, int value, size_t bytes, void* stream, bool async) {
  Status s = ready();
  if (s != Status::kOk) return s;
  if ((s = checkStream(stream)) != Status::kOk) return s;
  if ((s = checkDevice(dst, bytes, "memset")) != Status::kOk) return s;
  if (bytes == 0) return Status::kOk;
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  if ((s = fromCuda(cudaMemsetAsync(dst, value, bytes, st), "cudaMemsetAsync")) != Status::kOk) return s;
  return async ? Status::kOk : fromCuda(cudaStreamSynchronize(st), "cudaStreamSynchronize");
}

}  // namespace kvant::cuda::rt
