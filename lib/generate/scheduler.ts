/**
 * Continuous batching. Concurrent generate()/stream() calls on one model are admitted in
 * FIFO order into a running batch (up to maxBatchSize; the first arrival waits up to
 * maxWaitMs for company) and advanced together, one shared decode step at a time. A
 * sequence whose stream consumer falls behind is paused once its buffer is full and never
 * stalls the others; an aborted one leaves the batch at the next step; KV memory is
 * reserved at admission (prompt + max tokens), so a request that does not fit now waits
 * and only one that can never fit fails with KVANT_OOM. Each sequence samples with its own
 * seeded generator, so its tokens are the same alone or inside any batch (given a
 * batch-invariant engine).
 */
import { KvantError, expected } from '../errors';
import { Sampler, SamplerState, SamplingOptions, checkSampling, logSoftmaxAt } from './sampler';

/** The KV cache's answer to "can `tokens` tokens be reserved?". */
export interface Admission {
  verdict: 'ok' | 'wait' | 'never';
  /** Bytes the request needs. */
  needed: number;
  /** Bytes of the whole budget. */
  available: number;
}

/**
 * What a model must offer the scheduler. admission() and open() may answer through a promise
 * (the model lives in a worker thread); close() is fire-and-forget, and an engine must apply
 * it before any later admission()/open() (a worker's message queue is FIFO, which gives this).
 */
export interface DecodeEngine<S> {
  readonly vocabSize: number;
  readonly maxContext: number;
  /** 'ok' if KV memory for `tokens` tokens can be reserved now, 'wait' if only after others finish, 'never' if it exceeds the budget. */
  admission(tokens: number): Admission | Promise<Admission>;
  /** Opens a sequence with KV memory reserved for `tokens` tokens. */
  open(tokens: number): S | Promise<S>;
  /** Runs the prompt through the model (chunked as the engine likes); logits of the last position. */
  prefill(seq: S, tokens: readonly number[]): Promise<Float32Array>;
  /** One decode step: each sequence consumes one token; logits per sequence. */
  decode(seqs: readonly S[], tokens: readonly number[]): Promise<Float32Array[]>;
  /** Frees the sequence's KV pages. */
  close(seq: S): void;
  /**
   * Optional: a decode step that also samples where the logits are (the device), returning one
   * token per sequence, each what Sampler.sample() would pick from state[b] (the scheduler
   * records it in the sampler afterwards). Used for steps where no request asks for logprobs.
   */
  decodeSample?(seqs: readonly S[], tokens: readonly number[], state: readonly SamplerState[]): Promise<Int32Array>;
  /** Optional, with decodeSample: whether it takes this state (e.g. a device's top-k limit); default yes. */
  canSample?(state: SamplerState): boolean;
}

export interface GenerateOptions extends SamplingOptions {
  /** Maximum new tokens (default 256; clamped to the context left). */
  maxTokens?: number;
  /** Token ids that end generation (not included in the output). */
  stopTokens?: readonly number[];
  /** Strings that end generation (needs a detokenizer). The text is cut before the stop string; `tokens` keeps the token that completed it. */
  stopStrings?: readonly string[];
  signal?: AbortSignal;
  /** Report the log-probability (natural log, under the unmodified model distribution) of each token. */
  logprobs?: boolean;
}

export type FinishReason = 'stop' | 'length' | 'abort';

export interface GenerationChunk {
  /**
   * The token generated, or -1 for a trailing text-only chunk: text held back while it could
   * still have been the start of a stop string (or an incomplete UTF-8 character) and released
   * when generation ended on a stop token or an abort.
   */
  token: number;
  /**
   * Text added by this token (when a detokenizer is set). Text that may turn out to begin a
   * stop string, or that ends in an incomplete UTF-8 character, is held back until it is
   * decided, so the chunks' texts always concatenate to the result's text.
   */
  text?: string;
  logprob?: number;
}

export interface GenerationResult {
  tokens: number[];
  text?: string;
  finishReason: FinishReason;
  usage: { promptTokens: number; completionTokens: number };
  logprobs?: number[];
  /**
   * Milliseconds in prefill, in decode steps (each step shared with the rest of its batch) and
   * waiting in the queue; decodeSteps is how many decode steps this sequence took part in.
   */
  timing: { prefillMs: number; decodeMs: number; queuedMs: number; decodeSteps: number };
}

export interface SchedulerOptions {
  maxBatchSize?: number;
  maxWaitMs?: number;
  /** Tokens a stream may buffer before its sequence is paused (default 64). */
  streamBuffer?: number;
  /** Prompt tokens per prefill call; decode steps of running sequences interleave between chunks (default 256). */
  prefillChunk?: number;
  /** token ids -> text, for stop strings and chunk text. */
  detokenize?: (tokens: readonly number[]) => string;
}

