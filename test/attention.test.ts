import { describe, expect, it } from 'vitest';
import { Tensor, backendInfo, getThreads, setThreads } from '../lib';
import { flashAttention, flashScratchBytes, mlaDecode } from '../lib/ops/attention';
import { isaLevels } from './helpers/checks';

const levels = isaLevels();

/** Naive f64 attention for one batch: q [Sq,Hq,D], k [Sk,Hkv,D], v [Sk,Hkv,Dv]. */
function naive(q: Float32Array, k: Float32Array, v: Float32Array, Sq: number, Sk: number, Hq: number, Hkv: number, D: number, Dv: number, scale: number, causal: boolean) {
  const out = new Float64Array(Sq * Hq * Dv);
  const lse = new Float64Array(Hq * Sq);
  for (let h = 0; h < Hq; h++) {
    const hk = Math.floor(h / (Hq / Hkv));
    for (let i = 0; i < Sq; i++) {
      const end = causal ? Math.min(Sk, i + Sk - Sq + 1) : Sk;
      if (end <= 0) {
        lse[h * Sq + i] = Infinity;
        continue;
      }
      const s: number[] = [];
      for (let j = 0; j < end; j++) {
        let d = 0;
        for (let t = 0; t < D; t++) d += q[(i * Hq + h) * D + t] * k[(j * Hkv + hk) * D + t];
        s.push(d * scale);
      }
      const m = Math.max(...s);
      const z = s.reduce((a, x) => a + Math.exp(x - m), 0);
      lse[h * Sq + i] = m + Math.log(z);
      for (let j = 0; j < end; j++) {
        const p = Math.exp(s[j] - m) / z;
        for (let t = 0; t < Dv; t++) out[(i * Hq + h) * Dv + t] += p * v[(j * Hkv + hk) * Dv + t];
      }
    }
  }
  return { out, lse };
}

function maxErr(got: Float32Array, want: Float64Array): number {
  let e = 0;
  for (let i = 0; i < want.length; i++) {
    if (want[i] === Infinity) e = Math.max(e, got[i] === Infinity ? 0 : Infinity);
    else e = Math.max(e, Math.abs(got[i] - want[i]));
  }
  return e;
}

describe.each(levels)('flashAttention at ISA level %s', (isa) => {
  // (B, Sq, Sk, Hq, Hkv, Dqk, Dv, causal): decode, chunked prefill, square, Sq > Sk (empty rows), GQA, Dqk != Dv
  it.each([
    [2, 1, 37, 4, 4, 64, 64, true],
    [1, 5, 70, 4, 2, 96, 64, true],
    [2, 33, 33, 2, 1, 64, 48, true],
    [1, 20, 7, 2, 2, 64, 64, true],
    [1, 17, 129, 6, 3, 192, 128, false],
    // several query blocks, partial row tiles (150 = 128 + 22), the diagonal cutting
    // K blocks at every offset, Dv with an 8-column tail (40), Sq > Sk over several blocks
    [1, 150, 200, 2, 1, 64, 40, true],
    [1, 130, 100, 2, 2, 72, 128, true],
    [1, 70, 70, 1, 1, 128, 128, false],
    // several 128-row query blocks: rows of a block that see none of a diagonal K block are
    // skipped, at 8-row granularity when the diagonal offset (Sk - Sq = 33) is not a multiple
    // of 8, and whole 64-row halves when Sq = Sk (270 = 2·128 + 14)
    [1, 300, 333, 2, 1, 64, 40, true],
    [1, 270, 270, 2, 2, 128, 128, true],
  ])('B=%i Sq=%i Sk=%i Hq=%i Hkv=%i Dqk=%i Dv=%i causal=%s matches f64', (B, Sq, Sk, Hq, Hkv, Dqk, Dv, causal) => {
    const q = Tensor.random([B, Sq, Hq, Dqk], 'f32', { seed: 1, dist: 'normal' });
    const k = Tensor.random([B, Sk, Hkv, Dqk], 'f32', { seed: 2, dist: 'normal' });
    const v = Tensor.random([B, Sk, Hkv, Dv], 'f32', { seed: 3, dist: 'normal' });
    const scale = 1.3 / Math.sqrt(Dqk);
    const { out, lse } = flashAttention(q, k, v, { causal, scale, isa });
    const o = out.data() as Float32Array;
    const l = lse.data() as Float32Array;
    for (let b = 0; b < B; b++) {
      const slice = (t: Tensor, n: number) => t.toFloat32Array().subarray(b * n, (b + 1) * n);
      const ref = naive(slice(q, Sq * Hq * Dqk), slice(k, Sk * Hkv * Dqk), slice(v, Sk * Hkv * Dv), Sq, Sk, Hq, Hkv, Dqk, Dv, scale, causal);
      // Outputs are convex combinations of v (|v| ~ 1): f32 accumulation keeps them within 1e-5.
      expect(maxErr(o.subarray(b * Sq * Hq * Dv, (b + 1) * Sq * Hq * Dv), ref.out)).toBeLessThan(1e-5);
      expect(maxErr(l.subarray(b * Hq * Sq, (b + 1) * Hq * Sq), ref.lse)).toBeLessThan(1e-4);
    }
  });
});

