import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

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
