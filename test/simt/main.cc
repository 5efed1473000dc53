// Runner of the SIMT-emulation tests (test/simt/*_test.cc): the same tiny framework as the
// native tests (test/native/check.h); a failing case names the schedule so it can be replayed.
#include <cstdio>
#include <cstring>

#include "check.h"
#include "simt/simt.h"

int main(int argc, char** argv) {
  const std::string sched = kvant::simt::scheduleName();
  int passed = 0, failed = 0;
  for (const auto& c : kvtest::cases()) {
    if (argc > 1 && std::strstr(c.name, argv[1]) == nullptr) continue;
    const int before = kvtest::failures();
    c.fn();
    if (kvtest::failures() == before) {
      ++passed;
      std::printf("ok   %s [%s]\n", c.name, sched.c_str());
    } else {
      ++failed;
      std::printf("FAIL %s [%s]\n", c.name, sched.c_str());
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