describe('flashAttention', () => {
  it('varlen batches equal the per-sequence results', () => {
    const lens = [3, 9, 1];
    const klens = [5, 9, 12];
    const cuQ = Int32Array.from([0, 3, 12, 13]);
    const cuK = Int32Array.from([0, 5, 14, 26]);
    const q = Tensor.random([13, 2, 64], 'f32', { seed: 4, dist: 'normal' });
    const k = Tensor.random([26, 1, 64], 'f32', { seed: 5, dist: 'normal' });
    const v = Tensor.random([26, 1, 32], 'f32', { seed: 6, dist: 'normal' });
    const { out, lse } = flashAttention(q, k, v, { causal: true, cuSeqlensQ: cuQ, cuSeqlensK: cuK });
    for (let b = 0; b < 3; b++) {
      const one = flashAttention(
        q.slice(cuQ[b], cuQ[b + 1]).reshape([1, lens[b], 2, 64]),
        k.slice(cuK[b], cuK[b + 1]).reshape([1, klens[b], 1, 64]),
        v.slice(cuK[b], cuK[b + 1]).reshape([1, klens[b], 1, 32]),
        { causal: true },
      );
      expect(Array.from(out.slice(cuQ[b], cuQ[b + 1]).data() as Float32Array)).toEqual(Array.from(one.out.data() as Float32Array));
      const l = lse.data() as Float32Array;
      const lo = one.lse.data() as Float32Array;
      for (let h = 0; h < 2; h++) for (let i = 0; i < lens[b]; i++) expect(l[h * 13 + cuQ[b] + i]).toBe(lo[h * lens[b] + i]);
    }
  });

  it('scratch memory is O(tile): it does not grow with Sk', () => {
    const run = (Sk: number) => {
      flashScratchBytes(true);
      flashAttention(Tensor.random([1, 16, 2, 64], 'f32'), Tensor.random([1, Sk, 2, 64], 'f32'), Tensor.random([1, Sk, 2, 64], 'f32'), { causal: false });
      return flashScratchBytes();
    };
    const small = run(64);
    expect(small).toBeGreaterThan(0);
    expect(run(4096)).toBe(small);
  });

  it('f16/bf16 inputs accumulate in f32 without overflow; results are thread-count invariant', () => {
    const q = Tensor.random([1, 9, 2, 64], 'f32', { seed: 7, dist: 'normal', std: 30 });
    const k = Tensor.random([1, 40, 2, 64], 'f32', { seed: 8, dist: 'normal', std: 30 });
    const v = Tensor.random([1, 40, 2, 64], 'f32', { seed: 9, dist: 'normal', std: 300 });
    const h = flashAttention(q.to('f16'), k.to('f16'), v.to('f16'), { causal: true });
    expect((h.out.data() as Float32Array).every(Number.isFinite)).toBe(true);
    const before = getThreads();
    const outs = [1, 2, 3].map((t) => {
      setThreads(t);
      return Buffer.from(flashAttention(q, k, v, { causal: true }).out.byteView());
    });
    setThreads(before);
    expect(outs[1].equals(outs[0]) && outs[2].equals(outs[0])).toBe(true);
    // Several query blocks per head (tasks of different lengths spread over the threads).
    const q2 = Tensor.random([1, 200, 3, 64], 'f32', { seed: 10, dist: 'normal' });
    const k2 = Tensor.random([1, 200, 3, 64], 'f32', { seed: 11, dist: 'normal' });
    const v2 = Tensor.random([1, 200, 3, 32], 'f32', { seed: 12, dist: 'normal' });
    const outs2 = [1, 2, 3].map((t) => {
      setThreads(t);
      const r = flashAttention(q2, k2, v2, { causal: true });
      return Buffer.concat([Buffer.from(r.out.byteView()), Buffer.from(r.lse.byteView())]);
    });
    setThreads(before);
    expect(outs2[1].equals(outs2[0]) && outs2[2].equals(outs2[0])).toBe(true);
  });

  it('bad input is a typed error', () => {
    const q = Tensor.zeros([1, 2, 3, 64]);
    const k = Tensor.zeros([1, 4, 2, 64]);
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return (e as { code?: string }).code;
      }
      return 'none';
    };
    expect(code(() => flashAttention(q, k, k))).toBe('KVANT_SHAPE'); // 3 heads over 2 kv heads
    expect(code(() => flashAttention(Tensor.zeros([1, 2, 2, 64], 'f16'), k, k))).toBe('KVANT_DTYPE');
    const q3 = Tensor.zeros([4, 2, 64]);
    const k3 = Tensor.zeros([4, 2, 64]);
    expect(code(() => flashAttention(q3, k3, k3, { cuSeqlensQ: Int32Array.from([0, 3, 2]), cuSeqlensK: Int32Array.from([0, 2, 4]) }))).toBe('KVANT_RANGE');
    expect(code(() => flashAttention(q3, k3, k3, { cuSeqlensQ: Int32Array.from([0, 5]), cuSeqlensK: Int32Array.from([0, 4]) }))).toBe('KVANT_RANGE');
  });
});

