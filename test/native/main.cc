#include <cstdio>

#include "check.h"

int main() {
  int passed = 0, failed = 0;
  for (const auto& c : kvtest::cases()) {
    const int before = kvtest::failures();
    c.fn();
    if (kvtest::failures() == before) {
      ++passed;
      std::printf("ok   %s\n", c.name);
    } else {
      ++failed;
      std::printf("FAIL %s\n", c.name);
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
