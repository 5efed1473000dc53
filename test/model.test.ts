/**
 * DeepSeekV2Model end to end over its MlaKVCache: logits vs the f64 reference (plain, no cache
 * rounding) at every position for each cache type, chunking invariance, batch invariance.
 * Error per position: ‖Δlogits‖₂ / ‖reference logits‖₂. The forward's own arithmetic is held
 * to 1e-4 in test/model-forward.test.ts; here the error is dominated by how the cache stores the
 * latent rows (kvant's attention reads every row back from the cache, prefill included).
 *
 * Bounds per cache type: a cache stores each latent row with a relative error ε (measured here
 * on random rows of the model's width: ‖gather(append(x)) − x‖ / ‖x‖). The stored rows feed
 * keys, values and, through o_proj, the residual stream of each of the 3 layers; those errors
 * add with gain <= ~1 per layer, so the logits' relative error is bounded by 4ε (3 layers + 1
 * of headroom for the final norm/lm_head ratio). That linear argument fails where a perturbation
 * flips an MoE routing decision (a discontinuity: q6 on the default tiny model flips one
 * position's experts and jumps to 0.11), so these tests route every token to all 8 experts
 * (num_experts_per_tok = 8, weights = the continuous softmax); routing itself is tested against
 * the reference in test/model-forward.test.ts. Expected ε: bf16 ~2^-9/sqrt(3) ≈ 1.1e-3 (RNE),
 * q8 a few 1e-3, q4 a few 1e-2 (15 levels per group).
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { getThreads, setThreads } from '../lib/backend';
import { DeepSeekV2Model } from '../lib/models/deepseek-v2/model';
import { KvCacheType, MlaKVCache } from '../lib/kv/mla-cache';
import { Tensor } from '../lib/tensor';
import { f64Weights, randomTokens, relErr, tinyModel } from './helpers/model-fixtures';
import { referenceForward } from './helpers/reference-forward';

const T = 11;
const TYPES: KvCacheType[] = ['bf16', 'f16', 'q8', 'q6', 'q4'];
const GAIN = 4;

/** Relative storage error of a cache type on random N(0,1) rows of the model's width. */
function rowError(m: DeepSeekV2Model, type: KvCacheType): number {
  const cfg = m.config;
  const width = cfg.kvLoraRank + cfg.qkRopeHeadDim;
  const cache = new MlaKVCache({ layers: 1, latentDim: cfg.kvLoraRank, ropeDim: cfg.qkRopeHeadDim, type });
  const s = cache.open(64);
  const x = Tensor.random([64, width], 'f32', { seed: 17, dist: 'normal' });
  cache.append(s, 0, x);
  const e = relErr(cache.gather(s, 0, 0, 64).data() as Float32Array, x.data() as Float32Array);
  cache.dispose();
  return e;
}

function prefillRows(m: DeepSeekV2Model, tokens: number[], chunkSize?: number): Float32Array[] {
  const seq = m.cache.open(tokens.length);
  const V = m.vocabSize;
  const all = m.prefill(seq, tokens, { allLogits: true, chunkSize });
  m.cache.close(seq);
  return tokens.map((_, t) => all.slice(t * V, (t + 1) * V));
}

function decodeRows(m: DeepSeekV2Model, tokens: number[]): Float32Array[] {
  const seq = m.cache.open(tokens.length);
  const rows = [m.prefill(seq, tokens.slice(0, 1))];
  for (let t = 1; t < tokens.length; t++) rows.push(m.decode([seq], [tokens[t]])[0]);
  m.cache.close(seq);
  return rows;
}

const same = (a: Float32Array, b: Float32Array) => a.length === b.length && a.every((v, i) => Object.is(v, b[i]));