describe('MLA decode over a paged bf16 latent cache', () => {
  it('matches f64 absorbed attention, with split-KV over long sequences, any page order', () => {
    const B = 2;
    const H = 5;
    const L = 48;
    const R = 16;
    const D = L + R;
    const pageSize = 16;
    const lens = Int32Array.from([1100, 37]);
    const maxPages = Math.ceil(1100 / pageSize);
    const numPages = 200;
    const pool = Tensor.random([numPages, pageSize, D], 'bf16', { seed: 11, dist: 'normal' });
    // A shuffled page assignment: sequences do not own contiguous pages.
    const perm = Array.from({ length: numPages }, (_, i) => (i * 73 + 5) % numPages);
    const pageTable = new Int32Array(B * maxPages).fill(-1);
    let next = 0;
    for (let b = 0; b < B; b++) for (let p = 0; p < Math.ceil(lens[b] / pageSize); p++) pageTable[b * maxPages + p] = perm[next++];
    const q = Tensor.random([B, H, D], 'f32', { seed: 12, dist: 'normal' });
    const scale = 0.11;
    for (const isa of levels) {
      const { out, lse } = mlaDecode(q, { pool, pageSize, pageTable, maxPages, seqLens: lens }, { L, R, scale, isa });
      const rows = pool.toFloat32Array();
      const qs = q.toFloat32Array();
      const o = out.data() as Float32Array;
      const l = lse.data() as Float32Array;
      for (let b = 0; b < B; b++)
        for (let h = 0; h < H; h++) {
          const s: number[] = [];
          for (let t = 0; t < lens[b]; t++) {
            const base = (pageTable[b * maxPages + Math.floor(t / pageSize)] * pageSize + (t % pageSize)) * D;
            let d = 0;
            for (let i = 0; i < D; i++) d += qs[(b * H + h) * D + i] * rows[base + i];
            s.push(d * scale);
          }
          const m = Math.max(...s);
          const z = s.reduce((a, x) => a + Math.exp(x - m), 0);
          expect(Math.abs(l[b * H + h] - (m + Math.log(z)))).toBeLessThan(1e-4);
          for (let i = 0; i < L; i++) {
            let want = 0;
            for (let t = 0; t < lens[b]; t++) want += (Math.exp(s[t] - m) / z) * rows[(pageTable[b * maxPages + Math.floor(t / pageSize)] * pageSize + (t % pageSize)) * D + i];
            expect(Math.abs(o[(b * H + h) * L + i] - want)).toBeLessThan(1e-5);
          }
        }
    }
    // page table entries out of range are rejected, not read
    const badTable = Int32Array.from(pageTable);
    badTable[3] = numPages;
    expect(() => mlaDecode(q, { pool, pageSize, pageTable: badTable, maxPages, seqLens: lens }, { L, R, scale })).toThrow(expect.objectContaining({ code: 'KVANT_RANGE' }));
    // a zero latent width (nothing to attend with) or a fractional rope width is a shape error
    expect(() => mlaDecode(Tensor.zeros([B, H, R]), { pool, pageSize, pageTable, maxPages, seqLens: lens }, { L: 0, R, scale })).toThrow(expect.objectContaining({ code: 'KVANT_SHAPE' }));
    expect(() => mlaDecode(q, { pool, pageSize, pageTable, maxPages, seqLens: lens }, { L: L + 0.5, R: R - 0.5, scale })).toThrow(expect.objectContaining({ code: 'KVANT_SHAPE' }));
  });
});
