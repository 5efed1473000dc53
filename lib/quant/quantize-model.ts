/**
 * Quantizes a float checkpoint folder (DeepSeek-V2 layout, or any folder of float
 * safetensors) into a GPTQ folder that AutoGPTQ-style loaders read: per Linear
 * `qweight/qzeros/scales/g_idx`, everything else in bf16, quantize_config.json and the same
 * object as config.json's `quantization_config`, sharded safetensors with an index.
 *
 * Calibration: until the model forward exists, each Linear's input activations come from
 * {@link syntheticActivations} (documented distribution: correlated Gaussian with outlier
 * channels), seeded per tensor. Routed MoE experts receive their expected share of the
 * tokens (calibTokens · experts_per_tok / n_routed_experts), so a small calibration set makes
 * some experts fall back to round-to-nearest as they would with real routing. Supplying
 * `calibrate` replaces the synthetic source: it is called once per Linear, in file order.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KvantError, expected } from '../errors';
import { Checkpoint } from '../io/checkpoint';
import { LazyTensor, writeShardedSafetensors } from '../io/safetensors';
import { Tensor } from '../tensor';
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
  /** Calibration tokens per Linear (default 256). */
  calibTokens?: number;
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
  const calibTokens = o.calibTokens ?? 256;
  if (!Number.isSafeInteger(calibTokens) || calibTokens <= 0) throw expected('KVANT_RANGE', 'a positive integer', 'calibTokens', calibTokens);
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
    for (const wname of linears) {
      if (o.signal?.aborted) throw new KvantError('KVANT_ABORTED', 'quantizeModel was aborted');
      const prefix = wname.slice(0, -'.weight'.length);
      o.onProgress?.({ done, total: linears.length, tensor: prefix });
      const rule = dynamicRuleFor(o.rules, prefix);
      const [N, K] = ck.info(wname).shape;
      if (rule === 'skip') {
        kept.push({ name: wname, reason: 'rule "-:" keeps it float' });
        done++;
        continue;
      }
      const r = (rule ?? {}) as Record<string, unknown>;
      const bits = (r.bits ?? o.bits) as QuantBits;
      const groupSize = (r.group_size ?? o.groupSize) as number;
      const actOrder = (r.desc_act ?? o.actOrder ?? false) as boolean;
      const sym = (r.sym ?? o.sym ?? true) as boolean;
      if (!QUANT_BITS.includes(bits)) throw new KvantError('KVANT_FORMAT', `Rule for ${prefix}: bits must be 2, 3, 4 or 8 but is ${JSON.stringify(bits)}`);
      if (!isPackable(K, bits) || !isPackable(N, bits)) {
        kept.push({ name: wname, reason: `[${N}, ${K}] cannot be packed at ${bits} bits` });
        done++;
        continue;
      }
      const qo: QuantizeOptions = { bits, groupSize, sym, actOrder, dampPercent: o.dampPercent, name: prefix, checkpointFormat: 'gptq' };
      const t1 = performance.now();
      const w = ck.tensor(wname);
      let rep: QuantizedTensorReport;
      if (method === 'rtn') {
        const q = quantizeRtn(w, qo);
        qtensors.set(prefix, q);
        rep = { name: prefix, N, K, bits, groupSize, actOrder: false, method: 'rtn', relError: NaN, fallbackReason: null, seconds: 0 };
      } else {
        const isExpert = /\.mlp\.experts\.\d+\./.test(prefix);
        const tokens = isExpert && E > 0 && topk > 0 ? Math.max(1, Math.round((calibTokens * topk) / E)) : calibTokens;
        const req = { name: prefix, K, tokens, seed: seed * 1_000_003 + hashName(prefix) };
        const x = o.calibrate ? await o.calibrate(req) : syntheticActivations(tokens, K, { seed: req.seed });
        const h = new Hessian(K);
        try {
          if (x) h.add(x, 1);
          const { q, stats } = await quantizeGptqAsync(w, h, qo, { signal: o.signal });
          qtensors.set(prefix, q);
          rep = { name: prefix, N, K, bits, groupSize, actOrder, method: stats.method, relError: stats.relError, fallbackReason: stats.fallbackReason, seconds: 0 };
        } finally {
          h.dispose();
        }
      }
      rep.seconds = (performance.now() - t1) / 1e3;
      quantized.push(rep);
      done++;
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
      true_sequential: true,
      lm_head: false,
      model_name_or_path: null,
      model_file_base_name: 'model',
      quant_method: 'gptq',
      checkpoint_format: 'gptq',
      quantizer: 'kvant',
      calibration: o.calibrate ? 'caller-supplied activations' : `synthetic correlated Gaussian with outlier channels, ${calibTokens} tokens per Linear, seed ${seed}`,
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
