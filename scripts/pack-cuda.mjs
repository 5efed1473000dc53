#!/usr/bin/env node
// Packs the optional CUDA addon package (packages/kvant-cuda-linux-x64) from the cmake-js build:
//   npm run build:cuda && node scripts/pack-cuda.mjs [--out DIR]
// Copies build-cmake/Release/kvant_cuda.node into a staging copy of the package, checks that it
// carries the expected architectures and no dynamic CUDA runtime dependency, and runs npm pack.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const outIdx = process.argv.indexOf('--out');
const out = path.resolve(outIdx > 0 ? process.argv[outIdx + 1] : root);
const binary = path.join(root, 'build-cmake', 'Release', 'kvant_cuda.node');
if (!fs.existsSync(binary)) {
  console.error(`pack-cuda: ${binary} is missing; run \`npm run build:cuda\` first (needs nvcc)`);
  process.exit(1);
}
const pkgDir = path.join(root, 'packages', 'kvant-cuda-linux-x64');
const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-cuda-pack-'));
for (const f of ['package.json', 'index.js', 'README.md']) fs.copyFileSync(path.join(pkgDir, f), path.join(stage, f));
fs.copyFileSync(binary, path.join(stage, 'kvant_cuda.node'));

// The runtime must be static: only the driver library may be needed at load time.
const needed = execFileSync('readelf', ['-d', binary], { encoding: 'utf8' }).split('\n').filter((l) => l.includes('(NEEDED)'));
const cudart = needed.filter((l) => /libcudart/.test(l));
if (cudart.length) {
  console.error(`pack-cuda: kvant_cuda.node links the CUDA runtime dynamically:\n${cudart.join('\n')}`);
  process.exit(1);
}
// Which architectures the fatbin carries: cuobjdump when the toolkit has it, else the ptxas
// report the cmake build writes (one "Compiling entry function ... for 'sm_XX'" per kernel and arch).
let archs = '';
for (const tool of ['cuobjdump', '/usr/local/cuda/bin/cuobjdump']) {
  try {
    archs = execFileSync(tool, ['--list-elf', '--list-ptx', binary], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
    break;
  } catch {
    // not installed here
  }
}
const report = path.join(root, 'build-cmake', 'ptxas-report.txt');
if (!archs && fs.existsSync(report)) archs = fs.readFileSync(report, 'utf8');
if (!archs) {
  console.error('pack-cuda: cannot tell which architectures kvant_cuda.node holds (no cuobjdump, no build-cmake/ptxas-report.txt)');
  process.exit(1);
}
for (const sm of ['sm_80', 'sm_86', 'sm_89', 'sm_90']) {
  if (!archs.includes(sm)) {
    console.error(`pack-cuda: kvant_cuda.node has no code for ${sm}:\n${archs}`);
    process.exit(1);
  }
}
const tgz = execFileSync('npm', ['pack', '--silent', '--pack-destination', out], { cwd: stage, encoding: 'utf8' }).trim().split('\n').pop();
const size = fs.statSync(path.join(out, tgz)).size;
console.log(`${path.join(out, tgz)} (${(size / 2 ** 20).toFixed(2)} MiB; ${needed.length} NEEDED libraries, no libcudart)`);
