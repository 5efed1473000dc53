import { describe, expect, it } from 'vitest';
import { KvantError } from '../lib';
import { DecodeEngine, Scheduler } from '../lib/generate/scheduler';
import { Sampler, topKIndices } from '../lib/generate/sampler';
import { errorCode as code } from './helpers/checks';

interface FakeSeq {
  id: number;
  history: number[];
  reserved: number;
}

/**
 * A deterministic stand-in for the model: the logits of a sequence depend only on its own
 * token history (as a real batch-invariant engine's do), never on its batch neighbours.
 */
class FakeEngine implements DecodeEngine<FakeSeq> {
  readonly vocabSize = 50;
  readonly maxContext = 64;
  used = 0;
  opened = 0;
  batches: number[] = [];
  constructor(readonly budgetTokens = 10_000) {}
  admission(tokens: number) {
    const verdict = tokens > this.budgetTokens ? 'never' : this.used + tokens > this.budgetTokens ? 'wait' : 'ok';
    return { verdict, needed: tokens * 100, available: this.budgetTokens * 100 } as const;
  }
  open(tokens: number): FakeSeq {
    this.used += tokens;
    return { id: this.opened++, history: [], reserved: tokens };
  }
  close(seq: FakeSeq): void {
    this.used -= seq.reserved;
  }
  private logits(h: number[]): Float32Array {
    let hash = 17;
    for (const t of h) hash = (hash * 31 + t + 7) % 1000003;
    return Float32Array.from({ length: this.vocabSize }, (_, v) => 3 * Math.sin(hash * 0.001 + v * 1.37) + Math.cos(v * hash * 0.0001));
  }
  async prefill(seq: FakeSeq, tokens: readonly number[]): Promise<Float32Array> {
    await new Promise((r) => setImmediate(r));
    seq.history.push(...tokens);
    return this.logits(seq.history);
  }
  async decode(seqs: readonly FakeSeq[], tokens: readonly number[]): Promise<Float32Array[]> {
    this.batches.push(seqs.length);
    await new Promise((r) => setImmediate(r));
    return seqs.map((s, i) => {
      s.history.push(tokens[i]);
      return this.logits(s.history);
    });
  }
}

const letters = (ts: readonly number[]) => ts.map((t) => String.fromCharCode(97 + (t % 26))).join('');

