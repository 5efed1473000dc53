/**
 * Input checks shared by the CPU model (model.ts) and the device model (device-model.ts): both
 * take the same token ids and sequence positions and must reject bad ones with the same errors.
 */
import { KvantError, expected } from '../../errors';
import type { QActivations } from '../../ops/qlinear';

/** Token ids as an Int32Array; KVANT_DTYPE for a non-array, KVANT_RANGE for an id outside 0..vocab-1. */
export function checkTokenIds(tokens: readonly number[], vocab: number, name: string): Int32Array {
  if (!Array.isArray(tokens) && !(tokens instanceof Int32Array)) throw expected('KVANT_DTYPE', 'an array of token ids', name, tokens);
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i];
    if (!Number.isInteger(t) || t < 0 || t >= vocab) throw expected('KVANT_RANGE', `token ids in 0..${vocab - 1}`, `${name}[${i}]`, t);
  }
  return Int32Array.from(tokens);
}

/** Checks that `adding` tokens fit after the `len` sequence `seq` holds; returns len. */
export function checkContextRoom(seq: number, len: number, adding: number, maxContext: number, name: string): number {
  if (len + adding > maxContext)
    throw new KvantError(
      'KVANT_RANGE',
      `Expected ${name} to fit the context: sequence ${seq} holds ${len} tokens, adding ${adding} gives ${len + adding} > maxContext ${maxContext}`,
    );
  return len;
}

/**
 * The chunk loop of both models' prefill: `run` feeds one part of at most `chunkSize` tokens at
 * positions pos.. and returns its logits (every position of the part with allLogits, else at
 * least the last one's V values at the end). Returns the last position's logits (V) or every
 * position's (T·V). If a part fails (e.g. KVANT_OOM from the cache budget) `rollback` runs
 * before the error propagates, so no layer is left holding rows the others lack.
 */
export function prefillInChunks(
  ids: Int32Array,
  start: number,
  vocab: number,
  o: { chunkSize?: number; allLogits?: boolean },
  defaultChunk: number,
  run: (part: Int32Array, pos: number) => Float32Array,
  rollback: () => void,
): Float32Array {
  if (ids.length === 0) throw expected('KVANT_SHAPE', 'at least one token', 'tokens', Array.from(ids));
  const chunk = o.chunkSize ?? defaultChunk;
  if (!Number.isInteger(chunk) || chunk < 1) throw expected('KVANT_RANGE', 'a positive integer', 'chunkSize', o.chunkSize);
  const out = new Float32Array(o.allLogits ? ids.length * vocab : vocab);
  try {
    for (let s = 0; s < ids.length; s += chunk) {
      const part = ids.subarray(s, Math.min(ids.length, s + chunk));
      const logits = run(part, start + s);
      if (o.allLogits) out.set(logits, s * vocab);
      else if (s + chunk >= ids.length) out.set(logits.subarray(logits.length - vocab));
    }
  } catch (e) {
    rollback();
    throw e;
  }
  return out;
}

/** The activations load option: 'f32' (the default when absent) or 'int8'; KVANT_RANGE otherwise. */
export function checkActivations(a: unknown): QActivations {
  if (a === undefined || a === 'f32') return 'f32';
  if (a === 'int8') return 'int8';
  throw expected('KVANT_RANGE', "'f32' or 'int8'", 'activations', a);
}
