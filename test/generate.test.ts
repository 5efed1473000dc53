/**
 * The public model API (loadModel / Model) end to end through the real worker thread and
 * scheduler, over a test stand-in model (test/helpers/fake-model.cjs) with the same shape as
 * DeepSeekV2Model: logits that depend only on a sequence's own history and a paged KV budget.
 * Needs dist/ (npx tsc -p tsconfig.build.json; npm test runs it as pretest).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KvantError } from '../lib';
import { Model, loadModel, LoadModelOptions } from '../lib/model';
import { makeModel } from '../lib/models/deepseek-v2/make-model';

const FAKE = { module: path.join(__dirname, 'helpers', 'fake-model.cjs'), export: 'FakeModel' };
let dir: string;
let bare: string; // config.json only: no tokenizer
const open: Model[] = [];

async function load(o: LoadModelOptions = {}, d = dir): Promise<Model> {
  const m = await loadModel(d, { implementation: FAKE, ...o });
  open.push(m);
  return m;
}

async function code(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    expect(e).toBeInstanceOf(KvantError);
    return (e as KvantError).code;
  }
  return 'none';
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-gen-'));
  makeModel({ preset: 'tiny', out: dir, layers: 1 });
  bare = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-gen-bare-'));
  fs.copyFileSync(path.join(dir, 'config.json'), path.join(bare, 'config.json'));
});

afterAll(async () => {
  await Promise.all(open.map((m) => m.close()));
  fs.rmSync(dir, { recursive: true, force: true });
  fs.rmSync(bare, { recursive: true, force: true });
});

describe('loadModel / Model over the worker', () => {
  it('loads in a worker with progress, config and tokenizer', async () => {
    const progress: number[] = [];
    const m = await load({ onProgress: (p) => progress.push(p.done) });
    expect(progress).toEqual([1, 2, 3]);
    expect(m.vocabSize).toBe(512);
    expect(m.config.hiddenSize).toBe(256);
    expect(m.tokenizer).not.toBeNull();
    expect(m.eosTokenIds).toEqual([511]);
    expect(await m.memory()).toEqual({ weightsBytes: 12345, cacheBytes: 0 });
  });

  it('a sequence generated alone and inside a batch of 10 gives identical tokens; pages are freed', async () => {
    const m = await load({ maxWaitMs: 20 });
    const opts = { temperature: 0.9, topP: 0.95, seed: 77, maxTokens: 24, ignoreEos: true };
    const alone = await m.generate([1, 2, 3], opts);
    expect(alone.tokens).toHaveLength(24);
    const before = m.stats.maxBatch;
    const all = await Promise.all(Array.from({ length: 10 }, (_, i) => m.generate(i === 6 ? [1, 2, 3] : [i + 10, 4], { ...opts, seed: i === 6 ? 77 : i })));
    expect(all[6].tokens).toEqual(alone.tokens);
    expect(m.stats.maxBatch).toBeGreaterThanOrEqual(9);
    expect(before).toBe(1);
    expect(all.every((r) => r.finishReason === 'length' && r.usage.completionTokens === 24)).toBe(true);
    expect((await m.memory()).cacheBytes).toBe(0);
  });

  it('seeded sampling is deterministic; another seed gives another sequence', async () => {
    const m = await load();
    const o = { temperature: 1.2, topK: 40, maxTokens: 16, ignoreEos: true };
    const a = await m.generate([5, 6], { ...o, seed: 3 });
    const b = await m.generate([5, 6], { ...o, seed: 3 });
    const c = await m.generate([5, 6], { ...o, seed: 4 });
    expect(b.tokens).toEqual(a.tokens);
    expect(c.tokens).not.toEqual(a.tokens);
  });

  it('streams chunks whose tokens and texts add up to the result; logprobs on request', async () => {
    const m = await load();
    const s = m.stream('hello world', { maxTokens: 12, logprobs: true, ignoreEos: true });
    const chunks = [];
    for await (const c of s) chunks.push(c);
    const r = await s.result;
    expect(chunks.filter((c) => c.token >= 0).map((c) => c.token)).toEqual(r.tokens);
    expect(chunks.map((c) => c.text ?? '').join('')).toBe(r.text);
    expect(r.text).toBe(m.tokenizer!.decode(r.tokens));
    expect(r.usage.promptTokens).toBe(m.encode('hello world').length);
    expect(r.logprobs).toHaveLength(12);
    expect(r.logprobs!.every((l) => l <= 0)).toBe(true);
  });

  it('stop strings cut the text before them, also in the stream', async () => {
    const m = await load();
    const probe = await m.generate([7, 8, 9], { maxTokens: 40, ignoreEos: true });
    const text = probe.text!;
    // A stop string that starts in the middle of the text (two characters from a later token).
    const at = Math.floor(text.length / 2);
    const stop = text.slice(at, at + 2);
    const first = text.indexOf(stop);
    const s = m.stream([7, 8, 9], { maxTokens: 40, ignoreEos: true, stopStrings: [stop] });
    let streamed = '';
    for await (const c of s) streamed += c.text ?? '';
    const r = await s.result;
    expect(r.finishReason).toBe('stop');
    expect(r.text).toBe(text.slice(0, first));
    expect(streamed).toBe(r.text);
    expect(r.tokens).toEqual(probe.tokens.slice(0, r.tokens.length));
  });

  it('stop tokens (and EOS by default) end with finish reason "stop"', async () => {
    const m = await load();
    const probe = await m.generate([2], { maxTokens: 20, ignoreEos: true });
    const t = probe.tokens[7];
    const r = await m.generate([2], { maxTokens: 20, stopTokens: [t], ignoreEos: true });
    expect(r.finishReason).toBe('stop');
    expect(r.tokens).toEqual(probe.tokens.slice(0, probe.tokens.indexOf(t)));
  });

  it('abort removes a sequence mid-stream; the others finish; its pages are freed', async () => {
    const m = await load({ maxWaitMs: 5 });
    const ctl = new AbortController();
    const s = m.stream([1, 2], { maxTokens: 200, signal: ctl.signal, ignoreEos: true });
    const other = m.generate([3], { maxTokens: 30, ignoreEos: true });
    let n = 0;
    for await (const c of s) if (c.token >= 0 && ++n === 3) ctl.abort();
    const r = await s.result;
    expect(r.finishReason).toBe('abort');
    expect(r.tokens.length).toBeLessThan(200);
    expect((await other).tokens).toHaveLength(30);
    expect((await m.memory()).cacheBytes).toBe(0);
  });

  it('leaving a stream loop early aborts that sequence and frees its pages', async () => {
    const m = await load();
    const s = m.stream([9], { maxTokens: 300, ignoreEos: true });
    let n = 0;
    for await (const _ of s) if (++n === 2) break;
    const r = await s.result;
    expect(r.finishReason).toBe('abort');
    expect(r.tokens.length).toBeLessThan(300);
    expect((await m.memory()).cacheBytes).toBe(0);
  });

  it('a slow stream consumer is paused and does not stall another request', async () => {
    const m = await load({ streamBuffer: 4, maxWaitMs: 1 });
    const slow = m.stream([4], { maxTokens: 60, ignoreEos: true });
    const fast = await m.generate([5], { maxTokens: 60, ignoreEos: true });
    expect(fast.tokens).toHaveLength(60);
    const got: number[] = [];
    for await (const c of slow) got.push(c.token);
    expect(got).toEqual((await slow.result).tokens);
    expect(got).toEqual((await m.generate([4], { maxTokens: 60, ignoreEos: true })).tokens);
  });

  it('KV budget: requests wait for memory; only a never-fitting one fails with KVANT_OOM', async () => {
    // 1000 B/token, 16-token pages: a 4-page budget holds one 2+30-token request (2 pages) twice.
    const m = await load({ kvBudgetBytes: 4 * 16 * 1000, maxWaitMs: 0 });
    const rs = [1, 2, 3, 4, 5].map((t) => m.generate([t, t], { maxTokens: 30, ignoreEos: true }));
    expect(await code(m.generate([1], { maxTokens: 100 }))).toBe('KVANT_OOM');
    const done = await Promise.all(rs);
    expect(done.map((r) => r.tokens.length)).toEqual([30, 30, 30, 30, 30]);
    expect(m.stats.maxBatch).toBe(2);
    expect(done[4].timing.queuedMs).toBeGreaterThan(0);
    expect((await m.memory()).cacheBytes).toBe(0);
  });

  it('logits per position, prefill and decode modes', async () => {
    const m = await load();
    const toks = [3, 1, 4, 1, 5];
    const p = await m.logits(toks);
    const d = await m.logits(toks, { mode: 'decode' });
    expect(p).toHaveLength(5);
    expect(p.every((r) => r.length === 512)).toBe(true);
    for (let i = 0; i < 5; i++) expect(Array.from(d[i])).toEqual(Array.from(p[i]));
    // Row i is the logits after token i: greedy generation from the prefix agrees with it.
    const g = await m.generate(toks.slice(0, 3), { maxTokens: 1, ignoreEos: true });
    const row = p[2];
    expect(g.tokens[0]).toBe(row.indexOf(Math.max(...row)));
  });

  it('chat messages go through the chat template', async () => {
    const m = await load();
    const ids = m.encode({ messages: [{ role: 'user', content: 'hi' }] });
    expect(ids[0]).toBe(m.tokenizer!.bosId);
    expect(ids.filter((t) => t === m.tokenizer!.bosId)).toHaveLength(1);
    const r = await m.generate({ messages: [{ role: 'user', content: 'hi' }] }, { maxTokens: 3, ignoreEos: true });
    expect(r.usage.promptTokens).toBe(ids.length);
  });

  it('accounts decode time inside the model vs around it', async () => {
    const m = await load();
    await m.generate([1], { maxTokens: 20, ignoreEos: true });
    const s = m.stats;
    expect(s.steps).toBe(19); // the first token comes from prefill
    // The stand-in sleeps >= 1 ms per step inside the worker; the main thread's wait includes it.
    expect(s.decodeComputeMs).toBeGreaterThanOrEqual(19);
    expect(s.decodeMs).toBeGreaterThanOrEqual(s.decodeComputeMs);
    expect(s.overhead).toBeGreaterThanOrEqual(0);
    expect(s.overhead).toBeLessThan(1);
  });

  it('keeps the event loop free while generating', async () => {
    const m = await load();
    let ticks = 0;
    const t = setInterval(() => ticks++, 0);
    const r = await m.generate([1], { maxTokens: 60, ignoreEos: true });
    clearInterval(t);
    expect(r.tokens).toHaveLength(60);
    // 60 worker round trips of >= 1 ms each: a blocked loop would tick ~0 times.
    expect(ticks).toBeGreaterThan(10);
  });

  it('close() aborts pending generations and later calls fail with KVANT_ABORTED', async () => {
    const m = await loadModel(dir, { implementation: FAKE });
    const pending = m.generate([1], { maxTokens: 500, ignoreEos: true });
    await new Promise((r) => setTimeout(r, 20));
    await m.close();
    const r = await pending;
    expect(r.finishReason).toBe('abort');
    expect(await code(m.generate([1]))).toBe('KVANT_ABORTED');
    expect(await code(m.logits([1]))).toBe('KVANT_ABORTED');
    await m.close(); // twice is fine
  });

  it('a dying worker rejects pending and later calls with KVANT_BACKEND, never hangs', async () => {
    const m = await load({ implementation: { ...FAKE, export: 'CrashingModel' } });
    expect(await code(m.generate([1], { maxTokens: 50, ignoreEos: true }))).toBe('KVANT_BACKEND');
    expect(await code(m.generate([2], { maxTokens: 5 }))).toBe('KVANT_BACKEND');
    expect(await code(m.logits([1]))).toBe('KVANT_BACKEND');
    await m.close();
  });

  it('bad input ends in typed errors', async () => {
    const m = await load();
    expect(await code(m.generate([512]))).toBe('KVANT_RANGE');
    expect(await code(m.generate([]))).toBe('KVANT_RANGE');
    expect(await code(m.generate(new Array(1024).fill(1)))).toBe('KVANT_RANGE'); // context is 1024
    expect(await code(m.generate([1], { temperature: -1 }))).toBe('KVANT_RANGE');
    expect(await code(m.generate(42 as unknown as number[]))).toBe('KVANT_DTYPE');
    expect(await code(m.generate({ messages: [{ role: 'robot', content: 'x' }] } as never))).toBe('KVANT_RANGE');
    expect(await code(m.logits([1, 600]))).toBe('KVANT_RANGE');
    expect(await code(m.logits([1], { mode: 'sideways' as 'decode' }))).toBe('KVANT_RANGE');
    const b = await load({}, bare);
    expect(b.tokenizer).toBeNull();
    expect(await code(b.generate('text needs a tokenizer'))).toBe('KVANT_FORMAT');
    expect(await code(b.generate([1], { stopStrings: ['x'] }))).toBe('KVANT_RANGE');
    expect((await b.generate([1], { maxTokens: 2, ignoreEos: true })).text).toBeUndefined();
    expect(await code(loadModel(path.join(dir, 'nope')))).toBe('KVANT_IO');
    expect(await code(loadModel(dir, { kvCache: 'q5' as 'q4' }))).toBe('KVANT_RANGE');
    expect(await code(loadModel(dir, { activations: 'int4' as 'int8' }))).toBe('KVANT_RANGE');
    expect(await code(loadModel(dir, { kvBudgetBytes: -1 }))).toBe('KVANT_RANGE');
    expect(await code(loadModel(dir, { implementation: { ...FAKE, export: 'BrokenModel' } }))).toBe('KVANT_FORMAT');
    const ctl = new AbortController();
    const p = loadModel(dir, { implementation: FAKE, signal: ctl.signal });
    ctl.abort();
    expect(await code(p)).toBe('KVANT_ABORTED');
  });
});
