/**
 * Input checks shared by the CPU model (model.ts) and the device model (device-model.ts): both
 * take the same token ids and sequence positions and must reject bad ones with the same errors.
 */
import { KvantError, expected } from '../../errors';

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
