/**
 * Smoke tests of the end-to-end model benchmark and the claims tables on the tiny preset: the
 * code runs, rows and JSON carry the documented fields with sane values (never times), and the
 * computed tables agree with independent arithmetic. Uses dist/ (the benchmark's child process
 * and the CLI run the compiled build).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ModelBenchRow, runModelBench } from '../lib/bench/model-cases';
import { ClaimsReport, agreement, formatClaims, runClaims } from '../lib/bench/claims';
import { benchModelCommand } from '../lib/cli/bench-model';
import { KvantError } from '../lib/errors';

const root = path.join(__dirname, '..');
let dir: string;
const savedEnv = process.env.KVANT_BENCH_DIR;

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-bench-model-test-'));
  process.env.KVANT_BENCH_DIR = dir;
});
afterAll(() => {
  if (savedEnv === undefined) delete process.env.KVANT_BENCH_DIR;
  else process.env.KVANT_BENCH_DIR = savedEnv;
  fs.rmSync(dir, { recursive: true, force: true });
});

const ROW_FIELDS: (keyof ModelBenchRow)[] = [
  'name', 'preset', 'layers', 'weights', 'bits', 'group', 'lm_head', 'kv_cache', 'reps', 'pp_tokens', 'pp_tokens_per_s', 'pp_sd',
  'tg_tokens', 'tg_tokens_per_s', 'tg_sd', 'active_bytes_per_token', 'eff_gbps', 'pct_read_bw', 'step_ms', 'step_native_ms',
  'outside_native_pct', 'outside_native_cold_pct', 'warm_steps', 'native_calls_per_step', 'components', 'weights_bytes', 'cache_bytes', 'rss_before_load', 'vm_hwm', 'rss_ratio', 'load_ms',
];

// tiny preset shapes (lib/models/deepseek-v2/presets.ts): what the lm_head row must read per token.
const TINY_V = 512;
const TINY_H = 256;

describe('end-to-end model rows (tiny preset)', () => {
  it('runs bf16 and 4-bit (lm_head quantized) cases and reports every documented field with sane values', () => {
    const r = runModelBench({ read_gbps: 10 }, true, {
      preset: 'tiny', layers: 2, pp: 8, tg: 4, reps: 2, profileSteps: 2, warmSteps: 20,
      cases: [{ bits: 16, group: 128, lmHeadQuantized: false, kvCache: 'f16' }, { bits: 4, group: 128, lmHeadQuantized: true, kvCache: 'q4' }],
    });
    expect(r.rows).toHaveLength(2);
    const [bf, q4] = r.rows;
    for (const row of r.rows) {
      for (const f of ROW_FIELDS) expect(row, f).toHaveProperty(f);
      expect(row.pp_tokens_per_s).toBeGreaterThan(0);
      expect(row.tg_tokens_per_s).toBeGreaterThan(0);
      expect(Number.isFinite(row.pp_sd) && row.pp_sd >= 0).toBe(true);
      expect(Number.isFinite(row.tg_sd) && row.tg_sd >= 0).toBe(true);
      expect(row.outside_native_pct).toBeGreaterThanOrEqual(0);
      expect(row.outside_native_pct).toBeLessThanOrEqual(100);
      expect(row.outside_native_cold_pct).toBeGreaterThanOrEqual(0);
      expect(row.outside_native_cold_pct).toBeLessThanOrEqual(100);
      // 1 warm-up + 2 cold + 2x4 tg steps = 11 < 20: the child runs the other 9 before the steady pass.
      expect(row.warm_steps).toBe(20);
      expect(row.step_native_ms).toBeGreaterThan(0);
      expect(row.native_calls_per_step).toBeGreaterThan(0);
      // Bytes read per token: the four components, at most all the weights (MoE reads a subset).
      const parts = row.components;
      expect(parts.attention.bytes + parts.experts.bytes + parts.dense_mlp.bytes + parts.lm_head.bytes).toBe(row.active_bytes_per_token);
      expect(row.active_bytes_per_token).toBeGreaterThan(0);
      expect(row.active_bytes_per_token).toBeLessThanOrEqual(row.weights_bytes);
      expect(row.eff_gbps).toBeCloseTo((row.active_bytes_per_token * row.tg_tokens_per_s) / 1e9, 9);
      expect(row.pct_read_bw).toBeCloseTo(row.eff_gbps * 10, 9);
      expect(row.cache_bytes).toBeGreaterThan(0);
      expect(row.vm_hwm).toBeGreaterThan(row.rss_before_load);
      expect(row.rss_ratio).toBeCloseTo(row.vm_hwm / (row.weights_bytes + row.cache_bytes), 9);
    }
    // lm_head in bf16 reads V·H·2 bytes per token; quantized at 4 bits it reads about a quarter.
    expect(bf.components.lm_head.bytes).toBe(TINY_V * TINY_H * 2);
    expect(bf.lm_head).toBe('bf16');
    expect(q4.lm_head).toBe('quantized');
    expect(q4.components.lm_head.bytes).toBeLessThan(0.35 * bf.components.lm_head.bytes);
    expect(q4.weights_bytes).toBeLessThan(bf.weights_bytes);
    expect(JSON.parse(JSON.stringify(r))).toEqual(r);
  }, 60_000);

  it('the CLI writes the rows to --json and keeps logs off stdout', () => {
    const json = path.join(dir, 'out.json');
    const stdout = execFileSync(process.execPath, [path.join(root, 'bin', 'kvant.js'), 'bench', '--model', '--quick', '--preset', 'tiny', '--layers', '2', '--pp', '8', '--tg', '2', '--reps', '1', '--filter', 'bf16', '--json', json],
      { encoding: 'utf8', env: { ...process.env, KVANT_BENCH_DIR: dir }, stdio: ['ignore', 'pipe', 'pipe'] });
    expect(stdout.split('\n')[0]).toMatch(/^machine: /);
    expect(stdout).not.toMatch(/running |making /);
    const out = JSON.parse(fs.readFileSync(json, 'utf8'));
    expect(out.machine.read_gbps).toBeGreaterThan(0);
    expect(out.model.rows).toHaveLength(1);
    expect(out.model.rows[0].name).toBe('bf16 kv=f16');
    expect(out.model.rows[0].pp_tokens).toBe(8);
  }, 60_000);

  it('bad flags fail with KVANT_RANGE before anything is measured', async () => {
    const never = () => Promise.reject(new Error('must not measure'));
    for (const flags of [{ model: true, preset: 'huge' }, { model: true, layers: '0' }, { model: true, reps: 'x' }, { claims: true, pp: '-3' }]) {
      const e = await benchModelCommand(flags, never).catch((x) => x);
      expect(e).toBeInstanceOf(KvantError);
      expect((e as KvantError).code).toBe('KVANT_RANGE');
    }
  });
});

describe('claims tables (tiny preset, quick)', () => {
  let r: ClaimsReport;
  beforeAll(async () => {
    r = await runClaims({ quick: true });
  }, 60_000);

  it('agreement(): KL 0 and top-1 1 for identical logits, KL > 0 for different ones', () => {
    const a = Float32Array.from([1, 2, 3, 0, 5, 1]);
    expect(agreement(a, a, 3)).toEqual({ mean_kl: 0, max_kl: 0, top1: 1, positions: 2 });
    const b = Float32Array.from([3, 2, 1, 0, 5, 1]);
    const g = agreement(a, b, 3);
    expect(g.top1).toBe(0.5);
    // KL(p‖q) for p = softmax(1,2,3), q = its reverse, computed by hand in f64.
    const p = [1, 2, 3].map((x) => Math.exp(x));
    const z = p.reduce((s, x) => s + x, 0);
    const kl = p.reduce((s, x, i) => s + (x / z) * Math.log(x / p[2 - i]), 0);
    expect(g.mean_kl).toBeCloseTo(kl / 2, 12);
    expect(g.max_kl).toBeCloseTo(kl, 12);
  });

  it('(a) quantization rows: proxies in range, fewer bytes than the float model', () => {
    expect(r.quant.length).toBeGreaterThan(0);
    for (const q of r.quant) {
      expect(q.layer_rel_error).toBeGreaterThan(0);
      expect(q.calib_rel_error).toBeGreaterThan(0);
      expect(q.logits.mean_kl).toBeGreaterThanOrEqual(0);
      expect(q.logits.top1).toBeGreaterThanOrEqual(0);
      expect(q.logits.top1).toBeLessThanOrEqual(1);
      expect(q.bytes_on_disk).toBeLessThan(q.float_bytes_on_disk);
      expect(q.decode_tokens_per_s).toBeGreaterThan(0);
    }
  });

  it('(b) 7B dense bytes: fp16 is 2 bytes per parameter; 4-bit g128 is about a quarter', () => {
    // Llama-2-7B: 32 × (4·4096² + 3·4096·11008) + 2·32000·4096 + 65·4096 parameters.
    const params = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 2 * 32000 * 4096 + 65 * 4096;
    const fp16 = r.bytes.find((b) => b.what.includes('fp16') && b.what.startsWith('7B dense ('))!;
    expect(fp16.bytes).toBe(2 * params);
    const q4 = r.bytes.find((b) => b.what.startsWith('7B dense 4-bit g128, lm_head quantized'))!;
    // 4 bits + per group of 128: f16 scale and 4-bit zero = 4 + 20/128 bits per weight (+ g_idx), embeddings fp16.
    expect(q4.bytes / fp16.bytes).toBeGreaterThan(0.25);
    expect(q4.bytes / fp16.bytes).toBeLessThan(0.30);
  });

  it('(c) cache types: attention error grows f16 < bf16 < q8 < q6 < q4; f16 within its rounding', () => {
    const t = (c: string) => r.kv_quality.find((x) => x.model === 'tiny-3' && x.kv_cache === c)!;
    const order = ['f16', 'bf16', 'q8', 'q6', 'q4'].map((c) => t(c).attn_rel_error);
    for (let i = 1; i < order.length; i++) expect(order[i]).toBeGreaterThan(order[i - 1]);
    // f16 rounds each stored value to 2^-11 relative; an attention output (a convex combination of
    // rows) moves by at most that per value plus the softmax weights' share: 8 × 2^-11 is generous.
    expect(t('f16').attn_rel_error).toBeLessThan(8 * 2 ** -11);
    for (const x of r.kv_quality) {
      expect(x.prefill.top1).toBeLessThanOrEqual(1);
      expect(x.decode.mean_kl).toBeGreaterThanOrEqual(0);
    }
  });

  it('(d) KV bytes per token agree with the published per-token sizes and MLA shapes', () => {
    const b = (m: string, c: string) => r.kv_size.find((x) => x.model.startsWith(m) && x.cache === c)!.bytes_per_token;
    expect(b('Qwen2-7B', 'fp16')).toBe(56 * 1024);
    expect(b('Llama-3-8B', 'fp16')).toBe(128 * 1024);
    expect(b('Llama-2-7B', 'fp16')).toBe(512 * 1024);
    // DeepSeek-V2-Lite: 27 layers × (512 + 64) values × 2 bytes; q4: 18-byte blocks of 32 latents.
    expect(b('DeepSeek-V2-Lite', 'f16')).toBe(27 * 576 * 2);
    expect(b('DeepSeek-V2-Lite', 'q4')).toBe(27 * ((512 / 32) * 18 + 64 * 2));
  });

  it('(e) scheduler rows and the verdict list', () => {
    expect(r.scheduler.map((s) => s.max_batch_size)).toEqual([1, 8]);
    expect(r.scheduler[0].max_batch_seen).toBe(1);
    expect(r.scheduler[1].max_batch_seen).toBeLessThanOrEqual(8);
    for (const s of r.scheduler) {
      expect(s.p99_latency_ms).toBeGreaterThanOrEqual(s.p50_latency_ms);
      expect(s.tokens_per_s).toBeGreaterThan(0);
    }
    expect(r.verdicts.length).toBe(7);
    for (const v of r.verdicts) expect(['confirmed', 'refuted', 'partly confirmed', 'not measurable here']).toContain(v.verdict);
    const text = formatClaims(r);
    expect(text).toMatch(/cannot be measured here/);
    expect(text).toMatch(/\(a\)[\s\S]*\(b\)[\s\S]*\(c\)[\s\S]*\(d\)[\s\S]*\(e\)/);
  });
});
