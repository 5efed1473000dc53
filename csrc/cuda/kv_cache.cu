// Device build of the paged KV cache kernels: bodies and entry points live in kv_cache.cuh
// (shared with the host SIMT emulation); this translation unit instantiates them for nvcc.
#include "kv_cache.cuh"

#include "launch_target.h"

// Forwards for the N-API layer (ops.h), for the MLA latent layout the device forward uses: the
// row is two runs (latent in the cache type, rope part bf16), attention reads V from the key.
namespace kvant::cuda::ops {
namespace {
KvPagesDev pagesOf(const MlaPages& p) { return KvPagesDev{p.pool, p.numPages, p.pageSize, p.pageBytes, p.layerOffset, p.rowBytes}; }
int64_t latentBytes(const MlaPages& p) { return kvBytes(p.type, p.L); }
}  // namespace

Status mlaAppend(const Target& t, const MlaPages& p, const float* x, size_t T, const int32_t* slots, int32_t* badRow) {
  const int64_t lat = latentBytes(p);
  if (lat == 0) return Status::kShape;
  const KvSegRun runs[2] = {{p.type, p.L, p.hadamard ? 1 : 0, 1, 0, 0, 0, 0}, {kKvBf16, p.R, 0, 1, lat, 0, p.L, 0}};
  KvRowsDeviceArgs a{};
  a.pages = pagesOf(p), a.runs = runs, a.nRuns = p.R > 0 ? 2 : 1, a.x = x, a.width = size_t(p.L + p.R), a.T = T, a.slots = slots, a.badRow = badRow;
  return cuda::kvAppend(toDevice(t), a);
}

namespace {
PagedDecodeDeviceArgs pagedArgsOf(const MlaPages& p, const MlaPagedArgs& m) {
  PagedDecodeDeviceArgs a{};
  a.q = m.q, a.out = m.out, a.lse = m.lse, a.B = m.B, a.Hq = m.H, a.Hkv = 1;
  a.k0 = KvSegDev{p.type, p.L, p.hadamard ? 1 : 0, 0};
  a.k1 = KvSegDev{kKvBf16, p.R, 0, latentBytes(p)};
  a.v = a.k0;
  a.vFromKey = true, a.headStride = 0, a.pages = pagesOf(p);
  a.pageTable = m.pageTable, a.maxPages = m.maxPages, a.seqLens = m.seqLens, a.maxSeqLen = m.maxSeqLen, a.keysPerSplit = m.keysPerSplit;
  a.scale = m.scale, a.scratch = m.scratch, a.splitsPerBatch = m.splitsPerBatch, a.bad = m.bad;
  return a;
}
}  // namespace

size_t mlaPagedScratchBytes(const MlaPages& p, const MlaPagedArgs& m) { return pagedDecodeScratchFloats(pagedArgsOf(p, m)) * sizeof(float); }
Status mlaPagedDecode(const Target& t, const MlaPages& p, const MlaPagedArgs& m) {
  if (latentBytes(p) == 0) return Status::kShape;
  return cuda::pagedDecode(toDevice(t), pagedArgsOf(p, m));
}


// The standard K/V layout: one run of kvHeads segments per part (K at entry offset 0, V at
// headBytes), head stride pageSize·2·headBytes, entry stride 2·headBytes (lib/kv/paged-cache.ts).
namespace {
int64_t headBytesOf(const KvHeadPages& p) { return kvBytes(p.type, p.headDim); }
KvPagesDev pagesOf(const KvHeadPages& p) {
  return KvPagesDev{p.pool, p.numPages, p.pageSize, p.pageBytes, p.layerOffset, 2 * headBytesOf(p)};
}
Status kvHeadsRows(const Target& t, const KvHeadPages& p, bool value, const float* x, float* y, size_t T, const int32_t* slots, int32_t* badRow, bool append) {
  const int64_t hb = headBytesOf(p);
  if (hb == 0 || p.kvHeads <= 0) return Status::kShape;
  const KvSegRun run{p.type, p.headDim, p.hadamard ? 1 : 0, p.kvHeads, value ? hb : 0, p.pageSize * 2 * hb, 0, p.headDim};
  KvRowsDeviceArgs a{};
  a.pages = pagesOf(p), a.runs = &run, a.nRuns = 1, a.x = x, a.y = y, a.width = size_t(p.kvHeads) * size_t(p.headDim), a.T = T, a.slots = slots, a.badRow = badRow;
  return append ? cuda::kvAppend(toDevice(t), a) : cuda::kvGather(toDevice(t), a);
}
PagedDecodeDeviceArgs pagedArgsOf(const KvHeadPages& p, const MlaPagedArgs& m) {
  const int64_t hb = headBytesOf(p);
  PagedDecodeDeviceArgs a{};
  a.q = m.q, a.out = m.out, a.lse = m.lse, a.B = m.B, a.Hq = m.H, a.Hkv = p.kvHeads;
  a.k0 = KvSegDev{p.type, p.headDim, p.hadamard ? 1 : 0, 0};
  a.k1 = KvSegDev{kKvBf16, 0, 0, 0};
  a.v = KvSegDev{p.type, p.headDim, p.hadamard ? 1 : 0, hb};
  a.vFromKey = false, a.headStride = size_t(p.pageSize * 2 * hb), a.pages = pagesOf(p);
  a.pageTable = m.pageTable, a.maxPages = m.maxPages, a.seqLens = m.seqLens, a.maxSeqLen = m.maxSeqLen, a.keysPerSplit = m.keysPerSplit;
  a.scale = m.scale, a.scratch = m.scratch, a.splitsPerBatch = m.splitsPerBatch, a.bad = m.bad;
  return a;
}
}  // namespace

Status kvHeadsWrite(const Target& t, const KvHeadPages& p, bool value, const float* x, size_t T, const int32_t* slots, int32_t* badRow) {
  return kvHeadsRows(t, p, value, x, nullptr, T, slots, badRow, true);
}
Status kvHeadsRead(const Target& t, const KvHeadPages& p, bool value, float* y, size_t T, const int32_t* slots, int32_t* badRow) {
  return kvHeadsRows(t, p, value, nullptr, y, T, slots, badRow, false);
}
size_t kvHeadsPagedScratchBytes(const KvHeadPages& p, const MlaPagedArgs& m) { return pagedDecodeScratchFloats(pagedArgsOf(p, m)) * sizeof(float); }
Status kvHeadsPagedDecode(const Target& t, const KvHeadPages& p, const MlaPagedArgs& m) {
  if (headBytesOf(p) == 0 || p.kvHeads <= 0) return Status::kShape;
  return cuda::pagedDecode(toDevice(t), pagedArgsOf(p, m));
}

}  // namespace kvant::cuda::ops
