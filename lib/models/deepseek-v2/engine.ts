/**
 * The DecodeEngine the scheduler drives, over a DeepSeekV2Model that lives in a worker
 * thread (worker.ts). Every model method is synchronous and CPU-heavy, so the main thread
 * never calls one: it posts a request and awaits the reply. The worker handles one message
 * at a time in arrival order, which is what makes fire-and-forget close() safe: a later
 * admission() or open() always sees the pages it freed.
 *
 * Logits come back in one transferred Float32Array per reply (B×V for a decode step, T×V for
 * all-position logits): the worker packs them, the transfer moves the buffer without a copy,
 * and this side hands out subarray views.
 */
import * as path from 'node:path';
import { Worker } from 'node:worker_threads';
import { ERROR_CODES, KvantError, KvantErrorCode } from '../../errors';
import { Admission, DecodeEngine } from '../../generate/scheduler';
import type { SamplerState } from '../../generate/sampler';
import { packageRoot } from '../../native';
import type { KvCacheType } from './plan';
import type { QActivations } from '../../ops/qlinear';

/** Options the worker passes to the model's static load(). */
export interface WorkerLoadOptions {
  kvCache?: KvCacheType;
  pageSize?: number;
  kvBudgetBytes?: number;
  /** Prefill chunk size in tokens (the model's default when absent). */
  chunkSize?: number;
  /** Activation precision of the quantized linears (the model's LoadOptions.activations). */
  activations?: QActivations;
}

/** What the worker is told to load. */
export interface WorkerData {
  dir: string;
  load: WorkerLoadOptions;
  /** Module (absolute path) and export of the model class; default: DeepSeekV2Model from model.js. */
  implementation?: { module: string; export: string };
}

/** What the worker reports once the model is loaded. */
export interface ModelInfo {
  config: unknown;
  vocabSize: number;
  maxContext: number;
  bytesPerToken: number;
  loadMs: number;
  /** Set when the model samples on its side (decodeSample: the device model): the largest topK it takes. */
  sampleMaxTopK?: number;
}

export type LogitsMode = 'prefill' | 'decode';

/** main → worker. Requests with an id get exactly one reply; close has none. */
export type WorkerRequest =
  | { id: number; op: 'admission'; tokens: number }
  | { id: number; op: 'open'; tokens: number }
  | { op: 'close'; seq: number }
  | { id: number; op: 'prefill'; seq: number; tokens: number[] }
  | { id: number; op: 'decode'; seqs: number[]; tokens: number[] }
  | { id: number; op: 'decodeSample'; seqs: number[]; tokens: number[]; state: SamplerState[] }
  | { id: number; op: 'logits'; tokens: number[]; mode: LogitsMode }
  | { id: number; op: 'memory' }
  | { id: number; op: 'dispose' };

/** An error as it crosses the thread boundary. */
export interface WireError {
  name: string;
  code?: string;
  message: string;
  stack?: string;
}

/** worker → main. */
export type WorkerMessage =
  | { type: 'progress'; done: number; total: number; what: string }
  | { type: 'ready'; info: ModelInfo }
  | { type: 'loadError'; error: WireError }
  | { type: 'reply'; id: number; ok: true; value: unknown; /** ms inside the model call */ ms?: number }
  | { type: 'reply'; id: number; ok: false; error: WireError };

export function toWire(e: unknown): WireError {
  if (e instanceof Error) return { name: e.name, code: (e as { code?: unknown }).code as string | undefined, message: e.message, stack: e.stack };
  return { name: 'Error', message: String(e) };
}

/** Rebuilds the error on this side: a KvantError keeps its code; the stack is the caller's. */
export function fromWire(w: WireError, stackFrom?: Error): Error {
  const e = w.code && (ERROR_CODES as readonly string[]).includes(w.code) ? new KvantError(w.code as KvantErrorCode, w.message) : new Error(w.message);
  if (stackFrom?.stack) e.stack = `${e.name}: ${w.message}\n${stackFrom.stack.split('\n').slice(1).join('\n')}`;
  return e;
}

/** Splits a packed [n×V] buffer into n row views. */
export function rows(packed: Float32Array, V: number): Float32Array[] {
  const n = packed.length / V;
  return Array.from({ length: n }, (_, i) => packed.subarray(i * V, (i + 1) * V));
}

/** The compiled worker script (tests run the TS sources, so it always comes from dist/). */
export const WORKER_SCRIPT = path.join(packageRoot, 'dist', 'models', 'deepseek-v2', 'worker.js');

interface Pending {
  op: string;
  t0: number;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  stackFrom: Error;
}

/**
 * The main-thread side of the worker. Sequence handles are the cache's integer ids.
 * The worker is unref'd while idle, so a forgotten model does not keep the process alive.
 */
export class WorkerEngine implements DecodeEngine<number> {
  readonly vocabSize: number;
  readonly maxContext: number;
  readonly info: ModelInfo;
  private readonly worker: Worker;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private dead?: Error;
  /**
   * Time accounting of prefill and decode calls: `*ComputeMs` inside the model (measured in
   * the worker), `*RoundTripMs` from posting the request to handling its reply here. The
   * difference is the cost of the thread hop (messages, transfers, event-loop latency).
   */
  readonly timing = { prefillCalls: 0, prefillComputeMs: 0, prefillRoundTripMs: 0, decodeCalls: 0, decodeComputeMs: 0, decodeRoundTripMs: 0 };

  /** Present when the model samples on its side (info.sampleMaxTopK): a decode step returning one token per sequence. */
  readonly decodeSample?: (seqs: readonly number[], tokens: readonly number[], state: readonly SamplerState[]) => Promise<Int32Array>;
  readonly canSample?: (state: SamplerState) => boolean;

