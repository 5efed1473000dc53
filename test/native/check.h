// A tiny test framework for the native unit tests (no downloads): TEST registers a case,
// EXPECT_* record failures with the values involved; main() runs all and prints
// "N passed, N failed".
#pragma once
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace kvtest {

struct Case {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Case>& cases() {
  static std::vector<Case> c;
  return c;
}
inline int& failures() {
  static int f = 0;
  return f;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { cases().push_back({name, std::move(fn)}); }
};

inline void fail(const char* file, int line, const std::string& what) {
  ++failures();
  std::fprintf(stderr, "  FAIL %s:%d: %s\n", file, line, what.c_str());
}

}  // namespace kvtest

#define KV_CONCAT2(a, b) a##b
#define KV_CONCAT(a, b) KV_CONCAT2(a, b)
#define TEST(name)                                                              \
  static void name();                                                           \
  static kvtest::Register KV_CONCAT(reg_, name)(#name, name);                   \
  static void name()

#define EXPECT_TRUE(c)                                                        \
  do {                                                                        \
    if (!(c)) kvtest::fail(__FILE__, __LINE__, std::string("expected ") + #c); \
  } while (0)

#define EXPECT_EQ(a, b)                                                                                   \
  do {                                                                                                    \
    const auto va_ = (a);                                                                                 \
    const auto vb_ = (b);                                                                                 \
    if (!(va_ == vb_))                                                                                    \
      kvtest::fail(__FILE__, __LINE__, std::string(#a " == " #b ": ") + std::to_string(va_) + " vs " + std::to_string(vb_)); \
  } while (0)

// |a - b| <= tol * max(1, |b|); prints the absolute and relative error on failure.
#define EXPECT_NEAR_REL(a, b, tol)                                                                   \
  do {                                                                                               \
    const double va_ = double(a), vb_ = double(b);                                                   \
    const double abs_ = std::fabs(va_ - vb_), rel_ = abs_ / std::fmax(1.0, std::fabs(vb_));          \
    if (!(rel_ <= (tol)))                                                                            \
      kvtest::fail(__FILE__, __LINE__, std::string(#a " ~ " #b ": ") + std::to_string(va_) + " vs " + \
                                           std::to_string(vb_) + " (abs " + std::to_string(abs_) +   \
                                           ", rel " + std::to_string(rel_) + ")");                   \
  } while (0)
