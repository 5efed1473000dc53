#!/usr/bin/env bash
# The CPU addon must never depend on the CUDA runtime (DESIGN.md §3): no libcudart in its
# dynamic section and no cuda* symbols, in both the node-gyp and the cmake-js build.
set -uo pipefail
cd "$(dirname "$0")/.."
pass=0; fail=0
for f in build/Release/kvant.node build-cmake/Release/kvant.node prebuilds/linux-x64/*.node; do
  [ -f "$f" ] || continue
  if readelf -d "$f" | grep -qi cuda || nm -D "$f" 2>/dev/null | grep -qiE ' (U|T) cuda'; then
    echo "FAIL $f depends on CUDA"; fail=$((fail + 1))
  else
    echo "ok   $f has no CUDA dependency"; pass=$((pass + 1))
  fi
done
if [ -f build-cmake/Release/kvant_cuda.node ]; then
  if readelf -d build-cmake/Release/kvant_cuda.node | grep -q 'libcudart'; then
    echo "FAIL kvant_cuda.node links the CUDA runtime dynamically (expected static)"; fail=$((fail + 1))
  else
    echo "ok   kvant_cuda.node links the CUDA runtime statically"; pass=$((pass + 1))
  fi
fi
[ "$pass" -gt 0 ] || { echo "no addon found"; fail=$((fail + 1)); }
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
