// The host-emulated device runtime (csrc/cuda/runtime_emu.cc, the runtime.h interface of the
// test-only kvant_cuda_emu.node) under ASan + UBSan: the budget and its accounting, and the
// guards that turn a freed, foreign or out-of-range pointer into kRange instead of a crash.
// runtime_emu.cc is compiled into this test's translation unit (scripts/simt-test.mjs builds
// test/simt/*.cc; the emulated runtime is otherwise only part of the emulated addon).
#include "../../csrc/cuda/runtime_emu.cc"

#include <vector>

#include "check.h"

namespace rt = kvant::cuda::rt;
using kvant::Status;

TEST(cuda_runtime_emu_budget_and_accounting) {
  const rt::MemoryStats s0 = rt::memoryStats();
  EXPECT_TRUE(s0.budget == s0.deviceTotal);  // default budget: the emulated device's memory
  EXPECT_TRUE(rt::setBudget(s0.allocated + 1000) == Status::kOk);
  void* a = nullptr;
  void* b = nullptr;
  EXPECT_TRUE(rt::alloc(600, &a) == Status::kOk);
  EXPECT_TRUE(reinterpret_cast<uintptr_t>(a) % 256 == 0);  // cudaMalloc's alignment
  EXPECT_TRUE(rt::alloc(401, &b) == Status::kOom);  // 1001 > 1000
  EXPECT_TRUE(b == nullptr);
  EXPECT_TRUE(rt::lastError().find("needed 401 bytes but only 400") != std::string::npos);
  EXPECT_TRUE(rt::alloc(400, &b) == Status::kOk);  // exactly the budget
  EXPECT_EQ(rt::memoryStats().allocated, s0.allocated + 1000);
  EXPECT_TRUE(rt::setBudget(s0.allocated + 999) == Status::kOom);  // below what is allocated
  EXPECT_TRUE(rt::free(a) == Status::kOk);
  EXPECT_TRUE(rt::free(a) == Status::kRange);  // double free: an error, not a crash
  EXPECT_TRUE(rt::free(b) == Status::kOk);
  EXPECT_EQ(rt::memoryStats().allocated, s0.allocated);
  EXPECT_TRUE(rt::memoryStats().peak >= s0.allocated + 1000);
  EXPECT_TRUE(rt::setBudget(s0.budget) == Status::kOk);
  void* huge = nullptr;
  EXPECT_TRUE(rt::alloc(s0.deviceTotal + 1, &huge) == Status::kOom);  // beyond the device itself
}

TEST(cuda_runtime_emu_copies_check_every_device_pointer) {
  void* d = nullptr;
  EXPECT_TRUE(rt::alloc(64, &d) == Status::kOk);
  std::vector<uint8_t> h(64), back(64, 0);
  for (int i = 0; i < 64; ++i) h[size_t(i)] = uint8_t(i * 7);
  EXPECT_TRUE(rt::copy(d, h.data(), 64, rt::CopyKind::kHostToDevice, nullptr, true) == Status::kOk);
  EXPECT_TRUE(rt::copy(back.data(), d, 64, rt::CopyKind::kDeviceToHost, nullptr, false) == Status::kOk);
  EXPECT_TRUE(back == h);
  uint8_t* p = static_cast<uint8_t*>(d);
  EXPECT_TRUE(rt::copy(p + 1, h.data(), 64, rt::CopyKind::kHostToDevice, nullptr, false) == Status::kRange);  // 1 byte past the end
  EXPECT_TRUE(rt::copy(h.data(), back.data(), 8, rt::CopyKind::kDeviceToDevice, nullptr, false) == Status::kRange);  // foreign (host) pointers
  EXPECT_TRUE(rt::memset(p + 60, 0, 4, nullptr, false) == Status::kOk);
  EXPECT_TRUE(rt::memset(p + 60, 0, 5, nullptr, false) == Status::kRange);
  void* z = nullptr;
  EXPECT_TRUE(rt::alloc(0, &z) == Status::kOk && z != nullptr);
  EXPECT_TRUE(rt::owns(z, 0) && !rt::owns(z, 1));  // a zero-byte allocation owns only the empty range
  EXPECT_TRUE(rt::free(z) == Status::kOk);
  EXPECT_TRUE(rt::free(d) == Status::kOk);
  EXPECT_TRUE(rt::copy(back.data(), d, 1, rt::CopyKind::kDeviceToHost, nullptr, false) == Status::kRange);  // use after free
  EXPECT_TRUE(rt::lastError().find("not inside a live allocation") != std::string::npos);
}

TEST(cuda_runtime_emu_streams) {
  void* s = nullptr;
  EXPECT_TRUE(rt::streamCreate(&s) == Status::kOk);
  EXPECT_TRUE(rt::streamLive(s) && rt::streamLive(nullptr));
  EXPECT_TRUE(rt::streamSynchronize(s) == Status::kOk);
  EXPECT_TRUE(rt::streamDestroy(s) == Status::kOk);
  EXPECT_TRUE(!rt::streamLive(s));
  EXPECT_TRUE(rt::streamSynchronize(s) == Status::kRange);
  EXPECT_TRUE(rt::streamDestroy(s) == Status::kRange);
  void* d = nullptr;
  EXPECT_TRUE(rt::alloc(4, &d) == Status::kOk);
  EXPECT_TRUE(rt::memset(d, 0, 4, s, false) == Status::kRange);  // work on a destroyed stream
  EXPECT_TRUE(rt::free(d) == Status::kOk);
}
