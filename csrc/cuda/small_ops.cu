// Device build of the small ops: the kernel bodies and entry points live in small_ops.cuh
// (shared with the host SIMT emulation); this translation unit instantiates them for nvcc.
#include "small_ops.cuh"
