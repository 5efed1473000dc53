/**
 * End-to-end model benchmarks (`kvant bench --model`), llama-bench style: pp<N> (prefill of N
 * tokens) and tg<N> (N single-token decode steps) tokens/s ± sd over repetitions, for the lite
 * preset (DeepSeek-V2-Lite's exact shapes, fewer layers) at bf16 and GPTQ-format 2/3/4/8-bit
 * weights (RTN-quantized copies: the same layout and bytes as GPTQ, see model-checkpoints.ts),
 * with a f16 or q4 latent cache. Per configuration it also reports:
 * - decode's effective bandwidth: weight bytes read per token (from the model's profile: each
 *   weight once per step, MoE counting only the selected experts) × tg tokens/s, as % of the
 *   measured read bandwidth;
 * - bytes and time per component per decode step (attention, experts, dense MLP, lm_head and
 *   the rest: embedding, norms, residual adds, JS);
 * - time per decode step outside native calls (JS, N-API marshalling, scheduling), measured as
 *   step wall time minus the time inside every native binding call;
 * - peak resident memory (VmHWM of the child process that ran it) vs weights + cache.
 * Each configuration runs in its own child process (lib/bench/model-child.ts).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KvantError } from '../errors';
import type { QActivations } from '../ops/qlinear';
import { KvCacheType } from '../kv/format';
import { PresetName } from '../models/deepseek-v2/presets';
import { QuantBits } from '../quant/format';
import { Machine } from './harness';
import type { ChildJob, ChildResult } from './model-child';
import { floatCheckpoint, rtnCheckpoint } from './model-checkpoints';

/** One model configuration to benchmark. */
export interface ModelCase {
  /** 16 = bf16 weights. */
  bits: QuantBits | 16;
  group: number;
  /** Whether lm_head is quantized too (quantized weights only). */
  lmHeadQuantized: boolean;
  kvCache: KvCacheType;
  /** Activation precision of the quantized linears (default 'f32'). */
  activations?: QActivations;
}

/** Options of {@link runModelBench} (defaults there). */
export interface ModelBenchOptions {
  preset?: PresetName;
  layers?: number;
  pp?: number;
  tg?: number;
  reps?: number;
  profileSteps?: number;
  /** Decode steps a child runs before its steady instrumented pass (default 512; quick 0). */
  warmSteps?: number;
  cases?: ModelCase[];
  /** Keep only cases whose name matches. */
  filter?: RegExp;
  log?: (s: string) => void;
}

/** Per-component numbers of one decode step. */
export interface ComponentStep {
  ms: number;
  bytes: number;
}

/** One row of the end-to-end table (all times in ms, rates per second, sizes in bytes). */
export interface ModelBenchRow {
  name: string;
  preset: string;
  layers: number;
  weights: string;
  bits: number | null;
  group: number | null;
  lm_head: 'bf16' | 'quantized';
  kv_cache: KvCacheType;
  /** Activation precision of the quantized linears. */
  activations: QActivations;
  reps: number;
  pp_tokens: number;
  pp_tokens_per_s: number;
  pp_sd: number;
  tg_tokens: number;
  tg_tokens_per_s: number;
  tg_sd: number;
  /** Weight bytes read per decoded token (profile). */
  active_bytes_per_token: number;
  eff_gbps: number;
  pct_read_bw: number;
  /** Instrumented decode pass: wall ms per step, ms in native calls, % outside them. */
  step_ms: number;
  step_native_ms: number;
  /** Steady state: measured once the process has run warm_steps decode steps. */
  outside_native_pct: number;
  /** The same on the first decode steps after load, before V8 has optimized the step's JS. */
  outside_native_cold_pct: number;
  warm_steps: number;
  native_calls_per_step: number;
  components: Record<'attention' | 'experts' | 'dense_mlp' | 'lm_head' | 'rest', ComponentStep>;
  weights_bytes: number;
  cache_bytes: number;
  rss_before_load: number;
  vm_hwm: number;
  /** vm_hwm / (weights_bytes + cache_bytes). */
  rss_ratio: number;
  load_ms: number;
}

/** Rows plus the notes that say how they were measured. */
export interface ModelBenchReport {
  rows: ModelBenchRow[];
  notes: string[];
}

/** The default matrix: bf16 and 2/3/4/8-bit (lm_head quantized) × f16/q4 cache, plus 4-bit with lm_head bf16. */
export function defaultModelCases(quick: boolean): ModelCase[] {
  const q = (bits: QuantBits | 16, kvCache: KvCacheType, lmHeadQuantized = bits !== 16): ModelCase => ({ bits, group: 128, lmHeadQuantized, kvCache });
  if (quick) return [q(16, 'f16'), q(4, 'q4')];
  const out: ModelCase[] = [];
  for (const bits of [16, 8, 4, 3, 2] as const) for (const kv of ['f16', 'q4'] as const) out.push(q(bits, kv));
  out.push(q(4, 'f16', false), q(4, 'q4', false));
  // The int8-activation path (DeepSeekV2Model's activations option) at every bit width.
  for (const bits of [8, 4, 3, 2] as const) out.push({ ...q(bits, 'f16'), activations: 'int8' });
  return out;
}

