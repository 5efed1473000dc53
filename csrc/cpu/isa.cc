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
    const unsigned maxSub7 = a;  // subleaf 1 is only defined when leaf 7 reports it
    f.avx2 = b & (1u << 5);
    f.avx512f = b & (1u << 16);
    f.avx512dq = b & (1u << 17);
    f.avx512bw = b & (1u << 30);
    f.avx512vl = b & (1u << 31);
    f.avx512Vnni = c & (1u << 11);
    if (maxSub7 >= 1) {
      unsigned a1, b1, c1, d1;
      __cpuid_count(7, 1, a1, b1, c1, d1);
      f.avxVnni = a1 & (1u << 4);
      f.avx512Bf16 = a1 & (1u << 5);
    }
  }
#endif
#ifdef KVANT_SIMDE_AVX512
  // Emulated test build: the avx512 objects were compiled against SIMDe on top of AVX2, so they
  // run wherever the AVX2 level does. KVANT_EMU_VNNI=0 hides VNNI to test the maddubs form.
  if (f.osYmm && f.avx2 && f.fma && f.f16c) {
    f.avx512f = f.avx512bw = f.avx512vl = f.avx512dq = f.osZmm = true;
    const char* v = std::getenv("KVANT_EMU_VNNI");
    f.avx512Vnni = !(v && !std::strcmp(v, "0"));
    f.avx512Bf16 = false;
    f.emulatedAvx512 = true;
  }
#endif
  return f;
}

bool hasAvx2Level(const CpuFeatures& f) { return f.osYmm && f.avx2 && f.fma && f.f16c; }
bool hasAvx512Level(const CpuFeatures& f) {
  return hasAvx2Level(f) && f.osZmm && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
}

// What keeps the AVX-512 level from being used, e.g. "avx512bw, avx512vl missing".
std::string avx512Missing(const CpuFeatures& f) {
  std::string m;
  auto add = [&](bool have, const char* name) {
    if (have) return;
    if (!m.empty()) m += ", ";
    m += name;
  };
  add(f.avx512f, "avx512f");
  add(f.avx512bw, "avx512bw");
  add(f.avx512vl, "avx512vl");
  add(f.avx512dq, "avx512dq");
  if (f.avx512f) add(f.osZmm, "OS support for ZMM/opmask state (XCR0 bits 5-7)");
  return m;
}

IsaChoice decide() {
  const CpuFeatures& f = cpuFeatures();
  IsaChoice c;
#ifdef KVANT_X64
  c.best = hasAvx512Level(f) ? Isa::kAvx512 : hasAvx2Level(f) ? Isa::kAvx2 : Isa::kScalar;
  if (c.best == Isa::kAvx512) {
    c.reason = std::string(f.emulatedAvx512 ? "AVX-512 EMULATED by SIMDe (test build, not for speed)" : "CPU and OS support AVX-512 F/BW/VL/DQ") +
               (f.avx512Vnni ? " + VNNI" : ", no VNNI");
  } else if (c.best == Isa::kAvx2) {
    c.reason = "CPU supports AVX2+FMA+F16C; AVX-512 not usable (missing: " + avx512Missing(f) + ")";
  } else {
    c.reason = !f.avx2 ? "CPU lacks AVX2" : !f.osYmm ? "OS does not save YMM state" : "CPU lacks FMA or F16C";
  }
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
      c.reason = std::string("forced by KVANT_ISA=") + env + " (best available: " + isaName(c.best) + "; " + c.reason + ")";
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

bool avx512VnniUsable() {
  static const bool v = isaChoice().best == Isa::kAvx512 && cpuFeatures().avx512Vnni;
  return v;
}

const char* isaName(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "scalar";
}

}  // namespace kvant
