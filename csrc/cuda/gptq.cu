// Device build of the GPTQ kernels: bodies and entry points live in gptq.cuh (shared with the
// host SIMT emulation); this translation unit instantiates them for nvcc.
#include "gptq.cuh"
