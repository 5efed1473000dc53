/**
 * DeepSeek-V2 config.json: parsing and validation. Every field the forward needs must be
 * present, typed and consistent; unknown architectures and unsupported options get a clear
 * KVANT_FORMAT error naming the field. Shapes and semantics: ../shared/SPEC.md §1.1.
 */
import { KvantError } from '../../errors';

export interface YarnScaling {
  type: 'yarn';
  factor: number;
  originalMaxPositionEmbeddings: number;
  betaFast: number;
  betaSlow: number;
  mscale: number;
  mscaleAllDim: number;
}

export interface DeepSeekV2Config {
  architecture: string;
  hiddenSize: number;
  numLayers: number;
  numHeads: number;
  /** null: plain q_proj (V2-Lite); else the q_a/q_b low-rank path (V2). */
  qLoraRank: number | null;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  nRoutedExperts: number;
  nSharedExperts: number;
  numExpertsPerTok: number;
  moeIntermediateSize: number;
  intermediateSize: number;
  firstKDenseReplace: number;
  moeLayerFreq: number;
  nGroup: number;
  topkGroup: number;
  topkMethod: 'greedy' | 'group_limited_greedy';
  normTopkProb: boolean;
  routedScalingFactor: number;
  ropeTheta: number;
  ropeScaling: YarnScaling | null;
  maxPositionEmbeddings: number;
  vocabSize: number;
  rmsNormEps: number;
  bosTokenId: number | null;
  eosTokenId: number[];
  tieWordEmbeddings: boolean;
}

type Json = Record<string, unknown>;

function fail(field: string, what: string, actual: unknown): never {
  throw new KvantError('KVANT_FORMAT', `config.json: expected ${what} for "${field}" but found ${JSON.stringify(actual) ?? 'nothing'}`);
}

function int(c: Json, field: string, min = 1): number {
  const v = c[field];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) fail(field, `an integer >= ${min}`, v);
  return v;
}

function num(c: Json, field: string, opts: { min?: number; def?: number } = {}): number {
  const v = c[field] ?? opts.def;
  if (typeof v !== 'number' || !Number.isFinite(v) || (opts.min !== undefined && v < opts.min)) fail(field, `a finite number${opts.min !== undefined ? ` >= ${opts.min}` : ''}`, v);
  return v;
}

function optionalInt(c: Json, field: string, def: number, min = 0): number {
  return c[field] === undefined ? def : int(c, field, min);
}

function parseYarn(raw: unknown, field: string): YarnScaling | null {
  if (raw === null || raw === undefined) return null;
  if (typeof raw !== 'object' || Array.isArray(raw)) fail(field, 'an object or null', raw);
  const r = raw as Json;
  const type = r.type ?? r.rope_type;
  if (type === 'default') return null;
  if (type !== 'yarn') fail(`${field}.type`, '"yarn" (the only rope scaling DeepSeek-V2 uses)', type);
  const f = (k: string, def?: number) => num(r, k, { def }) as number;
  const y: YarnScaling = {
    type: 'yarn',
    factor: f('factor'),
    originalMaxPositionEmbeddings: int(r, 'original_max_position_embeddings'),
    betaFast: f('beta_fast', 32),
    betaSlow: f('beta_slow', 1),
    mscale: f('mscale', 1),
    mscaleAllDim: f('mscale_all_dim', 0),
  };
  if (y.factor <= 0) fail(`${field}.factor`, 'a positive number', y.factor);
  return y;
}