describe('DeepSeekV2Model over its latent cache vs the f64 reference', () => {
  const dir = tinyModel('bf16', { num_experts_per_tok: 8 }, 5);
  const ref = (() => {
    const m = DeepSeekV2Model.load(dir);
    const tokens = randomTokens(T, m.vocabSize, 3);
    m.dispose();
    return { tokens, logits: referenceForward(m.config, f64Weights(dir), tokens) };
  })();

  for (const type of TYPES) {
    it(`${type} cache: prefill and decode logits at every position <= ${GAIN}x the cache's row error`, () => {
      const m = DeepSeekV2Model.load(dir, { kvCache: type });
      const eps = rowError(m, type);
      const bound = GAIN * eps;
      const pe = prefillRows(m, ref.tokens).map((r, t) => relErr(r, ref.logits[t]));
      const de = decodeRows(m, ref.tokens).map((r, t) => relErr(r, ref.logits[t]));
      console.log(`${type} cache: row error ${eps.toExponential(2)}, max error prefill ${Math.max(...pe).toExponential(2)}, decode ${Math.max(...de).toExponential(2)}`);
      for (const e of [...pe, ...de]) expect(e).toBeLessThanOrEqual(bound);
      m.dispose();
    });
  }

  it('the scalar ISA level (KVANT_ISA=scalar, in a child process over dist/) meets the same bf16-cache bound', () => {
    const m = DeepSeekV2Model.load(dir);
    const bound = GAIN * rowError(m, 'bf16');
    m.dispose();
    const script = `
      const { DeepSeekV2Model, backendInfo } = require(${JSON.stringify(path.join(__dirname, '..', 'dist', 'index.js'))});
      const m = DeepSeekV2Model.load(${JSON.stringify(dir)});
      const toks = ${JSON.stringify(ref.tokens)};
      const s = m.cache.open(toks.length);
      const pre = m.prefill(s, toks, { allLogits: true });
      const s2 = m.cache.open(toks.length);
      const dec = [Array.from(m.prefill(s2, toks.slice(0, 1)))];
      for (let t = 1; t < toks.length; t++) dec.push(Array.from(m.decode([s2], [toks[t]])[0]));
      process.stdout.write(JSON.stringify({ isa: backendInfo().isa, pre: Array.from(pre), dec }));`;
    const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, KVANT_ISA: 'scalar' }, encoding: 'utf8', maxBuffer: 1 << 26 });
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { isa: string; pre: number[]; dec: number[][] };
    expect(out.isa).toBe('scalar');
    const V = ref.logits[0].length;
    const errs = ref.logits.flatMap((lr, t) => [relErr(out.pre.slice(t * V, (t + 1) * V), lr), relErr(out.dec[t], lr)]);
    console.log(`scalar ISA, bf16 cache: max error ${Math.max(...errs).toExponential(2)}`);
    for (const e of errs) expect(e).toBeLessThanOrEqual(bound);
  });

  // Invariance tests on the default routing (top-2 of 8): expert row groups differ per batch.
  const routed = tinyModel('bf16', {}, 5);

  it('chunked prefill is bit-identical to one-shot prefill (bf16 and q4 caches)', () => {
    for (const type of ['bf16', 'q4'] as const) {
      const m = DeepSeekV2Model.load(routed, { kvCache: type });
      const one = prefillRows(m, ref.tokens);
      for (const chunk of [1, 4, 7]) {
        const rows = prefillRows(m, ref.tokens, chunk);
        rows.forEach((r, t) => expect(same(r, one[t]), `${type} chunk ${chunk} position ${t}`).toBe(true));
      }
      m.dispose();
    }
  });

  it('prefill and decode logits are bit-identical with 1 and 2 threads', () => {
    const m = DeepSeekV2Model.load(routed);
    const before = getThreads();
    const run = () => {
      const s = m.cache.open(T + 1);
      const a = m.prefill(s, ref.tokens, { allLogits: true });
      const b = m.decode([s], [7])[0];
      m.cache.close(s);
      return [a, b];
    };
    try {
      setThreads(1);
      const one = run();
      setThreads(2);
      const two = run();
      one.forEach((x, i) => expect(same(x, two[i])).toBe(true));
    } finally {
      setThreads(before);
    }
    m.dispose();
  });

  it('profiling splits a decode step into components with the weight bytes each read', () => {
    const m = DeepSeekV2Model.load(routed);
    expect(m.profile()).toBeNull();
    const s = m.cache.open(4);
    m.prefill(s, [1, 2, 3]);
    m.setProfiling(true);
    const plain = m.decode([s], [4])[0];
    const p = m.profile()!;
    expect(p.calls).toBe(1);
    const cfg = m.config;
    const H = cfg.hiddenSize;
    // bf16 checkpoint: lm_head [V, H]; one MoE layer reads router + shared + 2 distinct experts per token.
    expect(p.bytes.lm_head).toBe(cfg.vocabSize * H * 2);
    const expert = 3 * cfg.moeIntermediateSize * H * 2;
    const moeLayers = cfg.numLayers - cfg.firstKDenseReplace;
    expect(p.bytes.experts).toBe(moeLayers * (cfg.nRoutedExperts * H * 2 + cfg.nSharedExperts * expert + cfg.numExpertsPerTok * expert));
    expect(p.bytes.dense_mlp).toBe(cfg.firstKDenseReplace * 3 * cfg.intermediateSize * H * 2);
    expect(p.bytes.attention).toBeGreaterThan(0);
    const parts = Object.values(p.ms).reduce((a, b) => a + b, 0);
    expect(parts).toBeLessThanOrEqual(p.total_ms);
    m.setProfiling(false);
    expect(m.profile()).toBeNull();
    m.cache.close(s);
    // Profiling does not change results.
    const s2 = m.cache.open(4);
    m.prefill(s2, [1, 2, 3]);
    expect(same(m.decode([s2], [4])[0], plain)).toBe(true);
    m.dispose();
  });

  it('a batch of 9 decode rows is bit-identical to each sequence decoded alone', () => {
    const m = DeepSeekV2Model.load(routed);
    const prompts = Array.from({ length: 9 }, (_, i) => randomTokens(1 + ((i * 5) % 9), m.vocabSize, 100 + i));
    const steps = 3;
    const next = Array.from({ length: 9 }, (_, i) => randomTokens(steps, m.vocabSize, 200 + i));
    const alone = prompts.map((p, i) => {
      const s = m.cache.open(p.length + steps);
      m.prefill(s, p);
      const out = next[i].map((tok) => m.decode([s], [tok])[0]);
      m.cache.close(s);
      return out;
    });
    const seqs = prompts.map((p) => {
      const s = m.cache.open(p.length + steps);
      m.prefill(s, p);
      return s;
    });
    for (let step = 0; step < steps; step++) {
      const out = m.decode(seqs, next.map((n) => n[step]));
      out.forEach((r, i) => expect(same(r, alone[i][step]), `sequence ${i} step ${step}`).toBe(true));
    }
    expect(m.memory().cacheBytes).toBeGreaterThan(0);
    seqs.forEach((s) => m.cache.close(s));
    expect(m.memory().cacheBytes).toBe(0);
    m.dispose();
  });
});
