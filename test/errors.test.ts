import { describe, expect, it } from 'vitest';
import { KvantError, Tensor, allocateNative, mapFile, setThreads } from '../lib';
import { fromNative } from '../lib/errors';

/** Runs fn and returns the KvantError it throws (failing the test if it throws anything else). */
function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvantError);
    return (e as KvantError).code;
  }
  throw new Error('expected a KvantError, nothing was thrown');
}

function detachedBuffer(bytes: number): ArrayBuffer {
  const b = new ArrayBuffer(bytes);
  structuredClone(b, { transfer: [b] });
  return b;
}

describe('bad input ends in a typed error, never a crash', () => {
  it('wrong dtype', () => {
    expect(codeOf(() => Tensor.zeros([2], 'f64' as never))).toBe('KVANT_DTYPE');
    expect(codeOf(() => Tensor.from(new Float32Array(4)).to('i7' as never))).toBe('KVANT_DTYPE');
    // integer <-> float conversion is not a conversion kvant offers
    expect(codeOf(() => Tensor.from(new Int32Array(4)).to('f32'))).toBe('KVANT_DTYPE');
    expect(codeOf(() => Tensor.from(new Uint16Array(4)))).toBe('KVANT_DTYPE'); // f16 or bf16? must be said
  });

  it('shape mismatch', () => {
    expect(codeOf(() => Tensor.from(new Float32Array(6)).convertInto(Tensor.zeros([5], 'f16')))).toBe('KVANT_SHAPE');
    expect(codeOf(() => Tensor.from(new Float32Array(6)).reshape([4, 2]))).toBe('KVANT_SHAPE');
    expect(codeOf(() => Tensor.from(new Float32Array(6), { shape: [7] }))).toBe('KVANT_SHAPE');
    expect(codeOf(() => Tensor.from([1, 2, 3], { shape: [2, 2] }))).toBe('KVANT_SHAPE');
  });

  it('detached or too-short ArrayBuffer', () => {
    expect(codeOf(() => Tensor.fromBuffer(detachedBuffer(16), 'f32', [4]))).toBe('KVANT_RANGE');
    expect(codeOf(() => Tensor.fromBuffer(new ArrayBuffer(12), 'f32', [4]))).toBe('KVANT_SHAPE');
    const buf = new ArrayBuffer(16);
    const t = Tensor.fromBuffer(buf, 'f32', [4]);
    structuredClone(buf, { transfer: [buf] });
    expect(codeOf(() => t.to('f16'))).toBe('KVANT_RANGE');
    const view = new Float32Array(new ArrayBuffer(8));
    structuredClone(view.buffer, { transfer: [view.buffer] });
    expect(codeOf(() => Tensor.from(view, { shape: [2] }))).toBe('KVANT_RANGE');
  });

  it('negative, fractional, NaN or huge sizes', () => {
    expect(codeOf(() => Tensor.zeros([-1]))).toBe('KVANT_SHAPE');
    expect(codeOf(() => Tensor.zeros([2.5]))).toBe('KVANT_SHAPE');
    expect(codeOf(() => Tensor.zeros([NaN]))).toBe('KVANT_SHAPE');
    expect(codeOf(() => Tensor.zeros(['3' as unknown as number]))).toBe('KVANT_SHAPE');
    expect(codeOf(() => Tensor.zeros(7 as unknown as number[]))).toBe('KVANT_SHAPE');
    // 2^40 * 2^40 elements overflows size_t and 2^53
    expect(codeOf(() => Tensor.zeros([2 ** 40, 2 ** 40]))).toBe('KVANT_RANGE');
    expect(codeOf(() => Tensor.zeros([2 ** 26, 2 ** 26], 'f32'))).toBe('KVANT_RANGE');
    expect(codeOf(() => allocateNative(-5))).toBe('KVANT_RANGE');
    expect(codeOf(() => allocateNative(2 ** 60))).toBe('KVANT_RANGE');
    expect(codeOf(() => setThreads(0))).toBe('KVANT_RANGE');
    expect(codeOf(() => setThreads(1.5))).toBe('KVANT_RANGE');
  });

  it('views misaligned for their element type', () => {
    const buf = new ArrayBuffer(64);
    expect(codeOf(() => Tensor.fromBuffer(buf, 'f32', [4], 2))).toBe('KVANT_RANGE');
    expect(codeOf(() => Tensor.fromBuffer(buf, 'bf16', [4], 1))).toBe('KVANT_RANGE');
    expect(codeOf(() => Tensor.from(new Uint8Array(buf, 1, 8), { dtype: 'f16' }))).toBe('KVANT_RANGE');
    expect(Tensor.fromBuffer(buf, 'f32', [4], 4).byteOffset).toBe(4); // aligned is fine
  });

  it('non-Tensor arguments', () => {
    const t = Tensor.zeros([4]);
    expect(codeOf(() => t.convertInto({} as Tensor))).toBe('KVANT_DTYPE');
    expect(codeOf(() => t.convertInto(new Float32Array(4) as unknown as Tensor))).toBe('KVANT_DTYPE');
    expect(codeOf(() => Tensor.from('abc' as unknown as number[]))).toBe('KVANT_DTYPE');
    expect(codeOf(() => Tensor.fromBuffer([1, 2] as unknown as ArrayBuffer, 'f32', [2]))).toBe('KVANT_DTYPE');
  });

  it('output aliasing an input where that is not allowed', () => {
    const buf = new ArrayBuffer(64);
    const a = Tensor.fromBuffer(buf, 'f32', [8]);
    const overlapping = Tensor.fromBuffer(buf, 'f16', [8], 8);
    expect(codeOf(() => a.convertInto(overlapping))).toBe('KVANT_RANGE');
    // a same-dtype copy may overlap (memmove semantics)
    const b = Tensor.fromBuffer(buf, 'f32', [8], 0);
    expect(() => a.convertInto(b)).not.toThrow();
  });

  it('the raw native layer re-validates what it is given', async () => {
    const { native } = await import('../lib/native');
    const n = native();
    const src = new Uint8Array(16);
    // range past the storage
    expect(codeOf(() => { try { n.convert(src, 8, 16, 0, new Uint8Array(8), 0, 8, 1, 4); } catch (e) { throw asKvantError(e); } })).toBe('KVANT_SHAPE');
    // storage of the wrong kind
    expect(codeOf(() => { try { n.convert({} as Uint8Array, 0, 16, 0, new Uint8Array(8), 0, 8, 1, 4); } catch (e) { throw asKvantError(e); } })).toBe('KVANT_DTYPE');
    // unknown dtype code, fractional size
    expect(codeOf(() => { try { n.convert(src, 0, 16, 9, new Uint8Array(8), 0, 8, 1, 4); } catch (e) { throw asKvantError(e); } })).toBe('KVANT_DTYPE');
    expect(codeOf(() => { try { n.convert(src, 0.5, 16, 0, new Uint8Array(8), 0, 8, 1, 4); } catch (e) { throw asKvantError(e); } })).toBe('KVANT_RANGE');
    // a disposed native memory
    const m = allocateNative(64);
    m.dispose();
    expect(codeOf(() => { try { n.convert(m, 0, 16, 0, new Uint8Array(8), 0, 8, 1, 4); } catch (e) { throw asKvantError(e); } })).toBe('KVANT_RANGE');
  });

  it('file errors are KVANT_IO', () => {
    expect(codeOf(() => mapFile('/nonexistent/kvant-test-file'))).toBe('KVANT_IO');
    expect(codeOf(() => mapFile('/tmp'))).toBe('KVANT_IO');
    expect(codeOf(() => mapFile(42 as unknown as string))).toBe('KVANT_IO');
  });
});

// Converts a raw native error the same way the public wrappers do.
function asKvantError(e: unknown): unknown {
  return fromNative(e);
}