/** Validates a parsed config.json object. */
export function parseConfig(raw: unknown): DeepSeekV2Config {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) fail('(root)', 'a JSON object', raw);
  const c = raw as Json;
  const archs = c.architectures;
  const arch = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : undefined;
  const modelType = c.model_type;
  if (!(arch === 'DeepseekV2ForCausalLM' || (arch === undefined && modelType === 'deepseek_v2')))
    throw new KvantError(
      'KVANT_FORMAT',
      `config.json: unsupported architecture ${JSON.stringify(arch ?? modelType)}; kvant runs DeepseekV2ForCausalLM (model_type "deepseek_v2")`,
    );
  const hiddenSize = int(c, 'hidden_size');
  const numHeads = int(c, 'num_attention_heads');
  const kvHeads = c.num_key_value_heads === undefined ? numHeads : int(c, 'num_key_value_heads');
  if (kvHeads !== numHeads) fail('num_key_value_heads', `${numHeads} (MLA has one latent shared by all heads)`, kvHeads);
  const qLoraRank = c.q_lora_rank === null || c.q_lora_rank === undefined ? null : int(c, 'q_lora_rank');
  const scoring = c.scoring_func ?? 'softmax';
  if (scoring !== 'softmax') fail('scoring_func', '"softmax" (DeepSeek-V2)', scoring);
  const act = c.hidden_act ?? 'silu';
  if (act !== 'silu') fail('hidden_act', '"silu"', act);
  if (c.attention_bias === true) fail('attention_bias', 'false (DeepSeek-V2 has no biases)', c.attention_bias);
  const topkMethod = c.topk_method ?? 'greedy';
  if (topkMethod !== 'greedy' && topkMethod !== 'group_limited_greedy') fail('topk_method', '"greedy" or "group_limited_greedy"', topkMethod);
  const nRouted = c.n_routed_experts === null || c.n_routed_experts === undefined ? 0 : int(c, 'n_routed_experts');
  const numLayers = int(c, 'num_hidden_layers');
  const cfg: DeepSeekV2Config = {
    architecture: arch ?? 'DeepseekV2ForCausalLM',
    hiddenSize,
    numLayers,
    numHeads,
    qLoraRank,
    kvLoraRank: int(c, 'kv_lora_rank'),
    qkNopeHeadDim: int(c, 'qk_nope_head_dim'),
    qkRopeHeadDim: int(c, 'qk_rope_head_dim'),
    vHeadDim: int(c, 'v_head_dim'),
    nRoutedExperts: nRouted,
    nSharedExperts: optionalInt(c, 'n_shared_experts', 0),
    numExpertsPerTok: nRouted > 0 ? int(c, 'num_experts_per_tok') : 0,
    moeIntermediateSize: nRouted > 0 ? int(c, 'moe_intermediate_size') : 0,
    intermediateSize: int(c, 'intermediate_size'),
    firstKDenseReplace: optionalInt(c, 'first_k_dense_replace', 0),
    moeLayerFreq: optionalInt(c, 'moe_layer_freq', 1, 1),
    nGroup: optionalInt(c, 'n_group', 1, 1),
    topkGroup: optionalInt(c, 'topk_group', 1, 1),
    topkMethod,
    normTopkProb: c.norm_topk_prob === undefined ? false : c.norm_topk_prob === true ? true : c.norm_topk_prob === false ? false : fail('norm_topk_prob', 'a boolean', c.norm_topk_prob),
    routedScalingFactor: num(c, 'routed_scaling_factor', { def: 1, min: 0 }),
    ropeTheta: num(c, 'rope_theta', { def: 10000, min: 1 }),
    ropeScaling: parseYarn(c.rope_scaling ?? c.rope_parameters, c.rope_scaling !== undefined ? 'rope_scaling' : 'rope_parameters'),
    maxPositionEmbeddings: int(c, 'max_position_embeddings'),
    vocabSize: int(c, 'vocab_size'),
    rmsNormEps: num(c, 'rms_norm_eps', { def: 1e-6, min: 0 }),
    bosTokenId: typeof c.bos_token_id === 'number' ? c.bos_token_id : null,
    eosTokenId: Array.isArray(c.eos_token_id) ? (c.eos_token_id as number[]) : typeof c.eos_token_id === 'number' ? [c.eos_token_id] : [],
    tieWordEmbeddings: c.tie_word_embeddings === true,
  };
  // rope_theta may live inside rope_parameters in newer transformers.
  const rp = c.rope_parameters as Json | undefined;
  if (c.rope_theta === undefined && rp && typeof rp.rope_theta === 'number') cfg.ropeTheta = rp.rope_theta;
  if (cfg.qkRopeHeadDim % 2 !== 0) fail('qk_rope_head_dim', 'an even number (rotary pairs)', cfg.qkRopeHeadDim);
  if (nRouted > 0) {
    if (cfg.numExpertsPerTok > nRouted) fail('num_experts_per_tok', `at most n_routed_experts (${nRouted})`, cfg.numExpertsPerTok);
    if (nRouted % cfg.nGroup !== 0) fail('n_group', `a divisor of n_routed_experts (${nRouted})`, cfg.nGroup);
    if (cfg.topkGroup > cfg.nGroup) fail('topk_group', `at most n_group (${cfg.nGroup})`, cfg.topkGroup);
    if (cfg.topkMethod === 'group_limited_greedy' && cfg.numExpertsPerTok > cfg.topkGroup * (nRouted / cfg.nGroup))
      fail('num_experts_per_tok', `at most topk_group * experts per group (${cfg.topkGroup * (nRouted / cfg.nGroup)})`, cfg.numExpertsPerTok);
  }
  for (const id of cfg.eosTokenId) if (!Number.isInteger(id) || id < 0 || id >= cfg.vocabSize) fail('eos_token_id', `ids in 0..${cfg.vocabSize - 1}`, c.eos_token_id);
  return cfg;
}

/** Layer l is MoE iff routed experts exist, l >= first_k_dense_replace and l % moe_layer_freq == 0. */
export function isMoeLayer(cfg: DeepSeekV2Config, layer: number): boolean {
  return cfg.nRoutedExperts > 0 && layer >= cfg.firstKDenseReplace && layer % cfg.moeLayerFreq === 0;
}

/** Query/key head dim (nope + rope). */
export function qkHeadDim(cfg: DeepSeekV2Config): number {
  return cfg.qkNopeHeadDim + cfg.qkRopeHeadDim;
}
