// Device build of the sampling kernel: body and entry point live in sampling.cuh (shared with
// the host SIMT emulation); this translation unit instantiates them for nvcc.
#include "sampling.cuh"
