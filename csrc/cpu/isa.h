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
  // Test build only (-DKVANT_SIMDE_AVX512, scripts/avx512-emu-test.mjs): the AVX-512 bits above
  // are pretended, the avx512 objects run on SIMDe's emulation. Never set in the product build.
  bool emulatedAvx512 = false;
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
// AVX512-VNNI (vpdpbusd) may be used inside the avx512 tables: the CPU and OS support the
// AVX-512 level and CPUID reports VNNI
// (leaf 7 ECX bit 11). A separate bit: Skylake-SP/X have AVX-512 F/BW/VL/DQ without it.
bool avx512VnniUsable();

// Select the dispatch table of a kernel family for the chosen level.
template <class Table>
const Table& pickForIsa(const Table& scalar, const Table* avx2, const Table* avx512) {
  switch (isaChoice().isa) {
    case Isa::kAvx512: if (avx512) return *avx512; [[fallthrough]];
    case Isa::kAvx2: if (avx2) return *avx2; [[fallthrough]];
    default: return scalar;
  }
}

// The table for one explicit level (tests compare levels side by side in one process);
// nullptr when this machine does not support the level. A family without a table for a
// supported level gets the next lower one, as pickForIsa does: attention and the KV cache
// have no AVX-512 table, and on an AVX-512 CPU (where the chosen level is avx512) returning
// nullptr made their default calls fail with kBackend — found by the SIMDe-emulated build.
template <class Table>
const Table* tableForIsa(Isa isa, const Table& scalar, const Table* avx2, const Table* avx512) {
  if (!isaSupported(isa)) return nullptr;
  if (isa == Isa::kAvx512 && avx512) return avx512;
  if (isa != Isa::kScalar && avx2) return avx2;
  return &scalar;
}

}  // namespace kvant
