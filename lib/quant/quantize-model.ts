/**
 * Quantizes a float checkpoint folder (DeepSeek-V2 layout, or any folder of float
 * safetensors) into a GPTQ folder that AutoGPTQ-style loaders read: per Linear
 * `qweight/qzeros/scales/g_idx`, everything else in bf16, quantize_config.json and the same
 * object as config.json's `quantization_config`, sharded safetensors with an index.
 *
 * Calibration, `calib: 'model'` (the default): layer-by-layer sequential GPTQ — calibration
 * token ids (seeded random, or `calibText` through the tokenizer) run through the model; each
 * layer's Linears are quantized from the Hessians of their inputs and the next layer is fed the
 * already-quantized layer's outputs (SPEC §2.1; lib/quant/calibrate-model.ts). Routed experts
 * see only the tokens routed to them and fall back to round-to-nearest below 16.
 *
 * `calib: 'synthetic'`: each Linear's input activations come from {@link syntheticActivations}
 * (documented distribution: correlated Gaussian with outlier channels), seeded per tensor.
 * Routed MoE experts receive their expected share of the tokens (calibTokens ·
 * experts_per_tok / n_routed_experts). Supplying `calibrate` replaces the synthetic source: it
 * is called once per Linear, in file order.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KvantError, expected } from '../errors';
import { Checkpoint } from '../io/checkpoint';
import { LazyTensor, writeShardedSafetensors } from '../io/safetensors';
import { Tensor } from '../tensor';
import { parseConfig } from '../models/deepseek-v2/config';
import { TextTokenizer } from '../text/tokenizer';
import { calibrationSequences, sequentialCalibrate } from './calibrate-model';
import { syntheticActivations } from './calibration';
import { dynamicRuleFor } from './checkpoint';
import { QTensor, QuantBits, QUANT_BITS, isPackable } from './format';
import { Hessian, QuantizeOptions, quantizeGptqAsync, quantizeRtn } from './quantize';

/** What a calibration source is asked for: one Linear's input activations. */
export interface CalibrationRequest {
  /** Module name, e.g. "model.layers.0.mlp.down_proj". */
  name: string;
  /** Input channels. */
  K: number;
  /** Tokens wanted. */
  tokens: number;
  seed: number;
}
/** Supplies f32 [tokens, K] activations for one Linear (or null: no calibration -> RTN). */
export type CalibrationSource = (r: CalibrationRequest) => Tensor | null | Promise<Tensor | null>;

export interface QuantizeModelOptions {
  input: string;
  output: string;
  bits: QuantBits;
  groupSize: number;
  actOrder?: boolean;
  sym?: boolean;
  method?: 'gptq' | 'rtn';
  /** GPTQModel `dynamic` rules: {"+:regex": {bits, group_size, desc_act, sym}, "-:regex": {}} ("-:" keeps float). */
  rules?: Record<string, object>;
  /**
   * Where GPTQ's calibration activations come from. 'model' (default for a DeepSeek-V2
   * checkpoint): layer-by-layer sequential GPTQ on the model's own activations for the
   * calibration token ids (see calibrate-model.ts). 'synthetic': each Linear gets
   * {@link syntheticActivations} (or `calibrate`'s) independently.
   */
  calib?: 'model' | 'synthetic';
  /**
   * Calibration tokens: with calib 'model' the total over all sequences (default 4096, in
   * sequences of `calibSeqLen`); with 'synthetic' per Linear (default 256).
   */
  calibTokens?: number;
  /**
   * With calib 'model': quantize each layer's Linears in groups (q_a/q + kv_a -> q_b + kv_b ->
   * o -> gate + up -> down), re-collecting inputs behind each (default true; recorded as
   * true_sequential). false: one input collection per layer.
   */
  trueSequential?: boolean;
  /** Tokens per calibration sequence with calib 'model' (default 128, capped by calibTokens). */
  calibSeqLen?: number;
  /** Calibration text (calib 'model'), tokenized with the input folder's tokenizer.json; default: seeded random ids. */
  calibText?: string;
  seed?: number;
  dampPercent?: number;
  /** Activation source; default: synthetic (see the module comment). */
  calibrate?: CalibrationSource;
  maxShardBytes?: number;
  onProgress?: (p: { done: number; total: number; tensor: string }) => void;
  signal?: AbortSignal;
}

