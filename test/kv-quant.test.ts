import { describe, expect, it } from 'vitest';
import { Tensor, backendInfo } from '../lib';
import { KvantError } from '../lib/errors';
import { hadamard32, kvDequantize, kvQuantize } from '../lib/kv/codec';
import { KV_BLOCK_BYTES, KV_BYTES_PER_VALUE, KvCacheType } from '../lib/kv/format';
import { errorCode as code, isaLevels } from './helpers/checks';

const levels = isaLevels({ avx512: false });
const QMAX = { q8: 127, q6: 31, q4: 7 } as const;

/** Normal values with outlier channels (x10 on channels 5 and 29 of every 32, as keys have). */
function outliers(n: number, seed: number): Float32Array {
  const x = Tensor.random([n], 'f32', { seed, dist: 'normal' }).toFloat32Array();
  for (let i = 0; i < n; i++) if (i % 32 === 5 || i % 32 === 29) x[i] *= 10;
  return x;
}

/** f64 Walsh–Hadamard of each group (for the rotated-domain scale bound). */
function wht64(x: Float32Array): Float64Array {
  const v = Float64Array.from(x);
  for (let g = 0; g < v.length; g += 32)
    for (let h = 1; h < 32; h <<= 1)
      for (let i = g; i < g + 32; i += 2 * h)
        for (let j = i; j < i + h; j++) {
          const a = v[j];
          v[j] = a + v[j + h];
          v[j + h] = a - v[j + h];
        }
  return v;
}

describe('KV codecs', () => {
  it('block sizes match the native layout (bytes per value 1.0625 / 0.8125 / 0.5625)', () => {
    for (const t of ['q8', 'q6', 'q4'] as const) {
      expect(kvQuantize(Tensor.zeros([64]), t).byteLength).toBe(2 * KV_BLOCK_BYTES[t]);
      expect(KV_BLOCK_BYTES[t] / 32).toBe(KV_BYTES_PER_VALUE[t]);
    }
    expect(kvQuantize(Tensor.zeros([5]), 'f16').byteLength).toBe(10);
  });

  it.each([
    ['q8', false], ['q8', true], ['q6', false], ['q6', true], ['q4', false], ['q4', true],
  ] as const)('%s hadamard=%s: every ISA gives the same bytes and floats, within d/2 of the input', (type, hadamard) => {
    for (const n of [32, 96, 32 * 37]) {
      const x = outliers(n, n);
      const xt = Tensor.from(x);
      const enc = levels.map((isa) => kvQuantize(xt, type, { hadamard, isa }));
      for (const e of enc) expect(Buffer.from(e).equals(Buffer.from(enc[0]))).toBe(true);
      const dec = levels.map((isa) => kvDequantize(enc[0], type, n, { hadamard, isa, stored: true }));
      for (const d of dec) expect(Array.from(d)).toEqual(Array.from(dec[0]));
      // Per group: stored scale d = f16(absmax/qmax) <= absmax/qmax·(1 + 2^-11); rounding to the
      // grid errs by <= d/2, and the clamp of values f16 rounding pushed past qmax errs by
      // <= qmax·d·2^-11 < d/2. In the rotated case this holds for y = H·x, and
      // x - x̂ = H·(y - ŷ)/32 keeps the max error within the same d/2 (|H_ij| = 1, average of 32),
      // plus f32 rounding of the inverse rotation (5 stages: <= 6·2^-24·max|y|).
      const y = hadamard ? wht64(x) : Float64Array.from(x);
      const back = kvDequantize(enc[0], type, n, { hadamard });
      const stored = dec[0];
      for (let g = 0; g < n; g += 32) {
        let amax = 0;
        for (let i = g; i < g + 32; i++) amax = Math.max(amax, Math.abs(y[i]));
        const half = ((amax / QMAX[type]) * (1 + 2 ** -11)) / 2;
        for (let i = g; i < g + 32; i++) {
          expect(Math.abs(stored[i] - y[i])).toBeLessThanOrEqual(half * (1 + 1e-6));
          expect(Math.abs(back[i] - x[i])).toBeLessThanOrEqual(half * (1 + 1e-6) + 6 * 2 ** -24 * amax);
        }
      }
    }
  });

  it('f16 and bf16 round to nearest: relative error <= 2^-11 and 2^-8', () => {
    const x = outliers(100, 3);
    for (const [t, rel] of [['f16', 2 ** -11], ['bf16', 2 ** -8]] as const) {
      const back = kvDequantize(kvQuantize(Tensor.from(x), t), t, 100);
      for (let i = 0; i < 100; i++) expect(Math.abs(back[i] - x[i])).toBeLessThanOrEqual(rel * Math.abs(x[i]));
    }
  });

  it('the Hadamard rotation lowers the RMS error on data with outlier channels for every quantized type (the measured default)', () => {
    const n = 32 * 512;
    const x = outliers(n, 11);
    for (const t of ['q8', 'q6', 'q4'] as KvCacheType[]) {
      const rms = (had: boolean) => {
        const b = kvDequantize(kvQuantize(Tensor.from(x), t, { hadamard: had }), t, n, { hadamard: had });
        let s = 0;
        for (let i = 0; i < n; i++) s += (b[i] - x[i]) ** 2;
        return Math.sqrt(s / n);
      };
      const plain = rms(false);
      const rotated = rms(true);
      expect(rotated).toBeLessThan(plain);
    }
  });

  it('hadamard32 twice is 32x the identity', () => {
    const x = outliers(64, 4);
    const y = hadamard32(hadamard32(Float32Array.from(x)));
    for (let i = 0; i < 64; i++) expect(y[i] / 32).toBeCloseTo(x[i], 5);
  });

  it('bad input ends in typed errors', () => {
    expect(code(() => kvQuantize(Tensor.zeros([33]), 'q4'))).toBe('KVANT_SHAPE');
    expect(code(() => kvQuantize(Tensor.zeros([32], 'bf16'), 'q4'))).toBe('KVANT_DTYPE');
    expect(code(() => kvQuantize(Tensor.from([NaN, ...new Array(31).fill(0)]), 'q8'))).toBe('KVANT_RANGE');
    expect(code(() => kvQuantize(Tensor.from([1e6]), 'f16'))).toBe('KVANT_RANGE'); // overflows f16
    expect(code(() => kvQuantize(Tensor.from(new Array(32).fill(1e9)), 'q4'))).toBe('KVANT_RANGE'); // scale overflows f16
    expect(code(() => kvDequantize(new Uint8Array(17), 'q4', 32))).toBe('KVANT_SHAPE');
    expect(code(() => kvDequantize(new Uint8Array(64), 'q3' as KvCacheType, 32))).toBe('KVANT_DTYPE');
  });
});