interface Request<S> {
  prompt: number[];
  opts: GenerateOptions;
  maxTokens: number;
  sampler: Sampler;
  seq?: S;
  out: number[];
  logprobs: number[];
  text: string; // decoded and released so far (chunks' texts concatenated)
  pending: string; // decoded but held back (may start a stop string or end mid-character)
  last: number;
  buffer: GenerationChunk[];
  limit: number; // Infinity for generate(): nothing consumes incrementally
  paused: boolean;
  done: boolean;
  aborted: boolean;
  waiter?: () => void;
  resolve: (r: GenerationResult) => void;
  reject: (e: unknown) => void;
  t0: number;
  tAdmit: number;
  prefillMs: number;
  decodeMs: number;
  decodeSteps: number;
  prefilled: number;
  onAbort?: () => void;
}

/** A streaming generation: iterate for chunks; `result` settles when it ends. */
export interface GenerationStream extends AsyncIterable<GenerationChunk> {
  readonly result: Promise<GenerationResult>;
}

export class Scheduler<S> {
  private readonly engine: DecodeEngine<S>;
  private readonly maxBatchSize: number;
  private readonly maxWaitMs: number;
  private readonly streamBuffer: number;
  private readonly detokenize?: (tokens: readonly number[]) => string;
  private readonly waiting: Request<S>[] = [];
  private readonly active: Request<S>[] = [];
  /** Admitted (sequence open) but prompt not fully prefilled yet, oldest first. */
  private readonly prefilling: Request<S>[] = [];
  private readonly prefillChunk: number;
  private running = false;
  private closed = false;
  private wake?: () => void;
  /** Decode steps run so far and the largest batch seen (for tests and stats). */
  readonly stats = { steps: 0, maxBatch: 0, prefills: 0, /** decode steps sampled by engine.decodeSample */ sampledSteps: 0, /** ms awaiting engine.decode */ decodeMs: 0, /** ms sampling and detokenizing after decode steps */ acceptMs: 0 };

  constructor(engine: DecodeEngine<S>, opts: SchedulerOptions = {}) {
    this.engine = engine;
    this.maxBatchSize = opts.maxBatchSize ?? 16;
    this.maxWaitMs = opts.maxWaitMs ?? 2;
    this.streamBuffer = opts.streamBuffer ?? 64;
    this.detokenize = opts.detokenize;
    this.prefillChunk = opts.prefillChunk ?? 256;
    if (!Number.isInteger(this.prefillChunk) || this.prefillChunk < 1) throw expected('KVANT_RANGE', 'an integer >= 1', 'prefillChunk', this.prefillChunk);
    if (!Number.isInteger(this.maxBatchSize) || this.maxBatchSize < 1) throw expected('KVANT_RANGE', 'an integer >= 1', 'maxBatchSize', this.maxBatchSize);
    if (!(this.maxWaitMs >= 0)) throw expected('KVANT_RANGE', 'a number >= 0', 'maxWaitMs', this.maxWaitMs);
    if (!Number.isInteger(this.streamBuffer) || this.streamBuffer < 1) throw expected('KVANT_RANGE', 'an integer >= 1', 'streamBuffer', this.streamBuffer);
  }

  /** Generates to completion. */
  generate(prompt: readonly number[], opts: GenerateOptions = {}): Promise<GenerationResult> {
    return this.submit(prompt, opts, Infinity).result;
  }

  /** Generates as a stream of chunks (bounded buffer: a slow consumer pauses only its own sequence). */
  stream(prompt: readonly number[], opts: GenerateOptions = {}): GenerationStream {
    return this.submit(prompt, opts, this.streamBuffer);
  }

