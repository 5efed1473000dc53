#!/usr/bin/env node
// Checks where wide-vector instructions live in the node-gyp build. AVX-512 (EVEX encoding,
// zmm registers, opmask registers) may appear only in the kvant_avx512 objects; VEX/AVX code
// only in the kvant_avx2 and kvant_avx512 objects; the baseline objects must run on any
// x86-64. A binary that breaks this would crash with SIGILL on an older CPU.
//   node scripts/check-isa.mjs             check build/Release/obj.target
//   node scripts/check-isa.mjs --self-test prove the checker catches misplaced code
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const SEGMENT_OR_ADDR = new Set([0x26, 0x2e, 0x36, 0x3e, 0x64, 0x65, 0x67]);

/** Counts EVEX-, VEX- and zmm/opmask-using instructions in one object file. */
export function scan(obj) {
  const text = execFileSync('objdump', ['-d', '--no-addresses', '-w', obj], { encoding: 'utf8', maxBuffer: 1 << 28 });
  const counts = { instructions: 0, evex: 0, vex: 0, zmm: 0, first: null };
  for (const line of text.split('\n')) {
    // "\t62 f1 7c 48 10 04 07 \tvmovups (%rdi),%zmm0" : bytes field, then the mnemonic.
    const m = /^\t((?:[0-9a-f]{2} )+)\s*\t(.*)$/.exec(line);
    if (!m) continue;
    counts.instructions++;
    const bytes = m[1].trim().split(' ').map((b) => parseInt(b, 16));
    let i = 0;
    while (i < bytes.length && SEGMENT_OR_ADDR.has(bytes[i])) i++;
    // In 64-bit mode 0x62 can only start an EVEX instruction (BOUND is invalid), and
    // 0xc4/0xc5 only a VEX one (LES/LDS are invalid).
    const evex = bytes[i] === 0x62;
    const vex = bytes[i] === 0xc4 || bytes[i] === 0xc5;
    const zmm = /%zmm|%k[0-7]\b/.test(m[2]);
    if (evex) counts.evex++;
    if (vex) counts.vex++;
    if (zmm) counts.zmm++;
    if ((evex || vex || zmm) && !counts.first) counts.first = m[2].trim();
  }
  return counts;
}

function groupOf(obj) {
  if (obj.includes(`${path.sep}kvant_avx512${path.sep}`)) return 'avx512';
  if (obj.includes(`${path.sep}kvant_avx2${path.sep}`)) return 'avx2';
  return 'baseline';
}

function violations(group, c) {
  const v = [];
  if (group !== 'avx512' && (c.evex || c.zmm)) v.push(`${c.evex} EVEX / ${c.zmm} zmm-or-opmask instructions (first: ${c.first})`);
  if (group === 'baseline' && c.vex) v.push(`${c.vex} VEX instructions (first: ${c.first})`);
  return v;
}

function check(objects, groupFor) {
  const totals = {};
  let bad = 0;
  for (const obj of objects) {
    const g = groupFor(obj);
    const c = scan(obj);
    totals[g] ??= { objects: 0, instructions: 0, evex: 0, vex: 0, zmm: 0 };
    const t = totals[g];
    t.objects++;
    t.instructions += c.instructions;
    t.evex += c.evex;
    t.vex += c.vex;
    t.zmm += c.zmm;
    for (const v of violations(g, c)) {
      bad++;
      console.error(`ISA violation in ${path.relative(root, obj)} (${g}): ${v}`);
    }
  }
  return { totals, bad };
}

function findObjects(dir) {
  const out = [];
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) out.push(...findObjects(p));
    else if (e.name.endsWith('.o')) out.push(p);
  }
  return out;
}

function selfTest() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-isa-'));
  const src = path.join(dir, 'probe.cc');
  fs.writeFileSync(src, '#include <immintrin.h>\nextern "C" void f(float* p) { _mm512_storeu_ps(p, _mm512_add_ps(_mm512_loadu_ps(p), _mm512_set1_ps(1))); }\n' +
    'extern "C" void g(float* p) { _mm256_storeu_ps(p, _mm256_add_ps(_mm256_loadu_ps(p), _mm256_set1_ps(1))); }\n' +
    'extern "C" void h(float* p) { __m128 v = _mm_loadu_ps(p); _mm_storeu_ps(p, _mm_mask_add_ps(v, 5, v, v)); }\n');
  const obj512 = path.join(dir, 'avx512.o');
  const objVl = path.join(dir, 'vl.o');
  const objPlain = path.join(dir, 'plain.o');
  execFileSync('g++', ['-O2', '-mavx512f', '-mavx512vl', '-c', src, '-o', obj512]);
  fs.writeFileSync(path.join(dir, 'vl.cc'), '#include <immintrin.h>\nextern "C" void h(float* p) { __m128 v = _mm_loadu_ps(p); _mm_storeu_ps(p, _mm_mask_add_ps(v, 5, v, v)); }\n');
  execFileSync('g++', ['-O2', '-mavx512f', '-mavx512vl', '-c', path.join(dir, 'vl.cc'), '-o', objVl]);
  fs.writeFileSync(path.join(dir, 'plain.cc'), 'extern "C" float s(const float* p, int n) { float t = 0; for (int i = 0; i < n; ++i) t += p[i]; return t; }\n');
  execFileSync('g++', ['-O2', '-c', path.join(dir, 'plain.cc'), '-o', objPlain]);
  const expectBad = (obj, group) => violations(group, scan(obj)).length > 0;
  const results = [
    ['AVX-512 code in a baseline object is caught', expectBad(obj512, 'baseline')],
    ['AVX-512 code in an AVX2 object is caught', expectBad(obj512, 'avx2')],
    ['EVEX-encoded xmm code (no zmm in the text) in an AVX2 object is caught', expectBad(objVl, 'avx2')],
    ['AVX-512 code in the AVX-512 object is allowed', !expectBad(obj512, 'avx512')],
    ['plain x86-64 code in a baseline object passes', !expectBad(objPlain, 'baseline')],
  ];
  let failed = 0;
  for (const [name, ok] of results) {
    console.log(`${ok ? 'ok  ' : 'FAIL'} ${name}`);
    if (!ok) failed++;
  }
  return failed;
}

if (process.argv.includes('--self-test')) {
  const failed = selfTest();
  console.log(`${5 - failed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}
const objDir = path.join(root, 'build', 'Release', 'obj.target');
if (!fs.existsSync(objDir)) {
  console.error(`no objects in ${objDir}: build with node-gyp first`);
  process.exit(1);
}
const objects = findObjects(objDir);
const { totals, bad } = check(objects, groupOf);
for (const [g, t] of Object.entries(totals))
  console.log(`${g.padEnd(8)} ${t.objects} objects, ${t.instructions} instructions: ${t.evex} EVEX, ${t.vex} VEX, ${t.zmm} zmm/opmask`);
if (!totals.avx512 && process.arch === 'x64') {
  console.error('no AVX-512 objects found: the build is not the one expected');
  process.exit(1);
}
console.log(bad ? `ISA check FAILED: ${bad} misplaced instruction groups` : 'ISA check passed');
process.exit(bad ? 1 : 0);
