#!/usr/bin/env node
// Lists the C++ sources of one part of the CPU addon for binding.gyp (and CMakeLists.txt),
// so adding a kernel file never means editing the build files:
//   base   -> csrc/napi/*.cc and csrc/cpu/*.cc without an ISA suffix (compiled for baseline x86-64)
//   avx2   -> csrc/cpu/*_avx2.cc   (compiled with -mavx2 -mfma -mf16c)
//   avx512 -> csrc/cpu/*_avx512.cc (compiled with AVX-512 F/BW/VL/DQ)
'use strict';
const fs = require('fs');
const path = require('path');
const root = path.join(__dirname, '..');
const part = process.argv[2];
const list = (dir) => fs.readdirSync(path.join(root, dir)).filter((f) => f.endsWith('.cc')).sort().map((f) => `${dir}/${f}`);
const isaOf = (f) => (f.endsWith('_avx2.cc') ? 'avx2' : f.endsWith('_avx512.cc') ? 'avx512' : 'base');
let files;
if (part === 'base') files = [...list('csrc/napi'), ...list('csrc/cpu').filter((f) => isaOf(f) === 'base')];
else if (part === 'avx2' || part === 'avx512') files = list('csrc/cpu').filter((f) => isaOf(f) === part);
else if (part === 'core') files = list('csrc/cpu').filter((f) => isaOf(f) === 'base');
else {
  console.error('usage: gyp-sources.js base|core|avx2|avx512');
  process.exit(2);
}
process.stdout.write(files.join('\n') + '\n');