export interface QuantizedTensorReport {
  name: string;
  N: number;
  K: number;
  bits: QuantBits;
  groupSize: number;
  actOrder: boolean;
  method: 'gptq' | 'rtn';
  /** Relative output error on the calibration activations (NaN for RTN without them). */
  relError: number;
  fallbackReason: string | null;
  /** Calibration tokens its Hessian saw (routed experts: only the tokens routed to them). */
  tokens: number;
  seconds: number;
}

export interface QuantizeReport {
  output: string;
  files: string[];
  quantized: QuantizedTensorReport[];
  /** Tensors kept in bf16 and why. */
  kept: Array<{ name: string; reason: string }>;
  bytesIn: number;
  bytesOut: number;
  seconds: number;
}

/** Linear weights a GPTQ checkpoint quantizes (the router gate, embeddings, norms and lm_head stay float). */
export function isLinearWeight(name: string, shape: readonly number[]): boolean {
  return shape.length === 2 && /_proj(_with_mqa)?\.weight$/.test(name) && !name.startsWith('lm_head');
}

function hashName(s: string): number {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619) >>> 0;
  return h % 1_000_000;
}

const FLOAT_DTYPES = new Set(['F32', 'F16', 'BF16']);

/** Quantizes a checkpoint folder; see the module comment. */
export async function quantizeModel(o: QuantizeModelOptions): Promise<QuantizeReport> {
  const t0 = performance.now();
  if (typeof o !== 'object' || o === null) throw expected('KVANT_FORMAT', 'an options object', 'options', o);
  if (!QUANT_BITS.includes(o.bits)) throw expected('KVANT_FORMAT', 'bits 2, 3, 4 or 8', 'bits', o.bits);
  if (!Number.isInteger(o.groupSize) || (o.groupSize !== -1 && o.groupSize <= 0)) throw expected('KVANT_FORMAT', 'a positive group size or -1', 'groupSize', o.groupSize);
  const method = o.method ?? 'gptq';
  if (method !== 'gptq' && method !== 'rtn') throw expected('KVANT_FORMAT', "'gptq' or 'rtn'", 'method', method);
  if (o.calib !== undefined && o.calib !== 'model' && o.calib !== 'synthetic') throw expected('KVANT_FORMAT', "'model' or 'synthetic'", 'calib', o.calib);
  if (o.calib === 'model' && o.calibrate) throw new KvantError('KVANT_FORMAT', "Expected either calib: 'model' or a calibrate source, not both");
  if (o.calibTokens !== undefined && (!Number.isSafeInteger(o.calibTokens) || o.calibTokens <= 0)) throw expected('KVANT_RANGE', 'a positive integer', 'calibTokens', o.calibTokens);
  if (o.calibText !== undefined && typeof o.calibText !== 'string') throw expected('KVANT_DTYPE', 'a string', 'calibText', o.calibText);
  const seed = o.seed ?? 0;
  if (o.rules !== undefined) {
    if (typeof o.rules !== 'object' || o.rules === null || Array.isArray(o.rules)) throw expected('KVANT_FORMAT', 'an object of "+:regex"/"-:regex" rules', 'rules', o.rules);
    for (const k of Object.keys(o.rules)) {
      try {
        new RegExp(k.replace(/^[+-]:/, ''));
      } catch {
        throw new KvantError('KVANT_FORMAT', `Expected rule keys to be regular expressions but ${JSON.stringify(k)} is not`);
      }
    }
  }
  if (path.resolve(o.input) === path.resolve(o.output)) throw new KvantError('KVANT_IO', 'Expected --out to differ from the input folder');
  const ck = Checkpoint.open(o.input);
  try {
    if (ck.quantizeConfig) throw new KvantError('KVANT_FORMAT', `${o.input} is already quantized (it has a quantization config)`);
    fs.mkdirSync(o.output, { recursive: true });
    const cfg = ck.config;
    // The model source needs the DeepSeek-V2 forward; any other float checkpoint defaults to synthetic.
    const isDeepSeek = cfg.model_type === 'deepseek_v2';
    const calib = o.calib ?? (o.calibrate || !isDeepSeek ? 'synthetic' : 'model');
    if (calib === 'model' && !isDeepSeek)
      throw new KvantError('KVANT_FORMAT', `Expected a DeepSeek-V2 checkpoint (config.json model_type "deepseek_v2") for calib 'model' but model_type is ${JSON.stringify(cfg.model_type)}; use calib 'synthetic'`);
    // 4096 model tokens: each routed expert then sees ~tokens·k/E of them, and a Hessian estimated
  // from fewer samples than its K inputs overfits (on the tiny preset, 4-bit g128: 512 tokens
  // lose to RTN in logit KL, 4096 beat it: 2.96e-2 vs 3.66e-2).
  const calibTokens = o.calibTokens ?? (calib === 'model' ? 4096 : 256);
    const E = typeof cfg.n_routed_experts === 'number' ? cfg.n_routed_experts : 0;
    const topk = typeof cfg.num_experts_per_tok === 'number' ? cfg.num_experts_per_tok : 0;
    const names = ck.names().sort();
    const linears = names.filter((n) => isLinearWeight(n, ck.info(n).shape) && FLOAT_DTYPES.has(ck.info(n).dtype));
    const quantized: QuantizedTensorReport[] = [];
    const kept: Array<{ name: string; reason: string }> = [];
    const qtensors = new Map<string, QTensor>();
    let bytesIn = 0;
    for (const n of names) {
      const i = ck.info(n);
      bytesIn += i.shape.reduce((a, b) => a * b, 1) * (i.dtype === 'F32' ? 4 : i.dtype === 'I64' || i.dtype === 'F64' ? 8 : 2);
    }
    let done = 0;
    type Plan = { kept: string } | { kept: null; N: number; K: number; bits: QuantBits; groupSize: number; actOrder: boolean; qo: QuantizeOptions };
    const planFor = (prefix: string): Plan => {
      const rule = dynamicRuleFor(o.rules, prefix);
      const [N, K] = ck.info(`${prefix}.weight`).shape;
      if (rule === 'skip') return { kept: 'rule "-:" keeps it float' };
      const r = (rule ?? {}) as Record<string, unknown>;
      const bits = (r.bits ?? o.bits) as QuantBits;
      const groupSize = (r.group_size ?? o.groupSize) as number;
      const actOrder = (r.desc_act ?? o.actOrder ?? false) as boolean;
      const sym = (r.sym ?? o.sym ?? true) as boolean;
      if (!QUANT_BITS.includes(bits)) throw new KvantError('KVANT_FORMAT', `Rule for ${prefix}: bits must be 2, 3, 4 or 8 but is ${JSON.stringify(bits)}`);
      if (!isPackable(K, bits) || !isPackable(N, bits)) return { kept: `[${N}, ${K}] cannot be packed at ${bits} bits` };
      return { kept: null, N, K, bits, groupSize, actOrder, qo: { bits, groupSize, sym, actOrder, dampPercent: o.dampPercent, name: prefix, checkpointFormat: 'gptq' } };
    };
    /** Quantizes one Linear (GPTQ from `h`, or RTN); records the report; null when kept float. */
    const quantizeOne = async (prefix: string, w: Tensor, h: Hessian | null): Promise<QTensor | null> => {
      if (o.signal?.aborted) throw new KvantError('KVANT_ABORTED', 'quantizeModel was aborted');
      o.onProgress?.({ done, total: linears.length, tensor: prefix });
      const p = planFor(prefix);
      done++;
      if (p.kept !== null) {
        kept.push({ name: `${prefix}.weight`, reason: p.kept });
        return null;
      }
      const t1 = performance.now();
      const { N, K, bits, groupSize, actOrder, qo } = p;
      let rep: QuantizedTensorReport;
      let q: QTensor;
      if (!h) {
        q = quantizeRtn(w, qo);
        rep = { name: prefix, N, K, bits, groupSize, actOrder: false, method: 'rtn', relError: NaN, fallbackReason: null, tokens: 0, seconds: 0 };
      } else {
        const r = await quantizeGptqAsync(w, h, qo, { signal: o.signal });
        q = r.q;
        rep = { name: prefix, N, K, bits, groupSize, actOrder, method: r.stats.method, relError: r.stats.relError, fallbackReason: r.stats.fallbackReason, tokens: h.tokens, seconds: 0 };
      }
      qtensors.set(prefix, q);
      rep.seconds = (performance.now() - t1) / 1e3;
      quantized.push(rep);
      return q;
    };
    let calibDescription: string;
    if (method === 'rtn') {
      calibDescription = 'none (round-to-nearest)';
      for (const wname of linears) await quantizeOne(wname.slice(0, -'.weight'.length), ck.tensor(wname), null);
    } else if (calib === 'model') {
      const cfgP = parseConfig(cfg);
      const seqLen = Math.min(o.calibSeqLen ?? 128, calibTokens, cfgP.maxPositionEmbeddings);
      if (!Number.isSafeInteger(seqLen) || seqLen < 1) throw expected('KVANT_RANGE', 'a positive integer', 'calibSeqLen', o.calibSeqLen);
      let textIds: number[] | undefined;
      if (o.calibText !== undefined) {
        const tok = TextTokenizer.fromFolder(o.input);
        if (!tok) throw new KvantError('KVANT_IO', `Expected ${o.input}/tokenizer.json to tokenize the calibration text`);
        textIds = tok.encode(o.calibText);
      }
      const seqs = calibrationSequences({ vocabSize: cfgP.vocabSize, count: Math.max(1, Math.floor(calibTokens / seqLen)), length: seqLen, seed, textIds });
      const nTok = seqs.reduce((n, s) => n + s.length, 0);
      calibDescription = `layer-by-layer on the model's own activations: ${seqs.length} sequences, ${nTok} tokens (${textIds ? 'calibration text' : `uniform random ids, seed ${seed}`})`;
      const visited = await sequentialCalibrate(o.input, seqs, (prefix, w, h) => quantizeOne(prefix, w, h), { signal: o.signal, trueSequential: o.trueSequential ?? true });
      // Anything the forward does not reach (none in a DeepSeek-V2 checkpoint) is rounded to nearest.
      for (const wname of linears) {
        const prefix = wname.slice(0, -'.weight'.length);
        if (!visited.has(prefix)) await quantizeOne(prefix, ck.tensor(wname), null);
      }
      const order = new Map(linears.map((n, i) => [n.slice(0, -'.weight'.length), i]));
      quantized.sort((a, b) => order.get(a.name)! - order.get(b.name)!);
    } else {
      calibDescription = o.calibrate ? 'caller-supplied activations' : `synthetic correlated Gaussian with outlier channels, ${calibTokens} tokens per Linear, seed ${seed}`;
      for (const wname of linears) {
        const prefix = wname.slice(0, -'.weight'.length);
        const p = planFor(prefix);
        if (p.kept !== null) {
          await quantizeOne(prefix, ck.tensor(wname), null);
          continue;
        }
        const isExpert = /\.mlp\.experts\.\d+\./.test(prefix);
        const tokens = isExpert && E > 0 && topk > 0 ? Math.max(1, Math.round((calibTokens * topk) / E)) : calibTokens;
        const req = { name: prefix, K: p.K, tokens, seed: seed * 1_000_003 + hashName(prefix) };
        const x = o.calibrate ? await o.calibrate(req) : syntheticActivations(tokens, p.K, { seed: req.seed });
        const h = new Hessian(p.K);
        try {
          if (x) h.add(x, 1);
          await quantizeOne(prefix, ck.tensor(wname), h);
        } finally {
          h.dispose();
        }
      }
    }
    o.onProgress?.({ done, total: linears.length, tensor: '' });

    // Write: quantized tensor sets, everything else as bf16 (bias of a quantized Linear as f16).
    const lazy: LazyTensor[] = [];
    for (const n of names) {
      const prefix = n.endsWith('.weight') ? n.slice(0, -'.weight'.length) : '';
      const q = prefix ? qtensors.get(prefix) : undefined;
      if (q) {
        for (const [suffix, t] of [['qweight', q.qweight], ['qzeros', q.qzeros], ['scales', q.scales], ['g_idx', q.gIdx!]] as const)
          lazy.push({ name: `${prefix}.${suffix}`, dtype: t.dtype, shape: t.shape, make: () => t });
        continue;
      }
      const info = ck.info(n);
      const biasOf = n.endsWith('.bias') ? qtensors.has(n.slice(0, -'.bias'.length)) : false;
      // The writer disposes what make() returns, so hand it copies, never views of the mapping.
      if (!FLOAT_DTYPES.has(info.dtype)) {
        const src = ck.tensor(n);
        lazy.push({ name: n, dtype: src.dtype, shape: info.shape, make: () => {
          const t = ck.tensor(n);
          const c = Tensor.zeros(t.shape, t.dtype, { native: true });
          c.byteView().set(t.byteView());
          return c;
        } });
        continue;
      }
      const dtype = biasOf ? 'f16' : 'bf16';
      lazy.push({ name: n, dtype, shape: info.shape, make: () => ck.tensor(n).to(dtype, { native: true }) });
      if (!isLinearWeight(n, info.shape)) kept.push({ name: n, reason: 'not a Linear weight (embedding, norm, router or lm_head)' });
    }
    const res = writeShardedSafetensors(o.output, lazy, o.maxShardBytes ?? 2 * 2 ** 30, {});
    const qc: Record<string, unknown> = {
      bits: o.bits,
      group_size: o.groupSize,
      damp_percent: o.dampPercent ?? 0.01,
      desc_act: method === 'gptq' && (o.actOrder ?? false),
      static_groups: false,
      sym: o.sym ?? true,
      true_sequential: method === 'gptq' && calib === 'model' && (o.trueSequential ?? true),
      lm_head: false,
      model_name_or_path: null,
      model_file_base_name: 'model',
      quant_method: 'gptq',
      checkpoint_format: 'gptq',
      quantizer: 'kvant',
      calibration: calibDescription,
      ...(o.rules ? { dynamic: o.rules } : {}),
    };
    for (const f of fs.readdirSync(o.input)) {
      if (f.endsWith('.safetensors') || f === 'model.safetensors.index.json' || f === 'config.json' || f === 'quantize_config.json') continue;
      const src = path.join(o.input, f);
      if (fs.statSync(src).isFile()) fs.copyFileSync(src, path.join(o.output, f));
    }
    fs.writeFileSync(path.join(o.output, 'config.json'), JSON.stringify({ ...cfg, quantization_config: qc }, null, 2) + '\n');
    fs.writeFileSync(path.join(o.output, 'quantize_config.json'), JSON.stringify(qc, null, 2) + '\n');
    let bytesOut = 0;
    for (const f of res.files) bytesOut += fs.statSync(path.join(o.output, f)).size;
    return { output: o.output, files: res.files, quantized, kept, bytesIn, bytesOut, seconds: (performance.now() - t0) / 1e3 };
  } finally {
    ck.close();
  }
}
