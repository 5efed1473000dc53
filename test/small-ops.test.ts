import { describe, expect, it } from 'vitest';
import { KvantError, Tensor, backendInfo, setThreads, getThreads } from '../lib';
import { addRmsNorm, argmax, axpyInPlace, embedding, rmsNorm, ropeInPlace, routeTopK, siluGate, softmaxInPlace } from '../lib/ops/small';
import { parseConfig } from '../lib/models/deepseek-v2/config';
import { routeRef } from './helpers/reference-forward';
import { LITE } from './helpers/configs';
import { isaLevels } from './helpers/checks';

const levels = isaLevels();

const rand = (shape: number[], seed: number, std = 1) => Tensor.random(shape, 'f32', { seed, dist: 'normal', std });
const poisoned = (shape: number[]) => Tensor.from(new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(NaN), { shape });
const f64 = (t: Tensor) => Float64Array.from(t.toFloat32Array());

function maxRelErr(got: Float32Array, want: Float64Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    if (Number.isNaN(got[i])) return Infinity;
    num = Math.max(num, Math.abs(got[i] - want[i]));
    den = Math.max(den, Math.abs(want[i]));
  }
  return num / Math.max(den, 1e-30);
}

/** RMSNorm in f64 of rows [rows, n]: x · w / sqrt(mean(x²) + eps). */
function rmsNormF64(xs: Float64Array, ws: Float64Array, rows: number, n: number, eps: number): Float64Array {
  const want = new Float64Array(rows * n);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < n; i++) ss += xs[r * n + i] ** 2;
    const inv = 1 / Math.sqrt(ss / n + eps);
    for (let i = 0; i < n; i++) want[r * n + i] = xs[r * n + i] * inv * ws[i];
  }
  return want;
}

describe.each(levels)('small ops at ISA level %s', (isa) => {
  it('rmsNorm matches f64 on awkward widths (relative error < 1e-6)', () => {
    for (const n of [1, 7, 33, 191, 2048]) {
      const rows = 5;
      const x = rand([rows, n], n, 3);
      const w = Tensor.random([n], 'bf16', { seed: n + 1, low: 0.5, high: 1.5 });
      const y = poisoned([rows, n]);
      rmsNorm(x, w, 1e-6, y, isa);
      const want = rmsNormF64(f64(x), f64(w), rows, n, 1e-6);
      // f32 products of three factors: a few ulp (2^-24 each).
      expect(maxRelErr(y.data() as Float32Array, want)).toBeLessThan(1e-6);
    }
  });

  it('addRmsNorm is axpy(1) then rmsNorm bit for bit, and matches f64', () => {
    const bytes = (t: Tensor) => Buffer.from(t.toFloat32Array().buffer);
    for (const n of [1, 7, 33, 191, 2048]) {
      const rows = 3;
      const x0 = rand([rows, n], 40 + n, 2);
      const d = rand([rows, n], 50 + n);
      for (const wd of ['f32', 'bf16'] as const) {
        const w = Tensor.random([n], wd, { seed: n + 2, low: 0.5, high: 1.5 });
        const x = Tensor.from(x0.toFloat32Array(), { shape: [rows, n] });
        const y = addRmsNorm(x, d, w, 1e-6, poisoned([rows, n]), isa);
        const xr = Tensor.from(x0.toFloat32Array(), { shape: [rows, n] });
        axpyInPlace(1, d, xr, isa);
        expect(bytes(x).equals(bytes(xr))).toBe(true);
        expect(bytes(y).equals(bytes(rmsNorm(xr, w, 1e-6, undefined, isa)))).toBe(true);
        // Against f64 from the f32 sum (one rounding, as the kernel's): the rmsNorm bound.
        expect(maxRelErr(y.data() as Float32Array, rmsNormF64(f64(xr), f64(w), rows, n, 1e-6))).toBeLessThan(1e-6);
        const x64 = f64(x0);
        const d64 = f64(d);
        expect(maxRelErr(x.data() as Float32Array, x64.map((v, i) => v + d64[i]))).toBeLessThan(1e-7); // one f32 rounding
      }
    }
  });

  it('siluGate (separate and fused gate|up) matches f64 (relative error < 2e-6)', () => {
    for (const n of [1, 15, 17, 1408]) {
      const g = rand([3, n], 10 + n, 4);
      const u = rand([3, n], 20 + n);
      const y = poisoned([3, n]);
      siluGate(g, u, y, isa);
      const gs = f64(g);
      const us = f64(u);
      const want = gs.map((v, i) => (v / (1 + Math.exp(-v))) * us[i]);
      expect(maxRelErr(y.data() as Float32Array, want)).toBeLessThan(2e-6);
      const fused = Tensor.zeros([3, 2 * n], 'f32');
      const fd = fused.data() as Float32Array;
      for (let r = 0; r < 3; r++) {
        fd.set((g.data() as Float32Array).subarray(r * n, (r + 1) * n), r * 2 * n);
        fd.set((u.data() as Float32Array).subarray(r * n, (r + 1) * n), r * 2 * n + n);
      }
      const y2 = siluGate(fused, undefined, undefined, isa);
      expect(Array.from(y2.data() as Float32Array)).toEqual(Array.from(y.data() as Float32Array));
    }
  });

  it('softmax matches f64, handles -inf and all -inf rows', () => {
    const n = 67;
    const x = rand([4, n], 5, 6);
    const xd = x.data() as Float32Array;
    xd[3] = -Infinity;
    for (let i = 0; i < n; i++) xd[3 * n + i] = -Infinity;
    const xs = f64(x);
    softmaxInPlace(x, isa);
    const got = x.data() as Float32Array;
    for (let r = 0; r < 3; r++) {
      const row = xs.subarray(r * n, (r + 1) * n);
      const m = Math.max(...row);
      const z = row.reduce((a, v) => a + Math.exp(v - m), 0);
      const want = row.map((v) => Math.exp(v - m) / z);
      expect(maxRelErr(got.subarray(r * n, (r + 1) * n), want)).toBeLessThan(2e-6);
    }
    expect(got[3]).toBe(0);
    expect(Array.from(got.subarray(3 * n)).every((v) => v === 0)).toBe(true);
  });

  it('axpy matches f64', () => {
    const x = rand([100_003], 1);
    const y = rand([100_003], 2);
    const xs = f64(x);
    const want = f64(y).map((v, i) => v + 0.37 * xs[i]);
    axpyInPlace(0.37, x, y, isa);
    expect(maxRelErr(y.data() as Float32Array, want)).toBeLessThan(1e-6);
  });
});

