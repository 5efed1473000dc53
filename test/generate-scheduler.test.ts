/**
 * Scheduler extensions of the generation layer: chunked prefill interleaved with decode,
 * engines that answer admission/open through promises (the worker), stop-string hold-back in
 * streams, and shutdown.
 */
import { describe, expect, it } from 'vitest';
import { Admission, DecodeEngine, Scheduler, releasable } from '../lib/generate/scheduler';
import { Sampler, SeededRandom, argmax, expNonPositive, topKIndices, topPBoundary } from '../lib/generate/sampler';

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

  it('short prompts arriving within maxWaitMs are prefilled in one turn and decode together from the first step', async () => {
    const e = new LoggingEngine();
    const s = new Scheduler(e, { maxWaitMs: 300, prefillChunk: 64 });
    const rs: Promise<unknown>[] = [s.generate([1, 2, 3], { maxTokens: 4 })];
    for (let i = 1; i < 10; i++) {
      await new Promise((r) => setTimeout(r, 1)); // staggered arrivals, all inside the wait
      rs.push(s.generate([i, 4, 5], { maxTokens: 4 }));
    }
    await Promise.all(rs);
    const firstDecode = e.log.findIndex((l) => l.startsWith('d'));
    expect(e.log.slice(0, firstDecode).filter((l) => l.startsWith('p'))).toHaveLength(10);
    expect(e.log[firstDecode].split(',')).toHaveLength(10);
  });

  it('a running sequence keeps decoding between the chunks of a long prompt', async () => {
    const e = new LoggingEngine();
    const s = new Scheduler(e, { prefillChunk: 8, maxWaitMs: 0, streamBuffer: 1000 });
    const ctl = new AbortController();
    const first = s.stream([1, 2], { maxTokens: 400, signal: ctl.signal });
    await first[Symbol.asyncIterator]().next(); // seq 0 is decoding now (and never pauses: buffer 1000)
    const second = await s.generate(long, { maxTokens: 5 });
    ctl.abort();
    expect((await first.result).finishReason).toBe('abort');
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
    const a = s.stream([1], { maxTokens: 200 });
    const b = s.generate([2], { maxTokens: 200 }); // waits: 201 + 201 > 300
    const it = a[Symbol.asyncIterator]();
    await it.next(); // a is running (and, with nobody reading, soon paused)
    await s.shutdown();
    expect((await a.result).finishReason).toBe('abort');
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

describe('sampler fast paths', () => {
  it('argmax agrees with the top-1 of topKIndices (ties to the lower id, NaN skipped)', () => {
    const rnd = new SeededRandom(4);
    for (let trial = 0; trial < 200; trial++) {
      const n = 1 + Math.floor(rnd.next() * 300);
      // Few distinct values make ties common; some NaN and -Infinity.
      const x = Float32Array.from({ length: n }, () => {
        const r = rnd.next();
        return r < 0.05 ? NaN : r < 0.1 ? -Infinity : Math.floor(rnd.next() * 5);
      });
      const ref = topKIndices(x, 1)[0];
      expect(argmax(x)).toBe(ref);
    }
    expect(argmax(Float32Array.from([NaN, NaN]))).toBeUndefined();
    expect(argmax(Float32Array.from([-Infinity, -Infinity]))).toBe(0);
  });

  it('full-vocabulary temperature sampling is the inverse-CDF draw of the seed', () => {
    const rnd = new SeededRandom(9);
    const V = 777;
    const logits = Float32Array.from({ length: V }, () => 4 * (rnd.next() - 0.5));
    logits[5] = NaN;
    for (let seed = 0; seed < 100; seed++) {
      const T = 0.7;
      const got = new Sampler({ temperature: T, seed }).sample(logits);
      // Reference: u ~ U[0,1) from the same generator, first index whose running f64 mass exceeds u·Z.
      const m = Math.max(...Array.from(logits).filter((v) => !Number.isNaN(v)));
      const p = Array.from(logits, (v) => (Number.isNaN(v) ? 0 : Math.exp((v - m) / T)));
      const z = p.reduce((a, b) => a + b, 0);
      let u = new SeededRandom(seed).next() * z;
      let want = -1;
      for (let i = 0; i < V; i++) {
        if (Number.isNaN(logits[i])) continue;
        want = i;
        u -= p[i];
        if (u < 0) break;
      }
      expect(got).toBe(want);
    }
  });
});

describe('top-p over the whole vocabulary', () => {
  /** The kept set by definition: sort by (logit desc, id asc), shortest prefix reaching mass p. */
  function keptByDefinition(logits: Float32Array, T: number, p: number): Set<number> {
    const ids = Array.from(logits.keys()).filter((i) => !Number.isNaN(logits[i]));
    ids.sort((a, b) => logits[b] - logits[a] || a - b);
    const m = logits[ids[0]];
    const w = ids.map((i) => Math.exp((logits[i] - m) / T));
    const z = w.reduce((a, b) => a + b, 0);
    const out = new Set<number>();
    let acc = 0;
    for (let j = 0; j < ids.length; j++) {
      out.add(ids[j]);
      acc += w[j];
      if (acc / z >= p) break;
    }
    return out;
  }

  it('keeps exactly the shortest sorted prefix (ties to the lower id) and never draws outside it', () => {
    const rnd = new SeededRandom(17);
    for (let trial = 0; trial < 6; trial++) {
      const V = 2500 + Math.floor(rnd.next() * 2000);
      // Flat, tie-rich logits (so the 256-best fast path is not enough), some negative and NaN.
      const logits = Float32Array.from({ length: V }, () => (rnd.next() < 0.01 ? NaN : Math.round((rnd.next() - 0.5) * 40) / 8));
      const T = 0.5 + rnd.next();
      const p = 0.5 + 0.45 * rnd.next();
      const want = keptByDefinition(logits, T, p);
      expect(want.size).toBeGreaterThan(256);
      const s = new Sampler({ temperature: T, topP: p, seed: trial });
      for (let k = 0; k < 50; k++) expect(want.has(s.sample(logits))).toBe(true);
      // The boundary itself: the kept set's weakest member by (logit desc, id asc).
      const m = Math.max(...Array.from(logits).filter((v) => !Number.isNaN(v)));
      const e = Float64Array.from(logits, (v) => (Number.isNaN(v) ? 0 : Math.exp((v - m) / T)));
      const z = e.reduce((a, b) => a + b, 0);
      const b = topPBoundary(logits, e, p * z)!;
      const weakest = [...want].sort((x, y) => logits[x] - logits[y] || y - x)[0];
      expect(b.index).toBe(weakest);
    }
  });

  it('draws each kept token with its renormalized probability', () => {
    // A peaked distribution (kept set of a few tokens, listed in reverse id order of strength).
    const V = 5000;
    const logits = new Float32Array(V).fill(-10);
    [4000, 3000, 2000, 1000, 10].forEach((t, j) => (logits[t] = 3 + 0.4 * j));
    const kept = [...keptByDefinition(logits, 1, 0.8)];
    expect(kept.length).toBeGreaterThan(1);
    const w = kept.map((t) => Math.exp(logits[t]));
    const wz = w.reduce((a, b) => a + b, 0);
    const N = 4000;
    const count = new Map<number, number>();
    const s = new Sampler({ temperature: 1, topP: 0.8, seed: 123 });
    for (let k = 0; k < N; k++) {
      const t = s.sample(logits);
      count.set(t, (count.get(t) ?? 0) + 1);
    }
    expect([...count.keys()].every((t) => kept.includes(t))).toBe(true);
    // Binomial sd <= sqrt(N/4) ~ 32: within 5 sd of N * p.
    kept.forEach((t, j) => expect(Math.abs((count.get(t) ?? 0) - (N * w[j]) / wz)).toBeLessThan(160));
  });
});

describe('expNonPositive', () => {
  it('agrees with Math.exp to 1e-9 relative on [-745, 0] and underflows to 0 below', () => {
    const rnd = new SeededRandom(2);
    let worst = 0;
    for (let i = 0; i < 20000; i++) {
      const x = i < 10000 ? -rnd.next() * 50 : -rnd.next() * 745;
      const want = Math.exp(x);
      if (want < 1e-300) continue; // subnormal range: relative error is not meaningful
      worst = Math.max(worst, Math.abs(expNonPositive(x) - want) / want);
    }
    // Taylor remainder (ln2/2)^9/9! ~ 2e-10 plus a few ulps of rounding in Horner's scheme.
    expect(worst).toBeLessThan(1e-9);
    expect(expNonPositive(0)).toBe(1);
    expect(expNonPositive(-Infinity)).toBe(0);
    expect(expNonPositive(-800)).toBe(0);
  });
});
