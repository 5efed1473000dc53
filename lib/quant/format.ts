/**
 * GPTQ-style group quantization format: the TS mirror of csrc/include/kvant/quant_format.h
 * (same fields, same 32 bytes; a test checks both sides agree byte for byte).
 *
 * A quantized Linear W [N, K] is the AutoGPTQ tensor set: qweight i32 [K·bits/32, N] packed
 * along K, qzeros i32 [ng, N·bits/32] packed along N, scales f16 [ng, N], g_idx i32 [K], with
 * ng = ceil(K/G). Checkpoint format "gptq" (v1) stores zero − 1, "gptq_v2" the true zero.
 * 3-bit codes use the cross-word layout: 32 codes per 3 words, as one 96-bit integer.
 */
import { KvantError, expected } from '../errors';
import type { Tensor } from '../tensor';

export type QuantBits = 2 | 3 | 4 | 8;
export type CheckpointFormat = 'gptq' | 'gptq_v2';

export interface QuantFormat {
  bits: QuantBits;
  /** 32, 64, 128, or -1 for one group spanning K. */
  groupSize: number;
  sym: boolean;
  checkpointFormat: CheckpointFormat;
  /** Input channels. */
  K: number;
  /** Output channels. */
  N: number;
}

export const QUANT_FORMAT_BYTES = 32;
export const QUANT_BITS: readonly QuantBits[] = [2, 3, 4, 8];

export const effectiveGroup = (f: Pick<QuantFormat, 'groupSize' | 'K'>): number => (f.groupSize < 0 ? f.K : f.groupSize);
export const groupCount = (f: Pick<QuantFormat, 'groupSize' | 'K'>): number => Math.ceil(f.K / effectiveGroup(f));
export const maxCode = (bits: QuantBits): number => (1 << bits) - 1;
export const qweightRows = (f: Pick<QuantFormat, 'bits' | 'K'>): number => (f.K * f.bits) / 32;
export const qzerosCols = (f: Pick<QuantFormat, 'bits' | 'N'>): number => (f.N * f.bits) / 32;
export const isPackable = (d: number, bits: QuantBits): boolean => d > 0 && (bits === 3 ? d % 32 === 0 : (d * bits) % 32 === 0);

/** Throws a typed error unless the format is one the kernels accept. */
export function checkQuantFormat(f: QuantFormat, name = 'format'): QuantFormat {
  if (!QUANT_BITS.includes(f.bits)) throw expected('KVANT_FORMAT', 'bits 2, 3, 4 or 8', `${name}.bits`, f.bits);
  if (!Number.isInteger(f.groupSize) || (f.groupSize !== -1 && f.groupSize <= 0))
    throw expected('KVANT_FORMAT', 'a positive group size or -1', `${name}.groupSize`, f.groupSize);
  if (f.checkpointFormat !== 'gptq' && f.checkpointFormat !== 'gptq_v2')
    throw expected('KVANT_FORMAT', '"gptq" or "gptq_v2"', `${name}.checkpointFormat`, f.checkpointFormat);
  if (!isPackable(f.K, f.bits))
    throw new KvantError('KVANT_SHAPE', `Expected ${name}.K * bits to fill whole int32 words (${f.bits === 3 ? 'K % 32 == 0 for 3 bits' : `K % ${32 / f.bits} == 0`}) but K is ${f.K}`);
  if (!isPackable(f.N, f.bits))
    throw new KvantError('KVANT_SHAPE', `Expected ${name}.N * bits to fill whole int32 words for qzeros (${f.bits === 3 ? 'N % 32 == 0 for 3 bits' : `N % ${32 / f.bits} == 0`}) but N is ${f.N}`);
  return f;
}

/** The 32 bytes of the native QuantFormat struct. */
export function encodeQuantFormat(f: QuantFormat): Uint8Array {
  const b = new Uint8Array(QUANT_FORMAT_BYTES);
  const v = new DataView(b.buffer);
  v.setInt32(0, f.bits, true);
  v.setInt32(4, f.groupSize, true);
  v.setInt32(8, f.sym ? 1 : 0, true);
  v.setInt32(12, f.checkpointFormat === 'gptq_v2' ? 1 : 0, true);
  v.setBigInt64(16, BigInt(f.K), true);
  v.setBigInt64(24, BigInt(f.N), true);
  return b;
}

export function decodeQuantFormat(b: Uint8Array): QuantFormat {
  if (b.byteLength !== QUANT_FORMAT_BYTES) throw expected('KVANT_FORMAT', `${QUANT_FORMAT_BYTES} bytes`, 'format bytes', b.byteLength);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  return {
    bits: v.getInt32(0, true) as QuantBits,
    groupSize: v.getInt32(4, true),
    sym: v.getInt32(8, true) !== 0,
    checkpointFormat: v.getInt32(12, true) === 1 ? 'gptq_v2' : 'gptq',
    K: Number(v.getBigInt64(16, true)),
    N: Number(v.getBigInt64(24, true)),
  };
}

/**
 * A quantized matrix W [N, K]: the checkpoint tensors (views of the mapped file where they come
 * from one) plus, after act-order rows were made sequential at load, the permutation the
 * kernels apply to x (kernel row j holds input channel perm[j]; then gIdx is sequential).
 */
export interface QTensor {
  format: QuantFormat;
  /** i32 [K·bits/32, N] */
  qweight: Tensor;
  /** i32 [ng, N·bits/32] */
  qzeros: Tensor;
  /** f16 [ng, N] */
  scales: Tensor;
  /** i32 [K] group per input channel, or null for the sequential k / G. */
  gIdx: Tensor | null;
  /** null, or a permutation of 0..K-1 (see above). */
  perm: Int32Array | null;
}
