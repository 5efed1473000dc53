/**
 * The public model API: load a checkpoint folder, then generate (whole or streamed), read
 * logits, and close. The model itself runs in a worker thread, so nothing here blocks the
 * event loop; concurrent generate()/stream() calls share decode steps through the
 * continuous-batching scheduler (lib/generate/scheduler.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BackendName, resolveBackend } from './backend';
import { KvantError, expected } from './errors';
import { GenerateOptions, GenerationChunk, GenerationResult, GenerationStream, Scheduler } from './generate/scheduler';
import { WORKER_SCRIPT, WorkerEngine } from './models/deepseek-v2/engine';
import { KV_BYTES_PER_VALUE, KvCacheType } from './models/deepseek-v2/plan';
import { checkActivations } from './models/deepseek-v2/inputs';
import type { QActivations } from './ops/qlinear';
import type { DeepSeekV2Config } from './models/deepseek-v2/config';
import { ChatMessage, TextTokenizer } from './text/tokenizer';

export type { GenerateOptions, GenerationChunk, GenerationResult, GenerationStream, FinishReason } from './generate/scheduler';
export type { SamplingOptions } from './generate/sampler';
export type { ChatMessage } from './text/tokenizer';
export type { KvCacheType } from './models/deepseek-v2/plan';

import type { LoadProgress } from './models/deepseek-v2/weights';
export type { LoadProgress };

export interface LoadModelOptions {
  /** KV cache storage (default: the model's, bf16). */
  kvCache?: KvCacheType;
  /** Tokens per KV page (default: the cache's). */
  pageSize?: number;
  /** KV cache memory budget in bytes; requests that do not fit wait, one that never fits fails with KVANT_OOM. */
  kvBudgetBytes?: number;
  /** Most sequences in one decode step (default 16). */
  maxBatchSize?: number;
  /** How long a lone first request waits for company before its batch starts, in ms (default 2). */
  maxWaitMs?: number;
  /** Tokens a stream may buffer before its sequence is paused (default 64). */
  streamBuffer?: number;
  /** Prompt tokens per prefill call (default 256); running sequences take a decode step between chunks. */
  prefillChunkSize?: number;
  /**
   * Activation precision of the quantized linears and MoE experts: 'f32' (default) or 'int8'
   * (per-32-input int8 blocks and byte dot products: faster prefill, a small extra error; CPU only).
   */
  activations?: QActivations;
  onProgress?: (p: LoadProgress) => void;
  /**
   * Where the model runs (default 'cpu'). 'cuda': weights, KV cache and the forward on the GPU
   * (KVANT_BACKEND with the reason when no device is usable); 'auto': CUDA when the addon
   * test-loads and a device answers, else the CPU (see backendInfo()).
   */
  backend?: BackendName;
  /** Aborts loading (rejects with KVANT_ABORTED). */
  signal?: AbortSignal;
  /**
   * @internal Test hook: another model class with the same shape as DeepSeekV2Model
   * (absolute module path and export name), loaded in the worker instead.
   */
  implementation?: { module: string; export: string };
}

/** A prompt: text (needs a tokenizer), token ids, or chat messages rendered with the chat template. */
export type Prompt = string | readonly number[] | { messages: readonly ChatMessage[] };

export interface ModelGenerateOptions extends GenerateOptions {
  /** Keep generating past the end-of-sequence token (default false: EOS stops with finish reason "stop"). */
  ignoreEos?: boolean;
}

export interface LogitsOptions {
  /** 'prefill' (default): one forward over all tokens; 'decode': the first token, then one per step through the KV cache. */
  mode?: 'prefill' | 'decode';
}

function isPromptObject(p: unknown): p is { messages: readonly ChatMessage[] } {
  return typeof p === 'object' && p !== null && !Array.isArray(p) && Array.isArray((p as { messages?: unknown }).messages);
}

/** Counters of a Model (see {@link Model.stats}). */
export interface ModelStats {
  steps: number;
  maxBatch: number;
  prefills: number;
  decodeMs: number;
  acceptMs: number;
  decodeComputeMs: number;
  prefillComputeMs: number;
  overhead: number;
}

/** One loaded checkpoint. Create with {@link loadModel}; call {@link Model.close} when done. */
export class Model {
  /** The checkpoint's parsed config. */
  readonly config: DeepSeekV2Config;
  /** The checkpoint's tokenizer, or null when it has no tokenizer.json (token ids in and out). */
  readonly tokenizer: TextTokenizer | null;
  readonly vocabSize: number;
  /** Longest sequence (prompt + generated tokens). */
  readonly maxContext: number;
  /** KV cache bytes per token (all layers). */
  readonly kvBytesPerToken: number;
  /** Milliseconds the worker spent loading the weights. */
  readonly loadMs: number;
  /** End-of-sequence token ids (tokenizer_config.json's eos_token and config.json's eos_token_id). */
  readonly eosTokenIds: readonly number[];
  /** The backend the model runs on. */
  readonly backend: 'cpu' | 'cuda';
  private readonly engine: WorkerEngine;
  private readonly scheduler: Scheduler<number>;
  private closing?: Promise<void>;

