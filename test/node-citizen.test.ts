import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { KvantError, MAX_JS_BYTES, Tensor, allocateNative, mapFile } from '../lib';
import { native } from '../lib/native';

const root = path.join(__dirname, '..');

function node(args: string[], env: Record<string, string> = {}) {
  return spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
}

describe('a good Node citizen', () => {
  it('ESM and CommonJS entry points share one implementation', () => {
    const r = node([
      '--input-type=module',
      '-e',
      `import * as esm from 'kvant'; import { createRequire } from 'node:module';
       const cjs = createRequire(import.meta.url)('kvant');
       const same = ['KvantError', 'Tensor', 'backendInfo', 'setThreads', 'mapFile'].every((k) => esm[k] === cjs[k] && esm[k] !== undefined);
       const missing = Object.keys(cjs).filter((k) => !(k in esm));
       console.log(JSON.stringify({ same, missing, def: esm.default === cjs }));`,
    ]);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({ same: true, missing: [], def: true });
  });

  it('loads in worker_threads and computes the same bits as the main thread', async () => {
    const script = `
      const { parentPort, workerData } = require('node:worker_threads');
      const { Tensor } = require(workerData.entry);
      const t = Tensor.random([100003], 'f32', { seed: workerData.seed, dist: 'normal' });
      const d = t.to('bf16').data();
      parentPort.postMessage(Buffer.from(d.buffer, d.byteOffset, d.byteLength));`;
    const entry = path.join(root, 'dist', 'index.js');
    const run = (seed: number) =>
      new Promise<Buffer>((resolve, reject) => {
        const w = new Worker(script, { eval: true, workerData: { entry, seed } });
        w.once('message', (m: Uint8Array) => resolve(Buffer.from(m)));
        w.once('error', reject);
      });
    const [a, b] = await Promise.all([run(9), run(9)]);
    const md = Tensor.random([100003], 'f32', { seed: 9, dist: 'normal' }).to('bf16').data() as Uint16Array;
    const mine = Buffer.from(md.buffer, md.byteOffset, md.byteLength);
    expect(a.equals(mine)).toBe(true);
    expect(b.equals(mine)).toBe(true);
  });

  it('the process exits promptly after async work (the pool never holds it open)', () => {
    const r = node(['-e', `const { Tensor } = require('./dist');
      Tensor.random([1 << 22], 'f32').toAsync('f16').then(() => console.log('done'));`]);
    expect(r.status).toBe(0);
    expect(r.stdout.trim()).toBe('done');
  });

  it('dispose frees native memory, detaches its views and un-reports it to V8', async () => {
    const before = native().externalMemory();
    const t = Tensor.zeros([16 << 20], 'f32', { native: true }); // 64 MiB
    expect(native().externalMemory() - before).toBeGreaterThanOrEqual(64 << 20);
    const view = t.data() as Float32Array;
    view[3] = 1.5;
    expect((t.data() as Float32Array)[3]).toBe(1.5);
    await (t as unknown as { [Symbol.asyncDispose](): Promise<void> })[Symbol.asyncDispose]();
    expect(view.length).toBe(0); // detached: no dangling access possible
    expect(native().externalMemory() - before).toBeLessThan(1 << 20); // other small externals may move
    expect(() => t.to('f16')).toThrow(KvantError);
  });

  it('a tensor over 4 GiB lives in native memory and is reached through slices', () => {
    const bytes = 5 * 2 ** 30;
    const t = Tensor.zeros([bytes], 'u8'); // too big for a TypedArray: native automatically
    expect(t.storage.kind).toBe('native');
    expect(() => t.data()).toThrow(/slice/);
    const tail = t.slice(bytes - 16);
    (tail.data() as Uint8Array).fill(7);
    expect(Array.from(t.slice(bytes - 17).data() as Uint8Array).slice(0, 3)).toEqual([0, 7, 7]);
    expect(MAX_JS_BYTES).toBeLessThan(bytes);
    t.dispose();
  });

  it('maps a file copy-on-write: reads in place, writes never reach the file', () => {
    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-')), 'w.bin');
    fs.writeFileSync(file, Buffer.from(new Float32Array([1, 2, 3, 4, 5]).buffer));
    const m = mapFile(file);
    expect(m.kind).toBe('mmap');
    const t = Tensor.fromNative(m, 'f32', [4], 4);
    expect(Array.from(t.data() as Float32Array)).toEqual([2, 3, 4, 5]);
    (t.data() as Float32Array)[0] = 99;
    expect(fs.readFileSync(file).readFloatLE(4)).toBe(2);
    m.dispose();
    const big = allocateNative(4096);
    expect(big.kind).toBe('alloc');
    big.dispose();
  });

  it('SharedArrayBuffer storage works across threads without copies', () => {
    const t = Tensor.zeros([64], 'f32', { shared: true });
    expect(t.storage.kind === 'js' && t.storage.bytes.buffer instanceof SharedArrayBuffer).toBe(true);
    Tensor.from(new Float32Array(64).fill(2.5)).convertInto(t);
    expect((t.data() as Float32Array)[63]).toBe(2.5);
    const h = t.to('f16', { shared: true });
    expect(Array.from(h.toFloat32Array().slice(0, 2))).toEqual([2.5, 2.5]);
  });
});

describe('alignment', () => {
  it('memory kvant allocates is 64-byte aligned (JS and native storage)', async () => {
    const { native } = await import('../lib/native');
    for (const opts of [{}, { shared: true }, { native: true }]) {
      for (const n of [1, 3, 17, 1000]) {
        const t = Tensor.zeros([n], 'f32', opts);
        const [s, off] = t.rawArgs();
        expect(native().addressMod64(s, off, t.byteLength)).toBe(0);
      }
    }
  });
});
