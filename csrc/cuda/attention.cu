// Device build of the attention kernels: bodies and entry points live in attention.cuh (shared
// with the host SIMT emulation); this translation unit instantiates them for nvcc, and
// (compiled by g++ as C++) for the emulated test addon kvant_cuda_emu.node.
#include "attention.cuh"

#include "launch_target.h"

// Forwards for the N-API layer (ops.h): field-by-field copies into the kernels' own structs.
namespace kvant::cuda::ops {

static FlashDeviceArgs toDeviceArgs(const FlashArgs& a) {
  FlashDeviceArgs d{};
  d.q = a.q, d.k = a.k, d.v = a.v, d.type = a.type, d.out = a.out, d.lse = a.lse;
  d.B = a.B, d.Sq = a.Sq, d.Sk = a.Sk, d.Hq = a.Hq, d.Hkv = a.Hkv, d.Dqk = a.Dqk, d.Dv = a.Dv;
  d.scale = a.scale, d.causal = a.causal, d.keysPerSplit = a.keysPerSplit, d.scratch = a.scratch;
  return d;
}
size_t flashScratchBytes(const FlashArgs& a) { return cuda::flashScratchFloats(toDeviceArgs(a)) * sizeof(float); }
Status flash(const Target& t, const FlashArgs& a) { return cuda::flashAttention(toDevice(t), toDeviceArgs(a)); }

static MlaDeviceArgs toDeviceArgs(const MlaArgs& a) {
  MlaDeviceArgs d{};
  d.q = a.q, d.out = a.out, d.lse = a.lse, d.B = a.B, d.H = a.H, d.L = a.L, d.R = a.R, d.scale = a.scale;
  d.pool = a.pool, d.numPages = a.numPages, d.pageSize = a.pageSize, d.maxPages = a.maxPages;
  d.pageTable = a.pageTable, d.seqLens = a.seqLens, d.maxSeqLen = a.maxSeqLen, d.keysPerSplit = a.keysPerSplit;
  d.scratch = a.scratch, d.splitsPerBatch = a.splitsPerBatch, d.badPage = a.badPage;
  return d;
}
size_t mlaScratchBytes(const MlaArgs& a) {
  if (a.keysPerSplit <= 0) return 0;
  return cuda::mlaScratchFloats(toDeviceArgs(a)) * sizeof(float);
}
Status mla(const Target& t, const MlaArgs& a) { return cuda::mlaDecode(toDevice(t), toDeviceArgs(a)); }

}  // namespace kvant::cuda::ops
