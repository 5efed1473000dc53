/**
 * The KV cache element codecs on their own (what the caches apply to every row segment):
 * quantize n values to a cache type and back. Useful for quality measurements and tests.
 */
import { KvantError, callNative, expected } from '../errors';
import { native } from '../native';
import { IsaLevel } from '../ops/small';
import { Tensor, checkTensor } from '../tensor';
import { KV_DEFAULT_HADAMARD, KV_GROUP, KV_TYPE_CODE, KvCacheType, checkKvType, isQuantized, segmentBytes } from './format';
import { isaCode } from './rows';

export interface KvCodecOptions {
  /** Rotate each group of 32 by the Walsh–Hadamard transform first (quantized types; default per type). */
  hadamard?: boolean;
  isa?: IsaLevel;
}

/** Encodes f32 values (1-D, length a multiple of 32 for quantized types) into cache bytes. */
export function kvQuantize(x: Tensor, type: KvCacheType, o: KvCodecOptions = {}): Uint8Array {
  checkTensor(x, 'x');
  const t = checkKvType(type);
  if (x.dtype !== 'f32') throw expected('KVANT_DTYPE', 'an f32 tensor', 'x.dtype', x.dtype);
  const n = x.numel;
  const dst = new Uint8Array(segmentBytes(t, n));
  const [s, off] = x.rawArgs();
  const had = isQuantized(t) && (o.hadamard ?? KV_DEFAULT_HADAMARD[t]);
  callNative(() => native().kvEncode(KV_TYPE_CODE[t], had, s, off, x.byteLength, n, dst, 0, dst.byteLength, isaCode(o.isa)));
  return dst;
}

/** In-place unnormalized 32-point Walsh–Hadamard transform of each group (f32 arithmetic, as the kernels). */
export function hadamard32(v: Float32Array): Float32Array {
  if (v.length % KV_GROUP !== 0) throw new KvantError('KVANT_SHAPE', `Expected a multiple of 32 values but received ${v.length}`);
  for (let g = 0; g < v.length; g += KV_GROUP)
    for (let h = 1; h < KV_GROUP; h <<= 1)
      for (let i = g; i < g + KV_GROUP; i += 2 * h)
        for (let j = i; j < i + h; j++) {
          const a = v[j];
          const b = v[j + h];
          v[j] = a + b;
          v[j + h] = a - b;
        }
  return v;
}

/**
 * Decodes `n` values. With `hadamard` the stored groups are rotated back (x = H·y / 32);
 * `stored: true` returns the stored (rotated) domain instead.
 */
export function kvDequantize(bytes: Uint8Array, type: KvCacheType, n: number, o: KvCodecOptions & { stored?: boolean } = {}): Float32Array {
  const t = checkKvType(type);
  if (!(bytes instanceof Uint8Array)) throw expected('KVANT_DTYPE', 'a Uint8Array', 'bytes', bytes);
  if (!Number.isSafeInteger(n) || n < 0) throw expected('KVANT_SHAPE', 'a non-negative integer', 'n', n);
  const need = segmentBytes(t, n);
  if (bytes.byteLength < need) throw new KvantError('KVANT_SHAPE', `Expected at least ${need} bytes for ${n} ${t} values but received ${bytes.byteLength}`);
  const y = new Float32Array(n);
  const yb = new Uint8Array(y.buffer);
  callNative(() => native().kvDecode(KV_TYPE_CODE[t], bytes, 0, bytes.byteLength, n, yb, 0, yb.byteLength, isaCode(o.isa)));
  const had = isQuantized(t) && (o.hadamard ?? KV_DEFAULT_HADAMARD[t]);
  if (had && !o.stored) {
    hadamard32(y);
    for (let i = 0; i < n; i++) y[i] *= 1 / 32;
  }
  return y;
}
