#include "isa.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#define KVANT_X64 1
#endif

namespace kvant {
namespace {

#ifdef KVANT_X64
// XGETBV is read with inline asm so this file needs no -mxsave flag (it must stay baseline x86-64).
uint64_t readXcr0() {
  uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}
#endif

CpuFeatures detect() {
  CpuFeatures f;
#ifdef KVANT_X64
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
  const bool osxsave = c & (1u << 27);
  f.fma = c & (1u << 12);
  f.f16c = c & (1u << 29);
  const bool avx = c & (1u << 28);
  if (osxsave && avx) {
    const uint64_t xcr0 = readXcr0();
    f.osYmm = (xcr0 & 0x6) == 0x6;                 // XMM and YMM state
    f.osZmm = f.osYmm && (xcr0 & 0xe0) == 0xe0;    // opmask, ZMM_Hi256, Hi16_ZMM
  }
  if (__get_cpuid_max(0, nullptr) >= 7) {
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = b & (1u << 5);
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512Vnni = c & (1u << 11);
    unsigned a1, b1, c1, d1;
    __cpuid_count(7, 1, a1, b1, c1, d1);
    f.avxVnni = a1 & (1u << 4);
    f.avx512Bf16 = a1 & (1u << 5);
  }
#endif
  return f;
}

bool hasAvx2Level(const CpuFeatures& f) { return f.osYmm && f.avx2 && f.fma && f.f16c; }
bool hasAvx512Level(const CpuFeatures& f) {
  return hasAvx2Level(f) && f.osZmm && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
}

IsaChoice decide() {
  const CpuFeatures& f = cpuFeatures();
  IsaChoice c;
#ifdef KVANT_X64
  c.best = hasAvx512Level(f) ? Isa::kAvx512 : hasAvx2Level(f) ? Isa::kAvx2 : Isa::kScalar;
  if (c.best == Isa::kAvx512) c.reason = "CPU and OS support AVX-512 F/BW/VL/DQ";
  else if (c.best == Isa::kAvx2) c.reason = f.avx512f && !f.osZmm ? "AVX-512 present but the OS does not save ZMM state; using AVX2+FMA+F16C" : "CPU supports AVX2+FMA+F16C but not AVX-512 F/BW/VL/DQ";
  else c.reason = !f.avx2 ? "CPU lacks AVX2" : !f.osYmm ? "OS does not save YMM state" : "CPU lacks FMA or F16C";
#else
  c.best = Isa::kScalar;
  c.reason = "not an x86-64 build: portable scalar kernels";
#endif
  c.isa = c.best;
  if (const char* env = std::getenv("KVANT_ISA")) {
    Isa want = c.best;
    bool known = true;
    if (!std::strcmp(env, "scalar")) want = Isa::kScalar;
    else if (!std::strcmp(env, "avx2")) want = Isa::kAvx2;
    else if (!std::strcmp(env, "avx512")) want = Isa::kAvx512;
    else known = false;
    if (!known) {
      c.reason += std::string("; ignored unknown KVANT_ISA=") + env;
    } else if (int(want) <= int(c.best)) {
      c.isa = want;
      c.reason = std::string("forced by KVANT_ISA=") + env + " (best available: " + isaName(c.best) + ")";
    } else {
      c.reason += std::string("; KVANT_ISA=") + env + " is not supported here, using " + isaName(c.best);
    }
  }
  return c;
}

}  // namespace

const CpuFeatures& cpuFeatures() {
  static const CpuFeatures f = detect();
  return f;
}

const IsaChoice& isaChoice() {
  static const IsaChoice c = decide();
  return c;
}

bool isaSupported(Isa isa) { return int(isa) <= int(isaChoice().best); }

const char* isaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "scalar";
}

}  // namespace kvant