  private constructor(worker: Worker, info: ModelInfo) {
    this.worker = worker;
    this.info = info;
    this.vocabSize = info.vocabSize;
    this.maxContext = info.maxContext;
    const maxTopK = info.sampleMaxTopK;
    if (maxTopK !== undefined) {
      this.decodeSample = (seqs, tokens, state) => this.call<Int32Array>({ op: 'decodeSample', seqs: [...seqs], tokens: [...tokens], state: [...state] });
      this.canSample = (st) => st.topK <= maxTopK;
    }
    worker.on('message', (m: WorkerMessage) => {
      if (m.type !== 'reply') return;
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (this.pending.size === 0) worker.unref();
      if (m.ok && (p.op === 'decode' || p.op === 'decodeSample' || p.op === 'prefill') && m.ms !== undefined) {
        const t = this.timing;
        const rt = performance.now() - p.t0;
        if (p.op !== 'prefill') {
          t.decodeCalls++;
          t.decodeComputeMs += m.ms;
          t.decodeRoundTripMs += rt;
        } else {
          t.prefillCalls++;
          t.prefillComputeMs += m.ms;
          t.prefillRoundTripMs += rt;
        }
      }
      if (m.ok) p.resolve(m.value);
      else p.reject(fromWire(m.error, p.stackFrom));
    });
    const die = (e: Error) => {
      this.dead ??= e;
      for (const p of this.pending.values()) p.reject(this.dead);
      this.pending.clear();
    };
    worker.on('error', (e) => die(new KvantError('KVANT_BACKEND', `The model worker failed: ${e.message}`)));
    worker.on('exit', (code) => die(new KvantError('KVANT_BACKEND', `The model worker has exited (code ${code})`)));
    worker.unref();
  }

  /** Starts a worker and loads the model in it. */
  static start(data: WorkerData, o: { onProgress?: (p: { done: number; total: number; what: string }) => void; signal?: AbortSignal } = {}): Promise<WorkerEngine> {
    return new Promise((resolve, reject) => {
      if (o.signal?.aborted) {
        reject(new KvantError('KVANT_ABORTED', 'loadModel was aborted'));
        return;
      }
      const stackFrom = new Error();
      const worker = new Worker(WORKER_SCRIPT, { workerData: data });
      let settled = false;
      const onAbort = () => {
        if (settled) return;
        settled = true;
        void worker.terminate();
        reject(new KvantError('KVANT_ABORTED', 'loadModel was aborted'));
      };
      o.signal?.addEventListener('abort', onAbort, { once: true });
      const onMessage = (m: WorkerMessage) => {
        if (m.type === 'progress') {
          if (!settled) o.onProgress?.({ done: m.done, total: m.total, what: m.what });
          return;
        }
        if (settled) return;
        if (m.type === 'ready') {
          settled = true;
          o.signal?.removeEventListener('abort', onAbort);
          worker.off('message', onMessage);
          resolve(new WorkerEngine(worker, m.info));
        } else if (m.type === 'loadError') {
          settled = true;
          o.signal?.removeEventListener('abort', onAbort);
          void worker.terminate();
          reject(fromWire(m.error, stackFrom));
        }
      };
      worker.on('message', onMessage);
      worker.once('error', (e) => {
        if (settled) return;
        settled = true;
        reject(new KvantError('KVANT_BACKEND', `The model worker failed to start: ${e.message}`));
      });
      worker.once('exit', (code) => {
        if (settled) return;
        settled = true;
        reject(new KvantError('KVANT_BACKEND', `The model worker exited while loading (code ${code})`));
      });
    });
  }

  private call<T>(msg: Record<string, unknown>, transfer?: ArrayBuffer[]): Promise<T> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    const stackFrom = new Error();
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { op: String(msg.op), t0: performance.now(), resolve: resolve as (v: unknown) => void, reject, stackFrom });
      if (this.pending.size === 1) this.worker.ref();
      this.worker.postMessage({ ...msg, id }, transfer);
    });
  }

  admission(tokens: number): Promise<Admission> {
    return this.call({ op: 'admission', tokens });
  }

  open(tokens: number): Promise<number> {
    return this.call({ op: 'open', tokens });
  }

  close(seq: number): void {
    if (!this.dead) this.worker.postMessage({ op: 'close', seq } satisfies WorkerRequest);
  }

  async prefill(seq: number, tokens: readonly number[]): Promise<Float32Array> {
    return this.call<Float32Array>({ op: 'prefill', seq, tokens: [...tokens] });
  }

  async decode(seqs: readonly number[], tokens: readonly number[]): Promise<Float32Array[]> {
    const packed = await this.call<Float32Array>({ op: 'decode', seqs: [...seqs], tokens: [...tokens] });
    return rows(packed, this.vocabSize);
  }

  /** Logits at every position of `tokens` in a fresh sequence (opened and closed in the worker). */
  async logits(tokens: readonly number[], mode: LogitsMode): Promise<Float32Array[]> {
    const packed = await this.call<Float32Array>({ op: 'logits', tokens: [...tokens], mode });
    return rows(packed, this.vocabSize);
  }

  memory(): Promise<{ weightsBytes: number; cacheBytes: number }> {
    return this.call({ op: 'memory' });
  }

  /** Disposes the model and ends the worker. Safe to call twice. */
  async dispose(): Promise<void> {
    if (this.dead) return;
    try {
      await this.call({ op: 'dispose' });
    } catch {
      // already failing: terminate below
    }
    this.dead ??= new KvantError('KVANT_BACKEND', 'The model is closed');
    await this.worker.terminate();
  }
}