describe('small ops', () => {
  it('rope rotates adjacent pairs by pos * invFreq, for every head, leaving other dims alone', () => {
    const rows = 3;
    const heads = 4;
    const stride = 24;
    const x = rand([rows, heads, stride], 9);
    const before = f64(x);
    const invFreq = Float32Array.from([1, 0.3, 0.01, 1e-4, 3e-6]);
    const positions = Int32Array.from([0, 17, 163_000]);
    ropeInPlace(x, { positions, invFreq, offset: 12, amplitude: 1.25 });
    const got = x.data() as Float32Array;
    for (let r = 0; r < rows; r++)
      for (let h = 0; h < heads; h++)
        for (let d = 0; d < stride; d++) {
          const i = (r * heads + h) * stride + d;
          const p = Math.floor((d - 12) / 2);
          if (d < 12 || d >= 22) {
            expect(got[i]).toBe(Math.fround(before[i]));
            continue;
          }
          const ang = positions[r] * invFreq[p];
          const a = before[i - ((d - 12) % 2)];
          const b = before[i - ((d - 12) % 2) + 1];
          const want = (d - 12) % 2 === 0 ? 1.25 * (a * Math.cos(ang) - b * Math.sin(ang)) : 1.25 * (a * Math.sin(ang) + b * Math.cos(ang));
          expect(Math.abs(got[i] - want)).toBeLessThan(1e-5 * (1 + Math.abs(want)));
        }
  });

  it('routing matches the f64 reference for greedy and group-limited top-k (ties to the lower id)', () => {
    const E = 64;
    const logits = rand([50, E], 77, 2);
    for (const cfg of [
      parseConfig(LITE),
      parseConfig({ ...LITE, topk_method: 'group_limited_greedy', n_group: 8, topk_group: 3, routed_scaling_factor: 16 }),
      parseConfig({ ...LITE, norm_topk_prob: true }),
    ]) {
      const { idx, weights } = routeTopK(logits, { k: cfg.numExpertsPerTok, method: cfg.topkMethod, nGroup: cfg.nGroup, topkGroup: cfg.topkGroup,
        normTopkProb: cfg.normTopkProb, routedScalingFactor: cfg.routedScalingFactor });
      const ids = idx.data() as Int32Array;
      const ws = weights.data() as Float32Array;
      const ls = f64(logits);
      for (let r = 0; r < 50; r++) {
        const ref = routeRef(cfg, ls.subarray(r * E, (r + 1) * E));
        expect(Array.from(ids.subarray(r * 6, r * 6 + 6))).toEqual(ref.idx);
        ref.w.forEach((v, j) => expect(Math.abs(ws[r * 6 + j] - v)).toBeLessThan(1e-6 * Math.max(1, v)));
      }
    }
    // exact ties: equal logits pick the lowest ids
    const tie = Tensor.from(new Float32Array(8).fill(1), { shape: [1, 8] });
    expect(Array.from(routeTopK(tie, { k: 3, method: 'greedy' }).idx.data() as Int32Array)).toEqual([0, 1, 2]);
  });

  it('embedding gathers rows of f32/f16/bf16 tables and rejects out-of-range ids', () => {
    const table = Tensor.random([10, 6], 'f32', { seed: 4 });
    for (const dt of ['f32', 'f16', 'bf16'] as const) {
      const t = table.to(dt);
      const out = embedding(t, Int32Array.from([9, 0, 3]));
      const full = t.toFloat32Array();
      expect(Array.from(out.data() as Float32Array)).toEqual([...full.subarray(54, 60), ...full.subarray(0, 6), ...full.subarray(18, 24)]);
    }
    expect(() => embedding(table, Int32Array.from([1, 10]))).toThrow(expect.objectContaining({ code: 'KVANT_RANGE', message: expect.stringContaining('ids[1] = 10') }));
    expect(() => embedding(table, Int32Array.from([-1]))).toThrow(KvantError);
  });

  it('argmax: ties to the lower index, NaN never chosen', () => {
    const x = Tensor.from([1, 3, 3, NaN, 0, NaN, -1, -1], { shape: [2, 4] });
    expect(Array.from(argmax(x))).toEqual([1, 0]);
    expect(Array.from(argmax(Tensor.from([NaN, NaN], { shape: [1, 2] })))).toEqual([-1]);
  });

  it('results do not depend on the thread count', () => {
    const before = getThreads();
    const x = rand([257, 333], 3);
    const w = rand([333], 4);
    const outs: Float32Array[] = [];
    for (const t of [1, 2, 3]) {
      setThreads(t);
      outs.push(rmsNorm(x, w, 1e-6).data() as Float32Array);
      outs.push(siluGate(x, x).data() as Float32Array);
    }
    setThreads(before);
    const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    for (let i = 2; i < outs.length; i++) expect(bytes(outs[i]).equals(bytes(outs[i % 2]))).toBe(true);
  });

  it('bad input is a typed error', () => {
    const x = rand([2, 8], 1);
    expect(() => rmsNorm(x, rand([7], 2), 1e-6)).toThrow(expect.objectContaining({ code: 'KVANT_SHAPE' }));
    expect(() => rmsNorm(Tensor.zeros([2, 8], 'f16'), rand([8], 2), 1e-6)).toThrow(expect.objectContaining({ code: 'KVANT_DTYPE' }));
    expect(() => siluGate(rand([2, 7], 1))).toThrow(expect.objectContaining({ code: 'KVANT_SHAPE' }));
    expect(() => routeTopK(rand([2, 8], 1), { k: 9, method: 'greedy' })).toThrow(expect.objectContaining({ code: 'KVANT_RANGE' }));
    expect(() => routeTopK(rand([2, 8], 1), { k: 2, method: 'group_limited_greedy', nGroup: 3 })).toThrow(expect.objectContaining({ code: 'KVANT_RANGE' }));
    expect(() => ropeInPlace(rand([2, 2, 8], 1), { positions: Int32Array.from([0, 1]), invFreq: new Float32Array(5), offset: 0 })).toThrow(
      expect.objectContaining({ code: 'KVANT_SHAPE' }),
    );
    expect(() => axpyInPlace(1, x, x.slice(0, 1))).toThrow(expect.objectContaining({ code: 'KVANT_SHAPE' }));
    expect(() => rmsNorm(x, rand([8], 2), 1e-6, undefined, 'neon' as 'scalar')).toThrow(expect.objectContaining({ code: 'KVANT_BACKEND' }));
    const d = rand([2, 8], 3);
    expect(() => addRmsNorm(x, rand([2, 7], 3), rand([8], 2), 1e-6)).toThrow(expect.objectContaining({ code: 'KVANT_SHAPE' }));
    expect(() => addRmsNorm(x, d, rand([7], 2), 1e-6)).toThrow(expect.objectContaining({ code: 'KVANT_SHAPE' }));
    expect(() => addRmsNorm(x, Tensor.zeros([2, 8], 'f16'), rand([8], 2), 1e-6)).toThrow(expect.objectContaining({ code: 'KVANT_DTYPE' }));
    expect(() => addRmsNorm(x, d, rand([8], 2), -1)).toThrow(expect.objectContaining({ code: 'KVANT_RANGE' }));
    expect(() => addRmsNorm(x, d, rand([8], 2), 1e-6, x)).toThrow(expect.objectContaining({ code: 'KVANT_RANGE' })); // out aliases x
    expect(() => addRmsNorm(x, x, rand([8], 2), 1e-6)).toThrow(expect.objectContaining({ code: 'KVANT_RANGE' })); // delta aliases x
  });
});
