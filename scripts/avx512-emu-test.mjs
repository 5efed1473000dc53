#!/usr/bin/env node
// The native unit tests (test/native/*_test.cc) with the AVX-512 level EMULATED by SIMDe, for
// machines without AVX-512 (like the one kvant is developed on). Every source is compiled with
// -DKVANT_SIMDE_AVX512 under ASan+UBSan; the *_avx512.cc files get the AVX2 flags only (no
// -mavx512*), so csrc/cpu/simd_avx512.h maps their intrinsics onto SIMDe's portable code and
// isa.cc reports AVX-512 as present. The tests then compare scalar vs avx2 vs avx512 tables.
// The binary runs twice: with VNNI (vpdpbusd paths) and with KVANT_EMU_VNNI=0 (maddubs paths).
// This proves the AVX-512 code's logic and bit-exactness, not its speed.
// Last line of output: "N passed, N failed"; exit status non-zero on any failure.
import { spawnSync } from 'node:child_process';
import { buildSanitized, hashHeaders } from './sanitized-build.mjs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'build-native-test', 'avx512-emu');

function fail(msg) {
  console.error(`avx512-emu-test: ${msg}`);
  console.log('0 passed, 1 failed');
  process.exit(1);
}

if (process.arch !== 'x64') fail(`needs an x86-64 host with AVX2 (this is ${process.arch})`);
// SIMDe is header-only; look where g++ looks, and say what to install when it is missing.
const probe = spawnSync('g++', ['-std=c++17', '-x', 'c++', '-fsyntax-only', '-'], {
  input: '#include <simde/x86/avx512.h>\nint main() {}\n',
  encoding: 'utf8',
});
if (probe.status !== 0)
  fail(`SIMDe headers not found (<simde/x86/avx512.h>). Install them: apt-get install -y libsimde-dev\n${probe.stderr ?? ''}`);

fs.mkdirSync(out, { recursive: true });
const SAN = ['-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer'];
const BASE = ['-std=c++17', '-O1', '-g', '-pthread', '-Wall', '-Wextra', '-Wno-unused-parameter', '-Wno-missing-field-initializers',
  '-DKVANT_SIMDE_AVX512', '-Icsrc/include', '-Icsrc/cpu', '-Itest/native', ...SAN];
// The avx512 files: AVX2 flags only. Adding -mavx512f here would make SIMDe use the real
// instructions (simd_avx512.h refuses that combination with an #error).
const AVX2 = ['-mavx2', '-mfma', '-mf16c'];
// -O0 -g1: at -O1 SIMDe's inline lane loops, unrolled through the kernels' templates and
// instrumented by the sanitizers, take ~8 minutes of compile for gemm_q_avx512.cc alone; at -O0
// it is ~30 s and the (small) test shapes still run in seconds.
const EMU512 = [...AVX2, '-O0', '-g1', '-Wno-psabi', '-Wno-uninitialized', '-Wno-maybe-uninitialized', '-Wno-unused-function'];
const isaOf = (f) => (f.endsWith('_avx2.cc') ? 'avx2' : f.endsWith('_avx512.cc') ? 'avx512' : 'base');
const list = (dir, pred) => fs.readdirSync(path.join(root, dir)).filter(pred).sort().map((f) => `${dir}/${f}`);
const sources = [
  ...list('csrc/cpu', (f) => f.endsWith('.cc')),
  ...list('test/native', (f) => f.endsWith('_test.cc') || f === 'main.cc'),
];
const flagsFor = (f) => ({ base: BASE, avx2: [...BASE, ...AVX2], avx512: [...BASE, ...EMU512] })[isaOf(f)];
const hdr = hashHeaders(root, ['csrc/include/kvant', 'csrc/cpu', 'test/native']);

async function main() {
  const t0 = Date.now();
  const exe = path.join(out, 'kvant-native-tests-avx512-emu');
  await buildSanitized({
    root, out, sources, flagsFor, exe,
    headerHashFor: () => hdr,
    objectName: (f, h) => `${path.basename(f, '.cc')}-emu-${h}.o`,
    linkFlags: [...SAN, '-pthread'],
  });
  console.error(`built in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
  let passed = 0, failed = 0;
  for (const [label, extra] of [['AVX-512 + VNNI (emulated)', {}], ['AVX-512 without VNNI (emulated)', { KVANT_EMU_VNNI: '0' }]]) {
    console.log(`-- ${label}`);
    const run = spawnSync(exe, [], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'inherit'],
      env: {
        ...process.env, ...extra,
        ASAN_OPTIONS: 'detect_leaks=1:halt_on_error=1:abort_on_error=0',
        UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
      },
    });
    const text = run.stdout ?? '';
    const lines = text.trimEnd().split('\n');
    const last = lines.pop() ?? '';
    if (lines.length) console.log(lines.join('\n'));
    const m = /^(\d+) passed, (\d+) failed$/.exec(last);
    if (!m || run.status !== 0 && Number(m?.[2] ?? 0) === 0) {
      if (m) console.log(last);
      console.log(`   run ended abnormally (status ${run.status}, signal ${run.signal ?? 'none'})`);
      passed += m ? Number(m[1]) : 0;
      failed += (m ? Number(m[2]) : 0) + 1;
      continue;
    }
    console.log(`   ${last}`);
    passed += Number(m[1]);
    failed += Number(m[2]);
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((e) => fail(e.message));
