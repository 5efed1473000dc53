/**
 * Rotary embedding with DeepSeek's YaRN variant (SPEC §1.5–1.7): inverse frequencies blended
 * between interpolated and extrapolated per dimension pair, the cos/sin amplitude A, and the
 * softmax scale correction g(s, mscale_all_dim)^2. Computed in f32, as the reference does.
 */
import { DeepSeekV2Config } from './config';

/** g(s, m) = 1 if s <= 1 else 0.1 m ln(s) + 1 */
export function yarnGetMscale(scale: number, mscale: number): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

/** inv_freq[i] for the rotary pairs i = 0..R/2-1 (f32 values). */
export function ropeInvFreq(cfg: Pick<DeepSeekV2Config, 'qkRopeHeadDim' | 'ropeTheta' | 'ropeScaling'>): Float32Array {
  const d = cfg.qkRopeHeadDim;
  const theta = cfg.ropeTheta;
  const out = new Float32Array(d / 2);
  const f = Math.fround;
  for (let i = 0; i < d / 2; i++) out[i] = f(1 / f(theta ** ((2 * i) / d)));
  const y = cfg.ropeScaling;
  if (!y) return out;
  // Correction dim for n rotations: r(n) = d ln(L0 / (2 pi n)) / (2 ln theta).
  const r = (n: number) => (d * Math.log(y.originalMaxPositionEmbeddings / (n * 2 * Math.PI))) / (2 * Math.log(theta));
  const lo = Math.max(Math.floor(r(y.betaFast)), 0);
  let hi = Math.min(Math.ceil(r(y.betaSlow)), d - 1);
  if (lo === hi) hi += 0.001;
  for (let i = 0; i < d / 2; i++) {
    const ramp = Math.min(1, Math.max(0, (i - lo) / (hi - lo)));
    const keep = f(1 - ramp); // extrapolation factor 1
    const base = out[i];
    const interp = f(base / y.factor);
    out[i] = f(f(interp * f(1 - keep)) + f(base * keep));
  }
  return out;
}

/** Amplitude A multiplying cos and sin: g(s, mscale) / g(s, mscale_all_dim) (1.0 for shipped configs). */
export function ropeAmplitude(cfg: Pick<DeepSeekV2Config, 'ropeScaling'>): number {
  const y = cfg.ropeScaling;
  if (!y) return 1;
  return yarnGetMscale(y.factor, y.mscale) / yarnGetMscale(y.factor, y.mscaleAllDim);
}

/** Softmax scale (P+R)^-0.5 * g(s, mscale_all_dim)^2, used by both attention forms. */
export function softmaxScale(cfg: Pick<DeepSeekV2Config, 'qkNopeHeadDim' | 'qkRopeHeadDim' | 'ropeScaling'>): number {
  const base = (cfg.qkNopeHeadDim + cfg.qkRopeHeadDim) ** -0.5;
  const y = cfg.ropeScaling;
  if (!y || !y.mscaleAllDim) return base;
  const g = yarnGetMscale(y.factor, y.mscaleAllDim);
  return base * g * g;
}