  private submit(prompt: readonly number[], opts: GenerateOptions, limit: number): GenerationStream {
    const V = this.engine.vocabSize;
    if (!Array.isArray(prompt) || prompt.length === 0) throw expected('KVANT_RANGE', 'a non-empty array of token ids', 'prompt', prompt);
    prompt.forEach((t, i) => {
      if (!Number.isInteger(t) || t < 0 || t >= V) throw expected('KVANT_RANGE', `a token id in 0..${V - 1}`, `prompt[${i}]`, t);
    });
    const ctx = this.engine.maxContext;
    if (prompt.length >= ctx) throw new KvantError('KVANT_RANGE', `Expected a prompt shorter than the context (${ctx} tokens) but it has ${prompt.length}`);
    const maxTokens = opts.maxTokens ?? 256;
    if (!Number.isInteger(maxTokens) || maxTokens < 1) throw expected('KVANT_RANGE', 'an integer >= 1', 'maxTokens', maxTokens);
    for (const t of opts.stopTokens ?? []) if (!Number.isInteger(t) || t < 0 || t >= V) throw expected('KVANT_RANGE', `token ids in 0..${V - 1}`, 'stopTokens', t);
    if (opts.stopStrings?.length && !this.detokenize) throw new KvantError('KVANT_RANGE', 'stopStrings need a tokenizer (this model was loaded without one)');
    if (opts.signal !== undefined && !(opts.signal instanceof AbortSignal)) throw expected('KVANT_DTYPE', 'an AbortSignal', 'signal', opts.signal);
    checkSampling(opts);
    if (this.closed) throw new KvantError('KVANT_ABORTED', 'The model is closed');
    let resolve!: (r: GenerationResult) => void;
    let reject!: (e: unknown) => void;
    const result = new Promise<GenerationResult>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    const req: Request<S> = {
      prompt: [...prompt],
      opts,
      maxTokens: Math.min(maxTokens, ctx - prompt.length),
      sampler: new Sampler(opts, opts.repetitionPenalty && opts.repetitionPenalty !== 1 ? prompt : []),
      out: [],
      logprobs: [],
      text: '',
      pending: '',
      last: -1,
      buffer: [],
      limit,
      paused: false,
      done: false,
      aborted: false,
      resolve,
      reject,
      t0: performance.now(),
      tAdmit: 0,
      prefillMs: 0,
      decodeMs: 0,
      decodeSteps: 0,
      prefilled: 0,
    };
    if (opts.signal) {
      if (opts.signal.aborted) req.aborted = true;
      req.onAbort = () => {
        req.aborted = true;
        this.poke(req);
      };
      opts.signal.addEventListener('abort', req.onAbort, { once: true });
    }
    this.waiting.push(req);
    this.kick();
    const self = this;
    return {
      result,
      [Symbol.asyncIterator](): AsyncIterator<GenerationChunk> {
        return {
          next: () => self.pull(req),
          return: async () => {
            // The consumer left early (break): treat it as an abort of this sequence.
            req.aborted = true;
            self.poke(req);
            return { value: undefined, done: true };
          },
        };
      },
    };
  }

  private async pull(req: Request<S>): Promise<IteratorResult<GenerationChunk>> {
    for (;;) {
      if (req.buffer.length > 0) {
        const value = req.buffer.shift()!;
        if (req.paused && req.buffer.length < req.limit) {
          req.paused = false;
          this.wake?.();
        }
        return { value, done: false };
      }
      if (req.done) return { value: undefined, done: true };
      await new Promise<void>((r) => (req.waiter = r));
    }
  }

  private poke(req: Request<S>): void {
    req.waiter?.();
    req.waiter = undefined;
    this.wake?.();
  }

  private kick(): void {
    if (this.running) {
      this.wake?.();
      return;
    }
    this.running = true;
    void this.loop();
  }

  /**
   * Ends every waiting and running request (finish reason 'abort'), e.g. when the model is
   * closed. Resolves once the loop has stopped touching the engine.
   */
  async shutdown(): Promise<void> {
    this.closed = true;
    for (const r of [...this.waiting, ...this.prefilling, ...this.active]) {
      r.aborted = true;
      this.poke(r);
    }
    while (this.running) await new Promise((r) => setTimeout(r, 1));
    for (const r of this.waiting.splice(0)) this.finish(r, 'abort');
  }

  private finish(req: Request<S>, reason: FinishReason): void {
    if (req.done) return;
    if (req.pending) {
      // Held-back text is decided now: nothing more will follow it.
      req.text += req.pending;
      if (req.limit !== Infinity) req.buffer.push({ token: -1, text: req.pending });
      req.pending = '';
    }
    req.done = true;
    if (req.seq !== undefined) this.engine.close(req.seq);
    req.opts.signal?.removeEventListener('abort', req.onAbort!);
    this.unlist(req);
    req.resolve({
      tokens: req.out,
      text: this.detokenize ? req.text : undefined,
      finishReason: reason,
      usage: { promptTokens: req.prompt.length, completionTokens: req.out.length },
      logprobs: req.opts.logprobs ? req.logprobs : undefined,
      timing: { prefillMs: req.prefillMs, decodeMs: req.decodeMs, decodeSteps: req.decodeSteps, queuedMs: (req.tAdmit || performance.now()) - req.t0 },
    });
    this.poke(req);
  }

