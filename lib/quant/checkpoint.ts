/**
 * GPTQ checkpoints as AutoGPTQ, GPTQModel, vLLM and transformers read and write them:
 * quantize_config.json (or quant_config.json, or config.json's quantization_config) and,
 * per quantized Linear `prefix`, the tensors `prefix.qweight / .qzeros / .scales / .g_idx`.
 * Tensors come straight from the memory-mapped shards (no copy) unless act-order rows must
 * be made sequential, which repacks qweight once.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KvantError, expected } from '../errors';
import { Checkpoint } from '../io/checkpoint';
import { Tensor } from '../tensor';
import { CheckpointFormat, QTensor, QuantBits, QUANT_BITS, groupCount, qweightRows, qzerosCols } from './format';
import { checkQTensor, makeSequential } from './quantize';

/** quantize_config.json, with AutoGPTQ's field meanings in camelCase. */
export interface QuantizeConfig {
  bits: QuantBits;
  /** -1 = one group spanning K. */
  groupSize: number;
  /** act-order: g_idx may be non-monotonic. */
  descAct: boolean;
  sym: boolean;
  dampPercent: number;
  staticGroups: boolean;
  trueSequential: boolean;
  checkpointFormat: CheckpointFormat;
  /** GPTQModel per-module overrides: {"+:regex": {bits, group_size, desc_act, sym}, "-:regex": {}} ("-:" = kept float). */
  dynamic?: Record<string, object>;
}

function bad(where: string, what: string): never {
  throw new KvantError('KVANT_FORMAT', `${where}: ${what}`);
}

/** Parses a quantize_config object (AutoGPTQ BaseQuantizeConfig fields and their synonyms). */
export function parseQuantizeConfig(raw: Record<string, unknown>, where = 'quantize_config'): QuantizeConfig {
  const method = raw.quant_method;
  const fmt = raw.checkpoint_format ?? 'gptq';
  if (raw.is_marlin_format === true || method === 'marlin' || fmt === 'marlin')
    bad(where, 'checkpoint_format "marlin" is not supported (kvant reads "gptq" and "gptq_v2"); re-export the model in GPTQ format');
  if (method !== undefined && method !== 'gptq') bad(where, `quant_method ${JSON.stringify(method)} is not supported (expected "gptq")`);
  if (fmt !== 'gptq' && fmt !== 'gptq_v2') bad(where, `checkpoint_format ${JSON.stringify(fmt)} is not supported (expected "gptq" or "gptq_v2")`);
  const bits = raw.bits ?? raw.w_bit ?? 4;
  if (!QUANT_BITS.includes(bits as QuantBits)) bad(where, `bits must be 2, 3, 4 or 8 but is ${JSON.stringify(bits)}`);
  const groupSize = raw.group_size ?? raw.q_group_size ?? -1;
  if (typeof groupSize !== 'number' || !Number.isInteger(groupSize) || (groupSize !== -1 && groupSize <= 0))
    bad(where, `group_size must be a positive integer or -1 but is ${JSON.stringify(groupSize)}`);
  const damp = raw.damp_percent ?? 0.01;
  if (typeof damp !== 'number' || !(damp > 0 && damp < 1)) bad(where, `damp_percent must be in (0, 1) but is ${JSON.stringify(damp)}`);
  const bool = (k: string, d: boolean): boolean => {
    const v = raw[k];
    if (v === undefined || v === null) return d;
    if (typeof v !== 'boolean') bad(where, `${k} must be a boolean but is ${JSON.stringify(v)}`);
    return v;
  };
  const qc: QuantizeConfig = {
    bits: bits as QuantBits,
    groupSize,
    descAct: bool('desc_act', true),
    sym: bool('sym', true),
    dampPercent: damp,
    staticGroups: bool('static_groups', false),
    trueSequential: bool('true_sequential', true),
    checkpointFormat: fmt as CheckpointFormat,
  };
  if (raw.dynamic !== undefined && raw.dynamic !== null) {
    if (typeof raw.dynamic !== 'object' || Array.isArray(raw.dynamic)) bad(where, 'dynamic must be an object of "+:regex"/"-:regex" rules');
    for (const [k, v] of Object.entries(raw.dynamic as Record<string, unknown>)) {
      if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(where, `dynamic[${JSON.stringify(k)}] must be an object`);
      try {
        new RegExp(k.replace(/^[+-]:/, ''));
      } catch {
        bad(where, `dynamic key ${JSON.stringify(k)} is not a valid regular expression`);
      }
    }
    qc.dynamic = raw.dynamic as Record<string, object>;
  }
  return qc;
}

/**
 * The checkpoint's quantization config: quantize_config.json, then quant_config.json, then
 * config.json's quantization_config; null for a float checkpoint. Marlin, AWQ and other
 * formats are KVANT_FORMAT.
 */
export function readQuantizeConfig(ck: Checkpoint): QuantizeConfig | null {
  for (const f of ['quantize_config.json', 'quant_config.json']) {
    const p = path.join(ck.dir, f);
    if (!fs.existsSync(p)) continue;
    let raw: unknown;
    try {
      raw = JSON.parse(fs.readFileSync(p, 'utf8'));
    } catch (e) {
      bad(p, (e as Error).message);
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) bad(p, 'not a JSON object');
    return parseQuantizeConfig(raw as Record<string, unknown>, p);
  }
  const qc = ck.config.quantization_config;
  if (qc === undefined || qc === null) return null;
  if (typeof qc !== 'object' || Array.isArray(qc)) bad(path.join(ck.dir, 'config.json'), 'quantization_config is not an object');
  return parseQuantizeConfig(qc as Record<string, unknown>, `${path.join(ck.dir, 'config.json')} quantization_config`);
}

