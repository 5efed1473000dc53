/**
 * Synthetic calibration activations, until a model forward supplies real ones.
 *
 * Distribution (documented, seeded): token t's activation over K input channels is
 *   x_t = Σ_{r<R} g_{t,r} · v_r  +  σ · e_t,      then x_t[k] *= O for k in the outlier set,
 * with g, e standard normal, v_r fixed random directions (unit-variance entries), R = `rank`
 * shared factors (default 8: channels are correlated, as in real LLM activations), σ = `noise`
 * (default 0.5) and a few outlier channels (default max(1, K/64), chosen by the seed) scaled
 * by O = `outlierScale` (default 20) — the "massive activation" channels that make act-order
 * matter. The per-channel variance therefore ranges over (R + σ²)·[1, O²].
 */
import { KvantError } from '../errors';
import { Tensor } from '../tensor';

export interface SyntheticOptions {
  seed?: number;
  rank?: number;
  noise?: number;
  outliers?: number;
  outlierScale?: number;
}

/** f32 [tokens, K] activations from the distribution above. */
export function syntheticActivations(tokens: number, K: number, o: SyntheticOptions = {}): Tensor {
  if (!Number.isSafeInteger(tokens) || tokens <= 0 || !Number.isSafeInteger(K) || K <= 0)
    throw new KvantError('KVANT_SHAPE', `Expected positive tokens and K but received ${tokens}, ${K}`);
  const seed = o.seed ?? 0;
  const R = o.rank ?? 8;
  const sigma = o.noise ?? 0.5;
  const nOut = o.outliers ?? Math.max(1, Math.floor(K / 64));
  const scale = o.outlierScale ?? 20;
  const v = Tensor.random([R, K], 'f32', { seed: seed * 4 + 1, dist: 'normal' }).data() as Float32Array;
  const g = Tensor.random([tokens, R], 'f32', { seed: seed * 4 + 2, dist: 'normal' }).data() as Float32Array;
  const x = Tensor.random([tokens, K], 'f32', { seed: seed * 4 + 3, dist: 'normal', std: sigma });
  const xd = x.data() as Float32Array;
  for (let t = 0; t < tokens; t++)
    for (let r = 0; r < R; r++) {
      const a = g[t * R + r];
      for (let k = 0; k < K; k++) xd[t * K + k] += a * v[r * K + k];
    }
  const pick = Tensor.random([nOut], 'f32', { seed: seed * 4 + 4, low: 0, high: K }).data() as Float32Array;
  const outliers = new Set<number>();
  for (const p of pick) outliers.add(Math.min(K - 1, Math.floor(p)));
  for (const k of outliers) for (let t = 0; t < tokens; t++) xd[t * K + k] *= scale;
  return x;
}