  private unlist(req: Request<S>): void {
    for (const list of [this.active, this.prefilling]) {
      const i = list.indexOf(req);
      if (i >= 0) list.splice(i, 1);
    }
  }

  private fail(req: Request<S>, e: unknown): void {
    if (req.done) return;
    req.done = true;
    if (req.seq !== undefined) this.engine.close(req.seq);
    req.opts.signal?.removeEventListener('abort', req.onAbort!);
    this.unlist(req);
    req.reject(e);
    this.poke(req);
  }

  /** Appends a sampled token; returns false when the sequence has finished. */
  private accept(req: Request<S>, logits: Float32Array): boolean {
    return this.acceptToken(req, req.sampler.sample(logits), logits);
  }

  /** Appends a token sampled from `logits` (or by the engine, without host logits: no logprobs then). */
  private acceptToken(req: Request<S>, token: number, logits: Float32Array | undefined): boolean {
    if (req.opts.stopTokens?.includes(token)) {
      this.finish(req, 'stop');
      return false;
    }
    const chunk: GenerationChunk = { token };
    if (req.opts.logprobs && logits) {
      chunk.logprob = logSoftmaxAt(logits, token);
      req.logprobs.push(chunk.logprob);
    }
    req.out.push(token);
    req.last = token;
    if (this.detokenize) {
      const text = this.detokenize(req.out);
      const stops = req.opts.stopStrings ?? [];
      // A stop string can only newly appear in the part not yet released (plus the released
      // text's tail it may straddle: released text never ends with a stop string's prefix).
      const from = req.text.length;
      let cutAt = -1;
      for (const s of stops) {
        const i = text.indexOf(s, Math.max(0, from - s.length + 1));
        if (i >= 0 && (cutAt < 0 || i < cutAt)) cutAt = i;
      }
      if (cutAt >= 0) {
        const cut = text.slice(0, Math.max(cutAt, from));
        chunk.text = cut.slice(from);
        req.text = cut;
        req.pending = '';
        this.emit(req, chunk);
        this.finish(req, 'stop');
        return false;
      }
      const release = releasable(text, from, stops);
      chunk.text = text.slice(from, release);
      req.text = text.slice(0, release);
      req.pending = text.slice(release);
    }
    if (req.out.length >= req.maxTokens) {
      // The last token: everything decoded is final.
      if (req.pending) {
        chunk.text = (chunk.text ?? '') + req.pending;
        req.text += req.pending;
        req.pending = '';
      }
      this.emit(req, chunk);
      this.finish(req, 'length');
      return false;
    }
    this.emit(req, chunk);
    return true;
  }

  private emit(req: Request<S>, chunk: GenerationChunk): void {
    if (req.limit !== Infinity) {
      req.buffer.push(chunk);
      if (req.buffer.length >= req.limit) req.paused = true;
    }
    req.waiter?.();
    req.waiter = undefined;
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((r) => {
      const t = setTimeout(r, ms);
      this.wake = () => {
        clearTimeout(t);
        r();
      };
    });
  }

  /** Admits waiting requests in FIFO order while KV memory and batch room allow: reserves and opens their sequences. */
  private async admit(): Promise<void> {
    while (this.waiting.length > 0 && this.active.length + this.prefilling.length < this.maxBatchSize) {
      const req = this.waiting[0];
      if (req.aborted) {
        this.waiting.shift();
        this.finish(req, 'abort');
        continue;
      }
      const need = req.prompt.length + req.maxTokens;
      let a: Admission;
      try {
        a = await this.engine.admission(need);
      } catch (e) {
        this.waiting.shift();
        this.fail(req, e); // e.g. the model's worker has died
        continue;
      }
      if (req.aborted) continue; // aborted while the engine answered: finished next turn
      if (a.verdict === 'never' || (a.verdict === 'wait' && this.active.length + this.prefilling.length === 0)) {
        this.waiting.shift();
        this.fail(req, new KvantError('KVANT_OOM', `KV cache budget exceeded: this request needs ${a.needed} bytes for ${need} tokens but the budget is ${a.available} bytes`));
        continue;
      }
      if (a.verdict === 'wait') return; // FIFO: later requests wait behind this one
      this.waiting.shift();
      req.tAdmit = performance.now();
      try {
        req.seq = await this.engine.open(need);
        this.prefilling.push(req);
      } catch (e) {
        this.fail(req, e);
      }
    }
  }

