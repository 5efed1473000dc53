#!/usr/bin/env node
// Builds and runs the native unit tests (test/native/*_test.cc) against csrc/cpu under
// AddressSanitizer + UndefinedBehaviorSanitizer. Each csrc file gets the ISA flags binding.gyp
// gives it. Objects are cached in build-native-test/ by content hash. Last line of output:
// "N passed, N failed".
import { spawnSync } from 'node:child_process';
import { buildSanitized, hashHeaders } from './sanitized-build.mjs';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'build-native-test');
fs.mkdirSync(out, { recursive: true });
const isX64 = process.arch === 'x64';
const SAN = ['-fsanitize=address,undefined', '-fno-sanitize-recover=all', '-fno-omit-frame-pointer'];
const BASE = ['-std=c++17', '-O1', '-g', '-pthread', '-Wall', '-Wextra', '-Wno-unused-parameter', '-Wno-missing-field-initializers',
  '-Icsrc/include', '-Icsrc/cpu', '-Itest/native', ...SAN];
const ISA_FLAGS = {
  avx2: ['-mavx2', '-mfma', '-mf16c'],
  avx512: ['-mavx2', '-mfma', '-mf16c', '-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-Wno-uninitialized', '-Wno-maybe-uninitialized'],
};
const isaOf = (f) => (f.endsWith('_avx2.cc') ? 'avx2' : f.endsWith('_avx512.cc') ? 'avx512' : 'base');
const list = (dir, pred) => fs.readdirSync(path.join(root, dir)).filter(pred).sort().map((f) => `${dir}/${f}`);
const sources = [
  ...list('csrc/cpu', (f) => f.endsWith('.cc') && (isX64 || isaOf(f) === 'base')),
  ...list('test/native', (f) => f.endsWith('_test.cc') || f === 'main.cc'),
];

function flagsFor(f) {
  const isa = isaOf(f);
  return isa === 'base' ? BASE : [...BASE, ...ISA_FLAGS[isa]];
}

// Headers change rarely; hash them all into every object's key so any edit rebuilds.
const hdr = hashHeaders(root, ['csrc/include/kvant', 'csrc/cpu', 'test/native']);

async function main() {
  const t0 = Date.now();
  const exe = path.join(out, 'kvant-native-tests');
  await buildSanitized({
    root, out, sources, flagsFor, exe,
    headerHashFor: () => hdr,
    objectName: (f, h) => `${path.basename(f, '.cc')}-${h}.o`,
    linkFlags: [...SAN, '-pthread'],
  });
  console.error(`built in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
  // halt_on_error: the first sanitizer report fails the run; detect_leaks: no leaks allowed.
  const run = spawnSync(exe, [], {
    stdio: 'inherit',
    env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=1:halt_on_error=1:abort_on_error=0', UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1' },
  });
  if (run.status !== 0 && run.signal) console.log(`0 passed, 1 failed (killed by ${run.signal})`);
  process.exit(run.status ?? 1);
}

main().catch((e) => {
  console.error(e.message);
  console.log('0 passed, 1 failed');
  process.exit(1);
});
