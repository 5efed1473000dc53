/** Argument helpers shared by the CLI commands that load a model (generate, logits, demo). */
import { KvantError } from '../errors';
import { KV_BYTES_PER_VALUE, KvCacheType } from '../models/deepseek-v2/plan';
import type { LoadModelOptions } from '../model';
import type { QActivations } from '../ops/qlinear';
import { progressBar } from './progress';

/** "1,2,3" -> [1, 2, 3]; anything else is a KVANT_RANGE error naming the flag. */
export function parseTokenList(s: string, flag = '--tokens'): number[] {
  const parts = s.split(',').map((x) => x.trim());
  const ids = parts.map(Number);
  if (parts.length === 0 || parts.some((p) => !/^\d+$/.test(p)) || ids.some((t) => !Number.isSafeInteger(t))) {
    throw new KvantError('KVANT_RANGE', `Expected ${flag} as comma-separated token ids (e.g. 1,2,3) but received ${JSON.stringify(s)}`);
  }
  return ids;
}

/** A number flag within [min, max] (integers only when `int`). */
export function parseNumber(s: string | undefined, flag: string, o: { int?: boolean; min?: number; max?: number } = {}): number | undefined {
  if (s === undefined) return undefined;
  const v = Number(s);
  const bad = s.trim() === '' || !Number.isFinite(v) || (o.int && !Number.isSafeInteger(v)) || (o.min !== undefined && v < o.min) || (o.max !== undefined && v > o.max);
  if (bad) {
    const range = [o.min !== undefined ? `>= ${o.min}` : '', o.max !== undefined ? `<= ${o.max}` : ''].filter(Boolean).join(' and ');
    throw new KvantError('KVANT_RANGE', `Expected ${flag} to be ${o.int ? 'an integer' : 'a number'}${range ? ' ' + range : ''} but received ${JSON.stringify(s)}`);
  }
  return v;
}

export function parseKvCache(s: string | undefined): KvCacheType | undefined {
  if (s === undefined) return undefined;
  if (!(s in KV_BYTES_PER_VALUE)) throw new KvantError('KVANT_RANGE', `Expected --kv-cache f16, bf16, q8, q6 or q4 but received ${JSON.stringify(s)}`);
  return s as KvCacheType;
}

/** --activations: f32 (default) or int8. */
export function parseActivations(s: string | undefined): QActivations | undefined {
  if (s === undefined) return undefined;
  if (s !== 'f32' && s !== 'int8') throw new KvantError('KVANT_RANGE', `Expected --activations f32 or int8 but received ${JSON.stringify(s)}`);
  return s;
}

/**
 * Load options for a CLI command: progress on stderr. KVANT_TEST_MODEL_IMPL=<module>#<export>
 * swaps in a stand-in model class (used only by kvant's own tests).
 */
export function cliLoadOptions(label: string): LoadModelOptions {
  const bar = progressBar(label);
  const o: LoadModelOptions = {
    onProgress: (p) => {
      bar.update(p.done, p.total, p.what);
      if (p.done === p.total) bar.done();
    },
  };
  const impl = process.env.KVANT_TEST_MODEL_IMPL;
  if (impl) {
    const [module, exp] = impl.split('#');
    o.implementation = { module, export: exp || 'DeepSeekV2Model' };
  }
  return o;
}

/** Shortest decimal that reads back as the same f32 (JSON has no NaN/Inf: those become null). */
export function f32ToJson(v: number): string {
  if (!Number.isFinite(v)) return 'null';
  for (let p = 1; p < 9; p++) {
    const s = v.toPrecision(p);
    if (Math.fround(Number(s)) === v) return String(Number(s));
  }
  return String(Number(v.toPrecision(9)));
}

/** `kvant logits ... | head`: a reader that leaves early is not an error. */
export function quietEpipe(): void {
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(0);
    throw e;
  });
}
