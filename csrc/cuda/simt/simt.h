// Test-only SIMT emulation: lets the CUDA kernel bodies in csrc/cuda/*.cuh compile and run as
// host C++ so that CI proves them without a GPU (DESIGN.md §6).
//
// Model
// - A launch runs its blocks one after another (in an order drawn from the seed: blocks have no
//   ordering guarantee on a device). The threads of a block are cooperating fibers on the calling
//   OS thread, each with its own stack; a fiber runs without interruption until it reaches a sync
//   point (__syncthreads, a warp collective, a WMMA op) or returns.
// - Warps do not advance in lockstep: some scheduling rounds complete a single warp's collective,
//   so that warp runs ahead alone to its next barrier (always under reverse order, the highest
//   warp first; half of the rounds under a seed). A double buffer without its __syncthreads fails.
// - Between two sync points the fibers of a block run one after another in an order drawn from
//   KVANT_SIMT_SEED (a number; printed by the tests on failure) or, with KVANT_SIMT_SEED=reverse,
//   in reverse thread order. A kernel that reads shared memory another thread writes without a
//   barrier in between therefore sees the write in some orders and not in others: under reverse
//   order, "thread 0 writes, everyone reads" reads poison every time.
// - __syncthreads waits for every thread of the block that has not returned (sm_70+ semantics).
//   Warp collectives (__shfl*_sync, __ballot/__any/__all_sync, __syncwarp, WMMA) wait until every
//   lane named in the mask has arrived at a collective with the same mask; a collective whose
//   lanes can never all arrive (a lane returned or waits at __syncthreads) is reported as a
//   deadlock, as is a barrier that not all threads can reach.
// - Dynamic shared memory is a fresh allocation per block (ASan sees overruns), filled with 0xFF
//   bytes (NaN for floats, -1 for integers) so that reading unwritten shared memory shows.
//   Static __shared__ variables are `static thread_local` (shared by the fibers of a block since
//   they run on one OS thread) and are likewise poisoned by nothing: kernels here use the
//   dynamic allocation for everything that matters.
// - Atomics are plain read-modify-writes: fibers switch only at sync points, so they are atomic;
//   their order still follows the seeded thread and block order.
// - WMMA fragments map their elements to lanes through a permutation drawn from the seed (the
//   device's mapping is unspecified; kernels must not depend on it).
//
// Not modelled: memory coalescing, bank conflicts, register limits, warp-synchronous execution
// without __syncwarp (deliberately: lanes are never in lockstep here), inline PTX.
#pragma once
#ifdef __CUDACC__
#error "simt.h is the host emulation; device builds include the CUDA headers"
#endif
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "kvant/half.h"

#define __global__ inline  // kernels live in headers included by several test files
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static thread_local

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 {
  unsigned x, y, z, w;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) uint2 {
  unsigned x, y;
};
struct alignas(8) float2 {
  float x, y;
};

namespace kvant::simt {

// What the kernel sees of its own thread and launch.
struct ThreadCtx {
  uint3 tIdx, bIdx;
  dim3 bDim, gDim;
};
ThreadCtx& ctx();  // the running fiber's; aborts outside a launch

// Run order between barriers.
enum class Order { kSeeded, kReverse };
struct Schedule {
  Order order;
  uint64_t seed;
};
// From KVANT_SIMT_SEED on first use (default seed 1); tests may override it for one launch.
Schedule schedule();
void setSchedule(Schedule s);
std::string scheduleName();  // "seed=N" or "reverse", for failure messages

// The result of the last launch on this OS thread: empty if it ran to completion, else why it
// could not (deadlock, mismatched collectives, a lane outside the mask, ...).
const std::string& lastError();

// Runs `body` for every thread of every block. Returns false (and sets lastError) on a
// deadlock or misuse; the kernel's memory effects up to that point remain.
bool run(dim3 grid, dim3 block, size_t dynamicSmem, const std::function<void()>& body);

template <class... P, class... A>
bool launch(dim3 grid, dim3 block, size_t smem, void (*kernel)(P...), A&&... args) {
  // Arguments are copied once, as a kernel's parameters are: a kernel cannot write its caller's.
  std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
  return run(grid, block, smem, [&params, kernel] { std::apply(kernel, params); });
}

void* dynamicSmem();  // this block's dynamic shared memory (128-byte aligned, like a device's)
// A kernel broke an API rule the device would not diagnose (e.g. a misaligned WMMA pointer):
// the launch reports it as its error.
void reportMisuse(const std::string& what);

// Warp collectives: every lane posts a value; the call returns when all lanes of `mask` posted.
enum class WarpOp : int { kShfl, kShflXor, kShflUp, kShflDown, kBallot, kAny, kAll, kSync, kMma };
uint64_t warpCollective(WarpOp op, unsigned mask, uint64_t value, int param, int width, void* extra = nullptr);
int laneId();

// A seeded permutation of 0..255 per fragment kind (0: a, 1: b, 2: accumulator): element i of
// lane l's fragment is tile element perm[l * 8 + i] (row-major index into the 16 x 16 tile).
const uint8_t* fragmentMap(int kind);

}  // namespace kvant::simt

