/**
 * KV cache element types and their byte layout, mirroring csrc/cpu/kv_cache.h.
 *
 * f16 / bf16 store 2 bytes per value. q8 / q6 / q4 store blocks of 32 values: one f16 scale
 * `d` then 32 symmetric codes q in [-qmax, qmax] (qmax = 127 / 31 / 7), value = d·q:
 * 34 / 26 / 18 bytes per block, i.e. 1.0625 / 0.8125 / 0.5625 bytes per value.
 * Optionally each group of 32 is rotated by the 32-point Walsh–Hadamard transform before
 * quantizing (ExLlamaV2's trick: an outlier channel no longer dictates its neighbours' scale).
 */
import { KvantError, expected } from '../errors';

/** Element type of a KV cache. */
export type KvCacheType = 'f16' | 'bf16' | 'q8' | 'q6' | 'q4';

/** All cache types, densest last. */
export const KV_CACHE_TYPES: readonly KvCacheType[] = ['f16', 'bf16', 'q8', 'q6', 'q4'];

/** Bytes per cached value: 16-bit types, or codes + one f16 scale per group of 32 values. */
export const KV_BYTES_PER_VALUE: Record<KvCacheType, number> = { f16: 2, bf16: 2, q8: 1 + 2 / 32, q6: 0.75 + 2 / 32, q4: 0.5 + 2 / 32 };

/** Bytes of one packed block of 32 values (quantized types). */
export const KV_BLOCK_BYTES = { q8: 34, q6: 26, q4: 18 } as const;

/** Values per quantization group (one f16 scale each). */
export const KV_GROUP = 32;

/** Native type codes (csrc/cpu/kv_cache.h `KvType`). */
export const KV_TYPE_CODE: Record<KvCacheType, number> = { f16: 0, bf16: 1, q8: 2, q6: 3, q4: 4 };

/**
 * Whether the Hadamard rotation is applied per type by default. Measured (test/kv-quality,
 * docs-notes/kvcache.md): on keys/values with outlier channels the rotation lowers the
 * attention-output error of every quantized type, so it is on for q8/q6/q4; f16/bf16 are not
 * quantized per group and never rotate.
 */
export const KV_DEFAULT_HADAMARD: Record<KvCacheType, boolean> = { f16: false, bf16: false, q8: true, q6: true, q4: true };

/** True for the per-group quantized types (q8, q6, q4). */
export function isQuantized(t: KvCacheType): boolean {
  return t === 'q8' || t === 'q6' || t === 'q4';
}

/** Validates a cache type name. */
export function checkKvType(t: unknown, name = 'type'): KvCacheType {
  if (typeof t !== 'string' || !(KV_CACHE_TYPES as readonly string[]).includes(t)) throw expected('KVANT_DTYPE', `one of ${KV_CACHE_TYPES.join(', ')}`, name, t);
  return t as KvCacheType;
}

/** Bytes of n values stored as `t` (quantized types need n % 32 == 0). */
export function segmentBytes(t: KvCacheType, n: number): number {
  if (!isQuantized(t)) return 2 * n;
  if (n % KV_GROUP !== 0) throw new KvantError('KVANT_SHAPE', `Expected a multiple of ${KV_GROUP} values for a ${t} segment but received ${n}`);
  return (n / KV_GROUP) * KV_BLOCK_BYTES[t as 'q8' | 'q6' | 'q4'];
}

/** One segment of a cache row (see csrc/cpu/kv_cache.h `KvSegment`). */
export interface KvSegmentDesc {
  type: KvCacheType;
  n: number;
  hadamard: boolean;
  /** Byte offset in the cache row. */
  offset: number;
  /** Float offset in the dense row. */
  src: number;
}

/** Packs segments as the int32 quintuples the native layer takes. */
export function packSegments(segs: readonly KvSegmentDesc[], extra: readonly number[] = []): Int32Array {
  const a = new Int32Array(segs.length * 5 + extra.length);
  segs.forEach((s, i) => a.set([KV_TYPE_CODE[s.type], s.n, s.hadamard && isQuantized(s.type) ? 1 : 0, s.offset, s.src], i * 5));
  a.set(extra, segs.length * 5);
  return a;
}

/** What a cache stores, recorded so a reader knows how to decode it. */
export interface KvCacheDescriptor {
  type: KvCacheType;
  /** Whether quantized groups were rotated by the 32-point Hadamard transform. */
  hadamard: boolean;
  pageSize: number;
  /** Bytes of one token's row in one layer. */
  rowBytes: number;
  /** The row's segments (layer-independent). */
  segments: readonly KvSegmentDesc[];
}
