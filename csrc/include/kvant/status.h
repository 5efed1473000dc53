// Status codes returned by every kernel entry point. Kernels never throw or exit:
// the N-API layer maps each code to the KvantError code of the same name.
#pragma once

namespace kvant {

enum class Status : int {
  kOk = 0,
  kShape = 1,    // KVANT_SHAPE: shapes or lengths disagree
  kDtype = 2,    // KVANT_DTYPE: unsupported element type or dtype combination
  kFormat = 3,   // KVANT_FORMAT: malformed packed data or file
  kRange = 4,    // KVANT_RANGE: value out of range (NaN/Inf, index, size overflow)
  kOom = 5,      // KVANT_OOM: allocation or budget exceeded
  kBackend = 6,  // KVANT_BACKEND: backend unavailable or failed
  kIo = 7,       // KVANT_IO: file system error
  kAborted = 8,  // KVANT_ABORTED: cancelled through an AbortSignal
};

inline const char* statusCode(Status s) {
  switch (s) {
    case Status::kOk: return "KVANT_OK";
    case Status::kShape: return "KVANT_SHAPE";
    case Status::kDtype: return "KVANT_DTYPE";
    case Status::kFormat: return "KVANT_FORMAT";
    case Status::kRange: return "KVANT_RANGE";
    case Status::kOom: return "KVANT_OOM";
    case Status::kBackend: return "KVANT_BACKEND";
    case Status::kIo: return "KVANT_IO";
    case Status::kAborted: return "KVANT_ABORTED";
  }
  return "KVANT_BACKEND";
}

}  // namespace kvant
