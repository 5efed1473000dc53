/**
 * Fixtures for the DeepSeek-V2 model tests: tiny random checkpoints (made once per config
 * variant and cached for the test file), an f64 weight getter over a checkpoint for the
 * reference forward, and the per-position error ‖Δlogits‖ / ‖reference logits‖.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Checkpoint } from '../../lib/io/checkpoint';
import { makeModel } from '../../lib/models/deepseek-v2/make-model';
import { RefWeight, WeightGetter } from './reference-forward';

const made = new Map<string, string>();

/** A tiny-preset checkpoint folder for (dtype, override, seed), made once per process. */
export function tinyModel(dtype: 'f32' | 'bf16', configOverride: Record<string, unknown> = {}, seed = 1, layers?: number): string {
  const key = JSON.stringify([dtype, configOverride, seed, layers]);
  let dir = made.get(key);
  if (!dir) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-model-'));
    makeModel({ preset: 'tiny', out: dir, seed, dtype, configOverride, layers });
    made.set(key, dir);
  }
  return dir;
}

/** Reads every weight of a checkpoint as f64 (exact for f32/f16/bf16 files). */
export function f64Weights(dir: string): WeightGetter {
  const ck = Checkpoint.open(dir);
  const cache = new Map<string, RefWeight>();
  return (name: string) => {
    let w = cache.get(name);
    if (!w) {
      const t = ck.tensor(name);
      w = { shape: [...t.shape], data: Float64Array.from(t.toFloat32Array()) };
      cache.set(name, w);
    }
    return w;
  };
}

/** ‖got − ref‖₂ / ‖ref‖₂ of one row. */
export function relErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (got.length !== ref.length) throw new Error(`length ${got.length} vs ${ref.length}`);
  let d = 0;
  let r = 0;
  for (let i = 0; i < ref.length; i++) {
    if (!Number.isFinite(got[i])) return Infinity;
    d += (got[i] - ref[i]) ** 2;
    r += ref[i] ** 2;
  }
  return Math.sqrt(d / r);
}

/** Deterministic pseudo-random token ids in 0..vocab-1. */
export function randomTokens(n: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % vocab;
  });
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);
/** v rounded to f32, then to bf16 with round-to-nearest-even (what a bf16 cache stores). */
export function bf16Round(v: number): number {
  f32buf[0] = v;
  const b = u32buf[0];
  u32buf[0] = (b + 0x7fff + ((b >>> 16) & 1)) & 0xffff0000;
  return f32buf[0];
}

/** v rounded to f32. */
export const f32Round = (v: number): number => Math.fround(v);
