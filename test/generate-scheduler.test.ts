/**
 * Scheduler extensions of the generation layer: chunked prefill interleaved with decode,
 * engines that answer admission/open through promises (the worker), stop-string hold-back in
 * streams, and shutdown.
 */
import { describe, expect, it } from 'vitest';
import { Admission, DecodeEngine, Scheduler, releasable } from '../lib/generate/scheduler';

interface Seq {
  id: number;
  history: number[];
  reserved: number;
}

/** Logits depend only on the sequence's own history; every call is logged. */
class LoggingEngine implements DecodeEngine<Seq> {
  readonly vocabSize = 40;
  readonly maxContext = 512;
  readonly log: string[] = [];
  used = 0;
  private n = 0;
  constructor(private readonly budget = 1e9, private readonly async = false) {}
  admission(tokens: number): Admission | Promise<Admission> {
    const a: Admission = { verdict: tokens > this.budget ? 'never' : this.used + tokens > this.budget ? 'wait' : 'ok', needed: tokens, available: this.budget };
    return this.async ? new Promise((r) => setImmediate(() => r(a))) : a;
  }
  open(tokens: number): Seq | Promise<Seq> {
    this.used += tokens;
    const s = { id: this.n++, history: [], reserved: tokens };
    return this.async ? new Promise((r) => setImmediate(() => r(s))) : s;
  }
  close(seq: Seq): void {
    this.used -= seq.reserved;
  }
  private logits(h: number[]): Float32Array {
    let hash = 5;
    for (const t of h) hash = (hash * 33 + t + 1) % 999983;
    return Float32Array.from({ length: this.vocabSize }, (_, v) => 2 * Math.sin(hash * 0.01 + v * 0.77));
  }
  async prefill(seq: Seq, tokens: readonly number[]): Promise<Float32Array> {
    this.log.push(`p${seq.id}:${tokens.length}`);
    await new Promise((r) => setImmediate(r));
    seq.history.push(...tokens);
    return this.logits(seq.history);
  }
  async decode(seqs: readonly Seq[], tokens: readonly number[]): Promise<Float32Array[]> {
    this.log.push(`d${seqs.map((s) => s.id).join(',')}`);
    await new Promise((r) => setImmediate(r));
    return seqs.map((s, i) => {
      s.history.push(tokens[i]);
      return this.logits(s.history);
    });
  }
}

const long = Array.from({ length: 50 }, (_, i) => (i * 7 + 3) % 40);

describe('chunked prefill', () => {
  it('splits the prompt into chunks and gives the same tokens as one call', async () => {
    const whole = await new Scheduler(new LoggingEngine(), { prefillChunk: 1000 }).generate(long, { maxTokens: 10 });
    const e = new LoggingEngine();
    const chunked = await new Scheduler(e, { prefillChunk: 8 }).generate(long, { maxTokens: 10 });
    expect(chunked.tokens).toEqual(whole.tokens);
    expect(e.log.filter((l) => l.startsWith('p'))).toEqual(['p0:8', 'p0:8', 'p0:8', 'p0:8', 'p0:8', 'p0:8', 'p0:2']);
  });

  it('a running sequence keeps decoding between the chunks of a long prompt', async () => {
    const e = new LoggingEngine();
    const s = new Scheduler(e, { prefillChunk: 8, maxWaitMs: 0 });
    const ctl = new AbortController();
    const first = s.generate([1, 2], { maxTokens: 400, signal: ctl.signal });
    await new Promise((r) => setTimeout(r, 2)); // seq 0 is decoding by now
    const second = await s.generate(long, { maxTokens: 5 });
    ctl.abort();
    expect((await first).finishReason).toBe('abort');
    expect(second.tokens).toHaveLength(5);
    const chunks = e.log.map((l, i) => [l, i] as const).filter(([l]) => l.startsWith('p1:'));
    expect(chunks).toHaveLength(7);
    // Between consecutive chunks of sequence 1 there is a decode step of sequence 0.
    for (let k = 1; k < chunks.length; k++) expect(e.log.slice(chunks[k - 1][1], chunks[k][1]).some((l) => l.startsWith('d') && l.includes('0'))).toBe(true);
    expect(e.used).toBe(0);
  });

  it('an abort during prefill frees the sequence before its prompt is done', async () => {
    const e = new LoggingEngine();
    const s = new Scheduler(e, { prefillChunk: 4, maxWaitMs: 0 });
    const ctl = new AbortController();
    const p = s.generate(long, { maxTokens: 5, signal: ctl.signal });
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    ctl.abort();
    const r = await p;
    expect(r.finishReason).toBe('abort');
    expect(r.tokens).toEqual([]);
    expect(e.log.filter((l) => l.startsWith('p')).length).toBeLessThan(13);
    expect(e.used).toBe(0);
  });
});

