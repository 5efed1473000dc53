/**
 * GPTQ checkpoints (all-quantized and mixed float/quantized) through the DeepSeek-V2 forward,
 * against the f64 reference run on the library's dequantization of the same tensors
 * (quantizeRtn-built AutoGPTQ tensor sets, 4 bits, group 128: tiny's moe_intermediate_size 160
 * gives expert down_proj a partial last group, q_lora_rank 96 a single partial group).
 *
 * Bound 1e-4 as for float weights (test/model-forward.test.ts): dequantized weights are
 * f16 scale × small integer, exact in f32, so qlinear and the reference multiply by the same
 * numbers and only f32 accumulation differs. The absorbed form's W_UK/W_UV come from kv_b
 * dequantized at load: the same values again.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { KvantError } from '../lib/errors';
import { decodeStep, forwardConsts, prefillChunk } from '../lib/models/deepseek-v2/forward';
import { DeepSeekV2Model } from '../lib/models/deepseek-v2/model';
import { loadWeights } from '../lib/models/deepseek-v2/weights';
import { QTensor } from '../lib/quant/format';
import { quantizeModel } from '../lib/quant/quantize-model';
import { ExactLatentStore, f64WeightsDequantized, gptqCopy, randomTokens, relErr, tinyModel } from './helpers/model-fixtures';
import { referenceForward } from './helpers/reference-forward';

const T = 9;
const BOUND = 1e-4;
// int8 activations (per block of 32 inputs, d = max|x|/127, round to nearest): each quantized
// linear's output gets an extra relative error of about 0.5% RMS (docs/qgemm.md, measured on
// 2048x1408 matrices; bound per output Σ|W|·d/2), independent from one linear to the next. The
// tiny model chains ~6 quantized linears per layer over 4 layers plus lm_head; with gain <= ~1
// per layer (as in test/model.test.ts) the logits' relative error stays within ~sqrt(25)·0.5% ≈
// 2.5%: bound 3e-2.
const INT8_BOUND = 3e-2;

function check(dir: string, activations: 'f32' | 'int8' = 'f32'): number[] {
  const w = loadWeights(dir);
  const cfg = w.config;
  const k = { ...forwardConsts(cfg), activations };
  const V = cfg.vocabSize;
  const width = cfg.kvLoraRank + cfg.qkRopeHeadDim;
  const tokens = randomTokens(T, V, 21);
  const ids = Int32Array.from(tokens);
  const ref = referenceForward(cfg, f64WeightsDequantized(dir), tokens);
  const s1 = new ExactLatentStore(cfg.numLayers, width, cfg.kvLoraRank);
  const pre = prefillChunk(w, k, ids, 0, { append: (l, r) => s1.append(l, r), rows: (l) => s1.all(l) }, true).data() as Float32Array;
  const errs = ref.map((r, t) => relErr(pre.subarray(t * V, (t + 1) * V), r));
  const s2 = new ExactLatentStore(cfg.numLayers, width, cfg.kvLoraRank);
  errs.push(relErr(prefillChunk(w, k, ids.subarray(0, 1), 0, { append: (l, r) => s2.append(l, r), rows: (l) => s2.all(l) }, false).data() as Float32Array, ref[0]));
  for (let t = 1; t < T; t++) {
    const lg = decodeStep(w, k, ids.subarray(t, t + 1), Int32Array.of(t), { append: (l, r) => s2.append(l, r), attend: (l, q, sc) => s2.attend(l, q, sc) });
    errs.push(relErr(lg.data() as Float32Array, ref[t]));
  }
  w.checkpoint.close();
  return errs;
}

function code(fn: () => unknown): KvantError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvantError);
    return e as KvantError;
  }
  throw new Error('expected a KvantError');
}

describe('GPTQ checkpoints', () => {
  const float = tinyModel('f32', {}, 4);
  const all = gptqCopy(float, { bits: 4, groupSize: 128 });

  it(`4-bit g128, every linear layer and lm_head quantized: prefill and decode vs the dequantized reference <= ${BOUND}`, () => {
    const errs = check(all);
    console.log(`gptq 4-bit all: max error ${Math.max(...errs).toExponential(2)}`);
    for (const e of errs) expect(e).toBeLessThanOrEqual(BOUND);
  });

  it(`mixed: attention and experts quantized, dense MLP, shared expert and lm_head float; no q_lora: <= ${BOUND}`, () => {
    const src = tinyModel('bf16', { q_lora_rank: null }, 4);
    const mixed = gptqCopy(src, { bits: 4, groupSize: 32, quantize: (n) => n.includes('self_attn') || n.includes('.experts.') });
    const errs = check(mixed);
    console.log(`gptq 4-bit mixed: max error ${Math.max(...errs).toExponential(2)}`);
    for (const e of errs) expect(e).toBeLessThanOrEqual(BOUND);
  });

  it(`GPTQ (Hessian, act-order, 3-bit g32, sharded) from quantizeModel: non-monotonic g_idx through qlinear/moeMlp perm <= ${BOUND}`, async () => {
    const out = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-gptq-ao-'));
    await quantizeModel({ input: float, output: out, bits: 3, groupSize: 32, actOrder: true, method: 'gptq', calibTokens: 64, seed: 1, maxShardBytes: 1 << 19 });
    const w = loadWeights(out);
    const q = w.layers[0].attn.kvA.w as QTensor;
    expect(q.perm).not.toBeNull(); // act-order rows were made sequential at load
    w.checkpoint.close();
    const errs = check(out);
    console.log(`gptq 3-bit act-order: max error ${Math.max(...errs).toExponential(2)}`);
    for (const e of errs) expect(e).toBeLessThanOrEqual(BOUND);
  });

  it(`int8 activations: prefill and decode vs the dequantized reference <= ${INT8_BOUND}; a decode batch of 9 equals each row alone`, () => {
    const errs = check(all, 'int8');
    console.log(`gptq 4-bit all, int8 activations: max error ${Math.max(...errs).toExponential(2)}`);
    for (const e of errs) expect(e).toBeLessThanOrEqual(INT8_BOUND);
    // Not the f32 path: the activation rounding shows (the f32 path is at ~1e-6 here).
    expect(Math.max(...errs)).toBeGreaterThan(BOUND);
    // Batch invariance: 9 rows take the GEMM path (M > 8), one row the GEMV; int8 blocks are the
    // same per row either way, so every row's logits match bit for bit.
    const m = DeepSeekV2Model.load(all, { activations: 'int8' });
    const seqs = Array.from({ length: 9 }, (_, i) => {
      const s = m.cache.open(4);
      m.prefill(s, randomTokens(2, m.vocabSize, 40 + i));
      return s;
    });
    const next = randomTokens(9, m.vocabSize, 50);
    const batch = m.decode(seqs, next);
    seqs.forEach((s) => m.cache.truncate(s, 2));
    seqs.forEach((s, i) => expect(Buffer.compare(Buffer.from(m.decode([s], [next[i]])[0].buffer), Buffer.from(batch[i].buffer))).toBe(0));
    // The load option reaches the forward: the same prompt through an f32-activation model differs.
    const mf = DeepSeekV2Model.load(all);
    const p = randomTokens(3, m.vocabSize, 60);
    const a = m.prefill(m.cache.open(3), p);
    const b = mf.prefill(mf.cache.open(3), p);
    expect(relErr(a, b)).toBeGreaterThan(BOUND);
    mf.dispose();
    m.dispose();
    expect(code(() => DeepSeekV2Model.load(all, { activations: 'int4' as 'int8' })).code).toBe('KVANT_RANGE');
  });

  it('the quantized model is smaller and its logits stay near the float model', () => {
    const mf = DeepSeekV2Model.load(float);
    const mq = DeepSeekV2Model.load(all);
    // f32 -> 4 bits + f16 scale and packed zero per 128: ~7x smaller on the linear layers.
    expect(mq.memory().weightsBytes).toBeLessThan(mf.memory().weightsBytes / 3);
    const tokens = randomTokens(6, mf.vocabSize, 2);
    const a = mf.prefill(mf.cache.open(6), tokens);
    const b = mq.prefill(mq.cache.open(6), tokens);
    const e = relErr(b, a);
    console.log(`gptq 4-bit vs float logits (last position): ${e.toExponential(2)}`);
    // RTN 4-bit weights carry ~1/(2·15)/sqrt(3) ≈ 2% relative RMS error per element; over three
    // layers and lm_head the logits move by a few tens of percent at most, not by 100% (that
    // would be unrelated logits, e.g. a v1/v2 zero-point mix-up).
    expect(e).toBeGreaterThan(1e-3);
    expect(e).toBeLessThan(0.5);
    mf.dispose();
    mq.dispose();
  });

  it('a quantize_config that disagrees with the tensors is a typed error naming the module', () => {
    const edit = (c: Record<string, unknown>) => {
      const d = gptqCopy(float, { bits: 4, groupSize: 128, quantize: (n) => n.includes('layers.0.') });
      const qc = JSON.parse(fs.readFileSync(path.join(d, 'quantize_config.json'), 'utf8'));
      fs.writeFileSync(path.join(d, 'quantize_config.json'), JSON.stringify({ ...qc, ...c }));
      return d;
    };
    const bits = code(() => DeepSeekV2Model.load(edit({ bits: 8 })));
    expect(bits.code).toBe('KVANT_SHAPE');
    expect(bits.message).toMatch(/model\.layers\.0\./);
    const group = code(() => DeepSeekV2Model.load(edit({ group_size: 32 })));
    expect(['KVANT_SHAPE', 'KVANT_FORMAT']).toContain(group.code);
    expect(group.message).toMatch(/model\.layers\.0\./);
    expect(code(() => DeepSeekV2Model.load(edit({ checkpoint_format: 'marlin' }))).code).toBe('KVANT_FORMAT');
    // GPTQ tensors without any quantize config, and a quantize config over a float checkpoint.
    const noCfg = edit({});
    fs.rmSync(path.join(noCfg, 'quantize_config.json'));
    const e1 = code(() => DeepSeekV2Model.load(noCfg));
    expect(e1.code).toBe('KVANT_FORMAT');
    expect(e1.message).toContain('.qweight');
    const floatWithCfg = edit({});
    const st = gptqCopy(float, { bits: 4, groupSize: 128, quantize: () => false });
    fs.copyFileSync(path.join(floatWithCfg, 'quantize_config.json'), path.join(st, 'quantize_config.json'));
    const e2 = code(() => DeepSeekV2Model.load(st));
    expect(e2.code).toBe('KVANT_FORMAT');
    expect(e2.message).toContain('no linear layer has a .qweight');
  });
});
