// Conversion kernels of every supported ISA level against the scalar reference, bit for bit.
#include <cstring>
#include <vector>

#include "check.h"
#include "convert.h"
#include "kvant/half.h"

using namespace kvant;

static uint32_t rng(uint64_t& s) {
  s = s * 6364136223846793005ull + 1442695040888963407ull;
  return uint32_t(s >> 32);
}

static std::vector<Isa> levels() {
  std::vector<Isa> v;
  for (Isa i : {Isa::kScalar, Isa::kAvx2, Isa::kAvx512})
    if (isaSupported(i)) v.push_back(i);
  return v;
}

TEST(convert_f32_to_f16_and_bf16_match_scalar_on_random_bits_and_tails) {
  uint64_t s = 42;
  for (size_t n = 0; n <= 70; ++n) {
    std::vector<float> x(n);
    for (auto& v : x) {
      uint32_t b = rng(s);
      std::memcpy(&v, &b, 4);
    }
    for (Isa isa : levels()) {
      const ConvertKernels* k = convertKernelsFor(isa);
      std::vector<uint16_t> h(n + 4, 0xbeef), b(n + 4, 0xbeef);
      k->f32ToF16(x.data(), h.data(), n);
      k->f32ToBf16(x.data(), b.data(), n);
      for (size_t i = 0; i < n; ++i) {
        EXPECT_EQ(h[i], f32ToF16(x[i]));
        EXPECT_EQ(b[i], f32ToBf16(x[i]));
      }
      for (size_t i = n; i < n + 4; ++i) {  // nothing written past the end
        EXPECT_EQ(h[i], 0xbeef);
        EXPECT_EQ(b[i], 0xbeef);
      }
    }
  }
}

TEST(convert_every_f16_and_bf16_pattern_widens_like_scalar) {
  std::vector<uint16_t> all(65536);
  for (int i = 0; i < 65536; ++i) all[i] = uint16_t(i);
  for (Isa isa : levels()) {
    const ConvertKernels* k = convertKernelsFor(isa);
    std::vector<float> a(65536), b(65536);
    k->f16ToF32(all.data(), a.data(), all.size());
    k->bf16ToF32(all.data(), b.data(), all.size());
    int bad = 0;
    for (int i = 0; i < 65536; ++i) {
      const float ra = f16ToF32(uint16_t(i)), rb = bf16ToF32(uint16_t(i));
      if (std::memcmp(&a[i], &ra, 4) != 0 || std::memcmp(&b[i], &rb, 4) != 0) ++bad;
    }
    EXPECT_EQ(bad, 0);
  }
}

TEST(convert_elements_parallel_driver_and_dtype_rules) {
  std::vector<float> x(300001);
  for (size_t i = 0; i < x.size(); ++i) x[i] = float(i) * 0.37f - 5000.f;
  std::vector<uint16_t> h(x.size());
  EXPECT_TRUE(convertElements(x.data(), DType::kF32, h.data(), DType::kF16, x.size()) == Status::kOk);
  for (size_t i = 0; i < x.size(); i += 997) EXPECT_EQ(h[i], f32ToF16(x[i]));
  std::vector<int32_t> ints(4);
  EXPECT_TRUE(convertElements(ints.data(), DType::kI32, h.data(), DType::kF16, 4) == Status::kDtype);
  std::atomic<bool> cancel{true};
  EXPECT_TRUE(convertElements(x.data(), DType::kF32, h.data(), DType::kF16, x.size(), &cancel) == Status::kAborted);
}