#define threadIdx (::kvant::simt::ctx().tIdx)
#define blockIdx (::kvant::simt::ctx().bIdx)
#define blockDim (::kvant::simt::ctx().bDim)
#define gridDim (::kvant::simt::ctx().gDim)
#define warpSize 32

inline void __syncthreads();  // defined below (a block barrier)
namespace kvant::simt {
void blockBarrier();
}
inline void __syncthreads() { ::kvant::simt::blockBarrier(); }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::kvant::simt::warpCollective(::kvant::simt::WarpOp::kSync, mask, 0, 0, 32);
}

namespace kvant::simt {
template <class T>
inline uint64_t toBits(T v) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <class T>
inline T fromBits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}
}  // namespace kvant::simt

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  using namespace ::kvant::simt;
  return fromBits<T>(warpCollective(WarpOp::kShfl, mask, toBits(v), src, width));
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int laneMask, int width = 32) {
  using namespace ::kvant::simt;
  return fromBits<T>(warpCollective(WarpOp::kShflXor, mask, toBits(v), laneMask, width));
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  using namespace ::kvant::simt;
  return fromBits<T>(warpCollective(WarpOp::kShflUp, mask, toBits(v), int(delta), width));
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  using namespace ::kvant::simt;
  return fromBits<T>(warpCollective(WarpOp::kShflDown, mask, toBits(v), int(delta), width));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  using namespace ::kvant::simt;
  return unsigned(warpCollective(WarpOp::kBallot, mask, pred != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  using namespace ::kvant::simt;
  return int(warpCollective(WarpOp::kAny, mask, pred != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  using namespace ::kvant::simt;
  return int(warpCollective(WarpOp::kAll, mask, pred != 0, 0, 32));
}

// Atomics (see the model above: plain read-modify-writes). Return the old value, as on a device.
template <class T>
inline T atomicAdd(T* p, T v) {
  const T old = *p;
  *p = old + v;
  return old;
}
template <class T>
inline T atomicSub(T* p, T v) {
  const T old = *p;
  *p = old - v;
  return old;
}
template <class T>
inline T atomicMax(T* p, T v) {
  const T old = *p;
  *p = old > v ? old : v;
  return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
  const T old = *p;
  *p = old < v ? old : v;
  return old;
}
template <class T>
inline T atomicExch(T* p, T v) {
  const T old = *p;
  *p = v;
  return old;
}
template <class T>
inline T atomicCAS(T* p, T compare, T v) {
  const T old = *p;
  if (old == compare) *p = v;
  return old;
}
inline unsigned atomicOr(unsigned* p, unsigned v) {
  const unsigned old = *p;
  *p = old | v;
  return old;
}

// Device intrinsics with their host meaning (CUDA declares the classification functions globally).
using std::isfinite;
using std::isinf;
using std::isnan;
template <class T>
inline T __ldg(const T* p) { return *p; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0 ? 0.f : x > 1 ? 1.f : x; }
inline unsigned __float_as_uint(float f) { return ::kvant::f32Bits(f); }
inline float __uint_as_float(unsigned u) { return ::kvant::bitsF32(u); }
inline int __float_as_int(float f) { return int(::kvant::f32Bits(f)); }
inline float __int_as_float(int i) { return ::kvant::bitsF32(unsigned(i)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(unsigned x) { return __builtin_ffs(int(x)); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __float2int_rn(float x) { return int(std::nearbyint(x)); }  // default rounding mode: half to even
inline float __int2float_rn(int x) { return float(x); }

// Half and bfloat16 as storage types with the CUDA conversion intrinsics (round to nearest even).
struct __half {
  uint16_t __x;
};
struct __nv_bfloat16 {
  uint16_t __x;
};
inline float __half2float(__half h) { return ::kvant::f16ToF32(h.__x); }
inline __half __float2half(float f) { return __half{::kvant::f32ToF16(f)}; }
inline __half __float2half_rn(float f) { return __half{::kvant::f32ToF16(f)}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short u) { return __half{u}; }
inline float __bfloat162float(__nv_bfloat16 h) { return ::kvant::bf16ToF32(h.__x); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16{::kvant::f32ToBf16(f)}; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16{::kvant::f32ToBf16(f)}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.__x; }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short u) { return __nv_bfloat16{u}; }

// WMMA (m16n16k16 only: half or bfloat16 inputs, float accumulator).
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use>
struct UseKind;
template <>
struct UseKind<matrix_a> { static constexpr int value = 0; };
template <>
struct UseKind<matrix_b> { static constexpr int value = 1; };
template <>
struct UseKind<accumulator> { static constexpr int value = 2; };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "the emulation implements m16n16k16");
  static constexpr int num_elements = 8;  // 256 tile elements over 32 lanes (the device's count differs)
  T x[num_elements];
};

namespace detail {
inline float toF(float v) { return v; }
inline float toF(__half v) { return __half2float(v); }
inline float toF(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
inline T fromF(float v);
template <>
inline float fromF<float>(float v) { return v; }
template <>
inline __half fromF<__half>(float v) { return __float2half(v); }
template <>
inline __nv_bfloat16 fromF<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
// Element (r, c) of a 16x16 tile in memory with leading dimension ldm.
inline size_t at(int r, int c, unsigned ldm, bool rowMajor) { return rowMajor ? size_t(r) * ldm + c : size_t(c) * ldm + r; }
// load/store_matrix_sync require a 256-bit aligned pointer and ldm a multiple of 16 bytes.
template <class S>
inline void checkPointer(const S* p, unsigned ldm) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0 || (ldm * sizeof(S)) % 16 != 0)
    ::kvant::simt::reportMisuse("WMMA pointer not 32-byte aligned or ldm not a multiple of 16 bytes");
}
struct MmaPost {
  const float* a;  // this lane's 8 elements, widened
  const float* b;
  const float* c;
  float* d;
};
}  // namespace detail

template <class Use, class T, class Layout>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, T v) {
  for (int i = 0; i < 8; ++i) f.x[i] = v;
}

// Each lane reads its own elements when it arrives (lanes are not in lockstep), then the warp
// synchronizes, as the _sync in the name promises.
template <class Use, class T, class Layout, class S>
inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const S* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulator loads take a layout");
  detail::checkPointer(p, ldm);
  const uint8_t* map = ::kvant::simt::fragmentMap(::nvcuda::wmma::UseKind<Use>::value) + ::kvant::simt::laneId() * 8;
  for (int i = 0; i < 8; ++i) f.x[i] = p[detail::at(map[i] / 16, map[i] % 16, ldm, std::is_same<Layout, row_major>::value)];
  __syncwarp();
}
template <class T>
inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, T>& f, const T* p, unsigned ldm, layout_t layout) {
  detail::checkPointer(p, ldm);
  const uint8_t* map = ::kvant::simt::fragmentMap(2) + ::kvant::simt::laneId() * 8;
  for (int i = 0; i < 8; ++i) f.x[i] = p[detail::at(map[i] / 16, map[i] % 16, ldm, layout == mem_row_major)];
  __syncwarp();
}
template <class T>
inline void store_matrix_sync(T* p, const fragment<accumulator, 16, 16, 16, T>& f, unsigned ldm, layout_t layout) {
  detail::checkPointer(p, ldm);
  const uint8_t* map = ::kvant::simt::fragmentMap(2) + ::kvant::simt::laneId() * 8;
  for (int i = 0; i < 8; ++i) p[detail::at(map[i] / 16, map[i] % 16, ldm, layout == mem_row_major)] = f.x[i];
  __syncwarp();
}
// D = A·B + C over the whole warp's fragments, f32 products and sums in k order.
template <class TA, class LA, class LB>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float>& d, const fragment<matrix_a, 16, 16, 16, TA, LA>& a,
                     const fragment<matrix_b, 16, 16, 16, TA, LB>& b, const fragment<accumulator, 16, 16, 16, float>& c) {
  float fa[8], fb[8], fc[8], fd[8];
  for (int i = 0; i < 8; ++i) {
    fa[i] = detail::toF(a.x[i]);
    fb[i] = detail::toF(b.x[i]);
    fc[i] = c.x[i];
  }
  detail::MmaPost post{fa, fb, fc, fd};
  ::kvant::simt::warpCollective(::kvant::simt::WarpOp::kMma, 0xffffffffu, 0, 0, 32, &post);
  for (int i = 0; i < 8; ++i) d.x[i] = fd[i];
}
}  // namespace nvcuda::wmma