/**
 * The rule of `dynamic` that applies to a module (first match in key order, keys matched from
 * the start of the name like Python's re.match): 'skip' for "-:", an override, or null.
 */
export function dynamicRuleFor(dynamic: Record<string, object> | undefined, prefix: string): 'skip' | Record<string, unknown> | null {
  if (!dynamic) return null;
  for (const [k, v] of Object.entries(dynamic)) {
    const neg = k.startsWith('-:');
    // GPTQModel matches with Python's re.match: anchored at the start, not at the end.
    const re = new RegExp(`^(?:${k.replace(/^[+-]:/, '')})`);
    if (re.test(prefix)) return neg ? 'skip' : (v as Record<string, unknown>);
  }
  return null;
}

/** The effective config of one module after `dynamic` overrides. */
export function configFor(qc: QuantizeConfig, prefix: string): QuantizeConfig {
  const rule = dynamicRuleFor(qc.dynamic, prefix);
  if (rule === null || rule === 'skip') return qc;
  const merged = parseQuantizeConfig(
    {
      bits: rule.bits ?? qc.bits,
      group_size: rule.group_size ?? qc.groupSize,
      desc_act: rule.desc_act ?? qc.descAct,
      sym: rule.sym ?? qc.sym,
      damp_percent: rule.damp_percent ?? qc.dampPercent,
      static_groups: rule.static_groups ?? qc.staticGroups,
      true_sequential: qc.trueSequential,
      checkpoint_format: qc.checkpointFormat,
    },
    `dynamic rule for ${prefix}`,
  );
  return { ...merged, dynamic: qc.dynamic };
}

/** True when the checkpoint holds `prefix.qweight` (a GPTQ-quantized Linear). */
export function isQuantized(ck: Checkpoint, prefix: string): boolean {
  return ck.has(`${prefix}.qweight`);
}

function tensorOf(ck: Checkpoint, name: string, dtype: 'i32' | 'f16'): Tensor {
  const info = ck.info(name);
  const want = dtype === 'i32' ? 'I32' : 'F16';
  if (info.dtype !== want) throw new KvantError('KVANT_DTYPE', `${ck.dir}: expected ${name} to be ${want} but it is ${info.dtype}`);
  return ck.tensor(name);
}

/**
 * Loads one quantized Linear. Shapes are checked against the config (K from qweight's rows,
 * N from its columns), g_idx values against the group count; act-order rows are made
 * sequential unless `sequential` is false.
 */
export function loadQTensor(ck: Checkpoint, prefix: string, qc: QuantizeConfig, o: { sequential?: boolean } = {}): QTensor {
  if (typeof prefix !== 'string' || prefix.length === 0) throw expected('KVANT_FORMAT', 'a module name', 'prefix', prefix);
  const c = configFor(qc, prefix);
  const qweight = tensorOf(ck, `${prefix}.qweight`, 'i32');
  const qzeros = tensorOf(ck, `${prefix}.qzeros`, 'i32');
  const scales = tensorOf(ck, `${prefix}.scales`, 'f16');
  const where = `${ck.dir}: ${prefix}`;
  if (qweight.ndim !== 2) throw new KvantError('KVANT_SHAPE', `${where}.qweight: expected 2-D [K*bits/32, N] but it is [${qweight.shape.join(', ')}]`);
  const [rows, N] = qweight.shape;
  const K = (rows * 32) / c.bits;
  if (!Number.isInteger(K)) throw new KvantError('KVANT_SHAPE', `${where}.qweight: ${rows} rows do not hold whole ${c.bits}-bit codes`);
  const format = { bits: c.bits, groupSize: c.groupSize, sym: c.sym, checkpointFormat: c.checkpointFormat, K, N };
  let gIdx: Tensor | null = null;
  if (ck.has(`${prefix}.g_idx`)) {
    gIdx = tensorOf(ck, `${prefix}.g_idx`, 'i32');
    if (gIdx.ndim !== 1 || gIdx.shape[0] !== K)
      throw new KvantError('KVANT_SHAPE', `${where}.g_idx: expected [${K}] (K from qweight) but it is [${gIdx.shape.join(', ')}]`);
    const ng = groupCount(format);
    const d = gIdx.data() as Int32Array;
    for (let k = 0; k < K; k++)
      if (!(d[k] >= 0 && d[k] < ng)) throw new KvantError('KVANT_RANGE', `${where}.g_idx[${k}] = ${d[k]} is outside 0..${ng - 1} (K ${K}, group ${c.groupSize})`);
  }
  const q: QTensor = { format, qweight, qzeros, scales, gIdx, perm: null };
  try {
    checkQTensor(q, where);
  } catch (e) {
    if (e instanceof KvantError && qweightRows(format) === rows)
      throw new KvantError(e.code, `${e.message} (expected qzeros [${groupCount(format)}, ${qzerosCols(format)}], scales [${groupCount(format)}, ${N}])`);
    throw e;
  }
  return o.sequential === false ? q : makeSequential(q);
}
