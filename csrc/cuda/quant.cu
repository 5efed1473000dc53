// Device build of the group-quantization kernels: bodies and entry points live in quant.cuh
// (shared with the host SIMT emulation); this translation unit instantiates them for nvcc.
#include "quant.cuh"
