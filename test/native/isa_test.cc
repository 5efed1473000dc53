// The load-time ISA choice: the reason string says why a level is (not) used, and the
// SIMDe-emulated test build really exposes the avx512 tables (else its run would prove nothing).
#include <string>

#include "check.h"
#include "isa.h"

using namespace kvant;

TEST(isa_choice_is_consistent_and_explains_itself) {
  const IsaChoice& c = isaChoice();
  const CpuFeatures& f = cpuFeatures();
  EXPECT_TRUE(!c.reason.empty());
  EXPECT_TRUE(int(c.isa) <= int(c.best));
  EXPECT_TRUE(isaSupported(Isa::kScalar));
  EXPECT_EQ(isaSupported(Isa::kAvx512), c.best == Isa::kAvx512);
  // The AVX-512 level needs all four subsets and the OS's ZMM/opmask state.
  if (c.best == Isa::kAvx512) EXPECT_TRUE(f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq && f.osZmm && f.osYmm);
  if (c.best == Isa::kAvx2) EXPECT_TRUE(c.reason.find("missing") != std::string::npos);
  // VNNI is only ever used inside the AVX-512 level.
  EXPECT_TRUE(!avx512VnniUsable() || (c.best == Isa::kAvx512 && f.avx512Vnni));
#ifdef KVANT_SIMDE_AVX512
  EXPECT_TRUE(f.emulatedAvx512);
  EXPECT_TRUE(c.best == Isa::kAvx512);
  EXPECT_TRUE(c.reason.find("EMULATED") != std::string::npos);
#else
  EXPECT_TRUE(!f.emulatedAvx512);
#endif
}