describe('continuous batching scheduler', () => {
  it('a sequence gives identical tokens alone and inside a batch of 10', async () => {
    const opts = { temperature: 0.8, topP: 0.9, seed: 1234, maxTokens: 20 };
    const alone = await new Scheduler(new FakeEngine()).generate([1, 2, 3], opts);
    const engine = new FakeEngine();
    const s = new Scheduler(engine, { maxBatchSize: 16, maxWaitMs: 5 });
    const results = await Promise.all(Array.from({ length: 10 }, (_, i) => s.generate(i === 4 ? [1, 2, 3] : [i + 5, 9], { ...opts, seed: i === 4 ? 1234 : i })));
    expect(results[4].tokens).toEqual(alone.tokens);
    expect(s.stats.maxBatch).toBeGreaterThanOrEqual(9);
    expect(engine.used).toBe(0); // every sequence's pages freed
    expect(results.every((r) => r.finishReason === 'length' && r.usage.completionTokens === 20 && r.usage.promptTokens >= 2)).toBe(true);
  });

  it('respects maxBatchSize and admits late arrivals into the running batch', async () => {
    const engine = new FakeEngine();
    const s = new Scheduler(engine, { maxBatchSize: 3, maxWaitMs: 0 });
    const first = s.generate([1], { maxTokens: 30 });
    await new Promise((r) => setTimeout(r, 5));
    const late = await Promise.all([s.generate([2], { maxTokens: 5 }), s.generate([3], { maxTokens: 5 }), s.generate([4], { maxTokens: 5 })]);
    await first;
    expect(Math.max(...engine.batches)).toBeLessThanOrEqual(3);
    expect(Math.max(...engine.batches)).toBeGreaterThan(1);
    expect(late.map((r) => r.tokens.length)).toEqual([5, 5, 5]);
  });

  it('stop tokens and stop strings end generation with finish_reason "stop"', async () => {
    const engine = new FakeEngine();
    const probe = await new Scheduler(engine).generate([7, 8], { maxTokens: 12 });
    const stopTok = probe.tokens[5];
    const r1 = await new Scheduler(engine).generate([7, 8], { maxTokens: 12, stopTokens: [stopTok] });
    expect(r1.finishReason).toBe('stop');
    expect(r1.tokens).toEqual(probe.tokens.slice(0, probe.tokens.indexOf(stopTok)));
    const s = new Scheduler(engine, { detokenize: letters });
    const text = letters(probe.tokens);
    const stopStr = text.slice(6, 8);
    const r2 = await s.generate([7, 8], { maxTokens: 12, stopStrings: [stopStr] });
    expect(r2.finishReason).toBe('stop');
    expect(r2.text).toBe(text.slice(0, text.indexOf(stopStr)));
    expect(engine.used).toBe(0);
  });

  it('abort removes a sequence mid-generation and frees it; the others continue', async () => {
    const engine = new FakeEngine();
    const s = new Scheduler(engine, { maxWaitMs: 1 });
    const ctl = new AbortController();
    const stream = s.stream([1, 2], { maxTokens: 60, signal: ctl.signal });
    const other = s.generate([3], { maxTokens: 40 });
    let n = 0;
    for await (const _ of stream) if (++n === 3) ctl.abort();
    const r = await stream.result;
    expect(r.finishReason).toBe('abort');
    expect(r.tokens.length).toBeLessThan(60);
    expect((await other).tokens.length).toBe(40);
    expect(engine.used).toBe(0);
  });

  it('a slow stream consumer is paused after its buffer fills and never stalls the others', async () => {
    const engine = new FakeEngine();
    const s = new Scheduler(engine, { streamBuffer: 4, maxWaitMs: 1 });
    const slow = s.stream([5], { maxTokens: 50 });
    const fast = await s.generate([6], { maxTokens: 50 });
    expect(fast.tokens.length).toBe(50);
    // Paused after 4 buffered tokens, the slow sequence left the fast one to run alone.
    expect(engine.batches.filter((b) => b === 1).length).toBeGreaterThanOrEqual(40);
    // The slow stream was never read: it must be parked with a bounded number of tokens.
    const it = slow[Symbol.asyncIterator]();
    const got: number[] = [];
    for (;;) {
      const n = await it.next();
      if (n.done) break;
      got.push(n.value.token);
    }
    const r = await slow.result;
    expect(r.tokens).toEqual(got);
    expect(got.length).toBe(50);
    const alone = await new Scheduler(new FakeEngine()).generate([5], { maxTokens: 50 });
    expect(got).toEqual(alone.tokens);
  });

  it('requests wait for KV memory, and only one that can never fit fails with KVANT_OOM', async () => {
    const engine = new FakeEngine(40);
    const s = new Scheduler(engine, { maxWaitMs: 0 });
    const rs = [s.generate([1, 2], { maxTokens: 20 }), s.generate([3, 4], { maxTokens: 20 }), s.generate([5, 6], { maxTokens: 20 })];
    await expect(s.generate([1], { maxTokens: 50 })).rejects.toMatchObject({ code: 'KVANT_OOM' });
    const done = await Promise.all(rs);
    expect(done.map((r) => r.tokens.length)).toEqual([20, 20, 20]);
    expect(Math.max(...engine.batches)).toBe(1); // 22 tokens each in a 40-token budget: one at a time
    expect(engine.used).toBe(0);
  });

  it('reports log-probabilities and timing', async () => {
    const r = await new Scheduler(new FakeEngine()).generate([9], { maxTokens: 5, logprobs: true });
    expect(r.logprobs).toHaveLength(5);
    expect(r.logprobs!.every((l) => l <= 0 && Number.isFinite(l))).toBe(true);
    expect(r.timing.prefillMs).toBeGreaterThanOrEqual(0);
  });

  it('bad requests are typed errors', () => {
    const s = new Scheduler(new FakeEngine());
    expect(code(() => s.generate([]))).toBe('KVANT_RANGE');
    expect(code(() => s.generate([50]))).toBe('KVANT_RANGE'); // vocab is 50
    expect(code(() => s.generate([-1]))).toBe('KVANT_RANGE');
    expect(code(() => s.generate(new Array(64).fill(1)))).toBe('KVANT_RANGE'); // longer than the context
    expect(code(() => s.generate([1], { maxTokens: 0 }))).toBe('KVANT_RANGE');
    expect(code(() => s.generate([1], { temperature: -1 }))).toBe('KVANT_RANGE');
    expect(code(() => s.generate([1], { topP: 0 }))).toBe('KVANT_RANGE');
    expect(code(() => s.generate([1], { stopStrings: ['x'] }))).toBe('KVANT_RANGE'); // no detokenizer
    expect(code(() => new Scheduler(new FakeEngine(), { maxBatchSize: 0 }))).toBe('KVANT_RANGE');
  });
});

describe('sampler', () => {
  const logits = Float32Array.from([0.5, 2, 2, -1, 1.5]);
  it('greedy takes the max, ties to the lower id; top-k and tiny top-p reduce to greedy', () => {
    expect(new Sampler({}).sample(logits)).toBe(1);
    for (let seed = 0; seed < 20; seed++) {
      expect(new Sampler({ temperature: 1, topK: 1, seed }).sample(logits)).toBe(1);
      expect(new Sampler({ temperature: 1, topP: 1e-6, seed }).sample(logits)).toBe(1);
    }
    expect(Array.from(topKIndices(logits, 3))).toEqual([1, 2, 4]);
  });

  it('is deterministic per seed and follows the softmax distribution', () => {
    const a = Array.from({ length: 50 }, (_, i) => new Sampler({ temperature: 1, seed: i }).sample(logits));
    const b = Array.from({ length: 50 }, (_, i) => new Sampler({ temperature: 1, seed: i }).sample(logits));
    expect(a).toEqual(b);
    const counts = new Array(5).fill(0);
    const s = new Sampler({ temperature: 1, seed: 99 });
    const N = 20000;
    for (let i = 0; i < N; i++) counts[s.sample(logits)]++;
    const z = Array.from(logits).reduce((acc, v) => acc + Math.exp(v), 0);
    // binomial sd <= sqrt(N/4) = 71; allow 5 sd
    Array.from(logits).forEach((v, i) => expect(Math.abs(counts[i] - (N * Math.exp(v)) / z)).toBeLessThan(360));
    // top-k 2 never leaves the two best
    const s2 = new Sampler({ temperature: 5, topK: 2, seed: 3 });
    for (let i = 0; i < 500; i++) expect([1, 2]).toContain(s2.sample(logits));
  });

  it('repetition penalty discourages seen tokens', () => {
    const s = new Sampler({ repetitionPenalty: 2 }, [1, 2]);
    expect(s.sample(logits)).toBe(4); // 2/2 = 1 < 1.5
  });
});
