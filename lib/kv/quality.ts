/**
 * The KV cache quality table (in the spirit of ExLlamaV2's cache evaluation): for each cache
 * type, with and without the Hadamard rotation, the error of the attention output against an
 * f64 attention over the unquantized keys/values, on data with realistic outlier channels
 * (a few channels 10x larger in every token, as keys and MLA latents have). Random data, no
 * model: this measures the cache's effect on one attention call, not task accuracy.
 */
import { Tensor } from '../tensor';
import { KV_CACHE_TYPES, KvCacheType, isQuantized } from './format';
import { MlaKVCache } from './mla-cache';
import { PagedKVCache } from './paged-cache';

/** One row of the quality table. */
export interface KvQualityRow {
  cache: 'mla' | 'standard';
  type: KvCacheType;
  hadamard: boolean;
  /** ||out - ref||₂ / ||ref||₂ over all heads. */
  relError: number;
  /** max |out - ref|. */
  maxAbsError: number;
  /** Bytes per token per layer. */
  bytesPerTokenLayer: number;
}

export interface KvQualityOptions {
  tokens?: number;
  seed?: number;
  /** Multiplier of the outlier channels (default 10). */
  outlier?: number;
}

function outlierRows(T: number, width: number, outCh: readonly number[], mult: number, seed: number): Tensor {
  const t = Tensor.random([T, width], 'f32', { seed, dist: 'normal' });
  const d = t.data() as Float32Array;
  for (let r = 0; r < T; r++) for (const c of outCh) d[r * width + c] *= mult;
  return t;
}

/** f64 softmax attention of H query rows over T keys, added into out[outOff + h·outLd + i]: the reference the quality table and the attention bench share. */
export function attendF64(q: Float32Array, H: number, Dk: number, k: Float32Array, ldk: number, v: Float32Array, ldv: number, Dv: number, T: number, scale: number, out: Float64Array, outOff: number, outLd: number): void {
  const s = new Float64Array(T);
  for (let h = 0; h < H; h++) {
    let m = -Infinity;
    for (let t = 0; t < T; t++) {
      let d = 0;
      for (let i = 0; i < Dk; i++) d += q[h * Dk + i] * k[t * ldk + i];
      s[t] = d * scale;
      m = Math.max(m, s[t]);
    }
    let z = 0;
    for (let t = 0; t < T; t++) z += s[t] = Math.exp(s[t] - m);
    for (let t = 0; t < T; t++) for (let i = 0; i < Dv; i++) out[outOff + h * outLd + i] += (s[t] / z) * v[t * ldv + i];
  }
}

function errors(got: Float32Array, want: Float64Array): { relError: number; maxAbsError: number } {
  let num = 0;
  let den = 0;
  let mx = 0;
  for (let i = 0; i < want.length; i++) {
    const e = got[i] - want[i];
    num += e * e;
    den += want[i] * want[i];
    mx = Math.max(mx, Math.abs(e));
  }
  return { relError: Math.sqrt(num / den), maxAbsError: mx };
}

const VARIANTS: [KvCacheType, boolean][] = KV_CACHE_TYPES.flatMap((t): [KvCacheType, boolean][] => (isQuantized(t) ? [[t, false], [t, true]] : [[t, false]]));

/** DeepSeek-V2-Lite MLA shapes (16 heads, latent 512 + rope 64, scale 0.1147) and a 32 x 128 standard cache. */
export function measureKvQuality(o: KvQualityOptions = {}): KvQualityRow[] {
  const T = o.tokens ?? 1024;
  const seed = o.seed ?? 1;
  const mult = o.outlier ?? 10;
  const rows: KvQualityRow[] = [];
  {
    const H = 16;
    const L = 512;
    const R = 64;
    const scale = 0.1147214;
    const data = outlierRows(T, L + R, [7, 100, 301, 480, L + 3], mult, seed);
    const q = Tensor.random([1, H, L + R], 'f32', { seed: seed + 1, dist: 'normal' });
    const d = data.data() as Float32Array;
    const want = new Float64Array(H * L);
    attendF64(q.data() as Float32Array, H, L + R, d, L + R, d, L + R, L, T, scale, want, 0, L);
    for (const [type, hadamard] of VARIANTS) {
      const c = new MlaKVCache({ layers: 1, latentDim: L, ropeDim: R, type, hadamard });
      const s = c.open(T);
      c.append(s, 0, data);
      const got = c.decode(0, [s], q, scale).out.toFloat32Array();
      rows.push({ cache: 'mla', type, hadamard, ...errors(got, want), bytesPerTokenLayer: c.bytesPerToken });
      c.dispose();
    }
  }
  {
    const Hkv = 32;
    const D = 128;
    const outCh: number[] = [];
    for (let h = 0; h < Hkv; h++) outCh.push(h * D + 5, h * D + 64, h * D + 99);
    const k = outlierRows(T, Hkv * D, outCh, mult, seed + 2);
    const v = outlierRows(T, Hkv * D, [], 1, seed + 3);
    const q = Tensor.random([1, Hkv, D], 'f32', { seed: seed + 4, dist: 'normal' });
    const kd = k.data() as Float32Array;
    const vd = v.data() as Float32Array;
    const qd = q.data() as Float32Array;
    const want = new Float64Array(Hkv * D);
    for (let h = 0; h < Hkv; h++) attendF64(qd.subarray(h * D), 1, D, kd.subarray(h * D), Hkv * D, vd.subarray(h * D), Hkv * D, D, T, D ** -0.5, want, h * D, D);
    for (const [type, hadamard] of VARIANTS) {
      const c = new PagedKVCache({ layers: 1, kvHeads: Hkv, headDim: D, type, hadamard });
      const s = c.open(T);
      c.append(s, 0, k.reshape([T, Hkv, D]), v.reshape([T, Hkv, D]));
      const got = c.decode(0, [s], q).out.toFloat32Array();
      rows.push({ cache: 'standard', type, hadamard, ...errors(got, want), bytesPerTokenLayer: c.bytesPerToken });
      c.dispose();
    }
  }
  return rows;
}

/** The table as Markdown. */
export function formatKvQuality(rows: readonly KvQualityRow[]): string {
  const lines = ['| cache | type | hadamard | rel. L2 error of attention output | max abs error | bytes/token/layer |', '|---|---|---|---|---|---|'];
  for (const r of rows)
    lines.push(`| ${r.cache === 'mla' ? 'MLA V2-Lite (16 h, 512+64)' : 'standard 32 x 128'} | ${r.type} | ${isQuantized(r.type) ? (r.hadamard ? 'yes' : 'no') : '-'} | ${r.relError.toExponential(2)} | ${r.maxAbsError.toExponential(2)} | ${r.bytesPerTokenLayer} |`);
  return lines.join('\n');
}
