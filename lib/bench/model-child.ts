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
 *
 * The step's JS gets faster as V8 optimizes it, which takes a few hundred steps (each step
 * runs each function only once per layer), so the instrumented pass is taken twice: cold, on
 * the first decode steps after load (before pp and tg), and steady, once the process has run
 * at least `warmSteps` decode steps (the tg runs count; the rest are run untimed), which is
 * what a long-running service sees.
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
  /** Decode steps of each instrumented pass. */
  profileSteps: number;
  /** Decode steps the process has run before the steady instrumented pass (default 512). */
  warmSteps?: number;
}

/** One instrumented decode pass: per step wall ms, ms inside native calls, native calls. */
export interface InstrumentedPass {
  steps: number;
  step_wall_ms: number;
  step_native_ms: number;
  native_calls: number;
}

/** The child's raw measurements (one JSON line on stdout). */
export interface ChildResult {
  load_ms: number;
  pp_ms: number[];
  tg_ms: number[];
  /** Steady instrumented pass (after warmSteps decode steps): steps, wall ms, ms inside native calls, native calls made. */
  steps: number;
  step_wall_ms: number;
  step_native_ms: number;
  native_calls: number;
  /** Decode steps the process had run before the steady pass. */
  warm_steps: number;
  /** The same measured on the first decode steps after load (cold JIT). */
  cold: InstrumentedPass;
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
    // Classes (NativeMemory, MoeExpertSet, CancelToken) stay as they are: a wrapper would be
    // constructed with new and then call the class without it.
    if (typeof f !== 'function' || /^[A-Z]/.test(k)) continue;
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
  let decodeSteps = 1;
  // Profiling is on in both passes (its timers are part of what they measure), and reset by each.
  const instrumented = (steps: number, salt: number): InstrumentedPass => {
    const seq = m.cache.open(steps + 1);
    m.prefill(seq, [1]);
    const toks = tokens(steps, V, salt);
    m.setProfiling(true);
    const ins = instrumentNative();
    const t0 = performance.now();
    for (let i = 0; i < steps; i++) m.decode([seq], [toks[i]]);
    const wall = performance.now() - t0;
    const pass = { steps, step_wall_ms: wall / steps, step_native_ms: ins.ms() / steps, native_calls: ins.calls() / steps };
    ins.undo();
    m.cache.close(seq);
    decodeSteps += steps;
    return pass;
  };
  const cold = instrumented(job.profileSteps, 4141);
  m.setProfiling(false);

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
    decodeSteps += steps;
    return dt;
  };
  const tgMs: number[] = [];
  for (let r = 0; r < job.reps; r++) tgMs.push(decodeRun(job.tg, r));

  // Untimed steps up to warmSteps (V8 has optimized the step's JS by then), then the steady pass.
  const warmSteps = job.warmSteps ?? 512;
  if (decodeSteps < warmSteps) decodeRun(warmSteps - decodeSteps, 777);
  const warm = decodeSteps;
  const steady = instrumented(job.profileSteps, 4242);
  const profile = m.profile()!;
  m.setProfiling(false);
  const res: ChildResult = {
    load_ms: loadMs,
    pp_ms: ppMs,
    tg_ms: tgMs,
    ...steady,
    warm_steps: warm,
    cold,
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
