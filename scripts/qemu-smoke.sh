#!/usr/bin/env bash
# Smoke test of the ISA fallbacks under Debian's qemu-user: the same kvant.node must pick
# AVX2 on a Haswell (no AVX-512) and the scalar level on CPUs without AVX2 (Sandy Bridge has
# AVX but not AVX2; Nehalem has no AVX at all), and compute the same bits as the host.
# Needs: apt-get install qemu-user. Prints "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
NODE=$(command -v node)
QEMU=$(command -v qemu-x86_64 || true)
if [ -z "$QEMU" ]; then echo "qemu-x86_64 not found (apt-get install qemu-user)"; echo "0 passed, 1 failed"; exit 1; fi
SCRIPT='const k = require("./dist"); const t = k.Tensor.random([4099], "f32", { seed: 3, dist: "normal", std: 1000 });
const hex = (a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString("hex"); const h = hex(t.to("f16").data()); const b = hex(t.to("bf16").data());
const crypto = require("crypto"); console.log(k.backendInfo().isa + " " + crypto.createHash("sha1").update(h + b).digest("hex"));'
want=$("$NODE" -e "$SCRIPT" | awk '{print $2}')
pass=0; fail=0
for spec in Haswell:avx2 SandyBridge:scalar Nehalem:scalar; do
  cpu=${spec%%:*}; isa=${spec##*:}
  got=$("$QEMU" -cpu "$cpu" "$NODE" -e "$SCRIPT" 2>/dev/null)
  if [ "$got" = "$isa $want" ]; then
    echo "ok   -cpu $cpu -> $isa, bits identical to the host"; pass=$((pass + 1))
  else
    echo "FAIL -cpu $cpu: expected '$isa $want', got '$got'"; fail=$((fail + 1))
  fi
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
