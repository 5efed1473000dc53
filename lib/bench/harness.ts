/**
 * The benchmark harness behind `npm run bench` / `npx kvant bench`. It first measures this
 * machine's ceilings (read and copy bandwidth on buffers far larger than the last-level
 * cache, peak f32 FMA rate on all threads and on one), then runs the registered kernel
 * benchmarks through Benchmark.js and reports each as median time, GB/s, GFLOP/s and a
 * percentage of the ceiling that bounds it. Tests never assert these numbers.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import Benchmark from 'benchmark';
import { backendInfo } from '../backend';
import { native } from '../native';

export interface Machine {
  read_gbps: number;
  copy_gbps: number;
  fma_gflops: number;
  fma_gflops_1t: number;
  threads: number;
  isa: string;
  llc_bytes: number;
  cpu: string;
  probe_bytes: number;
}

/** One row of the results table; fields that do not apply are null. */
export interface BenchRow {
  name: string;
  kernel: string;
  backend: string;
  isa: string;
  threads: number;
  dtype: string | null;
  bits: number | null;
  group: number | null;
  m: number | null;
  k: number | null;
  n: number | null;
  sq: number | null;
  sk: number | null;
  heads: number | null;
  d_qk: number | null;
  d_v: number | null;
  kv_cache: string | null;
  median_ms: number;
  sd_ms: number;
  gbps: number | null;
  gflops: number | null;
  pct_bw: number | null;
  pct_fma: number | null;
  tokens_per_s: number | null;
  rel_error: number | null;
}

export type RowFields = Partial<Pick<BenchRow, 'dtype' | 'bits' | 'group' | 'm' | 'k' | 'n' | 'sq' | 'sk' | 'heads' | 'd_qk' | 'd_v' | 'kv_cache' | 'rel_error'>>;

/** A registered benchmark: `setup` builds inputs once, `run` is the timed body. */
export interface BenchCase {
  name: string;
  kernel: string;
  fields?: RowFields;
  /** Bytes moved per run (for GB/s), and which bandwidth ceiling applies. */
  bytes?: number;
  ceiling?: 'read' | 'copy';
  /** Floating-point operations per run (for GFLOP/s vs the FMA peak). */
  flops?: number;
  /** Tokens processed per run (for tokens/s). */
  tokens?: number;
  setup(): () => void;
  teardown?(): void;
  /** Untimed runs before measuring (default 1): enough to touch every copy of the data once. */
  warmup?: number;
  /**
   * One-shot phases (seconds to minutes per run, e.g. a 10944² factorization): time exactly
   * this many runs with a wall clock instead of Benchmark.js (which takes >= 10 samples) and
   * report their median. The row name gets the seconds appended.
   */
  runs?: number;
}

export interface BenchOptions {
  filter?: RegExp;
  /** Ceilings already measured in this run (else they are measured first). */
  machine?: Machine;
  quick?: boolean;
  log?: (line: string) => void;
}

/**
 * The last-level cache this CPU's cores share. sysfs describes the cache domain the kernel sees
 * (in a VM: the host cache slice it was given, as lscpu reports); glibc's getconf reads CPUID's
 * package-wide figure, which on multi-CCX parts (e.g. EPYC: 256 MiB vs 32 MiB per CCX) is far
 * larger than what one core can use. Prefer sysfs, fall back to getconf.
 */
function llcBytes(): number {
  for (const idx of [3, 2]) {
    try {
      const s = fs.readFileSync(`/sys/devices/system/cpu/cpu0/cache/index${idx}/size`, 'utf8').trim();
      const m = /^(\d+)([KMG]?)/.exec(s);
      if (m) return Number(m[1]) * ({ '': 1, K: 1024, M: 1 << 20, G: 1 << 30 } as Record<string, number>)[m[2]];
    } catch {
      // fall through
    }
  }
  try {
    const v = Number(execFileSync('getconf', ['LEVEL3_CACHE_SIZE'], { encoding: 'utf8' }).trim());
    if (v > 0) return v;
  } catch {
    // fall through
  }
  return 32 << 20;
}

/**
 * Measures the ceilings. The bandwidth buffers are max(1 GiB, 4 x LLC) (capped at 4 GiB)
 * so caches cannot serve them; `quick` uses 256 MiB and shorter runs (CI smoke only).
 */
