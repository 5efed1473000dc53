/**
 * Token sampling on the device (csrc/cuda/sampling.cuh has the exact semantics): repetition
 * penalty, greedy, temperature, top-k and top-p for rows of device logits, with the CPU
 * sampler's generator (lib/generate/sampler.ts SeededRandom: the n-th draw of a seed is computed
 * from the counter n), so a sequence sampled on the device gets the tokens the CPU Sampler picks
 * for the same logits (up to the ~1e-10 boundary cases sampling.cuh lists). Only the token ids
 * come back to the host.
 */
import { KvantError, callNative, expected } from '../errors';
import { SamplingOptions, checkSampling } from '../generate/sampler';
import { DeviceTensor, StreamOptions, checkDeviceTensor, streamArg } from './device';
import { cudaNative } from './native';

/** One row's sampling state: the options and which draw of its seed's generator comes next. */
export interface DeviceSampleRow extends SamplingOptions {
  /** 1-based index of the generator draw this sample uses (the CPU Sampler's count of non-greedy samples so far + 1). Default 1. */
  counter?: number;
  /** Tokens the repetition penalty applies to (prompt and output so far). */
  history?: readonly number[];
}

const ROW_BYTES = 48; // SampleRow: f64 temperature, topP, penalty; u64 seed, counter; i32 topK, reserved

/** Samples one token per row of logits f32 [B, V] (device) -> token ids (host Int32Array [B]). */
export function sampleTokens(logits: DeviceTensor, rows: readonly DeviceSampleRow[], opts: StreamOptions = {}): Int32Array {
  checkDeviceTensor(logits, 'logits');
  if (logits.dtype !== 'f32') throw expected('KVANT_DTYPE', 'f32 logits', 'logits.dtype', logits.dtype);
  if (logits.ndim !== 2) throw expected('KVANT_SHAPE', 'logits of shape [B, V]', 'logits.shape', logits.shape);
  const [B, V] = logits.shape;
  if (!Array.isArray(rows) || rows.length !== B) throw expected('KVANT_SHAPE', `${B} sampling rows (one per logits row)`, 'rows', rows);
  const bytes = new Uint8Array(B * ROW_BYTES);
  const dv = new DataView(bytes.buffer);
  const offsets = new Int32Array(B + 1);
  const ids: number[] = [];
  rows.forEach((r, b) => {
    const o = checkSampling(r);
    const counter = r.counter ?? 1;
    if (!Number.isSafeInteger(counter) || counter < 1) throw expected('KVANT_RANGE', 'a positive integer', `rows[${b}].counter`, counter);
    if (o.topK > 1024) throw expected('KVANT_RANGE', 'topK <= 1024 on the device', `rows[${b}].topK`, o.topK);
    const base = b * ROW_BYTES;
    dv.setFloat64(base, o.temperature, true);
    dv.setFloat64(base + 8, o.topP, true);
    dv.setFloat64(base + 16, o.repetitionPenalty, true);
    dv.setBigUint64(base + 24, BigInt(o.seed), true);
    dv.setBigUint64(base + 32, BigInt(counter), true);
    dv.setInt32(base + 40, o.topK, true);
    for (const t of r.history ?? []) {
      if (!Number.isInteger(t)) throw expected('KVANT_RANGE', 'integer token ids', `rows[${b}].history`, t);
      ids.push(t);
    }
    offsets[b + 1] = ids.length;
  });
  const tokens = DeviceTensor.empty([B], 'i32');
  try {
    const nat = cudaNative();
    const hist = ids.length > 0;
    callNative(() => nat.sampleTokens(...logits.rawArgs(), B, V, bytes, hist ? offsets : null, hist ? Int32Array.from(ids) : null, ...tokens.rawArgs(), streamArg(opts.stream)));
    const out = tokens.toArray();
    if (!(out instanceof Int32Array)) throw new KvantError('KVANT_DTYPE', 'Expected i32 tokens');
    return out;
  } finally {
    tokens.free();
  }
}
