import { describe, expect, it } from 'vitest';
import { Tensor, linearHeads, setThreads, getThreads } from '../lib';
import { linear } from '../lib/ops/linear';
import { isaLevels } from './helpers/checks';

const levels = isaLevels();
const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** Head h's weight rows wRow0..wRow0+n of w [H, Nw, K] as a standalone [n, K] tensor (a copy). */
function headWeight(w: Tensor, h: number, wRow0: number, n: number): Tensor {
  const [, Nw, K] = w.shape;
  const flat = w.reshape([w.shape[0] * Nw, K]);
  return flat.slice(h * Nw + wRow0, h * Nw + wRow0 + n);
}

describe.each(levels)('linearHeads at ISA level %s', (isa) => {
  // Awkward sizes: K, n and the slice offsets not multiples of any tile; M in 1..9 and 37.
  it.each([
    [1, 3, 5, 7, 2, 1, 9, 3],
    [4, 16, 13, 29, 0, 3, 33, 0],
    [9, 2, 1, 33, 5, 0, 17, 4],
    [37, 5, 40, 20, 1, 7, 6, 2],
  ])('M=%i H=%i K=%i n=%i xStart=%i wRow0=%i S-pad=%i outStart=%i: equals per-head linear bit for bit and f64 within f32 bounds', (M, H, K, n, xStart, wRow0, pad, outStart) => {
    for (const dt of ['f32', 'f16', 'bf16'] as const) {
      const S = xStart + K + pad;
      const Nw = wRow0 + n + 2;
      const T = outStart + n + 3;
      const x = Tensor.random([M, H, S], 'f32', { seed: M * 31 + H, dist: 'normal' });
      const w = Tensor.random([H, Nw, K], dt, { seed: K * 17 + n, dist: 'normal' });
      const out = Tensor.from(new Float32Array(M * H * T).fill(NaN), { shape: [M, H, T] });
      linearHeads(x, w, { xStart, wRow0, n, out, outStart, isa });
      const od = out.data() as Float32Array;
      const xs = x.toFloat32Array();
      const ws = w.toFloat32Array();
      for (let h = 0; h < H; h++) {
        // the same head through the ordinary linear, on a compact copy of its input slice
        const xh = new Float32Array(M * K);
        for (let m = 0; m < M; m++) xh.set(xs.subarray((m * H + h) * S + xStart, (m * H + h) * S + xStart + K), m * K);
        const yh = linear(Tensor.from(xh, { shape: [M, K] }), headWeight(w, h, wRow0, n), { isa }).data() as Float32Array;
        for (let m = 0; m < M; m++) {
          const got = od.subarray((m * H + h) * T + outStart, (m * H + h) * T + outStart + n);
          expect(bytes(got).equals(bytes(yh.subarray(m * n, (m + 1) * n)))).toBe(true);
          for (let j = 0; j < n; j++) {
            // f64 reference; f32 accumulation bound (K + 2)·2^-24·Σ|x w| as in gemm.test.ts
            let s = 0, mag = 0;
            for (let k = 0; k < K; k++) {
              const p = xs[(m * H + h) * S + xStart + k] * ws[(h * Nw + wRow0 + j) * K + k];
              s += p;
              mag += Math.abs(p);
            }
            expect(Math.abs(got[j] - s)).toBeLessThanOrEqual((K + 2) * 2 ** -24 * mag + 1e-30);
          }
        }
        // untouched parts of the output stay NaN: only [outStart, outStart + n) of each slice is written
        for (let m = 0; m < M; m++) {
          const row = od.subarray((m * H + h) * T, (m * H + h + 1) * T);
          for (let j = 0; j < T; j++) if (j < outStart || j >= outStart + n) expect(Number.isNaN(row[j])).toBe(true);
        }
      }
    }
  });
});

describe('linearHeads invariance and bad input', () => {
  it('gives the same bits for any thread count and for a row alone vs inside a batch', () => {
    const x = Tensor.random([9, 16, 128], 'f32', { seed: 1, dist: 'normal' });
    const w = Tensor.random([16, 512, 128], 'bf16', { seed: 2, dist: 'normal' });
    const before = getThreads();
    try {
      setThreads(1);
      const a = linearHeads(x, w).data() as Float32Array;
      setThreads(3);
      const b = linearHeads(x, w).data() as Float32Array;
      expect(bytes(a).equals(bytes(b))).toBe(true);
      const one = linearHeads(x.slice(4, 5), w).data() as Float32Array;
      expect(bytes(one).equals(bytes(a.subarray(4 * 16 * 512, 5 * 16 * 512)))).toBe(true);
    } finally {
      setThreads(before);
    }
  });

  it('rejects wrong dtypes, shapes, slices and outputs with typed errors', () => {
    const x = Tensor.random([2, 3, 8], 'f32', { seed: 3 });
    const w = Tensor.random([3, 4, 8], 'f32', { seed: 4 });
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return (e as { code?: string }).code;
      }
      return 'no error';
    };
    expect(code(() => linearHeads(x.to('f16'), w))).toBe('KVANT_DTYPE');
    expect(code(() => linearHeads(x.reshape([6, 8]), w))).toBe('KVANT_SHAPE');
    expect(code(() => linearHeads(x, Tensor.random([2, 4, 8], 'f32', { seed: 5 })))).toBe('KVANT_SHAPE');
    expect(code(() => linearHeads(x, Tensor.zeros([3, 4, 8], 'i32')))).toBe('KVANT_DTYPE');
    expect(code(() => linearHeads(x, w, { xStart: 1 }))).toBe('KVANT_SHAPE');
    expect(code(() => linearHeads(x, w, { xStart: -1 }))).toBe('KVANT_RANGE');
    expect(code(() => linearHeads(x, w, { wRow0: 2, n: 3 }))).toBe('KVANT_SHAPE');
    expect(code(() => linearHeads(x, w, { n: 1.5 }))).toBe('KVANT_RANGE');
    expect(code(() => linearHeads(x, w, { out: Tensor.zeros([2, 3, 3], 'f32') }))).toBe('KVANT_SHAPE');
    expect(code(() => linearHeads(x, w, { out: Tensor.zeros([2, 3, 6], 'f32'), outStart: 3 }))).toBe('KVANT_SHAPE');
    expect(code(() => linearHeads(x, w, { out: Tensor.zeros([2, 3, 4], 'f16') }))).toBe('KVANT_DTYPE');
    expect(code(() => linearHeads(x, w, { isa: 'neon' as never }))).toBe('KVANT_BACKEND');
    // the output may not alias the input
    const big = Tensor.zeros([2, 3, 8], 'f32');
    expect(code(() => linearHeads(big, w, { out: big }))).toBe('KVANT_RANGE');
  });
});