  /** @internal use {@link loadModel} */
  constructor(engine: WorkerEngine, tokenizer: TextTokenizer | null, o: LoadModelOptions) {
    this.engine = engine;
    this.backend = o.backend === 'cuda' ? 'cuda' : 'cpu';
    this.tokenizer = tokenizer;
    this.config = engine.info.config as DeepSeekV2Config;
    this.vocabSize = engine.vocabSize;
    this.maxContext = engine.maxContext;
    this.kvBytesPerToken = engine.info.bytesPerToken;
    this.loadMs = engine.info.loadMs;
    const eos = new Set<number>(Array.isArray(this.config.eosTokenId) ? this.config.eosTokenId : []);
    if (tokenizer?.eosId !== undefined) eos.add(tokenizer.eosId);
    this.eosTokenIds = [...eos].filter((t) => Number.isInteger(t) && t >= 0 && t < this.vocabSize).sort((a, b) => a - b);
    const tok = tokenizer;
    this.scheduler = new Scheduler(engine, {
      maxBatchSize: o.maxBatchSize,
      maxWaitMs: o.maxWaitMs,
      streamBuffer: o.streamBuffer,
      prefillChunk: o.prefillChunkSize,
      detokenize: tok ? (ids) => tok.decode(ids) : undefined,
    });
  }

  /**
   * Decode steps run so far, the largest batch seen, and where decode time went:
   * `decodeComputeMs` inside the model (worker), `decodeMs` as the scheduler waited for it
   * (adds the thread hop), `acceptMs` sampling and detokenizing. `overhead` is the share of
   * decode time spent outside the model: (decodeMs − decodeComputeMs + acceptMs) / (decodeMs + acceptMs).
   */
  get stats(): ModelStats {
    const s = this.scheduler.stats;
    const t = this.engine.timing;
    const total = s.decodeMs + s.acceptMs;
    return {
      steps: s.steps,
      maxBatch: s.maxBatch,
      prefills: s.prefills,
      decodeMs: s.decodeMs,
      acceptMs: s.acceptMs,
      decodeComputeMs: t.decodeComputeMs,
      prefillComputeMs: t.prefillComputeMs,
      overhead: total > 0 ? Math.max(0, total - t.decodeComputeMs) / total : 0,
    };
  }

  /** Token ids of a prompt (text is encoded with BOS when the tokenizer config asks for it). */
  encode(prompt: Prompt): number[] {
    if (typeof prompt === 'string') {
      if (!this.tokenizer) throw new KvantError('KVANT_FORMAT', 'A text prompt needs a tokenizer, but this checkpoint has no tokenizer.json: pass token ids instead');
      return this.tokenizer.encode(prompt);
    }
    if (isPromptObject(prompt)) {
      if (!this.tokenizer) throw new KvantError('KVANT_FORMAT', 'Chat messages need a tokenizer, but this checkpoint has no tokenizer.json: pass token ids instead');
      prompt.messages.forEach((m, i) => {
        if (!m || typeof m.content !== 'string' || !['system', 'user', 'assistant'].includes(m.role)) throw expected('KVANT_RANGE', "{ role: 'system' | 'user' | 'assistant', content: string }", `messages[${i}]`, m);
      });
      // The template writes BOS itself.
      return this.tokenizer.encode(this.tokenizer.applyChatTemplate(prompt.messages), { addSpecialTokens: false });
    }
    if (Array.isArray(prompt)) return [...(prompt as readonly number[])];
    throw expected('KVANT_DTYPE', 'a string, an array of token ids or { messages }', 'prompt', prompt);
  }

  private options(o: ModelGenerateOptions): GenerateOptions {
    if (o === null || typeof o !== 'object') throw expected('KVANT_DTYPE', 'an options object', 'options', o);
    const stop = [...(o.stopTokens ?? [])];
    if (!o.ignoreEos) for (const t of this.eosTokenIds) if (!stop.includes(t)) stop.push(t);
    return { ...o, stopTokens: stop };
  }

  private checkOpen(): void {
    if (this.closing) throw new KvantError('KVANT_ABORTED', 'The model is closed');
  }

  /** Generates to completion (finish reason "stop", "length" or "abort"). */
  async generate(prompt: Prompt, o: ModelGenerateOptions = {}): Promise<GenerationResult> {
    this.checkOpen();
    return this.scheduler.generate(this.encode(prompt), this.options(o));
  }

