'use strict';
/**
 * Test-only stand-in for DeepSeekV2Model with the same shape (static load, cache, prefill,
 * decode, memory, dispose), loaded by the real worker host through loadModel's
 * `implementation` hook. Its logits depend only on a sequence's own token history (as a
 * batch-invariant model's do); its KV cache accounts pages exactly like a paged cache with a
 * byte budget. Plain CommonJS so the compiled worker can require it without a build step.
 */
const fs = require('node:fs');
const path = require('node:path');
const dist = path.join(__dirname, '..', '..', 'dist');
const { KvantError } = require(path.join(dist, 'errors.js'));
const { parseConfig } = require(path.join(dist, 'models', 'deepseek-v2', 'config.js'));

const sleep = (ms) => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);

class FakeCache {
  constructor(budgetBytes, pageSize) {
    this.bytesPerToken = 1000;
    this.pageSize = pageSize;
    this.budgetPages = Math.floor(budgetBytes / (this.bytesPerToken * pageSize));
    this.usedPages = 0;
    this.seqs = new Map();
    this.next = 0;
  }
  pages(tokens) {
    return Math.ceil(tokens / this.pageSize);
  }
  admission(tokens) {
    const p = this.pages(tokens);
    const verdict = p > this.budgetPages ? 'never' : this.usedPages + p > this.budgetPages ? 'wait' : 'ok';
    return { verdict, needed: p * this.pageSize * this.bytesPerToken, available: this.budgetPages * this.pageSize * this.bytesPerToken };
  }
  open(reserve) {
    const p = this.pages(reserve);
    if (this.usedPages + p > this.budgetPages) throw new KvantError('KVANT_OOM', `fake cache: ${reserve} tokens do not fit`);
    this.usedPages += p;
    const id = this.next++;
    this.seqs.set(id, { history: [], pages: p, reserve });
    return id;
  }
  close(seq) {
    const s = this.seqs.get(seq);
    if (!s) throw new KvantError('KVANT_RANGE', `fake cache: unknown sequence ${seq}`);
    this.usedPages -= s.pages;
    this.seqs.delete(seq);
  }
  length(seq) {
    return this.seqs.get(seq).history.length;
  }
  usedBytes() {
    return this.usedPages * this.pageSize * this.bytesPerToken;
  }
}

class FakeModel {
  static load(dir, o = {}) {
    const config = parseConfig(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')));
    for (let i = 1; i <= 3; i++) o.onProgress?.({ done: i, total: 3, what: `fake tensor ${i}` });
    return new FakeModel(config, o);
  }
  constructor(config, o) {
    this.config = config;
    this.vocabSize = config.vocabSize;
    this.maxContext = config.maxPositionEmbeddings;
    this.cache = new FakeCache(o.kvBudgetBytes ?? 2 ** 40, o.pageSize ?? 16);
    this.stepMs = Number(process.env.KVANT_FAKE_STEP_MS ?? 1);
    this.decodeCalls = 0;
  }
  logitsOf(history) {
    let hash = 17;
    for (const t of history) hash = (hash * 31 + t + 7) % 1000003;
    const out = new Float32Array(this.vocabSize);
    for (let v = 0; v < this.vocabSize; v++) out[v] = 3 * Math.sin(hash * 0.001 + v * 1.37) + Math.cos(v * hash * 0.0001);
    return out;
  }
  check(seq, tokens) {
    const s = this.cache.seqs.get(seq);
    if (!s) throw new KvantError('KVANT_RANGE', `fake model: unknown sequence ${seq}`);
    for (const t of tokens) if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) throw new KvantError('KVANT_RANGE', `fake model: token ${t} out of range`);
    if (s.history.length + tokens.length > s.reserve) throw new KvantError('KVANT_RANGE', `fake model: sequence ${seq} exceeds its reservation`);
    return s;
  }
  prefill(seq, tokens, o = {}) {
    const s = this.check(seq, tokens);
    sleep(this.stepMs);
    if (!o.allLogits) {
      s.history.push(...tokens);
      return this.logitsOf(s.history);
    }
    const out = new Float32Array(tokens.length * this.vocabSize);
    for (let i = 0; i < tokens.length; i++) {
      s.history.push(tokens[i]);
      out.set(this.logitsOf(s.history), i * this.vocabSize);
    }
    return out;
  }
  decode(seqs, tokens) {
    if (seqs.length !== tokens.length) throw new KvantError('KVANT_SHAPE', 'fake model: seqs and tokens differ in length');
    sleep(this.stepMs);
    this.decodeCalls++;
    // One shared buffer with views, like a batched forward's output.
    const all = new Float32Array(seqs.length * this.vocabSize);
    return seqs.map((seq, i) => {
      const s = this.check(seq, [tokens[i]]);
      s.history.push(tokens[i]);
      const v = all.subarray(i * this.vocabSize, (i + 1) * this.vocabSize);
      v.set(this.logitsOf(s.history));
      return v;
    });
  }
  memory() {
    return { weightsBytes: 12345, cacheBytes: this.cache.usedBytes() };
  }
  dispose() {}
}

/** A class whose load always fails, for the load-error path. */
class BrokenModel {
  static load() {
    throw new KvantError('KVANT_FORMAT', 'config.json: expected an integer for "hidden_size" (broken fake)');
  }
}

module.exports = { FakeModel, BrokenModel };

/** A model whose worker dies in the middle of a decode step (as a native crash would end it). */
class CrashingModel extends FakeModel {
  static load(dir, o = {}) {
    const m = FakeModel.load(dir, o);
    Object.setPrototypeOf(m, CrashingModel.prototype);
    return m;
  }
  decode(seqs, tokens) {
    if (this.decodeCalls++ >= 3) process.exit(7);
    return FakeModel.prototype.decode.call(this, seqs, tokens);
  }
}

module.exports.CrashingModel = CrashingModel;
