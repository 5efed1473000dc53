import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { BenchRow, CEILING_WARN_PCT, JUDGED_LLC_MULTIPLE, ceilingWarnings, formatTable, judgedCopies, judgedWorkingSet } from '../lib/bench/harness';

const root = path.join(__dirname, '..');
const ROW_KEYS = ['name', 'kernel', 'backend', 'isa', 'threads', 'dtype', 'bits', 'group', 'm', 'k', 'n', 'sq', 'sk', 'heads', 'd_qk', 'd_v',
  'kv_cache', 'median_ms', 'sd_ms', 'gbps', 'gflops', 'pct_bw', 'pct_fma', 'tokens_per_s', 'rel_error'];

describe('kvant bench', () => {
  it('measures ceilings and writes the documented JSON (numbers are reported, not judged)', () => {
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-bench-')), 'b.json');
    const r = spawnSync(process.execPath, ['bin/kvant.js', 'bench', '--quick', '--filter', 'bf16->f32', '--json', out], {
      cwd: root,
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(r.status).toBe(0);
    const report = JSON.parse(fs.readFileSync(out, 'utf8'));
    for (const k of ['read_gbps', 'copy_gbps', 'fma_gflops', 'fma_gflops_1t', 'threads', 'isa', 'llc_bytes']) expect(report.machine).toHaveProperty(k);
    expect(report.machine.read_gbps).toBeGreaterThan(0);
    expect(report.machine.fma_gflops).toBeGreaterThan(0);
    // the read ceiling is the best of the streaming-read variants, all measured over probe_bytes
    expect(report.machine.read_variants.length).toBeGreaterThanOrEqual(2);
    expect(report.machine.read_gbps).toBe(Math.max(...report.machine.read_variants.map((v: { gbps: number }) => v.gbps)));
    expect(report.warnings).toEqual(report.rows.filter((r: { pct_bw: number | null }) => r.pct_bw !== null && r.pct_bw > CEILING_WARN_PCT).map(() => expect.any(String)));
    expect(report.rows.length).toBe(1);
    const row = report.rows[0];
    expect(Object.keys(row).sort()).toEqual([...ROW_KEYS].sort());
    expect(row.kernel).toBe('convert');
    expect(row.bits).toBeNull();
    expect(row.median_ms).toBeGreaterThan(0);
    expect(row.pct_bw).toBeGreaterThan(0);
    // logs go to stderr; stdout has the tables only
    expect(r.stdout).toContain('ceilings:');
    expect(r.stdout).not.toContain('running ');
  });
});

describe('bench ceilings', () => {
  const row = (name: string, pct_bw: number | null): BenchRow => ({
    name, kernel: 'gemv', backend: 'cpu', isa: 'avx2', threads: 2, dtype: null, bits: null, group: null, m: null, k: null, n: null,
    sq: null, sk: null, heads: null, d_qk: null, d_v: null, kv_cache: null, median_ms: 1, sd_ms: 0, gbps: pct_bw, gflops: null,
    pct_bw, pct_fma: null, tokens_per_s: null, rel_error: null,
  });

  it('flags every row above 105% of its bandwidth ceiling, and only those', () => {
    const rows = [row('a', 99.9), row('b', 105), row('c', 105.1), row('d', null), row('e', 125)];
    const w = ceilingWarnings(rows);
    expect(w.length).toBe(2);
    expect(w[0]).toMatch(/^WARNING: c .*105\.1%/);
    expect(w[1]).toMatch(/^WARNING: e .*125\.0%/);
    const table = formatTable(rows);
    expect(table).toContain('125.0 !!');
    expect(table).not.toContain('99.9 !!');
    expect(table.split('\n').filter((l) => l.startsWith('WARNING:')).length).toBe(2);
  });

  it('judged working sets are at least 8x the LLC, the size the read ceiling is measured over', () => {
    const llc = { llc_bytes: 32 << 20 };
    expect(JUDGED_LLC_MULTIPLE).toBeGreaterThanOrEqual(8);
    expect(judgedWorkingSet(llc, false)).toBe(256 << 20);
    for (const per of [1 << 20, 12_345_678, 89_653_248, 300 << 20]) {
      const c = judgedCopies(per, llc, false);
      expect(c).toBeGreaterThanOrEqual(2);
      expect(c * per).toBeGreaterThanOrEqual(judgedWorkingSet(llc, false));
      if (c > 2) expect((c - 1) * per).toBeLessThan(judgedWorkingSet(llc, false)); // no more copies than needed
    }
    expect(judgedWorkingSet({ llc_bytes: 1 << 30 }, false)).toBe(4 * 2 ** 30); // capped
  });
});