  /**
   * Generates as an async iterator of chunks (one per token); `result` settles at the end.
   * A consumer that stops reading pauses only its own sequence; leaving the loop early aborts it.
   */
  stream(prompt: Prompt, o: ModelGenerateOptions = {}): GenerationStream {
    this.checkOpen();
    return this.scheduler.stream(this.encode(prompt), this.options(o));
  }

  /**
   * Logits at every position of `tokens` (one row of vocabSize values per token), computed in
   * a sequence of its own that is freed afterwards (KVANT_OOM if the KV budget cannot hold it
   * next to the running generations).
   */
  async logits(tokens: readonly number[], o: LogitsOptions = {}): Promise<Float32Array[]> {
    this.checkOpen();
    const mode = o.mode ?? 'prefill';
    if (mode !== 'prefill' && mode !== 'decode') throw expected('KVANT_RANGE', "'prefill' or 'decode'", 'mode', mode);
    if (!Array.isArray(tokens) || tokens.length === 0) throw expected('KVANT_RANGE', 'a non-empty array of token ids', 'tokens', tokens);
    tokens.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) throw expected('KVANT_RANGE', `a token id in 0..${this.vocabSize - 1}`, `tokens[${i}]`, t);
    });
    if (tokens.length > this.maxContext) throw new KvantError('KVANT_RANGE', `Expected at most ${this.maxContext} tokens (the context) but received ${tokens.length}`);
    return this.engine.logits(tokens, mode);
  }

  /** Resident bytes of the weights and of the KV cache right now. */
  memory(): Promise<{ weightsBytes: number; cacheBytes: number }> {
    this.checkOpen();
    return this.engine.memory();
  }

  /** Ends every pending generation (finish reason "abort"), frees the model and stops its worker. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      await this.scheduler.shutdown();
      await this.engine.dispose();
    })();
    return this.closing;
  }
}

/**
 * Loads a checkpoint folder (config.json, safetensors, optional tokenizer files) into a
 * worker thread. Rejects with KVANT_IO / KVANT_FORMAT for a bad folder, KVANT_ABORTED when
 * `signal` fires first.
 */
export async function loadModel(dir: string, o: LoadModelOptions = {}): Promise<Model> {
  if (typeof dir !== 'string' || dir === '') throw expected('KVANT_DTYPE', 'a checkpoint folder path', 'dir', dir);
  if (o === null || typeof o !== 'object') throw expected('KVANT_DTYPE', 'an options object', 'options', o);
  if (!fs.existsSync(path.join(dir, 'config.json'))) throw new KvantError('KVANT_IO', `Expected a checkpoint folder with config.json for dir but ${path.join(dir, 'config.json')} does not exist`);
  if (o.kvCache !== undefined && !(o.kvCache in KV_BYTES_PER_VALUE)) throw expected('KVANT_RANGE', "'f16', 'bf16', 'q8', 'q6' or 'q4'", 'kvCache', o.kvCache);
  const posInt = (v: unknown, name: string) => {
    if (v !== undefined && (!Number.isSafeInteger(v) || (v as number) < 1)) throw expected('KVANT_RANGE', 'a positive integer', name, v);
  };
  posInt(o.pageSize, 'pageSize');
  posInt(o.kvBudgetBytes, 'kvBudgetBytes');
  posInt(o.maxBatchSize, 'maxBatchSize');
  posInt(o.streamBuffer, 'streamBuffer');
  posInt(o.prefillChunkSize, 'prefillChunkSize');
  if (o.maxWaitMs !== undefined && !(typeof o.maxWaitMs === 'number' && o.maxWaitMs >= 0 && Number.isFinite(o.maxWaitMs))) throw expected('KVANT_RANGE', 'a finite number >= 0', 'maxWaitMs', o.maxWaitMs);
  if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw expected('KVANT_DTYPE', 'a function', 'onProgress', o.onProgress);
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) throw expected('KVANT_DTYPE', 'an AbortSignal', 'signal', o.signal);
  const activations = checkActivations(o.activations);
  const backend = resolveBackend(o.backend ?? 'cpu');
  // The device model runs in the same worker, over the same scheduler; only the class differs.
  const implementation =
    o.implementation ?? (backend === 'cuda' ? { module: path.join(path.dirname(WORKER_SCRIPT), 'device-model.js'), export: 'DeviceDeepSeekV2Model' } : undefined);
  const tokenizer = TextTokenizer.fromFolder(dir);
  const engine = await WorkerEngine.start(
    {
      dir: path.resolve(dir),
      load: { kvCache: o.kvCache, pageSize: o.pageSize, kvBudgetBytes: o.kvBudgetBytes, chunkSize: o.prefillChunkSize, activations },
      implementation,
    },
    { onProgress: o.onProgress, signal: o.signal },
  );
  return new Model(engine, tokenizer, { ...o, backend });
}
