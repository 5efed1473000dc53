// The standard (non-MLA) paged K/V cache on the device (lib/cuda/kv-cache.ts) against the CPU
// PagedKVCache: the same bytes in the pages, the same dequantized rows, and paged decode
// attention (GQA, partial pages, an empty sequence, several splits) within a derived bound of an
// f64 attention over the stored values and of the CPU decode at the scalar and AVX2 levels, for
// every cache type. Runs on the emulated addon here (KVANT_TEST_CUDA=1: the real one).
import { describe, expect, it } from 'vitest';
import { Tensor, cuda } from '../lib';
import { PagedKVCache } from '../lib/kv/paged-cache';
import { KV_CACHE_TYPES, KV_DEFAULT_HADAMARD, type KvCacheType, isQuantized } from '../lib/kv/format';
import type { IsaLevel } from '../lib/ops/small';
import { cudaNative } from '../lib/cuda/native';
import { useCudaAddon } from './helpers/cuda-addon';

useCudaAddon();
const U = 2 ** -24;

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? `uncoded: ${(e as Error).message}`;
  }
  return 'no error';
}

function rand(n: number, seed: number): Float32Array {
  let s = (seed * 2654435761) >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = -1 + (2 * s) / 2 ** 32;
  }
  return out;
}

// In-place unnormalized 32-point Walsh-Hadamard transform of each group of 32 (H·H = 32·I).
function hadamard(x: Float64Array): void {
  for (let g = 0; g < x.length; g += 32)
    for (let h = 1; h < 32; h <<= 1)
      for (let i = 0; i < 32; i++)
        if (!(i & h)) {
          const a = x[g + i], b = x[g + i + h];
          x[g + i] = a + b;
          x[g + i + h] = a - b;
        }
}

