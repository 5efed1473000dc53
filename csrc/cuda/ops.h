// Host-side view of the CUDA kernel entry points, for the N-API layer: no CUDA types and no
// kernel bodies, so cuda_binding.cc compiles with plain g++ in both builds.
//
// Why a second set of declarations: the entry points in the .cuh files take structs defined
// next to the kernels (FlashDeviceArgs, Device, ...), which a host translation unit cannot see
// without also defining the kernels (a second definition would clash with the family's .cu).
// So each family's .cu (the one translation unit that defines its kernels, compiled by nvcc for
// kvant_cuda.node and by g++ under the SIMT emulation for the test-only kvant_cuda_emu.node)
// also defines the thin forwards declared here, which copy these plain structs field by field
// into the kernels' own. The compiler checks every field name and type there.
#pragma once
#include <cstddef>
#include <cstdint>

#include "kvant/dtype.h"
#include "kvant/quant_format.h"
#include "kvant/status.h"

namespace kvant::cuda::ops {

// Where a launch runs: the device's limits (launch.h ArchLimits) and a cudaStream_t (null =
// the default stream).
struct Target {
  int sm = 80;
  uint32_t maxThreads = 1024;
  size_t smemDefault = 48 * 1024;
  size_t smemOptInMax = 163 * 1024;
  void* stream = nullptr;
};

// Why the last launch on this OS thread failed (the limit exceeded, CUDA's or the emulation's
// own message); cudaError is 0 unless CUDA (or the emulation, -1) failed.
const char* lastLaunchMessage();
int lastLaunchCudaError();

// ---- device.cu ----
Status copyBytes(const Target& t, const void* src, void* dst, size_t n);

// ---- small_ops.cu (contracts: csrc/cuda/small_ops.cuh) ----
Status rmsNorm(const Target& t, const float* x, const void* w, DType wType, float eps, float* y, size_t rows, size_t n);
Status rope(const Target& t, float* x, size_t rows, size_t heads, size_t stride, size_t offset, size_t pairs, const int32_t* pos,
            const float* invFreq, float amp);
Status siluGate(const Target& t, const float* g, const float* u, size_t inStride, float* y, size_t rows, size_t n);
Status softmax(const Target& t, float* x, size_t rows, size_t n);
Status argmax(const Target& t, const float* x, size_t rows, size_t n, int32_t* out);
// badToken: device int32 holding n before the launch; afterwards the first bad token, or n.
Status embedding(const Target& t, const void* table, DType type, size_t vocab, size_t dim, const int32_t* ids, size_t n, float* out,
                 int32_t* badToken);
Status routeTopK(const Target& t, const float* logits, size_t rows, size_t experts, size_t k, size_t nGroup, size_t topkGroup,
                 bool groupLimited, bool normTopk, float scaling, int32_t* idx, float* w);

// ---- quant.cu (contracts: csrc/cuda/quant.cuh) ----
Status dequantize(const Target& t, const QMatrix& q, void* out, bool outF16);
// bad: device int, 0 before the launch; 1 afterwards if W held a non-finite value.
Status rtnQuantize(const Target& t, const float* W, const QuantFormat& f, uint32_t* qweight, uint32_t* qzeros, uint16_t* scales, int* bad);

// ---- gemm_q.cu (contracts: csrc/cuda/gemm_q.cuh) ----
constexpr int kGemvMaxRows = 8;  // gemv takes M = 1..8 (gemm_q.cuh kGemvMaxRows; checked there)
size_t gemvScratchBytes(const QuantFormat& f, int M);
Status gemv(const Target& t, const QMatrix& q, const float* x, int M, float* y, float* scratch);
Status gemm(const Target& t, const QMatrix& q, const float* x, int64_t M, float* y);

// ---- attention.cu (contracts: csrc/cuda/attention.cuh) ----
struct FlashArgs {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  DType type = DType::kF32;
  float* out = nullptr;
  float* lse = nullptr;
  int B = 0, Sq = 0, Sk = 0, Hq = 0, Hkv = 0, Dqk = 0, Dv = 0;
  float scale = 1;
  bool causal = false;
  int keysPerSplit = 0;  // 0 or a positive multiple of 32
  float* scratch = nullptr;
};
size_t flashScratchBytes(const FlashArgs& a);
Status flash(const Target& t, const FlashArgs& a);

struct MlaArgs {
  const float* q = nullptr;
  float* out = nullptr;
  float* lse = nullptr;
  int B = 0, H = 0, L = 0, R = 0;
  float scale = 1;
  const uint16_t* pool = nullptr;
  int numPages = 0, pageSize = 0, maxPages = 0;
  const int32_t* pageTable = nullptr;
  const int32_t* seqLens = nullptr;
  int maxSeqLen = 0;
  int keysPerSplit = 0;
  float* scratch = nullptr;
  int* splitsPerBatch = nullptr;
  int* badPage = nullptr;
};
size_t mlaScratchBytes(const MlaArgs& a);
Status mla(const Target& t, const MlaArgs& a);

// ---- dense.cu (contracts: csrc/cuda/dense.cuh) ----
struct DenseArgs {
  const float* x = nullptr;
  const void* w = nullptr;
  DType wType = DType::kF32;
  float* y = nullptr;
  int64_t M = 0, H = 1, N = 0, K = 0;
  int64_t xRow = 0, xHead = 0, wHead = 0, wRow = 0, yRow = 0, yHead = 0;
};
Status denseLinear(const Target& t, const DenseArgs& a);
Status copyRows(const Target& t, const float* src, int64_t sRow, const int32_t* idx, float* dst, int64_t dRow, int64_t rows, int64_t n);
Status accumulateRows(const Target& t, float* y, int64_t rows, int64_t n, const float* src, const int32_t* idx, const float* w, int J);

// ---- kv_cache.cu (contracts: csrc/cuda/kv_cache.cuh), the MLA latent layout ----
// One layer's pages of an MLA cache (the CPU's KvPages): slot s at
// pool + (s / pageSize)·pageBytes + layerOffset + (s % pageSize)·rowBytes; a row is the latent
// (L values of `type`, Hadamard-rotated groups when `hadamard`) then the rope part (R bf16).
struct MlaPages {
  uint8_t* pool = nullptr;
  int64_t numPages = 0, pageSize = 0, pageBytes = 0, layerOffset = 0, rowBytes = 0;
  int32_t type = 1;  // KvCode: 0 f16, 1 bf16, 2 q8, 3 q6, 4 q4
  int32_t L = 0, R = 0;
  bool hadamard = false;
};
// x f32 [T, L+R] into slots [T]; badRow: device int32, T before; the first row not written after.
Status mlaAppend(const Target& t, const MlaPages& p, const float* x, size_t T, const int32_t* slots, int32_t* badRow);
struct MlaPagedArgs {
  const float* q = nullptr;  // [B, H, L+R]
  float* out = nullptr;      // [B, H, L]
  float* lse = nullptr;      // [B, H] or null
  int B = 0, H = 0;
  const int32_t* pageTable = nullptr;
  int maxPages = 0;
  const int32_t* seqLens = nullptr;
  int maxSeqLen = 0, keysPerSplit = 512;
  float scale = 1;
  float* scratch = nullptr;
  int* splitsPerBatch = nullptr;
  int* bad = nullptr;
};
size_t mlaPagedScratchBytes(const MlaPages& p, const MlaPagedArgs& a);
Status mlaPagedDecode(const Target& t, const MlaPages& p, const MlaPagedArgs& a);

// ---- kv_cache.cu, the standard K/V layout (lib/kv/paged-cache.ts PagedKVCache) ----
// A layer's block of a page is head-major: kv head h holds pageSize consecutive entries
// [K (headDim values) | V (headDim values)], each part headBytes = bytes of headDim values of
// `type`, so slot s of head h, part K, sits at
// pool + (s / pageSize)·pageBytes + layerOffset + h·pageSize·2·headBytes + (s % pageSize)·2·headBytes.
struct KvHeadPages {
  uint8_t* pool = nullptr;
  int64_t numPages = 0, pageSize = 0, pageBytes = 0, layerOffset = 0;
  int32_t type = 1;  // KvCode
  int32_t kvHeads = 0, headDim = 0;
  bool hadamard = false;
};
// Writes (kvHeadsWrite) or reads back dequantized (kvHeadsRead) the K (value = false) or V part
// of T rows x [T, kvHeads, headDim] f32 at slots [T]; badRow as mlaAppend (T before; the first
// row not written / not readable after).
Status kvHeadsWrite(const Target& t, const KvHeadPages& p, bool value, const float* x, size_t T, const int32_t* slots, int32_t* badRow);
Status kvHeadsRead(const Target& t, const KvHeadPages& p, bool value, float* y, size_t T, const int32_t* slots, int32_t* badRow);
// Paged decode over the standard layout: a.q [B, Hq, headDim] with Hq = a.H a multiple of
// kvHeads (GQA), a.out [B, Hq, headDim], a.lse [B, Hq] or null. headDim in {64, 128}.
size_t kvHeadsPagedScratchBytes(const KvHeadPages& p, const MlaPagedArgs& a);
Status kvHeadsPagedDecode(const Target& t, const KvHeadPages& p, const MlaPagedArgs& a);

// ---- sampling.cu (contracts and semantics: csrc/cuda/sampling.cuh) ----
constexpr size_t kSampleRowBytes = 48;  // SampleRow: f64 temperature, topP, penalty; u64 seed, counter; i32 topK, reserved
struct SampleArgs {
  const float* logits = nullptr;  // [B, V]
  float* work = nullptr;          // [B, V] scratch
  int B = 0, V = 0;
  const void* rows = nullptr;            // [B] SampleRow (device)
  const int32_t* histOffsets = nullptr;  // [B+1] or null
  const int32_t* histIds = nullptr;
  int32_t* tokens = nullptr;  // [B]
  int32_t* badRow = nullptr;  // B before; the first unsampleable row after
};
Status sample(const Target& t, const SampleArgs& a);

}  // namespace kvant::cuda::ops

namespace kvant::cuda::ops {

// ---- probe.cu (contracts: csrc/cuda/probe.cuh), the bench's f16 tensor-core ceiling ----
constexpr size_t kPeakMaxWarps = 8;
size_t tensorCorePeakOutFloats(size_t blocks, size_t warps);
Status tensorCorePeak(const Target& t, size_t blocks, size_t warps, int iters, float a, float b, float* out);

}  // namespace kvant::cuda::ops