describe('asynchronous engines (a model in a worker)', () => {
  it('waits for KV memory through promise answers; batch-invariant tokens', async () => {
    const e = new LoggingEngine(60, true);
    const s = new Scheduler(e, { maxWaitMs: 0 });
    const alone = await new Scheduler(new LoggingEngine(60, true)).generate([9, 9], { maxTokens: 20, temperature: 1, seed: 5 });
    const rs = await Promise.all([0, 1, 2].map((i) => s.generate([9, 9], { maxTokens: 20, temperature: 1, seed: i === 1 ? 5 : i })));
    expect(rs[1].tokens).toEqual(alone.tokens);
    // 22 tokens each in a 60-token budget: two run together, the third waits for one to end.
    expect(Math.max(...e.log.filter((l) => l.startsWith('d')).map((l) => l.split(',').length))).toBe(2);
    expect(e.used).toBe(0);
  });

  it('shutdown ends waiting and running requests with "abort" and refuses new ones', async () => {
    const e = new LoggingEngine(300, true);
    const s = new Scheduler(e, { maxWaitMs: 0 });
    const a = s.generate([1], { maxTokens: 200 });
    const b = s.generate([2], { maxTokens: 200 }); // waits: 201 + 201 > 300
    await new Promise((r) => setTimeout(r, 5));
    await s.shutdown();
    expect((await a).finishReason).toBe('abort');
    expect((await b).finishReason).toBe('abort');
    expect(() => s.generate([1])).toThrow(expect.objectContaining({ code: 'KVANT_ABORTED' }));
    expect(e.used).toBe(0);
  });
});

describe('stop strings in streams', () => {
  const letters = (ts: readonly number[]) => ts.map((t) => String.fromCharCode(97 + (t % 26))).join('');

  it('releasable holds back a possible stop-string start and incomplete characters', () => {
    expect(releasable('hello wo', 0, ['world'])).toBe(6);
    expect(releasable('hello', 0, ['lo!'])).toBe(3);
    expect(releasable('hello', 0, [])).toBe(5);
    expect(releasable('ab\ufffd', 0, [])).toBe(2);
    expect(releasable('hello', 4, ['o!'])).toBe(4);
    expect(releasable('hello', 5, ['o!'])).toBe(5); // never before what was already released
  });

  it('never streams text that turns out to be part of a stop string', async () => {
    const e = new LoggingEngine();
    const probe = await new Scheduler(e, { detokenize: letters }).generate([3, 4], { maxTokens: 30 });
    const text = probe.text!;
    const stop = text.slice(10, 13);
    const s = new Scheduler(e, { detokenize: letters });
    const st = s.stream([3, 4], { maxTokens: 30, stopStrings: [stop] });
    const seen: string[] = [];
    for await (const c of st) seen.push(c.text ?? '');
    const r = await st.result;
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(text.slice(0, text.indexOf(stop)));
    expect(seen.join('')).toBe(r.text);
    // At no point did the streamed text contain the stop string's first character beyond the cut.
    let acc = '';
    for (const t of seen) {
      acc += t;
      expect(r.text!.startsWith(acc)).toBe(true);
    }
  });

  it('held-back text is released when generation ends for another reason', async () => {
    const e = new LoggingEngine();
    const probe = await new Scheduler(e, { detokenize: letters }).generate([6], { maxTokens: 12 });
    const text = probe.text!;
    // A stop string starting with the text's last letter, that never completes.
    const stop = text[text.length - 1] + '#';
    const st = new Scheduler(e, { detokenize: letters }).stream([6], { maxTokens: 12, stopStrings: [stop] });
    let acc = '';
    for await (const c of st) acc += c.text ?? '';
    const r = await st.result;
    expect(r.finishReason).toBe('length');
    expect(r.text).toBe(text);
    expect(acc).toBe(text);
    // The same through a stop token: the held text comes in a trailing chunk with token -1.
    const k = probe.tokens.findIndex((t, i) => i >= 3 && !probe.tokens.slice(0, i).includes(t));
    expect(k).toBeGreaterThanOrEqual(3);
    const st2 = new Scheduler(e, { detokenize: letters }).stream([6], { maxTokens: 12, stopStrings: [letters([probe.tokens[k - 1]]) + '#'], stopTokens: [probe.tokens[k]] });
    const chunks = [];
    for await (const c of st2) chunks.push(c);
    const r2 = await st2.result;
    expect(r2.finishReason).toBe('stop');
    expect(r2.text).toBe(text.slice(0, k));
    expect(chunks.map((c) => c.text ?? '').join('')).toBe(r2.text);
    expect(chunks[chunks.length - 1]).toEqual({ token: -1, text: text[k - 1] });
  });
});