function sameBits(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

interface Case {
  type: KvCacheType;
  hadamard: boolean;
  kvHeads: number;
  Hq: number;
  D: number;
  pageSize: number;
  lens: number[];
  keysPerSplit: number;
}

function runCase(c: Case): void {
  const { type, kvHeads: Hkv, Hq, D, pageSize, lens } = c;
  const group = Hq / Hkv;
  const layers = 2, layer = 1; // layer 1: a non-zero layer offset inside every page
  const opts = { layers, kvHeads: Hkv, headDim: D, type, pageSize, hadamard: c.hadamard };
  const cpu = new PagedKVCache(opts);
  const dev = new cuda.DevicePagedKVCache({ ...opts, budgetBytes: 64 * cpu.bytesPerToken * pageSize });
  try {
    const seqsC = lens.map(() => cpu.open(0));
    const seqsD = lens.map(() => dev.open(0));
    expect(seqsD).toEqual(seqsC);
    // Two interleaved appends per sequence, so a sequence's pages are not consecutive.
    const kv = lens.map((T, b) => ({ k: rand(T * Hkv * D, 10 + b), v: rand(T * Hkv * D, 50 + b) }));
    for (const half of [0, 1])
      lens.forEach((T, b) => {
        const a = half ? T >> 1 : 0, e = half ? T : T >> 1;
        const k = Tensor.from(kv[b].k.slice(a * Hkv * D, e * Hkv * D), { shape: [e - a, Hkv, D] });
        const v = Tensor.from(kv[b].v.slice(a * Hkv * D, e * Hkv * D), { shape: [e - a, Hkv, D] });
        cpu.append(seqsC[b], layer, k, v);
        const dk = cuda.DeviceTensor.fromHost(k), dv = cuda.DeviceTensor.fromHost(v);
        dev.append(seqsD[b], layer, dk, dv);
        dk.free();
        dv.free();
      });
    lens.forEach((T, b) => expect(dev.length(seqsD[b], layer)).toBe(T));
    expect(dev.usedBytes()).toBe((cpu as unknown as { pool: { usedPages: number } }).pool.usedPages * cpu.bytesPerToken * pageSize);
    const devBytes = dev.poolTensor.toHost().data() as Uint8Array;
    const cpuBytes = (cpu as unknown as { pool: { storage(): Tensor } }).pool.storage().data() as Uint8Array;
    checkWrittenBytes(c, cpu, dev, seqsC, layer, devBytes, cpuBytes);
    lens.forEach((T, b) => {
      if (T < 3) return;
      const g = dev.gather(seqsD[b], layer, 1, T - 1);
      const want = cpu.gather(seqsC[b], layer, 1, T - 1);
      expect(sameBits(g.k.toHost().data(), want.k.data()), `${type} gather k`).toBe(true);
      expect(sameBits(g.v.toHost().data(), want.v.data()), `${type} gather v`).toBe(true);
      g.k.free();
      g.v.free();
    });

    // Decode.
    const B = lens.length;
    const qh = rand(B * Hq * D, 99);
    const scale = D ** -0.5;
    const q = cuda.DeviceTensor.fromHost(Tensor.from(qh, { shape: [B, Hq, D] }));
    const r = dev.decode(layer, seqsD, q, scale, { keysPerSplit: c.keysPerSplit });
    const out = r.out.toHost().data() as Float32Array;
    const lse = r.lse.toHost().data() as Float32Array;
    q.free();
    r.out.free();
    r.lse.free();
    const rot = c.hadamard && isQuantized(type);
    const tolO = new Float64Array(B * Hq * D), wantO = new Float64Array(B * Hq * D), slack = new Float64Array(B * Hq * D);
    // Bounds as test/simt/kv_cache_test.cc derives them (first order, doubled), in the stored
    // domain y (y = H·x for rotated groups, q' = H·q/32): the score error
    // E = (D+1)·u·scale·Σ|q'y| (f32 dot) + scale·Σ_g 5u·‖q_g‖₁/32·‖y_g‖₁ (f32 rotation of q) plus
    // exp's and the running max's; then the output tolerance
    // 2·(2E + (4·tiles + 18 + 8·splits)·u)·max_d Σp|y_d| (+ 6u·that for the output rotation).
    // The CPU's integer score path (one query head per kv head, q8 / q4 keys) moves each score by
    // at most δ = scale·Σ_g (max|q'_g|/254)·‖y_g‖₁, so its output by (e^{2δ} − 1)·max Σp|y|.
    const cpuInt = group === 1 && (type === 'q8' || type === 'q4');
    lens.forEach((T, b) => {
      const g = T ? cpu.gather(seqsC[b], layer, 0, T) : undefined;
      const kx = g?.k.data() as Float32Array, vx = g?.v.data() as Float32Array;
      for (let h = 0; h < Hq; h++) {
        const hk = Math.floor(h / group);
        const o = (b * Hq + h) * D;
        if (T === 0) {
          expect(Number.isFinite(lse[b * Hq + h])).toBe(false);
          expect(lse[b * Hq + h]).toBeGreaterThan(0);
          for (let d = 0; d < D; d++) expect(out[o + d]).toBe(0);
          continue;
        }
        const qp = Float64Array.from(qh.subarray(o, o + D));
        const qabs = new Float64Array(D / 32 + 1);
        if (rot) {
          for (let i = 0; i < D; i++) qabs[i >> 5] += Math.abs(qp[i]);
          hadamard(qp);
          for (let i = 0; i < D; i++) qp[i] /= 32;
        }
        const s = new Float64Array(T), ds = new Float64Array(T);
        const vy: Float64Array[] = [];
        let mx = -Infinity, delta = 0;
        for (let t = 0; t < T; t++) {
          const ky = Float64Array.from(kx.subarray((t * Hkv + hk) * D, (t * Hkv + hk + 1) * D));
          const v = Float64Array.from(vx.subarray((t * Hkv + hk) * D, (t * Hkv + hk + 1) * D));
          if (rot) {
            hadamard(ky);
            hadamard(v);
          }
          vy.push(v);
          let dot = 0, mag = 0, rt = 0, intSlack = 0;
          for (let d = 0; d < D; d++) (dot += qp[d] * ky[d]), (mag += Math.abs(qp[d] * ky[d]));
          for (let gi = 0; isQuantized(type) && gi < D / 32; gi++) {
            let yl1 = 0, qm = 0;
            for (let i = 0; i < 32; i++) (yl1 += Math.abs(ky[32 * gi + i])), (qm = Math.max(qm, Math.abs(qp[32 * gi + i])));
            if (rot) rt += ((5 * U * qabs[gi]) / 32) * yl1;
            intSlack += (qm / 254) * yl1;
          }
          s[t] = dot * scale;
          ds[t] = (D + 1) * U * scale * mag + scale * rt * 1.01;
          delta = Math.max(delta, scale * intSlack);
          mx = Math.max(mx, s[t]);
        }
        let z = 0, E = 0;
        for (let t = 0; t < T; t++) (z += Math.exp(s[t] - mx)), (E = Math.max(E, ds[t] + Math.abs(s[t] - mx) * U + 2 * U));
        const oy = new Float64Array(D), mag = new Float64Array(D);
        for (let t = 0; t < T; t++) {
          const p = Math.exp(s[t] - mx) / z;
          for (let d = 0; d < D; d++) (oy[d] += p * vy[t][d]), (mag[d] += p * Math.abs(vy[t][d]));
        }
        if (rot) {
          hadamard(oy);
          for (let d = 0; d < D; d++) oy[d] /= 32;
        }
        const splits = Math.max(1, Math.ceil(T / c.keysPerSplit));
        const tiles = Math.ceil(T / 32) + splits;
        const mm = Math.max(...mag);
        const tol = 2 * (2 * E + (4 * tiles + 18 + 8 * splits) * U) * mm + (rot ? 6 * U * mm : 0);
        for (let d = 0; d < D; d++) {
          wantO[o + d] = oy[d];
          tolO[o + d] = tol;
          if (cpuInt) slack[o + d] = Math.expm1(2 * delta) * mm;
        }
        const wantL = mx + Math.log(z);
        const tolL = 2 * (E + (2 * tiles + 8 + 4 * splits) * U + U * Math.abs(wantL));
        expect(Math.abs(lse[b * Hq + h] - wantL), `${type} lse b${b} h${h}`).toBeLessThanOrEqual(tolL);
      }
    });
    let worst = 0;
    for (let i = 0; i < out.length; i++) {
      expect(Number.isFinite(out[i]), `${type} out[${i}] finite`).toBe(true);
      worst = Math.max(worst, Math.abs(out[i] - wantO[i]) / (tolO[i] || 1));
    }
    expect(worst, `${type} decode vs f64 (worst error / bound)`).toBeLessThanOrEqual(1);
    for (const isa of ['scalar', 'avx2'] as IsaLevel[]) {
      const ref = new PagedKVCache({ ...opts, isa });
      // Same rows through the CPU at this level (the writer is exact, so the bytes are the same).
      const seqs = lens.map(() => ref.open(0));
      lens.forEach((T, b) => ref.append(seqs[b], layer, Tensor.from(kv[b].k, { shape: [T, Hkv, D] }), Tensor.from(kv[b].v, { shape: [T, Hkv, D] })));
      const got = ref.decode(layer, seqs, Tensor.from(qh, { shape: [B, Hq, D] }), scale).out.data() as Float32Array;
      let w = 0;
      for (let i = 0; i < out.length; i++) w = Math.max(w, Math.abs(out[i] - got[i]) / (2 * tolO[i] + slack[i] || 1));
      expect(w, `${type} device vs CPU ${isa}`).toBeLessThanOrEqual(1);
      ref.dispose();
    }
  } finally {
    dev.dispose();
    cpu.dispose();
  }
}

// Every written slot's bytes (K and V of every head) equal the CPU cache's bytes.
function checkWrittenBytes(c: Case, cpu: PagedKVCache, dev: cuda.DevicePagedKVCache, seqs: number[], layer: number, devBytes: Uint8Array, cpuBytes: Uint8Array): void {
  const table = (cpu as unknown as { seqs: { get(s: number): { pages: number[] } } }).seqs;
  const layerBytes = (c.pageSize * cpu.bytesPerToken) / cpu.layers;
  const entry = dev.rowBytes / c.kvHeads; // [K | V] of one head
  let checked = 0;
  seqs.forEach((s, b) => {
    for (let t = 0; t < c.lens[b]; t++) {
      const page = table.get(s).pages[Math.floor(t / c.pageSize)];
      for (let h = 0; h < c.kvHeads; h++) {
        const o = page * dev.pageBytes + layer * layerBytes + h * c.pageSize * entry + (t % c.pageSize) * entry;
        for (let i = 0; i < entry; i++) if (devBytes[o + i] !== cpuBytes[o + i]) throw new Error(`${c.type}: byte ${i} of seq ${b} row ${t} head ${h} differs`);
        checked += entry;
      }
    }
  });
  expect(checked).toBe(c.lens.reduce((a, x) => a + x, 0) * dev.rowBytes);
}

describe('DevicePagedKVCache: the standard paged K/V cache on the device vs the CPU PagedKVCache', () => {
  for (const type of KV_CACHE_TYPES) {
    it(`${type}: page bytes, gather and paged decode (GQA 3, D 64, partial pages, an empty sequence, splits of 64)`, () => {
      runCase({ type, hadamard: KV_DEFAULT_HADAMARD[type], kvHeads: 2, Hq: 6, D: 64, pageSize: 16, lens: [45, 0, 1, 130], keysPerSplit: 64 });
    });
    it(`${type}: D 128, one query head per kv head (the CPU's integer score path), 600 rows over two default splits`, () => {
      runCase({ type, hadamard: KV_DEFAULT_HADAMARD[type], kvHeads: 2, Hq: 2, D: 128, pageSize: 64, lens: [600, 33], keysPerSplit: 512 });
    });
  }
  it('q4 and q8 without the Hadamard rotation', () => {
    for (const type of ['q4', 'q8'] as const) runCase({ type, hadamard: false, kvHeads: 1, Hq: 4, D: 64, pageSize: 32, lens: [70, 5], keysPerSplit: 32 });
  });

  it('bad inputs end in the documented codes, and a refused append leaves the length unchanged', () => {
    expect(code(() => new cuda.DevicePagedKVCache({ layers: 1, kvHeads: 2, headDim: 64, type: 'q4', budgetBytes: 10 }))).toBe('KVANT_OOM');
    expect(code(() => new cuda.DevicePagedKVCache({ layers: 1, kvHeads: 2, headDim: 40, type: 'q4', budgetBytes: 1 << 20 }))).toBe('KVANT_SHAPE');
    expect(code(() => new cuda.DevicePagedKVCache({ layers: 1, kvHeads: 2, headDim: 64, type: 'q5' as KvCacheType, budgetBytes: 1 << 20 }))).toBe('KVANT_DTYPE');
    const c = new cuda.DevicePagedKVCache({ layers: 2, kvHeads: 2, headDim: 64, type: 'q8', pageSize: 16, budgetBytes: 1 << 20 });
    const s = c.open(0);
    const good = cuda.DeviceTensor.fromHost(Tensor.from(rand(3 * 2 * 64, 1), { shape: [3, 2, 64] }));
    const bad = rand(3 * 2 * 64, 2);
    bad[2 * 64 + 5] = NaN; // row 1
    const nan = cuda.DeviceTensor.fromHost(Tensor.from(bad, { shape: [3, 2, 64] }));
    const wrongShape = cuda.DeviceTensor.fromHost(Tensor.from(rand(3 * 64, 3), { shape: [3, 1, 64] }));
    const i32 = cuda.DeviceTensor.zeros([3, 2, 64], 'i32');
    try {
      expect(code(() => c.append(s, 0, good, wrongShape))).toBe('KVANT_SHAPE');
      expect(code(() => c.append(s, 0, good, i32))).toBe('KVANT_DTYPE');
      expect(code(() => c.append(s, 0, Tensor.from(rand(3 * 2 * 64, 1), { shape: [3, 2, 64] }) as never, good))).toBe('KVANT_DTYPE');
      expect(code(() => c.append(s, 2, good, good))).toBe('KVANT_RANGE');
      expect(code(() => c.append(s, 0, good, nan))).toBe('KVANT_RANGE');
      expect(c.length(s, 0)).toBe(0);
      c.append(s, 0, good, good);
      expect(c.length(s, 0)).toBe(3);
      const q = cuda.DeviceTensor.fromHost(Tensor.from(rand(3 * 64, 4), { shape: [1, 3, 64] }));
      expect(code(() => c.decode(0, [s], q))).toBe('KVANT_SHAPE'); // 3 query heads over 2 kv heads
      q.free();
      const q2 = cuda.DeviceTensor.zeros([1, 4, 64], 'i32');
      expect(code(() => c.decode(0, [s], q2))).toBe('KVANT_DTYPE');
      q2.free();
      const q3 = cuda.DeviceTensor.fromHost(Tensor.from(rand(4 * 64, 4), { shape: [1, 4, 64] }));
      expect(code(() => c.decode(0, [], q3))).toBe('KVANT_SHAPE');
      expect(code(() => c.decode(0, [s], q3, NaN))).toBe('KVANT_RANGE');
      expect(code(() => c.decode(0, [s], q3, 0.1, { keysPerSplit: 48 }))).toBe('KVANT_SHAPE');
      expect(code(() => c.decode(0, [s + 100], q3))).toBe('KVANT_RANGE');
      expect(code(() => c.gather(s, 0, 0, 4))).toBe('KVANT_RANGE');
      // The raw binding re-checks what TS checked: a page index outside the pool, a length beyond the table.
      const nat = cudaNative();
      const pool = c.poolTensor;
      const pages = [...pool.rawArgs(), 16, c.pageBytes, 0, 2, 2, 64, true] as const;
      const out = cuda.DeviceTensor.empty([1, 4, 64], 'f32');
      const badPt = cuda.DeviceTensor.fromHost(Int32Array.of(c.numPages + 3));
      const lens = cuda.DeviceTensor.fromHost(Int32Array.of(3));
      const longLens = cuda.DeviceTensor.fromHost(Int32Array.of(17));
      expect(code(() => nat.kvHeadsPagedDecode(...q3.rawArgs(), ...out.rawArgs(), null, 0, 0, 1, 4, 0.1, ...pages, ...badPt.rawArgs(), 1, ...lens.rawArgs(), 512, undefined))).toBe('KVANT_RANGE');
      expect(code(() => nat.kvHeadsPagedDecode(...q3.rawArgs(), ...out.rawArgs(), null, 0, 0, 1, 4, 0.1, ...pages, ...badPt.rawArgs(), 1, ...longLens.rawArgs(), 512, undefined))).toBe('KVANT_RANGE');
      expect(code(() => nat.kvHeadsPagedDecode(...q3.rawArgs(), ...out.rawArgs(), null, 0, 0, 1, 3, 0.1, ...pages, ...badPt.rawArgs(), 1, ...lens.rawArgs(), 512, undefined))).toBe('KVANT_SHAPE');
      const badSlots = cuda.DeviceTensor.fromHost(Int32Array.of(0, -1, 2));
      expect(code(() => nat.kvHeadsAppend(...pages, ...good.rawArgs(), ...good.rawArgs(), 3, ...badSlots.rawArgs(), undefined))).toBe('KVANT_RANGE');
      expect(code(() => nat.kvHeadsAppend(...pages, ...good.rawArgs(), ...good.rawArgs(), 2, ...badSlots.rawArgs(), undefined))).toBe('KVANT_SHAPE');
      for (const t of [out, badPt, lens, longLens, badSlots]) t.free();
      q3.free();
      // headDim without a decode instantiation: append works, decode is KVANT_SHAPE.
      const c96 = new cuda.DevicePagedKVCache({ layers: 1, kvHeads: 1, headDim: 96, type: 'bf16', budgetBytes: 1 << 20 });
      const s96 = c96.open(0);
      const x96 = cuda.DeviceTensor.fromHost(Tensor.from(rand(96, 5), { shape: [1, 1, 96] }));
      c96.append(s96, 0, x96, x96);
      expect(code(() => c96.decode(0, [s96], x96))).toBe('KVANT_SHAPE');
      x96.free();
      c96.dispose();
    } finally {
      for (const t of [good, nan, wrongShape, i32]) t.free();
      c.dispose();
    }
    expect(code(() => c.gather(0, 0, 0, 0))).toBe('KVANT_RANGE');
  });
});
