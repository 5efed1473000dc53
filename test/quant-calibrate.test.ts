/**
 * Layer-by-layer sequential GPTQ on the model's own activations (issue #3 item 7, SPEC §2.1),
 * measured where it matters: the logits of the quantized tiny model against the float model.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { makeModel } from '../lib/models/deepseek-v2/make-model';
import { DeepSeekV2Model } from '../lib/models/deepseek-v2/model';
import { spawnSync } from 'node:child_process';
import { forwardConsts, prefillChunk } from '../lib/models/deepseek-v2/forward';
import { loadWeights } from '../lib/models/deepseek-v2/weights';
import { calibrationSequences, sequentialCalibrate } from '../lib/quant/calibrate-model';
import { QTensor } from '../lib/quant/format';
import { Hessian, isSequentialGIdx, makeSequential, quantizeGptq } from '../lib/quant/quantize';
import { Tensor } from '../lib/tensor';
import { QuantizeReport, quantizeModel } from '../lib/quant/quantize-model';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-qc-'));
const dirs: string[] = [];
const src = tmp();
dirs.push(src);
makeModel({ preset: 'tiny', out: src, seed: 11 });
afterAll(() => dirs.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));

// Held-out evaluation sequences (a different generator seed from any calibration run).
const EVAL = calibrationSequences({ vocabSize: 512, count: 3, length: 64, seed: 9001 });

/** Per-position logits of every eval sequence. */
function evalLogits(dir: string): Float32Array[] {
  const m = DeepSeekV2Model.load(dir, { kvCache: 'f16' });
  try {
    return EVAL.map((ids) => {
      const seq = m.cache.open(ids.length);
      const logits = m.prefill(seq, Array.from(ids), { allLogits: true });
      m.cache.close(seq);
      return logits;
    });
  } finally {
    m.dispose();
  }
}

/** Mean over positions of KL(p_float ‖ p_quant), computed in f64 with a max-shifted log-softmax. */
function meanKL(ref: Float32Array[], q: Float32Array[], V: number): number {
  let sum = 0;
  let n = 0;
  for (let s = 0; s < ref.length; s++)
    for (let t = 0; t < ref[s].length / V; t++) {
      const lsm = (a: Float32Array) => {
        let mx = -Infinity;
        for (let v = 0; v < V; v++) mx = Math.max(mx, a[t * V + v]);
        let z = 0;
        for (let v = 0; v < V; v++) z += Math.exp(a[t * V + v] - mx);
        const lz = mx + Math.log(z);
        return Float64Array.from({ length: V }, (_, v) => a[t * V + v] - lz);
      };
      const lp = lsm(ref[s]);
      const lq = lsm(q[s]);
      let kl = 0;
      for (let v = 0; v < V; v++) kl += Math.exp(lp[v]) * (lp[v] - lq[v]);
      sum += kl;
      n++;
    }
  return sum / n;
}

async function quantized(opts: Partial<Parameters<typeof quantizeModel>[0]>): Promise<{ dir: string; r: QuantizeReport }> {
  const dir = tmp();
  dirs.push(dir);
  const r = await quantizeModel({ input: src, output: dir, bits: 3, groupSize: 32, seed: 4, ...opts });
  return { dir, r };
}

