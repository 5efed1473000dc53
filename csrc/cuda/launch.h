// Launch wrappers shared by the device build (nvcc, .cu files) and the host SIMT emulation
// (tests): every entry point computes its grid, block and dynamic shared memory the same way in
// both worlds and goes through launchKernel, which enforces the architecture's limits before
// anything runs. Entry points return a Status; they never throw or exit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <utility>

#include "cuda_compat.cuh"
#include "kvant/status.h"

// Host entry points of the .cuh kernel bodies: defined once (external) in the .cu that nvcc
// compiles; inline where the SIMT emulation's tests include several bodies in one program.
#ifndef KV_ENTRY
#ifdef __CUDACC__
#define KV_ENTRY
#else
#define KV_ENTRY inline
#endif
#endif

namespace kvant::cuda {

struct Dim3 {
  uint32_t x = 1, y = 1, z = 1;
};

// Per-architecture limits (CUDA C++ Programming Guide, "Technical Specifications per Compute
// Capability"): 1024 threads per block everywhere; dynamic shared memory above 48 KB only after
// cudaFuncSetAttribute(MaxDynamicSharedMemorySize), up to 163 KB on sm_80, 99 KB on sm_86/sm_89
// and 227 KB on sm_90 (the per-SM capacity minus the 1 KB the driver reserves per block).
struct ArchLimits {
  int sm;                  // 80, 86, 89, 90
  uint32_t maxThreads;     // per block
  size_t smemDefault;      // dynamic shared memory without the opt-in
  size_t smemOptInMax;     // with the opt-in
};

constexpr size_t kKiB = 1024;
inline bool archLimits(int sm, ArchLimits* out) {
  switch (sm) {
    case 80: *out = {80, 1024, 48 * kKiB, 163 * kKiB}; return true;
    case 86: *out = {86, 1024, 48 * kKiB, 99 * kKiB}; return true;
    case 89: *out = {89, 1024, 48 * kKiB, 99 * kKiB}; return true;
    case 90: *out = {90, 1024, 48 * kKiB, 227 * kKiB}; return true;
    default: return false;
  }
}
constexpr int kSupportedArchs[] = {80, 86, 89, 90};

// Where an entry point runs: the device's limits and the stream (a cudaStream_t; null = default).
struct Device {
  ArchLimits limits;
  void* stream = nullptr;
};

struct LaunchConfig {
  Dim3 grid, block;
  size_t smem = 0;  // dynamic shared memory bytes
};

// Why the last launch on this OS thread failed: the limit that was exceeded, CUDA's own error
// message, or the emulation's diagnosis (deadlock, ...). cudaError is 0 unless CUDA failed.
struct LaunchError {
  int cudaError = 0;
  char message[256] = {0};
};
inline LaunchError& lastLaunchError() {
  static thread_local LaunchError e;
  return e;
}
inline Status launchFailed(Status s, int cudaError, const char* fmt, unsigned long long a = 0, unsigned long long b = 0,
                           unsigned long long c = 0) {
  LaunchError& e = lastLaunchError();
  e.cudaError = cudaError;
  std::snprintf(e.message, sizeof(e.message), fmt, a, b, c);
  return s;
}

// The limit checks every launch passes (kRange: the configuration cannot run on this device).
inline Status checkLaunch(const LaunchConfig& c, const ArchLimits& lim) {
  const unsigned long long threads = 1ull * c.block.x * c.block.y * c.block.z;
  if (threads == 0 || threads > lim.maxThreads || c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64)
    return launchFailed(Status::kRange, 0, "block of %llu threads (%llu x %llu x ...) exceeds the 1024-thread limit", threads,
                        c.block.x, c.block.y);
  if (c.grid.x > 0x7fffffffu || c.grid.y > 65535 || c.grid.z > 65535)
    return launchFailed(Status::kRange, 0, "grid %llu x %llu x %llu exceeds the grid limits", c.grid.x, c.grid.y, c.grid.z);
  if (c.smem > lim.smemOptInMax)
    return launchFailed(Status::kRange, 0, "%llu bytes of dynamic shared memory exceed sm_%llu's maximum of %llu", c.smem,
                        (unsigned long long)lim.sm, lim.smemOptInMax);
  return Status::kOk;
}
inline bool needsSmemOptIn(const LaunchConfig& c, const ArchLimits& lim) { return c.smem > lim.smemDefault; }

// Number of launches that asked for the shared-memory opt-in (the emulation counts them so tests
// can check that big tiles really take that path).
inline unsigned long long& smemOptInCount() {
  static thread_local unsigned long long n = 0;
  return n;
}

template <class... P, class... A>
Status launchKernel(const Device& dev, const LaunchConfig& c, void (*kernel)(P...), A&&... args) {
  lastLaunchError() = LaunchError{};
  const Status s = checkLaunch(c, dev.limits);
  if (s != Status::kOk) return s;
  if (1ull * c.grid.x * c.grid.y * c.grid.z == 0) return Status::kOk;  // empty problem: nothing to launch
  const bool optIn = needsSmemOptIn(c, dev.limits);
  if (optIn) ++smemOptInCount();
#ifdef __CUDACC__
  if (optIn) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(c.smem));
    if (e != cudaSuccess) {
      LaunchError& le = lastLaunchError();
      le.cudaError = int(e);
      std::snprintf(le.message, sizeof(le.message), "cudaFuncSetAttribute(MaxDynamicSharedMemorySize, %zu): %s: %s", c.smem,
                    cudaGetErrorName(e), cudaGetErrorString(e));
      return Status::kBackend;
    }
  }
  kernel<<<dim3(c.grid.x, c.grid.y, c.grid.z), dim3(c.block.x, c.block.y, c.block.z), c.smem, static_cast<cudaStream_t>(dev.stream)>>>(
      std::forward<A>(args)...);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    LaunchError& le = lastLaunchError();
    le.cudaError = int(e);
    std::snprintf(le.message, sizeof(le.message), "kernel launch: %s: %s", cudaGetErrorName(e), cudaGetErrorString(e));
    return Status::kBackend;
  }
#else
  if (!::kvant::simt::launch(dim3(c.grid.x, c.grid.y, c.grid.z), dim3(c.block.x, c.block.y, c.block.z), c.smem, kernel,
                             std::forward<A>(args)...)) {
    LaunchError& le = lastLaunchError();
    le.cudaError = -1;
    std::snprintf(le.message, sizeof(le.message), "simt: %s", ::kvant::simt::lastError().c_str());
    return Status::kBackend;
  }
#endif
  return Status::kOk;
}

inline uint32_t ceilDiv(size_t a, size_t b) { return uint32_t((a + b - 1) / b); }

}  // namespace kvant::cuda
