/**
 * Child process of the end-to-end model benchmark (lib/bench/model-cases.ts): one checkpoint,
 * one cache type, a fresh process so VmHWM (peak resident memory) belongs to this run alone.
 * Reads its job as JSON from argv[2], writes one JSON result line to stdout (nothing else).
 *
 * Runs, llama-bench style: pp — prefill of `pp` tokens into an empty sequence, `reps` times;
 * tg — `tg` single-token decode steps after a 1-token prompt, `reps` times. Then one more,
 * instrumented tg pass (not part of the tokens/s) with per-component profiling on and every
 * native binding function wrapped in a timer, giving per-step time inside native calls; the
 * rest of a step is JS, N-API marshalling and scheduling.
 */
import * as fs from 'node:fs';
import { DeepSeekV2Model } from '../models/deepseek-v2/model';
import { KvCacheType } from '../kv/format';
import { native } from '../native';
import type { QActivations } from '../ops/qlinear';

/** What one child process runs (JSON in argv[2]). */
export interface ChildJob {
  dir: string;
  kvCache: KvCacheType;
  activations?: QActivations;
  pp: number;
  tg: number;
  reps: number;
  /** Decode steps of the instrumented pass. */
  profileSteps: number;
}

/** The child's raw measurements (one JSON line on stdout). */
export interface ChildResult {
  load_ms: number;
  pp_ms: number[];
  tg_ms: number[];
  /** Instrumented pass: steps, wall ms, ms inside native calls, native calls made. */
  steps: number;
  step_wall_ms: number;
  step_native_ms: number;
  native_calls: number;
  profile: { calls: number; total_ms: number; ms: Record<string, number>; bytes: Record<string, number> };
  weights_bytes: number;
  /** Largest cache bytes in use (at the end of a pp run). */
  cache_bytes: number;
  rss_before_load: number;
  vm_hwm: number;
}

function status(field: 'VmHWM' | 'VmRSS'): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** Deterministic, spread-out token ids. */
const tokens = (n: number, vocab: number, salt: number) => Array.from({ length: n }, (_, i) => (i * 7919 + salt * 104729 + 17) % vocab);

/** Wraps every function of the binding in a timer; returns the counters and an undo. */
function instrumentNative(): { ms: () => number; calls: () => number; undo: () => void } {
  const b = native() as unknown as Record<string, unknown>;
  const saved = new Map<string, unknown>();
  let ms = 0;
  let calls = 0;
  for (const k of Object.keys(b)) {
    const f = b[k];
    if (typeof f !== 'function') continue;
    const fn = f as (...a: unknown[]) => unknown;
    saved.set(k, f);
    b[k] = function (this: unknown, ...a: unknown[]) {
      const t0 = performance.now();
      try {
        return fn.apply(this, a);
      } finally {
        ms += performance.now() - t0;
        calls++;
      }
    };
  }
  return { ms: () => ms, calls: () => calls, undo: () => saved.forEach((f, k) => (b[k] = f)) };
}

/** Loads the checkpoint and runs the pp, tg and instrumented passes (see the module comment). */
export function runChild(job: ChildJob): ChildResult {
  const rssBefore = status('VmRSS');
  let t = performance.now();
  const m = DeepSeekV2Model.load(job.dir, { kvCache: job.kvCache, activations: job.activations });
  const loadMs = performance.now() - t;
  const V = m.vocabSize;
  // Warm-up: first touch of lazily initialised state and of the attention/MoE paths.
  const w = m.cache.open(16);
  m.prefill(w, tokens(8, V, 99));
  m.decode([w], [5]);
  m.cache.close(w);

  let cacheBytes = 0;
  const ppMs: number[] = [];
  for (let r = 0; r < job.reps; r++) {
    const seq = m.cache.open(job.pp);
    const toks = tokens(job.pp, V, r);
    t = performance.now();
    m.prefill(seq, toks);
    ppMs.push(performance.now() - t);
    cacheBytes = Math.max(cacheBytes, m.memory().cacheBytes);
    m.cache.close(seq);
  }
  const decodeRun = (steps: number, salt: number): number => {
    const seq = m.cache.open(steps + 1);
    m.prefill(seq, [salt % V]);
    const toks = tokens(steps, V, salt + 1000);
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) m.decode([seq], [toks[i]]);
    const dt = performance.now() - t0;
    m.cache.close(seq);
    return dt;
  };
  const tgMs: number[] = [];
  for (let r = 0; r < job.reps; r++) tgMs.push(decodeRun(job.tg, r));

  // Instrumented pass.
  const seq = m.cache.open(job.profileSteps + 1);
  m.prefill(seq, [1]);
  const toks = tokens(job.profileSteps, V, 4242);
  m.setProfiling(true);
  const ins = instrumentNative();
  t = performance.now();
  for (let i = 0; i < job.profileSteps; i++) m.decode([seq], [toks[i]]);
  const wall = performance.now() - t;
  const nativeMs = ins.ms();
  const calls = ins.calls();
  ins.undo();
  const profile = m.profile()!;
  m.setProfiling(false);
  m.cache.close(seq);
  const res: ChildResult = {
    load_ms: loadMs,
    pp_ms: ppMs,
    tg_ms: tgMs,
    steps: job.profileSteps,
    step_wall_ms: wall / job.profileSteps,
    step_native_ms: nativeMs / job.profileSteps,
    native_calls: calls / job.profileSteps,
    profile,
    weights_bytes: m.memory().weightsBytes,
    cache_bytes: cacheBytes,
    rss_before_load: rssBefore,
    vm_hwm: status('VmHWM'),
  };
  m.dispose();
  return res;
}

if (require.main === module) {
  const job = JSON.parse(process.argv[2]) as ChildJob;
  process.stdout.write(JSON.stringify(runChild(job)) + '\n');
}
