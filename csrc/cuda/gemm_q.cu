// Device build of the fused dequant GEMM kernels: bodies and entry points live in gemm_q.cuh (shared with the
// host SIMT emulation); this translation unit instantiates them for nvcc.
#include "gemm_q.cuh"
