import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.join(__dirname, '..');
const cmakeCpu = path.join(root, 'build-cmake', 'Release', 'kvant.node');
const gypCpu = path.join(root, 'build', 'Release', 'kvant.node');
const cuda = path.join(root, 'build-cmake', 'Release', 'kvant_cuda.node');

function run(script: string) {
  const r = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8' });
  expect(r.stderr).toBe('');
  return JSON.parse(r.stdout);
}

// CI builds both (npm run build:cmake / build:cuda) before npm test; a plain `npm ci && npm test`
// has only the node-gyp build, and then these checks have nothing to compare.
describe.runIf(fs.existsSync(cmakeCpu) && fs.existsSync(gypCpu))('cmake-js build', () => {
  it('builds the same CPU addon as node-gyp: same exports, same bits', () => {
    const probe = (file: string) =>
      run(`const b = require(${JSON.stringify(file)}); const src = new Float32Array(1000).map((_, i) => Math.sin(i) * 1e3);
        const dst = new Uint8Array(2000); b.convert(new Uint8Array(src.buffer), 0, 4000, 0, dst, 0, 2000, 1, 1000);
        console.log(JSON.stringify({ keys: Object.keys(b).sort(), bits: Buffer.from(dst).toString('base64'), isa: b.cpuInfo().isa }));`);
    const a = probe(cmakeCpu);
    const b = probe(gypCpu);
    expect(a).toEqual(b);
  });
});

describe.runIf(fs.existsSync(cuda))('CUDA addon', () => {
  it('answers the device query without crashing and maps CUDA errors to KVANT_BACKEND', () => {
    const q = run(`const b = require(${JSON.stringify(cuda)}); const q = b.deviceQuery();
      let copy = null; try { const s = Uint8Array.from({ length: 1037 }, (_, i) => i * 7); const d = new Uint8Array(1037); b.roundTripCopy(s, d); copy = Buffer.compare(Buffer.from(s), Buffer.from(d)) === 0 ? 'equal' : 'differs'; }
      catch (e) { copy = e.code + ': ' + e.message; }
      console.log(JSON.stringify({ q, copy }));`);
    expect(typeof q.q.count).toBe('number');
    if (q.q.count === 0) {
      expect(q.q.error).toMatch(/^cudaGetDeviceCount: cuda\w+: /); // CUDA's own words
      expect(q.copy).toMatch(/^KVANT_BACKEND: cuda/);
    } else {
      expect(q.copy).toBe('equal');
    }
  });
});
