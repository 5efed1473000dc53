import { describe, expect, it } from 'vitest';
import { Tensor, backendInfo } from '../lib';
import { bf16BitsRef, bitsOf, f16BitsRef, f16Value, floatOf } from './helpers/half-ref';
import { isaLevels } from './helpers/checks';

const levels = isaLevels();

/** Awkward special values: zeros, extremes, ties, subnormals of both formats, NaN payloads. */
function specialF32(): Float32Array {
  const v: number[] = [0, -0, 1, -1, Infinity, -Infinity, NaN, 65504, 65519.99, 65520, 65536, -65520, 2 ** -14, 2 ** -24, 2 ** -25,
    2 ** -25 * 1.0000001, 2 ** -26, 3 * 2 ** -25, 2 ** -24 * 1.5, 2 ** -24 * 2.5, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -8, 1 + 3 * 2 ** -8,
    3.4028234663852886e38, 1.1754943508222875e-38, 1e-45, 1.4e-45 * 3, 5.877471754111438e-39, 1e-40, -1e-40];
  const out = new Float32Array(v.length + 6);
  out.set(v);
  const u = new Uint32Array(out.buffer, out.byteOffset, out.length);
  // NaNs with payloads (signalling and quiet, both signs) and the largest finite f32 below a bf16 tie.
  u[v.length] = 0x7f800001;
  u[v.length + 1] = 0xffc00123;
  u[v.length + 2] = 0x7fbfffff;
  u[v.length + 3] = 0x7f7f8000;
  u[v.length + 4] = 0x00008000;
  u[v.length + 5] = 0x807fffff;
  return out;
}

function randomBits(n: number, seed: number): Float32Array {
  // Uniform over all 2^32 bit patterns: every binade, subnormals and NaNs included.
  const t = Tensor.random([n], 'i32', { seed, low: -(2 ** 31), high: 2 ** 31 });
  const d = t.data() as Int32Array;
  return new Float32Array(d.buffer, d.byteOffset, d.length);
}

