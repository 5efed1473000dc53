/**
 * Token sampling: greedy, temperature, top-k, top-p and repetition penalty, driven by a
 * per-sequence seeded generator so a sequence's tokens never depend on what else shares
 * its batch.
 */
import { KvantError, expected } from '../errors';

export interface SamplingOptions {
  /** 0 (default) = greedy argmax; ties go to the lower token id. */
  temperature?: number;
  /** Keep only the k most likely tokens (0 = off). */
  topK?: number;
  /** Keep the smallest set of tokens whose probability reaches p (1 = off). */
  topP?: number;
  /** > 1 discourages tokens already in the prompt or output (HF/CTRL rule: divide positive logits, multiply negative). */
  repetitionPenalty?: number;
  /** Seed of this sequence's generator (default 0). */
  seed?: number;
}

export function checkSampling(o: SamplingOptions): Required<SamplingOptions> {
  const t = o.temperature ?? 0;
  if (typeof t !== 'number' || !Number.isFinite(t) || t < 0) throw expected('KVANT_RANGE', 'a finite number >= 0', 'temperature', t);
  const k = o.topK ?? 0;
  if (!Number.isInteger(k) || k < 0) throw expected('KVANT_RANGE', 'an integer >= 0', 'topK', k);
  const p = o.topP ?? 1;
  if (typeof p !== 'number' || !(p > 0 && p <= 1)) throw expected('KVANT_RANGE', 'a number in (0, 1]', 'topP', p);
  const r = o.repetitionPenalty ?? 1;
  if (typeof r !== 'number' || !Number.isFinite(r) || r <= 0) throw expected('KVANT_RANGE', 'a finite number > 0', 'repetitionPenalty', r);
  const s = o.seed ?? 0;
  if (!Number.isSafeInteger(s) || s < 0) throw expected('KVANT_RANGE', 'a non-negative safe integer', 'seed', s);
  return { temperature: t, topK: k, topP: p, repetitionPenalty: r, seed: s };
}

/** splitmix64-based generator of uniform doubles in [0, 1). */
export class SeededRandom {
  private state: bigint;
  constructor(seed: number) {
    this.state = BigInt(seed) ^ 0x9e3779b97f4a7c15n;
  }
  next(): number {
    this.state = (this.state + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
    let z = this.state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
    z ^= z >> 31n;
    return Number(z >> 11n) / 2 ** 53;
  }
}

/** Indices of the k largest values (descending; ties to the lower index), O(V log k). */
export function topKIndices(values: Float32Array, k: number): Uint32Array {
  k = Math.min(k, values.length);
  // Min-heap of (value, index) ordered so the root is the current weakest entry.
  const heap = new Uint32Array(k);
  let size = 0;
  const weaker = (a: number, b: number) => values[a] < values[b] || (values[a] === values[b] && a > b);
  const siftDown = (i: number) => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < size && weaker(heap[l], heap[m])) m = l;
      if (r < size && weaker(heap[r], heap[m])) m = r;
      if (m === i) return;
      [heap[i], heap[m]] = [heap[m], heap[i]];
      i = m;
    }
  };
  for (let i = 0; i < values.length; i++) {
    if (Number.isNaN(values[i])) continue;
    if (size < k) {
      heap[size] = i;
      let c = size++;
      while (c > 0) {
        const p = (c - 1) >> 1;
        if (!weaker(heap[c], heap[p])) break;
        [heap[c], heap[p]] = [heap[p], heap[c]];
        c = p;
      }
    } else if (weaker(heap[0], i)) {
      heap[0] = i;
      siftDown(0);
    }
  }
  const out = Array.from(heap.subarray(0, size));
  out.sort((a, b) => values[b] - values[a] || a - b);
  return Uint32Array.from(out);
}

/** Natural-log softmax probability of `token` under `logits`. */
export function logSoftmaxAt(logits: Float32Array, token: number): number {
  let m = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > m) m = logits[i];
  let z = 0;
  for (let i = 0; i < logits.length; i++) z += Math.exp(logits[i] - m);
  return logits[token] - m - Math.log(z);
}