/** Row name of a case, e.g. "q4g128+lm_bf16 kv=f16". */
export function caseName(c: ModelCase): string {
  const w = c.bits === 16 ? 'bf16' : `q${c.bits}g${c.group}${c.lmHeadQuantized ? '' : '+lm_bf16'}`;
  return `${w}${c.activations === 'int8' ? ' x-int8' : ''} kv=${c.kvCache}`;
}

const stats = (xs: number[]) => {
  const mu = xs.reduce((a, b) => a + b, 0) / xs.length;
  const sd = xs.length > 1 ? Math.sqrt(xs.reduce((a, b) => a + (b - mu) ** 2, 0) / (xs.length - 1)) : 0;
  return { mean: mu, sd };
};

/** Runs one job in a fresh Node process (the compiled dist/ build of model-child). */
export function runChildProcess(job: ChildJob): ChildResult {
  // Beside this file in dist/; from the TS sources (tests), the compiled copy in dist/.
  const beside = path.join(__dirname, 'model-child.js');
  const script = fs.existsSync(beside) ? beside : path.join(__dirname, '..', '..', 'dist', 'bench', 'model-child.js');
  let out: string;
  try {
    out = execFileSync(process.execPath, [script, JSON.stringify(job)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 24 });
  } catch (e) {
    throw new KvantError('KVANT_BACKEND', `Benchmark child for ${job.dir} (${job.kvCache}) failed: ${(e as Error).message.split('\n')[0]}`);
  }
  return JSON.parse(out.trim().split('\n').pop()!) as ChildResult;
}

/** Turns a child's raw result into a table row. */
export function toRow(c: ModelCase, preset: string, layers: number, job: ChildJob, r: ChildResult, machine: Pick<Machine, 'read_gbps'>): ModelBenchRow {
  const pp = stats(r.pp_ms.map((ms) => job.pp / (ms / 1e3)));
  const tg = stats(r.tg_ms.map((ms) => job.tg / (ms / 1e3)));
  const p = r.profile;
  const per = (v: number) => v / Math.max(1, p.calls);
  const comp = (k: 'attention' | 'experts' | 'dense_mlp' | 'lm_head'): ComponentStep => ({ ms: per(p.ms[k]), bytes: per(p.bytes[k]) });
  const parts = { attention: comp('attention'), experts: comp('experts'), dense_mlp: comp('dense_mlp'), lm_head: comp('lm_head') };
  const partsMs = Object.values(parts).reduce((a, x) => a + x.ms, 0);
  const active = Object.values(parts).reduce((a, x) => a + x.bytes, 0);
  const eff = (active * tg.mean) / 1e9;
  return {
    name: caseName(c),
    preset,
    layers,
    weights: c.bits === 16 ? 'bf16' : `gptq-format ${c.bits}-bit g${c.group} (RTN)`,
    bits: c.bits === 16 ? null : c.bits,
    group: c.bits === 16 ? null : c.group,
    lm_head: c.bits !== 16 && c.lmHeadQuantized ? 'quantized' : 'bf16',
    kv_cache: c.kvCache,
    activations: c.activations ?? 'f32',
    reps: job.reps,
    pp_tokens: job.pp,
    pp_tokens_per_s: pp.mean,
    pp_sd: pp.sd,
    tg_tokens: job.tg,
    tg_tokens_per_s: tg.mean,
    tg_sd: tg.sd,
    active_bytes_per_token: active,
    eff_gbps: eff,
    pct_read_bw: (100 * eff) / machine.read_gbps,
    step_ms: r.step_wall_ms,
    step_native_ms: r.step_native_ms,
    outside_native_pct: (100 * Math.max(0, r.step_wall_ms - r.step_native_ms)) / r.step_wall_ms,
    outside_native_cold_pct: (100 * Math.max(0, r.cold.step_wall_ms - r.cold.step_native_ms)) / r.cold.step_wall_ms,
    warm_steps: r.warm_steps,
    native_calls_per_step: r.native_calls,
    components: { ...parts, rest: { ms: Math.max(0, per(p.total_ms) - partsMs), bytes: 0 } },
    weights_bytes: r.weights_bytes,
    cache_bytes: r.cache_bytes,
    rss_before_load: r.rss_before_load,
    vm_hwm: r.vm_hwm,
    rss_ratio: r.vm_hwm / (r.weights_bytes + r.cache_bytes),
    load_ms: r.load_ms,
  };
}

/**
 * Runs the end-to-end matrix. Defaults: lite, 4 layers, pp512, tg128, 3 repetitions
 * (`quick`: lite with 2 layers, pp64, tg16, 1 repetition, two cases).
 */