describe('quantizeModel calib: model (sequential GPTQ on the model activations)', () => {
  it('gives a lower logit KL vs the float model than RTN (and than synthetic calibration)', async () => {
    const V = 512;
    const ref = evalLogits(src);
    const model = await quantized({ calib: 'model', calibTokens: 1024, calibSeqLen: 128 });
    const once = await quantized({ calib: 'model', calibTokens: 1024, calibSeqLen: 128, trueSequential: false });
    const rtn = await quantized({ method: 'rtn' });
    const synth = await quantized({ calib: 'synthetic', calibTokens: 1024 });
    const kl = {
      model: meanKL(ref, evalLogits(model.dir), V),
      modelOncePerLayer: meanKL(ref, evalLogits(once.dir), V),
      rtn: meanKL(ref, evalLogits(rtn.dir), V),
      synthetic: meanKL(ref, evalLogits(synth.dir), V),
    };
    console.log('mean KL(float || quant), tiny preset, 3-bit g32:', kl);
    // Measured (seed 11/4, 3-bit g32): model 0.097 (true sequential inside each layer; 0.094
    // with one input collection per layer: the difference is within noise here), RTN 0.106,
    // synthetic 0.195. The margin
    // over RTN is modest because a random-init model's activations are nearly white (mean
    // |correlation| between input channels 0.04-0.16, measured per Linear), so H is close to
    // diagonal and GPTQ has little to exploit: per-layer output error 0.10-0.19 vs RTN's 0.20.
    // Synthetic calibration is worse than RTN here: it compensates for outlier channels the
    // model does not have. The comparison is the claim: GPTQ minimizes each layer's output error on the
    // distribution the model actually produces, RTN ignores it. Both KLs are positive (the
    // quantized model differs); no absolute bound is asserted beyond that.
    expect(kl.rtn).toBeGreaterThan(0);
    expect(kl.model).toBeGreaterThan(0);
    expect(kl.model).toBeLessThan(kl.rtn);
    expect(kl.modelOncePerLayer).toBeLessThan(kl.rtn);
    expect(kl.model).toBeLessThan(kl.synthetic);

    const qc = JSON.parse(fs.readFileSync(path.join(model.dir, 'quantize_config.json'), 'utf8'));
    expect(qc.true_sequential).toBe(true);
    expect(qc.calibration).toMatch(/layer-by-layer.*8 sequences, 1024 tokens/);
    // Routed experts see only their tokens: counts sum to top-k x tokens per MoE layer.
    const r = model.r;
    for (const l of [1, 2]) {
      const gates = r.quantized.filter((t) => new RegExp(`^model\\.layers\\.${l}\\.mlp\\.experts\\.\\d+\\.gate_proj$`).test(t.name));
      expect(gates.length).toBe(8);
      expect(gates.reduce((n, t) => n + t.tokens, 0)).toBe(2 * 1024);
      for (const t of gates) expect(t.method).toBe(t.tokens < 16 ? 'rtn' : 'gptq');
    }
    for (const t of r.quantized.filter((t) => !/experts\.\d+\./.test(t.name))) {
      expect(t.method).toBe('gptq');
      expect(t.tokens).toBe(1024);
    }
  }, 120_000);

  it('each layer is calibrated on the outputs of the already-quantized layers before it (vs an f64 Hessian of a reference forward)', async () => {
    const seqs = calibrationSequences({ vocabSize: 512, count: 3, length: 40, seed: 2 });
    const target = 'model.layers.1.self_attn.q_a_proj';
    const hessians: Float32Array[] = [];
    for (const quantizeLayer0 of [false, true]) {
      const layer0 = new Map<string, QTensor>();
      let got: Float32Array | null = null;
      let samples = 0;
      await sequentialCalibrate(src, seqs, async (prefix, w, h) => {
        if (prefix === target) {
          got = Float32Array.from(h.H.data() as Float32Array);
          samples = h.samples;
        }
        if (!quantizeLayer0 || !prefix.startsWith('model.layers.0.')) return null;
        const { q } = quantizeGptq(w, h, { bits: 3, groupSize: 32, actOrder: true, name: prefix });
        layer0.set(prefix, q);
        return q;
      });
      expect(samples).toBe(seqs.length);
      // Reference: the whole-model prefill (float, or with layer 0's Linears replaced by the
      // same QTensors), observing the target's input rows; H = (2/n) Σ x xᵀ in f64.
      const w = loadWeights(src);
      try {
        const a = w.layers[0].attn;
        const m = w.layers[0].mlp!;
        for (const lw of [a.qA!, a.qB!, a.kvA, a.kvB, a.oProj, m.gate, m.up, m.down]) {
          const q = layer0.get(lw.name.replace(/\.weight$/, ''));
          if (q) lw.w = isSequentialGIdx(q) ? q : makeSequential(q);
        }
        expect(layer0.size).toBe(quantizeLayer0 ? 8 : 0);
        const K = 256;
        const ref = new Float64Array(K * K);
        const k = { ...forwardConsts(w.config), observer: { linear: (lw: { name: string }, x: Tensor) => {
          if (lw.name !== `${target}.weight`) return;
          const xd = x.data() as Float32Array;
          for (let t = 0; t < x.shape[0]; t++)
            for (let i = 0; i < K; i++) for (let j = 0; j < K; j++) ref[i * K + j] += xd[t * K + i] * xd[t * K + j];
        } } };
        for (const ids of seqs) {
          let rows: Tensor | null = null;
          prefillChunk(w, k, ids, 0, { append: (_l, r) => void (rows = r), rows: () => rows! }, false);
        }
        // f32 accumulation over 120 rows of O(1) values vs f64: relative error per entry
        // ~1e-6 of the row norms; 1e-4 of the largest entry leaves a wide margin (the float and
        // quantized layer-0 Hessians are compared below: they differ by far more).
        let maxRef = 0;
        let maxDiff = 0;
        for (let i = 0; i < K * K; i++) {
          const r = (2 / seqs.length) * ref[i];
          maxRef = Math.max(maxRef, Math.abs(r));
          maxDiff = Math.max(maxDiff, Math.abs(r - got![i]));
        }
        expect(maxDiff / maxRef).toBeLessThan(1e-4);
        hessians.push(got!);
      } finally {
        w.checkpoint.close();
      }
    }
    // ... and the two really differ: layer 1 sees layer 0's quantization error.
    const [hf, hq] = hessians;
    let d = 0;
    let m = 0;
    for (let i = 0; i < hf.length; i++) {
      d = Math.max(d, Math.abs(hf[i] - hq[i]));
      m = Math.max(m, Math.abs(hf[i]));
    }
    console.log('layer-1 Hessian, quantized vs float layer 0: max |ΔH| / max |H| =', d / m);
    expect(d / m).toBeGreaterThan(1e-2);
  }, 60_000);

  it('true sequential: o_proj is calibrated behind the already-quantized q/kv projections of its own layer', async () => {
    const seqs = calibrationSequences({ vocabSize: 512, count: 2, length: 40, seed: 3 });
    const target = 'model.layers.0.self_attn.o_proj';
    const before = new Map<string, QTensor>();
    let got: Float32Array | null = null;
    await sequentialCalibrate(src, seqs, async (prefix, w, h) => {
      if (prefix === target) got = Float32Array.from(h.H.data() as Float32Array);
      if (!prefix.startsWith('model.layers.0.self_attn.') || prefix === target) return null;
      const { q } = quantizeGptq(w, h, { bits: 2, groupSize: 32, name: prefix });
      before.set(prefix, q);
      return q;
    });
    expect([...before.keys()].sort()).toEqual(['q_a_proj', 'q_b_proj', 'kv_a_proj_with_mqa', 'kv_b_proj'].map((n) => `model.layers.0.self_attn.${n}`).sort());
    // Reference: o_proj's input from a forward with exactly those four quantized, in f64.
    const ref = (quantizedQKV: boolean): Float64Array => {
      const w = loadWeights(src);
      try {
        const a = w.layers[0].attn;
        if (quantizedQKV) for (const lw of [a.qA!, a.qB!, a.kvA, a.kvB]) lw.w = before.get(lw.name.replace(/\.weight$/, ''))!;
        const K = a.oProj.K;
        const H = new Float64Array(K * K);
        const k = { ...forwardConsts(w.config), observer: { linear: (lw: { name: string }, x: Tensor) => {
          if (lw.name !== `${target}.weight`) return;
          const xd = x.data() as Float32Array;
          for (let t = 0; t < x.shape[0]; t++)
            for (let i = 0; i < K; i++) for (let j = 0; j < K; j++) H[i * K + j] += (2 / seqs.length) * xd[t * K + i] * xd[t * K + j];
        } } };
        for (const ids of seqs) {
          let rows: Tensor | null = null;
          prefillChunk(w, k, ids, 0, { append: (_l, r) => void (rows = r), rows: () => rows! }, false);
        }
        return H;
      } finally {
        w.checkpoint.close();
      }
    };
    const relMax = (r: Float64Array) => {
      let m = 0;
      let d = 0;
      for (let i = 0; i < r.length; i++) {
        m = Math.max(m, Math.abs(r[i]));
        d = Math.max(d, Math.abs(r[i] - got![i]));
      }
      return d / m;
    };
    // Same bound and reasoning as above (f32 accumulation of 80 rows vs f64).
    expect(relMax(ref(true))).toBeLessThan(1e-4);
    // 2-bit q/kv projections change o_proj's input far beyond that.
    expect(relMax(ref(false))).toBeGreaterThan(1e-2);
  }, 60_000);

  it('kvant quantize --calib model|synthetic; a bad --calib is KVANT_FORMAT', () => {
    const root = path.join(__dirname, '..');
    const out = tmp();
    dirs.push(out);
    const ok = spawnSync(process.execPath, ['bin/kvant.js', 'quantize', '--model', src, '--out', out, '--bits', '4', '--group-size', '32', '--calib', 'model', '--calib-tokens', '64', '--calib-seq-len', '32'], { cwd: root, encoding: 'utf8' });
    expect(ok.status).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'quantize_config.json'), 'utf8')).calibration).toMatch(/2 sequences, 64 tokens/);
    const syn = spawnSync(process.execPath, ['bin/kvant.js', 'quantize', '--model', src, '--out', out, '--bits', '4', '--group-size', '32', '--calib', 'synthetic', '--calib-tokens', '64'], { cwd: root, encoding: 'utf8' });
    expect(syn.status).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'quantize_config.json'), 'utf8')).calibration).toMatch(/synthetic/);
    const text = path.join(out, '..', `calib-${process.pid}.txt`);
    fs.writeFileSync(text, 'The model reads a prompt and predicts the next token. '.repeat(20));
    const txt = spawnSync(process.execPath, ['bin/kvant.js', 'quantize', '--model', src, '--out', out, '--bits', '4', '--group-size', '32', '--calib-text', text, '--calib-tokens', '64', '--calib-seq-len', '32'], { cwd: root, encoding: 'utf8' });
    fs.rmSync(text);
    expect(txt.status).toBe(0);
    expect(JSON.parse(fs.readFileSync(path.join(out, 'quantize_config.json'), 'utf8')).calibration).toMatch(/calibration text/);
    const bad = spawnSync(process.execPath, ['bin/kvant.js', 'quantize', '--model', src, '--out', out, '--calib', 'real'], { cwd: root, encoding: 'utf8' });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/KVANT_FORMAT/);
  }, 60_000);

  it('experts that get fewer than 16 routed tokens fall back to RTN, reported', async () => {
    // 12 calibration tokens: every expert sees at most 12.
    const { r } = await quantized({ calib: 'model', calibTokens: 12, bits: 4, groupSize: 32 });
    const experts = r.quantized.filter((t) => /experts\.\d+\./.test(t.name));
    expect(experts.length).toBe(2 * 8 * 3);
    for (const t of experts) {
      expect(t.method).toBe('rtn');
      expect(t.fallbackReason).toMatch(/calibration tokens \(< 16\)/);
    }
  }, 60_000);

  it('bad input: calib value, model + calibrate, token text without a tokenizer, non-DeepSeek config', async () => {
    const out = tmp();
    dirs.push(out);
    await expect(quantizeModel({ input: src, output: out, bits: 4, groupSize: 32, calib: 'real' as 'model' })).rejects.toMatchObject({ code: 'KVANT_FORMAT' });
    await expect(quantizeModel({ input: src, output: out, bits: 4, groupSize: 32, calib: 'model', calibrate: () => null })).rejects.toMatchObject({ code: 'KVANT_FORMAT' });
    await expect(quantizeModel({ input: src, output: out, bits: 4, groupSize: 32, calibSeqLen: 0, calibTokens: 8 })).rejects.toMatchObject({ code: 'KVANT_RANGE' });
    const noTok = tmp();
    dirs.push(noTok);
    for (const f of fs.readdirSync(src)) if (!f.startsWith('tokenizer')) fs.copyFileSync(path.join(src, f), path.join(noTok, f));
    await expect(quantizeModel({ input: noTok, output: out, bits: 4, groupSize: 32, calibText: 'hello' })).rejects.toMatchObject({ code: 'KVANT_IO' });
    const cfg = JSON.parse(fs.readFileSync(path.join(noTok, 'config.json'), 'utf8'));
    fs.writeFileSync(path.join(noTok, 'config.json'), JSON.stringify({ ...cfg, model_type: 'llama' }));
    await expect(quantizeModel({ input: noTok, output: out, bits: 4, groupSize: 32, calib: 'model' })).rejects.toMatchObject({ code: 'KVANT_FORMAT' });
  });
});
