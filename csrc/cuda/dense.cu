// Device build of the dense linear and row kernels (bodies and entry points in dense.cuh, shared
// with the host SIMT emulation), plus their forwards for the N-API layer (ops.h).
#include "dense.cuh"

#include "launch_target.h"

namespace kvant::cuda::ops {

Status denseLinear(const Target& t, const DenseArgs& a) {
  cuda::DenseParams p{};
  p.x = a.x, p.w = a.w, p.y = a.y, p.M = a.M, p.H = a.H, p.N = a.N, p.K = a.K;
  p.xRow = a.xRow, p.xHead = a.xHead, p.wHead = a.wHead, p.wRow = a.wRow, p.yRow = a.yRow, p.yHead = a.yHead;
  return cuda::denseLinear(toDevice(t), p, a.wType);
}
Status copyRows(const Target& t, const float* src, int64_t sRow, const int32_t* idx, float* dst, int64_t dRow, int64_t rows, int64_t n) {
  return cuda::copyRows(toDevice(t), src, sRow, idx, dst, dRow, rows, n);
}
Status accumulateRows(const Target& t, float* y, int64_t rows, int64_t n, const float* src, const int32_t* idx, const float* w, int J) {
  return cuda::accumulateRows(toDevice(t), y, rows, n, src, idx, w, J);
}

}  // namespace kvant::cuda::ops
