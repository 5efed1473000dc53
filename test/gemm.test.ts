import { describe, expect, it } from 'vitest';
import { Tensor, backendInfo, getThreads, setThreads } from '../lib';
import { linear } from '../lib/ops/linear';
import { isaLevels } from './helpers/checks';

const levels = isaLevels();
const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);

/** f64 reference of x · Wᵀ (+ bias) on the exact (dequantized-to-f32) weight values. */
function reference(x: Tensor, w: Tensor, bias?: Tensor): Float64Array {
  const [N, K] = w.shape;
  const M = x.numel / K;
  const xs = x.toFloat32Array();
  const ws = w.toFloat32Array();
  const bs = bias?.toFloat32Array();
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++)
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let k = 0; k < K; k++) s += xs[m * K + k] * ws[n * K + k];
      y[m * N + n] = s + (bs ? bs[n] : 0);
    }
  return y;
}

/**
 * f32 accumulation over K terms: the error bound is K * 2^-24 * sum|x_k w_k| (a standard
 * worst-case bound for recursive/blocked summation); we check against that per output.
 */
function checkAgainst(y: Float32Array, want: Float64Array, x: Tensor, w: Tensor) {
  const [N, K] = w.shape;
  const xs = x.toFloat32Array();
  const ws = w.toFloat32Array();
  for (let i = 0; i < want.length; i++) {
    const m = Math.floor(i / N);
    const n = i % N;
    let mag = 0;
    for (let k = 0; k < K; k++) mag += Math.abs(xs[m * K + k] * ws[n * K + k]);
    const bound = (K + 2) * 2 ** -24 * mag + 1e-30;
    if (!(Math.abs(y[i] - want[i]) <= bound)) throw new Error(`y[${i}] = ${y[i]} vs ${want[i]} (bound ${bound})`);
  }
}

describe.each(levels)('dense linear at ISA level %s', (isa) => {
  it.each([
    [1, 7, 5],
    [3, 33, 17],
    [9, 100, 13],
    [37, 129, 31],
    [2, 1, 4],
  ])('M=%i K=%i N=%i, all weight dtypes, bias, against f64 with NaN-poisoned output', (M, K, N) => {
    for (const dt of ['f32', 'f16', 'bf16'] as const) {
      const x = Tensor.random([M, K], 'f32', { seed: M * 7 + K, dist: 'normal' });
      const w = Tensor.random([N, K], dt, { seed: N * 13 + K, dist: 'normal' });
      const bias = Tensor.random([N], 'f32', { seed: 5 });
      const out = Tensor.from(new Float32Array(M * N).fill(NaN), { shape: [M, N] });
      linear(x, w, { bias, out, isa });
      checkAgainst(out.data() as Float32Array, reference(x, w, bias), x, w);
    }
  });

  it('is batch-invariant: a row gives the same bits alone and inside M = 37', () => {
    const K = 300;
    const N = 45;
    const x = Tensor.random([37, K], 'f32', { seed: 1, dist: 'normal' });
    const w = Tensor.random([N, K], 'bf16', { seed: 2, dist: 'normal' });
    const all = linear(x, w, { isa }).data() as Float32Array;
    for (const r of [0, 5, 36]) {
      const one = linear(x.slice(r, r + 1), w, { isa }).data() as Float32Array;
      expect(bytes(one).equals(bytes(all.subarray(r * N, (r + 1) * N)))).toBe(true);
    }
  });
});

describe('dense linear', () => {
  it('gives the same bits for any thread count', () => {
    const before = getThreads();
    const x = Tensor.random([11, 257], 'f32', { seed: 3 });
    const w = Tensor.random([301, 257], 'f16', { seed: 4 });
    const outs = [1, 2, 3].map((t) => {
      setThreads(t);
      return linear(x, w).data() as Float32Array;
    });
    setThreads(before);
    expect(bytes(outs[1]).equals(bytes(outs[0]))).toBe(true);
    expect(bytes(outs[2]).equals(bytes(outs[0]))).toBe(true);
  });

  it('accepts f16/bf16 activations and rejects bad input with typed errors', () => {
    const w = Tensor.random([4, 8], 'f32', { seed: 1 });
    const x = Tensor.random([2, 8], 'f32', { seed: 2 });
    expect(Array.from(linear(x.to('bf16'), w).data() as Float32Array)).toEqual(Array.from(linear(Tensor.from(x.to('bf16').toFloat32Array(), { shape: [2, 8] }), w).data() as Float32Array));
    const code = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        return (e as { code?: string }).code;
      }
      return 'none';
    };
    expect(code(() => linear(Tensor.zeros([2, 7]), w))).toBe('KVANT_SHAPE');
    expect(code(() => linear(x, Tensor.zeros([4, 8], 'i8')))).toBe('KVANT_DTYPE');
    expect(code(() => linear(x, w, { out: Tensor.zeros([3, 4]) }))).toBe('KVANT_SHAPE');
    expect(code(() => linear(x, w, { bias: Tensor.zeros([5]) }))).toBe('KVANT_SHAPE');
    expect(code(() => linear(Tensor.zeros([2, 8], 'i32'), w))).toBe('KVANT_DTYPE');
    const buf = new ArrayBuffer(256);
    const xa = Tensor.fromBuffer(buf, 'f32', [2, 8]);
    expect(code(() => linear(xa, w, { out: Tensor.fromBuffer(buf, 'f32', [2, 4], 32) }))).toBe('KVANT_RANGE'); // out aliases x
  });
});
