/**
 * Test-only f64 reference forward of DeepSeek-V2, written for clarity: the whole sequence at
 * once, no cache, no weight absorption, MLA in its explicit (MHA) form, exactly as
 * ../shared/SPEC.md §1.3–1.9 describes. The decode loop's logits are checked against it.
 */
import { DeepSeekV2Config, isMoeLayer } from '../../lib/models/deepseek-v2/config';
import { ropeAmplitude, ropeInvFreq, softmaxScale } from '../../lib/models/deepseek-v2/rope';

/** A weight as f64: row-major [out, in] for linears. */
export interface RefWeight {
  shape: number[];
  data: Float64Array;
}
export type WeightGetter = (name: string) => RefWeight;

type Mat = Float64Array[]; // rows

/** y[t] = x[t] · Wᵀ for W [out, in]. */
function linear(x: Mat, w: RefWeight): Mat {
  const [out, inn] = w.shape;
  return x.map((row) => {
    if (row.length !== inn) throw new Error(`linear: input ${row.length} vs weight in ${inn}`);
    const y = new Float64Array(out);
    for (let o = 0; o < out; o++) {
      let s = 0;
      const base = o * inn;
      for (let i = 0; i < inn; i++) s += row[i] * w.data[base + i];
      y[o] = s;
    }
    return y;
  });
}

function rmsnorm(x: Mat, w: RefWeight, eps: number): Mat {
  return x.map((row) => {
    let ss = 0;
    for (const v of row) ss += v * v;
    const inv = 1 / Math.sqrt(ss / row.length + eps);
    return row.map((v, i) => v * inv * w.data[i]);
  });
}

const silu = (z: number) => z / (1 + Math.exp(-z));

function mlp(x: Mat, get: WeightGetter, prefix: string): Mat {
  const g = linear(x, get(`${prefix}.gate_proj.weight`));
  const u = linear(x, get(`${prefix}.up_proj.weight`));
  const hmid = g.map((row, t) => row.map((v, i) => silu(v) * u[t][i]));
  return linear(hmid, get(`${prefix}.down_proj.weight`));
}

/** Rotates adjacent pairs (x[2i], x[2i+1]) by pos * invFreq[i], amplitude A (SPEC §1.5). */
function rope(x: Float64Array, offset: number, pos: number, invFreq: Float32Array, amp: number): void {
  for (let i = 0; i < invFreq.length; i++) {
    const ang = pos * invFreq[i];
    const c = Math.cos(ang) * amp;
    const s = Math.sin(ang) * amp;
    const a = x[offset + 2 * i];
    const b = x[offset + 2 * i + 1];
    x[offset + 2 * i] = a * c - b * s;
    x[offset + 2 * i + 1] = a * s + b * c;
  }
}

