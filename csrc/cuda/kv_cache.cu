// Device build of the paged KV cache kernels: bodies and entry points live in kv_cache.cuh
// (shared with the host SIMT emulation); this translation unit instantiates them for nvcc.
#include "kv_cache.cuh"
