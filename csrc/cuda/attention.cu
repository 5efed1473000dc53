// Device build of the attention kernels: bodies and entry points live in attention.cuh (shared
// with the host SIMT emulation); this translation unit instantiates them for nvcc.
#include "attention.cuh"