export function runModelBench(machine: Pick<Machine, 'read_gbps'>, quick: boolean, o: ModelBenchOptions = {}): ModelBenchReport {
  const log = o.log ?? (() => undefined);
  const preset = o.preset ?? 'lite';
  const layers = o.layers ?? (quick ? 2 : 4);
  const base = { pp: o.pp ?? (quick ? 64 : 512), tg: o.tg ?? (quick ? 16 : 128), reps: o.reps ?? (quick ? 1 : 3), profileSteps: o.profileSteps ?? (quick ? 4 : 64), warmSteps: o.warmSteps ?? (quick ? 0 : 512) };
  const cases = (o.cases ?? defaultModelCases(quick)).filter((c) => !o.filter || o.filter.test(caseName(c)));
  const float = floatCheckpoint(preset, layers, log);
  const rows: ModelBenchRow[] = [];
  for (const c of cases) {
    const dir = c.bits === 16 ? float : rtnCheckpoint(float, c.bits, c.group, c.lmHeadQuantized, log);
    const job: ChildJob = { dir, kvCache: c.kvCache, activations: c.activations ?? 'f32', ...base };
    log(`running ${preset}-${layers} ${caseName(c)} pp${base.pp} tg${base.tg} x${base.reps}…`);
    const row = toRow(c, preset, layers, job, runChildProcess(job), machine);
    log(`  pp ${row.pp_tokens_per_s.toFixed(1)} tok/s, tg ${row.tg_tokens_per_s.toFixed(2)} tok/s, ${row.pct_read_bw.toFixed(1)}% of read bw, outside native ${row.outside_native_pct.toFixed(2)}% (cold ${row.outside_native_cold_pct.toFixed(2)}%), RSS ratio ${row.rss_ratio.toFixed(3)}`);
    rows.push(row);
  }
  const notes = [
    `${preset} preset${preset === 'lite' ? " (DeepSeek-V2-Lite's shapes)" : ''} with ${layers} layers, random weights; quantized weights are RTN-quantized GPTQ-format checkpoints (same layout and bytes as GPTQ).`,
    'tokens/s: mean ± sd over repetitions; pp = one prefill of pp tokens into an empty sequence; tg = tg decode steps after a 1-token prompt.',
    'effective bandwidth = weight bytes read per decoded token (profile) × tg tokens/s, vs the measured read bandwidth.',
    'outside native = decode step wall time minus time inside native binding calls (instrumented pass, profiling on), in steady state: after the process has run warm_steps decode steps (V8 optimizes the step\'s JS over the first few hundred); "cold" = the same on the first decode steps after load.',
    'rss ratio = peak resident memory (VmHWM of the child) / (weights + largest cache in use); includes the Node runtime baseline (rss_before_load).',
  ];
  return { rows, notes };
}

const f = (v: number, d = 1) => (Number.isFinite(v) ? v.toFixed(d) : '-');
const mb = (b: number) => (b / 1e6).toFixed(1);

/** The end-to-end tables as text (llama-bench-like, then components). */
export function formatModelBench(r: ModelBenchReport): string {
  const t1 = [['config', 'pp tok/s', '± sd', 'tg tok/s', '± sd', 'MB/token', 'eff GB/s', '% read bw', 'step ms', '% outside native', 'cold', 'weights MB', 'cache MB', 'VmHWM MB', 'ratio']];
  for (const x of r.rows)
    t1.push([`${x.preset}-${x.layers} ${x.name}`, `pp${x.pp_tokens} ${f(x.pp_tokens_per_s)}`, f(x.pp_sd), `tg${x.tg_tokens} ${f(x.tg_tokens_per_s, 2)}`, f(x.tg_sd, 2), mb(x.active_bytes_per_token), f(x.eff_gbps, 2), f(x.pct_read_bw), f(x.step_ms), f(x.outside_native_pct, 2), f(x.outside_native_cold_pct, 2), mb(x.weights_bytes), mb(x.cache_bytes), mb(x.vm_hwm), f(x.rss_ratio, 3)]);
  const t2 = [['config', 'attention ms (MB)', 'experts ms (MB)', 'dense MLP ms (MB)', 'lm_head ms (MB)', 'rest ms']];
  for (const x of r.rows) {
    const c = (k: 'attention' | 'experts' | 'dense_mlp' | 'lm_head') => `${f(x.components[k].ms, 2)} (${mb(x.components[k].bytes)})`;
    t2.push([`${x.preset}-${x.layers} ${x.name}`, c('attention'), c('experts'), c('dense_mlp'), c('lm_head'), f(x.components.rest.ms, 2)]);
  }
  return [table(t1), '', 'per decode step, by component (profiled pass):', table(t2), '', ...r.notes.map((n) => `note: ${n}`)].join('\n');
}

/** A plain-text table, first column left-aligned. */
export function table(rows: string[][]): string {
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  ');
  return [line(rows[0]), w.map((n) => '-'.repeat(n)).join('  '), ...rows.slice(1).map(line)].join('\n');
}
