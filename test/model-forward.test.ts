/**
 * The DeepSeek-V2 forward (lib/models/deepseek-v2/forward.ts) vs the f64 reference forward
 * (test/helpers/reference-forward.ts) at every position, with an exact latent store as the
 * cache (rows kept in f32, absorbed attention in f64: test/helpers/model-fixtures.ts), so the
 * only differences left are kvant's f32 arithmetic. Cache precision is tested at the model
 * level (test/model.test.ts).
 *
 * Error per position: ‖Δlogits‖₂ / ‖reference logits‖₂. Bound 1e-4 (the bound for f32
 * weights; used for bf16 weights too, which the reference reads exactly as kvant does): f32 dot
 * products of length <= 512 carry ~sqrt(K)·2^-24 ≈ 1e-6 relative error, compounded over 3
 * layers, RMSNorms, softmax and lm_head — an order of magnitude or more below 1e-4. A
 * semantic slip (rotary pairing, softmax scale, a routing rule, a missing norm weight) moves
 * logits by 1e-2 or more.
 */
import { describe, expect, it } from 'vitest';
import { decodeStep, forwardConsts, prefillChunk } from '../lib/models/deepseek-v2/forward';
import { loadWeights } from '../lib/models/deepseek-v2/weights';
import { ExactLatentStore, f64Weights, randomTokens, relErr, rewriteCopy, tinyModel } from './helpers/model-fixtures';
import { referenceForward } from './helpers/reference-forward';

const T = 11;
const BOUND = 1e-4;

const f16Copy = (() => {
  let dir: string | undefined;
  return () => (dir ??= rewriteCopy(tinyModel('f32', {}, 7), (_, t) => t.to('f16')));
})();

const variants: [string, 'f32' | 'bf16' | 'f16', Record<string, unknown>][] = [
  ['f32 weights (q_lora, YaRN, greedy)', 'f32', {}],
  ['bf16 weights', 'bf16', {}],
  ['f16 weights', 'f16', {}],
  ['no q_lora_rank (plain q_proj)', 'f32', { q_lora_rank: null }],
  ['no YaRN', 'f32', { rope_scaling: null }],
  ['tied embeddings, moe_layer_freq 2 (layers 0 and 2 MoE, layer 1 dense)', 'f32', { tie_word_embeddings: true, moe_layer_freq: 2, first_k_dense_replace: 0 }],
  ['YaRN with mscale != mscale_all_dim (amplitude != 1)', 'f32', { rope_scaling: { type: 'yarn', factor: 8, original_max_position_embeddings: 128, beta_fast: 32, beta_slow: 1, mscale: 1, mscale_all_dim: 0.5 } }],
  // topk_group 1: both experts must come from the best group (k = 2 experts always span <= 2 groups, so topk_group >= 2 would equal greedy).
  ['group-limited routing, norm_topk_prob', 'f32', { topk_method: 'group_limited_greedy', n_group: 4, topk_group: 1, norm_topk_prob: true }],
  ['group-limited routing, routed_scaling_factor 16, 2 dense layers', 'bf16', { topk_method: 'group_limited_greedy', n_group: 2, topk_group: 1, routed_scaling_factor: 16, first_k_dense_replace: 2 }],
];

describe('forward vs the f64 reference (exact latent store)', () => {
  for (const [name, dtype, override] of variants) {
    it(`${name}: one-shot prefill, chunked prefill and token-by-token decode <= ${BOUND}`, () => {
      const dir = dtype === 'f16' ? f16Copy() : tinyModel(dtype, override, 7);
      const w = loadWeights(dir);
      const cfg = w.config;
      const k = forwardConsts(cfg);
      const V = cfg.vocabSize;
      const width = cfg.kvLoraRank + cfg.qkRopeHeadDim;
      const tokens = randomTokens(T, V, 11);
      const ref = referenceForward(cfg, f64Weights(dir), tokens);
      const ids = Int32Array.from(tokens);

      const s1 = new ExactLatentStore(cfg.numLayers, width, cfg.kvLoraRank);
      const one = prefillChunk(w, k, ids, 0, { append: (l, r) => s1.append(l, r), rows: (l) => s1.all(l) }, true).data() as Float32Array;
      const prefillErr = ref.map((r, t) => relErr(one.subarray(t * V, (t + 1) * V), r));

      // Chunks of 4: later chunks attend over the stored prefix, lower-right causal.
      const s2 = new ExactLatentStore(cfg.numLayers, width, cfg.kvLoraRank);
      const chunkedErr: number[] = [];
      for (let s = 0; s < T; s += 4) {
        const part = ids.subarray(s, Math.min(T, s + 4));
        const lg = prefillChunk(w, k, part, s, { append: (l, r) => s2.append(l, r), rows: (l) => s2.all(l) }, true).data() as Float32Array;
        for (let i = 0; i < part.length; i++) chunkedErr.push(relErr(lg.subarray(i * V, (i + 1) * V), ref[s + i]));
      }

      const s3 = new ExactLatentStore(cfg.numLayers, width, cfg.kvLoraRank);
      const io3 = { append: (l: number, r: Parameters<ExactLatentStore['append']>[1]) => s3.append(l, r), rows: (l: number) => s3.all(l) };
      const decodeErr = [relErr(prefillChunk(w, k, ids.subarray(0, 1), 0, io3, false).data() as Float32Array, ref[0])];
      for (let t = 1; t < T; t++) {
        const lg = decodeStep(w, k, ids.subarray(t, t + 1), Int32Array.of(t), { append: (l, r) => s3.append(l, r), attend: (l, q, sc) => s3.attend(l, q, sc) });
        decodeErr.push(relErr(lg.data() as Float32Array, ref[t]));
      }
      const mx = (a: number[]) => Math.max(...a).toExponential(2);
      console.log(`${name}: max error prefill ${mx(prefillErr)}, chunked ${mx(chunkedErr)}, decode ${mx(decodeErr)}`);
      for (const e of [...prefillErr, ...chunkedErr, ...decodeErr]) expect(e).toBeLessThanOrEqual(BOUND);
      w.checkpoint.close();
    });
  }
});