export class Sampler {
  private readonly opts: Required<SamplingOptions>;
  private readonly rng: SeededRandom;
  private readonly seen = new Set<number>();

  constructor(opts: SamplingOptions, history: readonly number[] = []) {
    this.opts = checkSampling(opts);
    this.rng = new SeededRandom(this.opts.seed);
    for (const t of history) this.seen.add(t);
  }

  /** Picks the next token from raw logits (the array is not modified). */
  sample(raw: Float32Array): number {
    const { temperature, topK, topP, repetitionPenalty } = this.opts;
    let logits = raw;
    if (repetitionPenalty !== 1 && this.seen.size > 0) {
      logits = Float32Array.from(raw);
      for (const t of this.seen) if (t < logits.length) logits[t] = logits[t] > 0 ? logits[t] / repetitionPenalty : logits[t] * repetitionPenalty;
    }
    let token: number;
    if (temperature === 0) {
      token = topKIndices(logits, 1)[0];
    } else {
      token = this.draw(logits, temperature, topK, topP);
    }
    if (token === undefined) throw new KvantError('KVANT_RANGE', 'Cannot sample: every logit is NaN');
    this.seen.add(token);
    return token;
  }

  private draw(logits: Float32Array, temperature: number, topK: number, topP: number): number {
    if (topK === 0 && topP >= 1) return this.drawFull(logits, temperature);
    // Candidates: the top-k (or, for top-p alone, a growing prefix until it holds mass p).
    const V = logits.length;
    let cand = topKIndices(logits, topK > 0 ? topK : Math.min(V, 256));
    const probsOf = (idx: Uint32Array) => {
      const m = logits[idx[0]];
      let z = 0;
      if (topK > 0 || idx.length === V) {
        const p = Array.from(idx, (i) => Math.exp((logits[i] - m) / temperature));
        z = p.reduce((a, b) => a + b, 0);
        return { p, z };
      }
      // Normalize over the whole vocabulary so the prefix's mass is known.
      for (let i = 0; i < V; i++) if (!Number.isNaN(logits[i])) z += Math.exp((logits[i] - m) / temperature);
      return { p: Array.from(idx, (i) => Math.exp((logits[i] - m) / temperature)), z };
    };
    let { p, z } = probsOf(cand);
    if (topK === 0 && topP < 1) {
      while (p.reduce((a, b) => a + b, 0) / z < topP && cand.length < V) {
        cand = topKIndices(logits, Math.min(V, cand.length * 8));
        ({ p, z } = probsOf(cand));
      }
    }
    // Top-p cut over the (sorted) candidates.
    let keep = p.length;
    if (topP < 1) {
      let acc = 0;
      for (let i = 0; i < p.length; i++) {
        acc += p[i] / z;
        if (acc >= topP) {
          keep = i + 1;
          break;
        }
      }
    }
    const mass = p.slice(0, keep).reduce((a, b) => a + b, 0);
    let u = this.rng.next() * mass;
    for (let i = 0; i < keep; i++) {
      u -= p[i];
      if (u < 0) return cand[i];
    }
    return cand[keep - 1];
  }

  /** Plain temperature sampling over the whole vocabulary: one pass, no sort. */
  private drawFull(logits: Float32Array, temperature: number): number {
    let m = -Infinity;
    for (let i = 0; i < logits.length; i++) if (logits[i] > m) m = logits[i];
    let z = 0;
    for (let i = 0; i < logits.length; i++) if (!Number.isNaN(logits[i])) z += Math.exp((logits[i] - m) / temperature);
    let u = this.rng.next() * z;
    let last = -1;
    for (let i = 0; i < logits.length; i++) {
      if (Number.isNaN(logits[i])) continue;
      last = i;
      u -= Math.exp((logits[i] - m) / temperature);
      if (u < 0) return i;
    }
    return last;
  }
}