/** Router: softmax, greedy or group-limited top-k (ties to the lower index), weights. */
export function routeRef(cfg: DeepSeekV2Config, logits: Float64Array): { idx: number[]; w: number[] } {
  const E = logits.length;
  const m = Math.max(...logits);
  const e = Array.from(logits, (v) => Math.exp(v - m));
  const z = e.reduce((a, b) => a + b, 0);
  const s = e.map((v) => v / z);
  let masked = s.slice();
  if (cfg.topkMethod === 'group_limited_greedy') {
    const per = E / cfg.nGroup;
    const gs = Array.from({ length: cfg.nGroup }, (_, g) => Math.max(...s.slice(g * per, (g + 1) * per)));
    const order = gs.map((v, g) => [v, g] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    const keep = new Set(order.slice(0, cfg.topkGroup).map(([, g]) => g));
    masked = s.map((v, i) => (keep.has(Math.floor(i / per)) ? v : 0));
  }
  const order = masked.map((v, i) => [v, i] as const).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  const idx = order.slice(0, cfg.numExpertsPerTok).map(([, i]) => i);
  let w = idx.map((i) => masked[i]);
  if (cfg.numExpertsPerTok > 1 && cfg.normTopkProb) {
    const sum = w.reduce((a, b) => a + b, 0) + 1e-20;
    w = w.map((v) => v / sum);
  } else {
    w = w.map((v) => v * cfg.routedScalingFactor);
  }
  return { idx, w };
}

function moe(x: Mat, get: WeightGetter, cfg: DeepSeekV2Config, prefix: string): Mat {
  const logits = linear(x, get(`${prefix}.gate.weight`));
  const shared = cfg.nSharedExperts > 0 ? mlp(x, get, `${prefix}.shared_experts`) : x.map((r) => new Float64Array(r.length));
  return x.map((row, t) => {
    const { idx, w } = routeRef(cfg, logits[t]);
    const y = Float64Array.from(shared[t]);
    idx.forEach((e, j) => {
      const out = mlp([row], get, `${prefix}.experts.${e}`)[0];
      for (let i = 0; i < y.length; i++) y[i] += w[j] * out[i];
    });
    return y;
  });
}

function attention(x: Mat, get: WeightGetter, cfg: DeepSeekV2Config, prefix: string, positions: number[]): Mat {
  const T = x.length;
  const nh = cfg.numHeads;
  const P = cfg.qkNopeHeadDim;
  const R = cfg.qkRopeHeadDim;
  const Dv = cfg.vHeadDim;
  const L = cfg.kvLoraRank;
  const q =
    cfg.qLoraRank === null
      ? linear(x, get(`${prefix}.q_proj.weight`))
      : linear(rmsnorm(linear(x, get(`${prefix}.q_a_proj.weight`)), get(`${prefix}.q_a_layernorm.weight`), cfg.rmsNormEps), get(`${prefix}.q_b_proj.weight`));
  const a = linear(x, get(`${prefix}.kv_a_proj_with_mqa.weight`));
  const c = rmsnorm(a.map((r) => r.slice(0, L)), get(`${prefix}.kv_a_layernorm.weight`), cfg.rmsNormEps);
  const kpe = a.map((r) => r.slice(L, L + R));
  const kv = linear(c, get(`${prefix}.kv_b_proj.weight`)); // [T, nh*(P+Dv)]
  const invFreq = ropeInvFreq(cfg);
  const amp = ropeAmplitude(cfg);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < nh; h++) rope(q[t], h * (P + R) + P, positions[t], invFreq, amp);
    rope(kpe[t], 0, positions[t], invFreq, amp);
  }
  const scale = softmaxScale(cfg);
  const o = Array.from({ length: T }, () => new Float64Array(nh * Dv));
  for (let h = 0; h < nh; h++) {
    for (let t = 0; t < T; t++) {
      const qh = q[t].subarray(h * (P + R), (h + 1) * (P + R));
      const scores: number[] = [];
      for (let u = 0; u <= t; u++) {
        let sc = 0;
        const kn = kv[u].subarray(h * (P + Dv), h * (P + Dv) + P);
        for (let i = 0; i < P; i++) sc += qh[i] * kn[i];
        for (let i = 0; i < R; i++) sc += qh[P + i] * kpe[u][i];
        scores.push(sc * scale);
      }
      const m = Math.max(...scores);
      const p = scores.map((v) => Math.exp(v - m));
      const z = p.reduce((aa, b) => aa + b, 0);
      for (let u = 0; u <= t; u++) {
        const v = kv[u].subarray(h * (P + Dv) + P, (h + 1) * (P + Dv));
        for (let i = 0; i < Dv; i++) o[t][h * Dv + i] += (p[u] / z) * v[i];
      }
    }
  }
  return linear(o, get(`${prefix}.o_proj.weight`));
}

/** Logits [T][vocab] for a token sequence starting at position 0. */
export function referenceForward(cfg: DeepSeekV2Config, get: WeightGetter, tokens: number[]): Float64Array[] {
  const embed = get('model.embed_tokens.weight');
  const H = cfg.hiddenSize;
  let h: Mat = tokens.map((tok) => embed.data.slice(tok * H, (tok + 1) * H));
  const positions = tokens.map((_, i) => i);
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    const a = attention(rmsnorm(h, get(`${p}.input_layernorm.weight`), cfg.rmsNormEps), get, cfg, `${p}.self_attn`, positions);
    h = h.map((row, t) => row.map((v, i) => v + a[t][i]));
    const xn = rmsnorm(h, get(`${p}.post_attention_layernorm.weight`), cfg.rmsNormEps);
    const f = isMoeLayer(cfg, l) ? moe(xn, get, cfg, `${p}.mlp`) : mlp(xn, get, `${p}.mlp`);
    h = h.map((row, t) => row.map((v, i) => v + f[t][i]));
  }
  const hn = rmsnorm(h, get('model.norm.weight'), cfg.rmsNormEps);
  return linear(hn, get(cfg.tieWordEmbeddings ? 'model.embed_tokens.weight' : 'lm_head.weight'));
}
