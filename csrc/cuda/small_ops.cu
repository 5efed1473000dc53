// Device build of the small ops: the kernel bodies and entry points live in small_ops.cuh
// (shared with the host SIMT emulation); this translation unit instantiates them for nvcc, and
// (compiled by g++ as C++) for the emulated test addon kvant_cuda_emu.node.
#include "small_ops.cuh"

#include "launch_target.h"

// Forwards for the N-API layer (ops.h): plain arguments in, the entry points of small_ops.cuh out.
namespace kvant::cuda::ops {

Status rmsNorm(const Target& t, const float* x, const void* w, DType wType, float eps, float* y, size_t rows, size_t n) {
  return cuda::rmsNorm(toDevice(t), x, w, wType, eps, y, rows, n);
}
Status rope(const Target& t, float* x, size_t rows, size_t heads, size_t stride, size_t offset, size_t pairs, const int32_t* pos,
            const float* invFreq, float amp) {
  return cuda::ropeInterleaved(toDevice(t), x, rows, heads, stride, offset, pairs, pos, invFreq, amp);
}
Status siluGate(const Target& t, const float* g, const float* u, size_t inStride, float* y, size_t rows, size_t n) {
  return cuda::siluGate(toDevice(t), g, u, inStride, y, rows, n);
}
Status softmax(const Target& t, float* x, size_t rows, size_t n) { return cuda::softmaxRows(toDevice(t), x, rows, n); }
Status argmax(const Target& t, const float* x, size_t rows, size_t n, int32_t* out) { return cuda::argmaxRows(toDevice(t), x, rows, n, out); }
Status embedding(const Target& t, const void* table, DType type, size_t vocab, size_t dim, const int32_t* ids, size_t n, float* out,
                 int32_t* badToken) {
  return cuda::embeddingGather(toDevice(t), table, type, vocab, dim, ids, n, out, badToken);
}
Status routeTopK(const Target& t, const float* logits, size_t rows, size_t experts, size_t k, size_t nGroup, size_t topkGroup,
                 bool groupLimited, bool normTopk, float scaling, int32_t* idx, float* w) {
  return cuda::routeTopK(toDevice(t), logits, rows, experts, k, nGroup, topkGroup, groupLimited, normTopk, scaling, idx, w);
}

}  // namespace kvant::cuda::ops
