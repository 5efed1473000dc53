// The bridge from the host-side ops::Target (ops.h) to the kernels' Device (launch.h), used by
// the forwards at the end of each family's .cu.
#pragma once
#include "launch.h"
#include "ops.h"

namespace kvant::cuda {

inline Device toDevice(const ops::Target& t) {
  Device d;
  d.limits.sm = t.sm;
  d.limits.maxThreads = t.maxThreads;
  d.limits.smemDefault = t.smemDefault;
  d.limits.smemOptInMax = t.smemOptInMax;
  d.stream = t.stream;
  return d;
}

}  // namespace kvant::cuda