describe.each(levels)('conversion at ISA level %s', (isa) => {
  it('f32 -> f16 matches the IEEE round-to-nearest-even reference on special and random values', () => {
    for (const xs of [specialF32(), randomBits(200_003, 11)]) {
      const out = Tensor.zeros([xs.length], 'f16');
      Tensor.from(xs).convertInto(out, isa);
      const got = out.data() as Uint16Array;
      for (let i = 0; i < xs.length; i++) {
        const want = f16BitsRef(xs[i]);
        if (got[i] !== want) throw new Error(`x=${xs[i]} (0x${bitsOf(xs[i]).toString(16)}): got 0x${got[i].toString(16)} want 0x${want.toString(16)}`);
      }
    }
  });

  it('f16 -> f32 is exact for all 65536 bit patterns', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const out = Tensor.zeros([65536], 'f32');
    Tensor.from(all, { dtype: 'f16' }).convertInto(out, isa);
    const got = out.data() as Float32Array;
    const gotBits = new Uint32Array(got.buffer, got.byteOffset, got.length);
    for (let h = 0; h < 65536; h++) {
      const want = f16Value(h);
      if (Number.isNaN(want)) {
        // NaN: quiet, sign and payload kept (read as bits: JS may canonicalize NaN values).
        const wantBits = (((h & 0x8000) << 16) | 0x7fc00000 | ((h & 0x3ff) << 13)) >>> 0;
        if (gotBits[h] !== wantBits) throw new Error(`h=0x${h.toString(16)}: got 0x${gotBits[h].toString(16)} want 0x${wantBits.toString(16)}`);
      } else if (!Object.is(got[h], want)) {
        throw new Error(`h=0x${h.toString(16)}: got ${got[h]} want ${want}`);
      }
    }
  });

  it('f32 -> bf16 rounds to nearest even and keeps subnormals (no flush)', () => {
    for (const xs of [specialF32(), randomBits(200_003, 12)]) {
      const out = Tensor.zeros([xs.length], 'bf16');
      Tensor.from(xs).convertInto(out, isa);
      const got = out.data() as Uint16Array;
      for (let i = 0; i < xs.length; i++) {
        const want = bf16BitsRef(xs[i]);
        if (got[i] !== want) throw new Error(`x=${xs[i]} (0x${bitsOf(xs[i]).toString(16)}): got 0x${got[i].toString(16)} want 0x${want.toString(16)}`);
      }
    }
    const sub = Tensor.zeros([1], 'bf16');
    Tensor.from(new Float32Array([1e-39])).convertInto(sub, isa);
    expect((sub.data() as Uint16Array)[0]).not.toBe(0);
  });

  it('bf16 -> f32 is exact for all 65536 bit patterns', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const out = Tensor.zeros([65536], 'f32');
    Tensor.from(all, { dtype: 'bf16' }).convertInto(out, isa);
    const f = out.data() as Float32Array;
    const got = new Uint32Array(f.buffer, f.byteOffset, f.length);
    for (let h = 0; h < 65536; h++) if (got[h] !== (h << 16) >>> 0) throw new Error(`h=${h}`);
  });

  it('handles every tail length 0..70 and leaves bytes past the end untouched', () => {
    for (let n = 0; n <= 70; n++) {
      const xs = Float32Array.from({ length: n }, (_, i) => (i - 20) * 1.37e-3);
      const buf = new Uint16Array(n + 8).fill(0xbeef);
      const out = Tensor.fromBuffer(buf.buffer, 'f16', [n]);
      Tensor.from(xs).convertInto(out, isa);
      for (let i = 0; i < n; i++) expect(buf[i]).toBe(f16BitsRef(xs[i]));
      for (let i = n; i < n + 8; i++) expect(buf[i]).toBe(0xbeef);
    }
  });

  it('f16 <-> bf16 goes through f32 exactly', () => {
    const xs = randomBits(5000, 13).map((x) => (Number.isFinite(x) ? x % 60000 : 1));
    const h = Tensor.from(xs).to('f16');
    const b = Tensor.zeros([xs.length], 'bf16');
    h.convertInto(b, isa);
    const want = Tensor.from(h.toFloat32Array()).to('bf16').data() as Uint16Array;
    expect(Array.from(b.data() as Uint16Array)).toEqual(Array.from(want));
  });
});

describe('conversion', () => {
  it('gives the same bits on every ISA level and for any thread count', async () => {
    const { setThreads, getThreads } = await import('../lib');
    const xs = randomBits(1_000_003, 21);
    const before = getThreads();
    const results: Uint16Array[] = [];
    for (const threads of [1, 2, 3]) {
      setThreads(threads);
      for (const isa of levels) {
        const out = Tensor.zeros([xs.length], 'f16');
        Tensor.from(xs).convertInto(out, isa);
        results.push(out.data() as Uint16Array);
      }
    }
    setThreads(before);
    const bytes = (a: Uint16Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
    for (const r of results) expect(bytes(r).equals(bytes(results[0]))).toBe(true);
  });

  it('round trip error is within half an ulp of the narrow format', () => {
    const xs = Tensor.random([100_000], 'f32', { seed: 3, dist: 'normal', std: 10 }).data() as Float32Array;
    const f16 = Tensor.from(xs).to('f16').toFloat32Array();
    const bf16 = Tensor.from(xs).to('bf16').toFloat32Array();
    for (let i = 0; i < xs.length; i++) {
      if (Math.abs(xs[i]) < 2 ** -14) continue;
      expect(Math.abs(f16[i] - xs[i])).toBeLessThanOrEqual(Math.abs(xs[i]) * 2 ** -11);
      expect(Math.abs(bf16[i] - xs[i])).toBeLessThanOrEqual(Math.abs(xs[i]) * 2 ** -8);
    }
    expect(floatOf(bitsOf(1.5))).toBe(1.5);
  });
});