  /**
   * Runs one prefill chunk (at most `budget` tokens) of the oldest admitted request and
   * returns the tokens it took. Each loop turn spends at most prefillChunk prompt tokens
   * before the next decode step: short prompts that arrive together are all prefilled in one
   * turn (and decode together from the first step), while a long prompt holds the running
   * batch up by one chunk at a time. The engine's logits do not depend on how a prompt is
   * split, so neither do the tokens.
   */
  private async prefillStep(budget: number): Promise<number> {
    const req = this.prefilling[0];
    const part = req.prompt.slice(req.prefilled, req.prefilled + budget);
    const t0 = performance.now();
    let logits: Float32Array;
    try {
      logits = await this.engine.prefill(req.seq as S, part);
    } catch (e) {
      this.fail(req, e);
      return part.length;
    }
    req.prefillMs += performance.now() - t0;
    req.prefilled += part.length;
    if (req.done || req.prefilled < req.prompt.length) return part.length;
    this.prefilling.shift();
    this.stats.prefills++;
    this.active.push(req);
    if (req.aborted) this.finish(req, 'abort');
    else this.accept(req, logits);
    return part.length;
  }

  private async loop(): Promise<void> {
    try {
      // A first arrival on an idle scheduler waits up to maxWaitMs (or until a full batch is
      // queued) so concurrent requests start together; arrivals wake the wait to re-check.
      if (this.maxWaitMs > 0 && this.active.length === 0 && this.prefilling.length === 0) {
        const until = performance.now() + this.maxWaitMs;
        while (!this.closed && this.waiting.length < this.maxBatchSize && this.waiting.some((r) => !r.aborted) && performance.now() < until) await this.sleep(until - performance.now());
      }
      for (;;) {
        await this.admit();
        for (const r of [...this.active, ...this.prefilling]) if (r.aborted) this.finish(r, 'abort');
        for (let budget = this.prefillChunk; budget > 0 && this.prefilling.length > 0; ) {
          if (this.prefilling[0].aborted) {
            this.finish(this.prefilling[0], 'abort');
            continue;
          }
          budget -= await this.prefillStep(budget);
          if (this.prefilling.length === 0 && this.waiting.length > 0) await this.admit(); // more may fit now
        }
        const batch = this.active.filter((r) => !r.paused && !r.done);
        if (batch.length === 0) {
          if (this.prefilling.length > 0) continue;
          if (this.active.length === 0 && this.waiting.length === 0) break;
          await this.sleep(1000); // paused consumers, or KV memory to be freed: woken by a pull, an abort or an arrival
          continue;
        }
        this.stats.steps++;
        this.stats.maxBatch = Math.max(this.stats.maxBatch, batch.length);
        const t0 = performance.now();
        // Sampling where the logits are (only token ids come back) unless a request needs host logits.
        let states = this.engine.decodeSample && !batch.some((r) => r.opts.logprobs) ? batch.map((r) => r.sampler.state()) : undefined;
        if (states && this.engine.canSample && !states.every((st) => this.engine.canSample!(st))) states = undefined;
        let logits: Float32Array[] | undefined;
        let sampled: Int32Array | undefined;
        try {
          const seqs = batch.map((r) => r.seq as S);
          const last = batch.map((r) => r.last);
          if (states) sampled = await this.engine.decodeSample!(seqs, last, states);
          else logits = await this.engine.decode(seqs, last);
        } catch (e) {
          for (const r of batch) this.fail(r, e);
          continue;
        }
        const t1 = performance.now();
        const ms = t1 - t0;
        this.stats.decodeMs += ms;
        if (sampled) this.stats.sampledSteps++;
        batch.forEach((r, i) => {
          r.decodeMs += ms;
          r.decodeSteps++;
          if (r.done) return;
          if (sampled) {
            r.sampler.record(sampled[i]);
            this.acceptToken(r, sampled[i], undefined);
          } else {
            this.accept(r, (logits as Float32Array[])[i]);
          }
        });
        this.stats.acceptMs += performance.now() - t1;
      }
    } finally {
      this.running = false;
      this.wake = undefined;
      if (this.waiting.length > 0) this.kick();
    }
  }
}

/**
 * How much of `text` (from `from` on) can be released to a stream: everything except an
 * incomplete UTF-8 character at the end (decoders render it as U+FFFD until its last byte
 * arrives) and the longest tail that is a proper prefix of a stop string (it may yet become one).
 */
export function releasable(text: string, from: number, stops: readonly string[]): number {
  let end = text.length;
  while (end > from && text.charCodeAt(end - 1) === 0xfffd) end--;
  let hold = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, end - from); k > hold; k--) {
      if (text.endsWith(s.slice(0, k), end)) {
        hold = k;
        break;
      }
    }
  }
  return end - hold;
}