export async function measureMachine(quick = false): Promise<Machine> {
  const info = backendInfo();
  const llc = llcBytes();
  const bytes = quick ? 256 << 20 : Math.min(4 * 2 ** 30, Math.max(2 ** 30, 4 * llc));
  const reps = quick ? 2 : 5;
  const rd = await native().probeReadBandwidth(bytes, reps);
  const cp = await native().probeCopyBandwidth(bytes, reps);
  const fmaAll = await native().probeFmaPeak(true, quick ? 0.1 : 0.5);
  const fma1 = await native().probeFmaPeak(false, quick ? 0.1 : 0.5);
  const cpu = (() => {
    try {
      return /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
    } catch {
      return 'unknown';
    }
  })();
  return {
    read_gbps: rd.bytes / rd.seconds / 1e9,
    copy_gbps: cp.bytes / cp.seconds / 1e9,
    fma_gflops: fmaAll.flops / fmaAll.seconds / 1e9,
    fma_gflops_1t: fma1.flops / fma1.seconds / 1e9,
    threads: info.threads,
    isa: info.isa,
    llc_bytes: llc,
    cpu,
    probe_bytes: bytes,
  };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function sd(xs: number[]): number {
  const mu = xs.reduce((a, b) => a + b, 0) / xs.length;
  return Math.sqrt(xs.reduce((a, b) => a + (b - mu) ** 2, 0) / Math.max(1, xs.length - 1));
}

/** Runs one case through Benchmark.js and turns its samples into a row. */
export function runCase(c: BenchCase, machine: Machine, quick = false): BenchRow {
  const body = c.setup();
  for (let i = 0; i < (c.warmup ?? 1); i++) body(); // warm-up: first touch, page faults, lazy init
  if (c.runs !== undefined) {
    const times: number[] = [];
    try {
      for (let i = 0; i < Math.max(1, c.runs); i++) {
        const t0 = performance.now();
        body();
        times.push(performance.now() - t0);
      }
    } finally {
      c.teardown?.();
    }
    return rowFor(c, machine, times, `${c.name}: ${(median(times) / 1e3).toFixed(2)} s`);
  }
  const bench = new Benchmark(c.name, body, {
    minSamples: quick ? 3 : 10,
    maxTime: quick ? 0.3 : 2,
    initCount: 1,
    minTime: quick ? 0.02 : 0.1,
  });
  bench.run();
  c.teardown?.();
  if (bench.error) throw bench.error;
  return rowFor(c, machine, bench.stats.sample.map((s) => s * 1e3), c.name);
}

/** A results row from per-run times in ms. */
function rowFor(c: BenchCase, machine: Machine, samples: number[], name: string): BenchRow {
  const ms = median(samples);
  const gbps = c.bytes ? c.bytes / (ms / 1e3) / 1e9 : null;
  const gflops = c.flops ? c.flops / (ms / 1e3) / 1e9 : null;
  const bw = c.ceiling === 'copy' ? machine.copy_gbps : machine.read_gbps;
  const f = c.fields ?? {};
  return {
    name,
    kernel: c.kernel,
    backend: 'cpu',
    isa: machine.isa,
    threads: machine.threads,
    dtype: f.dtype ?? null,
    bits: f.bits ?? null,
    group: f.group ?? null,
    m: f.m ?? null,
    k: f.k ?? null,
    n: f.n ?? null,
    sq: f.sq ?? null,
    sk: f.sk ?? null,
    heads: f.heads ?? null,
    d_qk: f.d_qk ?? null,
    d_v: f.d_v ?? null,
    kv_cache: f.kv_cache ?? null,
    median_ms: ms,
    sd_ms: sd(samples),
    gbps,
    gflops,
    pct_bw: gbps !== null ? (100 * gbps) / bw : null,
    pct_fma: gflops !== null ? (100 * gflops) / machine.fma_gflops : null,
    tokens_per_s: c.tokens ? c.tokens / (ms / 1e3) : null,
    rel_error: f.rel_error ?? null,
  };
}

const fmt = (v: number | null, digits = 1) => (v === null ? '-' : v.toFixed(digits));

export function formatMachine(m: Machine): string {
  return [
    `machine: ${m.cpu}, ${m.threads} threads, ISA ${m.isa}, LLC ${(m.llc_bytes / 2 ** 20).toFixed(0)} MiB`,
    `ceilings: read ${m.read_gbps.toFixed(1)} GB/s, copy ${m.copy_gbps.toFixed(1)} GB/s (over ${(m.probe_bytes / 2 ** 30).toFixed(2)} GiB), ` +
      `FMA ${m.fma_gflops.toFixed(0)} GFLOP/s (${m.fma_gflops_1t.toFixed(0)} on 1 thread)`,
  ].join('\n');
}

export function formatTable(rows: BenchRow[]): string {
  const head = ['name', 'median ms', '± sd', 'GB/s', '% bw', 'GFLOP/s', '% fma', 'tok/s'];
  const body = rows.map((r) => [r.name, r.median_ms.toFixed(3), r.sd_ms.toFixed(3), fmt(r.gbps), fmt(r.pct_bw), fmt(r.gflops), fmt(r.pct_fma), fmt(r.tokens_per_s)]);
  const widths = head.map((h, i) => Math.max(h.length, ...body.map((r) => r[i].length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [line(head), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n');
}

export interface BenchReport {
  machine: Machine;
  rows: BenchRow[];
}

/** Measures the machine, then runs every case whose name or kernel matches the filter. */
export async function runBenchmarks(cases: BenchCase[], opts: BenchOptions = {}): Promise<BenchReport> {
  const log = opts.log ?? (() => undefined);
  let machine = opts.machine;
  if (!machine) {
    log('measuring machine ceilings…');
    machine = await measureMachine(opts.quick);
  }
  log(formatMachine(machine));
  const rows: BenchRow[] = [];
  for (const c of cases) {
    if (opts.filter && !opts.filter.test(c.name) && !opts.filter.test(c.kernel)) continue;
    log(`running ${c.name}…`);
    rows.push(runCase(c, machine, opts.quick));
  }
  return { machine, rows };
}
