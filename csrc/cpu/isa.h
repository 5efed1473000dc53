// Runtime choice of the CPU instruction-set level, made once at load time.
// Each kernel family keeps one dispatch table per level (scalar, avx2, avx512) in
// its own files; `pickForIsa` returns the table for the chosen level.
#pragma once
#include <string>

namespace kvant {

enum class Isa : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false, avxVnni = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512Vnni = false, avx512Bf16 = false;
  bool osYmm = false, osZmm = false;  // XGETBV: the OS saves the wide registers
};

struct IsaChoice {
  Isa isa;
  Isa best;            // highest level this CPU and OS support
  std::string reason;  // human-readable: why this level
};

const CpuFeatures& cpuFeatures();
// Decided on first call from CPUID, XGETBV and KVANT_ISA; never changes afterwards.
const IsaChoice& isaChoice();
const char* isaName(Isa isa);
bool isaSupported(Isa isa);

// Select the dispatch table of a kernel family for the chosen level.
template <class Table>
const Table& pickForIsa(const Table& scalar, const Table* avx2, const Table* avx512) {
  switch (isaChoice().isa) {
    case Isa::kAvx512: if (avx512) return *avx512; [[fallthrough]];
    case Isa::kAvx2: if (avx2) return *avx2; [[fallthrough]];
    default: return scalar;
  }
}

// The table for one explicit level (tests compare levels side by side in one process).
template <class Table>
const Table* tableForIsa(Isa isa, const Table& scalar, const Table* avx2, const Table* avx512) {
  if (!isaSupported(isa)) return nullptr;
  if (isa == Isa::kAvx512) return avx512;
  if (isa == Isa::kAvx2) return avx2;
  return &scalar;
}

}  // namespace kvant
