/** The harness's one-shot mode used by the GPTQ factor/update rows (BenchCase.runs). */
import { describe, expect, it } from 'vitest';
import { BenchCase, Machine, runCase } from '../lib/bench/harness';

const machine: Machine = { read_gbps: 10, copy_gbps: 10, fma_gflops: 100, fma_gflops_1t: 50, threads: 2, isa: 'avx2', llc_bytes: 1 << 25, cpu: 'test', probe_bytes: 0 };

describe('bench harness: runs (one-shot phases)', () => {
  it('times exactly warmup + runs calls, reports seconds in the name and GFLOP/s from the median', () => {
    let calls = 0;
    let torn = 0;
    const c: BenchCase = {
      name: 'one-shot',
      kernel: 'test',
      flops: 1e6,
      warmup: 0,
      runs: 3,
      setup: () => () => {
        calls++;
        const t = performance.now();
        while (performance.now() - t < 2); // ~2 ms of work
      },
      teardown: () => void torn++,
    };
    const row = runCase(c, machine);
    expect(calls).toBe(3);
    expect(torn).toBe(1);
    expect(row.name).toMatch(/^one-shot: \d+\.\d\d s$/);
    expect(row.median_ms).toBeGreaterThanOrEqual(2);
    // gflops and pct_fma are derived from the same median.
    expect(row.gflops!).toBeCloseTo(1e6 / (row.median_ms / 1e3) / 1e9, 9);
    expect(row.pct_fma!).toBeCloseTo((100 * row.gflops!) / 100, 9);
  });
});
