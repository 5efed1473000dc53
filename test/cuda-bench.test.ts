// `kvant bench --backend cuda` (lib/bench/cuda-cases.ts) through the CLI (dist/, like the CPU
// bench test): without a usable device it exits non-zero with KVANT_BACKEND and cudaInfo()'s
// reason; on the test-only emulated device (KVANT_CUDA_ADDON = kvant_cuda_emu.node) the whole
// path — device ceilings (copy, WMMA peak kernel), every device row family, the table and the
// JSON — runs end to end on tiny shapes and says loudly that its numbers mean nothing. Timings
// are never asserted (only that they are positive and finite).
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { EMULATION_WARNING, type Machine } from '../lib/bench/harness';
import { cudaCases } from '../lib/bench/cuda-cases';
import { KV_CACHE_TYPES } from '../lib/kv/format';

const root = path.join(__dirname, '..');
const ROW_KEYS = ['name', 'kernel', 'backend', 'isa', 'threads', 'dtype', 'bits', 'group', 'm', 'k', 'n', 'sq', 'sk', 'heads', 'd_qk', 'd_v',
  'kv_cache', 'median_ms', 'sd_ms', 'gbps', 'gflops', 'pct_bw', 'pct_fma', 'tokens_per_s', 'rel_error'];

function kvant(args: string[], addon: string) {
  return spawnSync(process.execPath, ['bin/kvant.js', ...args], {
    cwd: root,
    encoding: 'utf8',
    timeout: 120_000,
    env: { ...process.env, KVANT_CUDA_ADDON: addon, KVANT_TEST_CUDA: undefined },
  });
}

let emuAddon = '';

beforeAll(() => {
  const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'build-cuda-emu.mjs')], { cwd: root, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building the emulated CUDA addon failed:\n${r.stderr}`);
  emuAddon = r.stdout.trim().split('\n').pop()!;
}, 600_000);

describe('kvant bench --backend cuda', () => {
  it('without a usable device: exits non-zero with KVANT_BACKEND and cudaInfo().reason', () => {
    const missing = path.join(os.tmpdir(), 'kvant-no-such-addon', 'kvant_cuda.node');
    const info = kvant(['info', '--json'], missing);
    expect(info.status).toBe(0);
    const cudaReason: string = JSON.parse(info.stdout).cuda.reason;
    expect(JSON.parse(info.stdout).cuda.available).toBe(false);
    expect(cudaReason.length).toBeGreaterThan(0);
    const r = kvant(['bench', '--backend', 'cuda', '--quick'], missing);
    expect(r.status).toBe(1);
    expect(r.stderr).toContain('KVANT_BACKEND');
    expect(r.stderr).toContain(cudaReason);
    expect(r.stdout).toBe(''); // no table, no ceilings
  });

  it('the GPU row list (built without touching a device) has decode_attn 32x128 at 4k and 32k for every cache type', () => {
    const names = cudaCases({ device: { emulated: false } } as unknown as Machine, false).map((c) => c.name);
    for (const T of [4096, 32768]) for (const t of KV_CACHE_TYPES) expect(names).toContain(`decode_attn ${t} sk=${T} 32x128`);
    const quick = cudaCases({ device: { emulated: false } } as unknown as Machine, true).map((c) => c.name);
    for (const t of KV_CACHE_TYPES) expect(quick).toContain(`decode_attn ${t} sk=4096 32x128`);
  });

  it('rejects an unknown backend (KVANT_RANGE) and --model on the device (KVANT_BACKEND)', () => {
    const bad = kvant(['bench', '--backend', 'tpu', '--quick'], emuAddon);
    expect(bad.status).toBe(1);
    expect(bad.stderr).toContain('KVANT_RANGE');
    expect(bad.stderr).toContain("'tpu'");
    const model = kvant(['bench', '--model', '--backend', 'cuda', '--quick'], emuAddon);
    expect(model.status).toBe(1);
    expect(model.stderr).toContain('KVANT_BACKEND');
  });

  it('runs end to end on the emulated device, saying loudly the numbers are emulation timings', () => {
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-cuda-bench-')), 'b.json');
    const r = kvant(['bench', '--backend', 'cuda', '--quick', '--json', out], emuAddon);
    if (r.status !== 0) throw new Error(`bench failed (${r.status}):\n${r.stderr}`);
    // The warning above the header and below the table on stdout, and first thing on stderr.
    expect(r.stdout.split(EMULATION_WARNING).length - 1).toBe(2);
    expect(r.stdout.startsWith(EMULATION_WARNING)).toBe(true);
    expect(r.stdout.trimEnd().endsWith(EMULATION_WARNING)).toBe(true);
    expect(r.stderr).toContain(EMULATION_WARNING);
    expect(r.stdout).toContain('f16 tensor cores');
    const report = JSON.parse(fs.readFileSync(out, 'utf8'));
    const d = report.machine.device;
    expect(d.emulated).toBe(true);
    expect(r.stdout).toContain(`device: ${d.name}`);
    expect(d.sm).toBe(80); // the emulated runtime reports sm_80 limits
    for (const k of ['copy_gbps', 'tensor_gflops']) {
      expect(Number.isFinite(d[k])).toBe(true);
      expect(d[k]).toBeGreaterThan(0);
    }
    // Ceilings the rows are judged against are the device's.
    expect(report.machine.read_gbps).toBe(d.copy_gbps);
    expect(report.machine.fma_gflops).toBe(d.tensor_gflops);
    const kernels = new Set(report.rows.map((x: { kernel: string }) => x.kernel));
    for (const k of ['qgemv', 'qgemm', 'flash_attn', 'mla_decode', 'decode_attn', 'kv_quant']) expect(kernels).toContain(k);
    for (const row of report.rows) {
      expect(Object.keys(row).sort()).toEqual([...ROW_KEYS].sort());
      expect(row.backend).toBe('cuda');
      expect(row.isa).toBe('sm_80');
      expect(Number.isFinite(row.median_ms) && row.median_ms > 0).toBe(true);
      // Every row is judged against one ceiling: bandwidth rows (qgemv, mla_decode, decode_attn, kv_quant) or flop rows.
      if (row.gbps !== null) expect(row.pct_bw).toBeCloseTo((100 * row.gbps) / d.copy_gbps, 6);
      if (row.gflops !== null) expect(row.pct_fma).toBeCloseTo((100 * row.gflops) / d.tensor_gflops, 6);
      if (['qgemv', 'mla_decode', 'decode_attn', 'kv_quant'].includes(row.kernel)) expect(row.gbps).toBeGreaterThan(0);
    }
    // The CPU rows' naming: e.g. "qgemv 4b g128 m1 KxN x-f32 (...)", "mla_decode q4 sk=T HxL+R".
    expect(report.rows.some((x: { name: string }) => /^qgemv 4b g128 m1 256x96 /.test(x.name))).toBe(true);
    expect(report.rows.some((x: { name: string }) => /^mla_decode q4 sk=70 /.test(x.name))).toBe(true);
    expect(report.rows.some((x: { name: string; kv_cache: string; sk: number }) => /^decode_attn q8 sk=70 2x64$/.test(x.name) && x.kv_cache === 'q8' && x.sk === 70)).toBe(true);
  }, 120_000);
});
