/**
 * The forward functions alone (lib/models/deepseek-v2/forward.ts), without the cache class:
 * one-token-at-a-time decode steps over a bf16 latent pool read by mlaDecode, against the f64
 * reference with bf16-rounded latent rows. Isolates the absorbed MLA algebra (W_UK(h)ᵀ on the
 * query, W_UV(h) on the attended latent) from the cache implementation.
 * Bound 1e-4: see test/model.test.ts (f32 arithmetic, weights exact, cache precision modelled).
 */
import { expect, it } from 'vitest';
import { decodeStep, forwardConsts, prefillChunk } from '../lib/models/deepseek-v2/forward';
import { loadWeights } from '../lib/models/deepseek-v2/weights';
import { mlaDecode } from '../lib/ops/attention';
import { Tensor } from '../lib/tensor';
import { bf16Round, f64Weights, randomTokens, relErr, tinyModel } from './helpers/model-fixtures';
import { referenceForward } from './helpers/reference-forward';

it('prefill of the first token, then absorbed decode steps, match the f64 reference <= 1e-4', () => {
  const dir = tinyModel('f32', { q_lora_rank: null }, 3);
  const w = loadWeights(dir);
  const cfg = w.config;
  const k = forwardConsts(cfg);
  const Wd = cfg.kvLoraRank + cfg.qkRopeHeadDim;
  const tokens = randomTokens(9, cfg.vocabSize, 2);
  const maxT = tokens.length;
  const pool = Array.from({ length: cfg.numLayers }, () => Tensor.zeros([1, maxT, Wd], 'bf16'));
  let len = 0;
  const append = (l: number, rows: Tensor) => (pool[l].data() as Uint16Array).set(rows.to('bf16').data() as Uint16Array, len * Wd);
  const ref = referenceForward(cfg, f64Weights(dir), tokens, { roundLatent: bf16Round });
  const errs: number[] = [];
  const first = prefillChunk(w, k, Int32Array.of(tokens[0]), 0, { append, rows: (l) => pool[l].reshape([maxT, Wd]).slice(0, 1).to('f32') }, true);
  errs.push(relErr(first.data() as Float32Array, ref[0]));
  for (let t = 1; t < tokens.length; t++) {
    len = t;
    const view = (l: number) => ({ pool: pool[l], pageSize: maxT, pageTable: Int32Array.of(0), maxPages: 1, seqLens: Int32Array.of(t + 1) });
    const logits = decodeStep(w, k, Int32Array.of(tokens[t]), Int32Array.of(t), {
      append,
      attend: (l, q, scale) => mlaDecode(q, view(l), { L: cfg.kvLoraRank, R: cfg.qkRopeHeadDim, scale }).out,
    });
    errs.push(relErr(logits.data() as Float32Array, ref[t]));
  }
  console.log('forward-level decode errors', errs.map((e) => e.toExponential(2)).join(' '));
  for (const e of errs) expect(e).toBeLessThanOrEqual(1e-4);
  w.checkpoint.close();
});
