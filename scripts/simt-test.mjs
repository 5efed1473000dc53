#!/usr/bin/env node
// Builds the CUDA kernel bodies (csrc/cuda/*.cuh) for the host under the SIMT emulation
// (csrc/cuda/simt) with g++ and AddressSanitizer + UndefinedBehaviorSanitizer (the fibers are
// annotated for ASan), links the tests in test/simt/ with the CPU references (csrc/cpu), and runs
// the whole suite under several thread orders: seeds 1, 2, 3 and the adversarial reverse order.
// Objects are cached in build-native-test/simt/ by content hash.
// Usage: node scripts/simt-test.mjs [filter]   (filter: substring of test names)
// Last line of output: "N passed, N failed" over all (test, schedule) runs.
import { spawnSync } from 'node:child_process';
import { buildSanitized, hashHeaders } from './sanitized-build.mjs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'build-native-test', 'simt');
fs.mkdirSync(out, { recursive: true });
const SAN = ['-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer'];
// -fno-strict-aliasing: kernels read packed words through uint4 (128-bit loads) as CUDA code does.
const BASE = ['-std=c++17', '-O1', '-g', '-pthread', '-fno-strict-aliasing', '-Wall', '-Wextra', '-Wno-unused-parameter',
  '-Wno-missing-field-initializers', '-Wno-unknown-pragmas', '-Icsrc/include', '-Icsrc/cpu', '-Icsrc/cuda', '-Itest/native', '-Itest/simt', ...SAN];
const ISA_FLAGS = {
  avx2: ['-mavx2', '-mfma', '-mf16c'],
  avx512: ['-mavx2', '-mfma', '-mf16c', '-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-Wno-uninitialized', '-Wno-maybe-uninitialized'],
};
const SCHEDULES = ['1', '2', '3', 'reverse'];
const isaOf = (f) => (f.endsWith('_avx2.cc') ? 'avx2' : f.endsWith('_avx512.cc') ? 'avx512' : 'base');
const list = (dir, pred) => fs.readdirSync(path.join(root, dir)).filter(pred).sort().map((f) => `${dir}/${f}`);
// Only the CPU families the kernel tests compare against (and what they need): fewer sanitized
// objects to build on a cold cache.
const CPU_REFERENCES = /^(isa|thread_pool|small_ops|attention|gemm|convert|kv_cache|quant)(_avx2|_avx512)?\.cc$/;
const sources = [
  ...list('csrc/cpu', (f) => CPU_REFERENCES.test(f)),
  'csrc/cuda/simt/simt.cc',
  ...list('test/simt', (f) => f.endsWith('.cc')),
];
const flagsFor = (f) => (isaOf(f) === 'base' ? BASE : [...BASE, ...ISA_FLAGS[isaOf(f)]]);

// Headers are hashed into each object's key: the CPU references see only their own headers, so
// editing a kernel body rebuilds just the test objects.
const cpuHeaders = hashHeaders(root, ['csrc/include/kvant', 'csrc/cpu']);
const allHeaders = hashHeaders(root, ['csrc/include/kvant', 'csrc/cpu', 'csrc/cuda', 'csrc/cuda/simt', 'test/native', 'test/simt']);

async function main() {
  const t0 = Date.now();
  const exe = path.join(out, 'kvant-simt-tests');
  await buildSanitized({
    root, out, sources, flagsFor, exe, sortObjects: true,
    headerHashFor: (f) => (f.startsWith('csrc/cpu/') ? cpuHeaders : allHeaders),
    objectName: (f, h) => `${f.replace(/[/.]/g, '_')}-${h}.o`,
    linkFlags: [...SAN, '-pthread'],
  });
  console.error(`built in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
  let passed = 0, failed = 0;
  for (const seed of SCHEDULES) {
    const t1 = Date.now();
    const run = spawnSync(exe, process.argv.slice(2), {
      encoding: 'utf8',
      maxBuffer: 64 << 20,
      env: { ...process.env, KVANT_SIMT_SEED: seed, KVANT_THREADS: '1',
        ASAN_OPTIONS: 'detect_leaks=1:halt_on_error=1:abort_on_error=0', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' },
    });
    process.stderr.write(run.stderr ?? '');
    const lines = (run.stdout ?? '').trim().split('\n');
    const last = lines.pop() ?? '';
    for (const l of lines) if (l.startsWith('FAIL') || process.env.KVANT_SIMT_VERBOSE) console.log(l);
    const m = /^(\d+) passed, (\d+) failed$/.exec(last);
    if (m && run.status !== null) {
      passed += Number(m[1]);
      failed += Number(m[2]);
      console.log(`KVANT_SIMT_SEED=${seed}: ${m[1]} passed, ${m[2]} failed (${((Date.now() - t1) / 1000).toFixed(1)}s)`);
    } else {
      failed += 1;
      console.log(`KVANT_SIMT_SEED=${seed}: crashed (status ${run.status}, signal ${run.signal}); last output: ${last}`);
    }
  }
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

main().catch((e) => {
  console.error(e.message);
  console.log('0 passed, 1 failed');
  process.exit(1);
});
