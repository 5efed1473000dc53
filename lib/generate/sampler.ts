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

/** 2^n for n = 0, -1, ..., -1074 (exact powers of two; subnormals at the end). */
const POW2_NEG = Float64Array.from({ length: 1075 }, (_, i) => Math.pow(2, -i));

/**
 * e^x for x <= 0, accurate to ~1e-10 relative (sampling weights need far less), 3-4x faster
 * than Math.exp in V8: x·log2(e) = n + f with n an integer and |f| <= 1/2, then
 * e^x = 2^n · e^(f·ln 2), the second factor by its Taylor series to degree 8 (remainder
 * (ln2/2)^9 / 9! ≈ 2e-10), 2^n from a table. Pure IEEE arithmetic: the same bits everywhere.
 */
export function expNonPositive(x: number): number {
  const y = x * 1.4426950408889634;
  const n = Math.round(y);
  if (n < -1074) return 0;
  const t = (y - n) * 0.6931471805599453;
  const p = 1 + t * (1 + t * (0.5 + t * (1 / 6 + t * (1 / 24 + t * (1 / 120 + t * (1 / 720 + t * (1 / 5040 + t * (1 / 40320))))))));
  return p * POW2_NEG[-n];
}

/** Index of the largest value (ties to the lower index; NaN skipped; undefined if all NaN). */
export function argmax(values: Float32Array): number | undefined {
  let best = -1;
  let bv = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (v > bv || (best < 0 && v === -Infinity)) {
      best = i;
      bv = v;
    }
  }
  return best < 0 ? undefined : best;
}

/** An order-preserving u32 key of logits[i] (IEEE bits with the sign folded: larger float, larger key). */
export function sortKey(logits: Float32Array, i: number): number {
  const bits = new Uint32Array(logits.buffer, logits.byteOffset + 4 * i, 1)[0];
  return bits & 0x80000000 ? ~bits >>> 0 : (bits | 0x80000000) >>> 0;
}

/**
 * The last token of the top-p prefix: walking tokens in (logit desc, id asc) order and adding
 * their weights e, the first one at which the running mass reaches `target`. Found with a
 * 65536-bucket histogram of the keys' top 16 bits (mass per bucket, walked from the top) and
 * an exact sort of the one boundary bucket only. Null when rounding leaves the total short of
 * the target (keep everything).
 */
export function topPBoundary(
  logits: Float32Array,
  e: Float64Array,
  target: number,
  scratch?: { keys: Uint32Array; hist: Float64Array },
): { key: number; index: number; keys: Uint32Array } | null {
  const V = logits.length;
  const bits = new Uint32Array(logits.buffer, logits.byteOffset, V);
  const keys = scratch && scratch.keys.length >= V ? scratch.keys : new Uint32Array(V);
  const hist = scratch ? scratch.hist.fill(0) : new Float64Array(65536);
  for (let i = 0; i < V; i++) {
    const b = bits[i];
    keys[i] = b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
    if (!Number.isNaN(logits[i])) hist[keys[i] >>> 16] += e[i];
  }
  let acc = 0;
  let bucket = -1;
  for (let h = 65535; h >= 0; h--) {
    if (hist[h] > 0 && acc + hist[h] >= target) {
      bucket = h;
      break;
    }
    acc += hist[h];
  }
  if (bucket < 0) return null;
  const inBucket: number[] = [];
  for (let i = 0; i < V; i++) if (!Number.isNaN(logits[i]) && keys[i] >>> 16 === bucket) inBucket.push(i);
  inBucket.sort((a, b) => keys[b] - keys[a] || a - b);
  for (const i of inBucket) {
    acc += e[i];
    if (acc >= target) return { key: keys[i], index: i, keys };
  }
  const last = inBucket[inBucket.length - 1];
  return { key: keys[last], index: last, keys };
}

/** Natural-log softmax probability of `token` under `logits`. */
export function logSoftmaxAt(logits: Float32Array, token: number): number {
  let m = -Infinity;
  for (let i = 0; i < logits.length; i++) if (logits[i] > m) m = logits[i];
  let z = 0;
  for (let i = 0; i < logits.length; i++) z += Math.exp(logits[i] - m);
  return logits[token] - m - Math.log(z);
}

/**
 * Scratch for the full-vocabulary draws, shared by every Sampler of the thread: sample() is
 * synchronous, so no two draws use it at once, and a server with many sequences keeps one
 * vocabulary-sized set of buffers instead of one per request.
 */
const scratch: { exps: Float64Array; keys: Uint32Array; hist?: Float64Array } = { exps: new Float64Array(0), keys: new Uint32Array(0) };

/**
 * A Sampler's state for sampling its next token elsewhere (the device sampler, cuda.sampleTokens,
 * which follows sample() step by step): the options, the 1-based index of the generator draw
 * the next non-greedy sample uses, and the tokens the repetition penalty applies to.
 */
export interface SamplerState extends Required<SamplingOptions> {
  counter: number;
  history: number[];
}

export class Sampler {
  private readonly opts: Required<SamplingOptions>;
  private readonly rng: SeededRandom;
  private readonly seen = new Set<number>();
  /** Generator draws so far (one per non-greedy sample). */
  private draws = 0;

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
    let token: number | undefined;
    if (temperature === 0) {
      token = argmax(logits);
    } else {
      token = this.draw(logits, temperature, topK, topP);
      this.draws++; // every non-greedy path draws exactly once
    }
    if (token === undefined) throw new KvantError('KVANT_RANGE', 'Cannot sample: every logit is NaN');
    this.seen.add(token);
    return token;
  }

  /** The state the next sample() would start from (see {@link SamplerState}). */
  state(): SamplerState {
    return { ...this.opts, counter: this.draws + 1, history: this.opts.repetitionPenalty !== 1 ? [...this.seen] : [] };
  }

  /** Records a token sampled elsewhere from {@link state}: advances the generator and the history as sample() would have. */
  record(token: number): void {
    if (this.opts.temperature !== 0) {
      this.rng.next();
      this.draws++;
    }
    this.seen.add(token);
  }

  private draw(logits: Float32Array, temperature: number, topK: number, topP: number): number {
    if (topK === 0 && topP >= 1) return this.drawFull(logits, temperature);
    if (topK === 0) return this.drawTopP(logits, temperature, topP);
    // Top-k candidates (sorted, best first), probabilities renormalized over them, then top-p within.
    const cand = topKIndices(logits, topK);
    const m = logits[cand[0]];
    const p = Array.from(cand, (i) => Math.exp((logits[i] - m) / temperature));
    const z = p.reduce((a, b) => a + b, 0);
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
    return this.pick(cand, p, keep);
  }

  /** Draws among the first `keep` candidates with weights p (in candidate order). */
  private pick(cand: Uint32Array, p: readonly number[], keep: number): number {
    let mass = 0;
    for (let i = 0; i < keep; i++) mass += p[i];
    let u = this.rng.next() * mass;
    for (let i = 0; i < keep; i++) {
      u -= p[i];
      if (u < 0) return cand[i];
    }
    return cand[keep - 1];
  }

  /**
   * Top-p over the whole vocabulary. The kept set, the shortest prefix of the tokens sorted by
   * (logit desc, id asc) whose mass reaches p, is found without sorting the vocabulary (see
   * topPBoundary), and the draw walks it in id order: one exp pass and a few linear passes
   * per token instead of an O(V log V) sort.
   */
  private drawTopP(logits: Float32Array, temperature: number, topP: number): number {
    const V = logits.length;
    const e = this.expsOf(logits, temperature);
    let z = 0;
    for (let i = 0; i < V; i++) z += e[i];
    if (scratch.keys.length < V) scratch.keys = new Uint32Array(V);
    scratch.hist ??= new Float64Array(65536);
    const b = topPBoundary(logits, e, topP * z, { keys: scratch.keys, hist: scratch.hist });
    if (!b) return this.drawFull(logits, temperature);
    const keys = b.keys;
    const bk = b.key;
    const bi = b.index;
    // NaN logits have e = 0: they can never be drawn, so they need no test here.
    let mass = 0;
    for (let i = 0; i < V; i++) if (keys[i] > bk || (keys[i] === bk && i <= bi)) mass += e[i];
    let u = this.rng.next() * mass;
    let last = bi;
    for (let i = 0; i < V; i++) {
      if (!(keys[i] > bk || (keys[i] === bk && i <= bi)) || e[i] === 0) continue;
      last = i;
      u -= e[i];
      if (u < 0) return i;
    }
    return last;
  }

  /** exp((logit - max) / T) per token into a reused buffer (0 for NaN). */
  private expsOf(logits: Float32Array, temperature: number): Float64Array {
    let m = -Infinity;
    for (let i = 0; i < logits.length; i++) if (logits[i] > m) m = logits[i];
    if (scratch.exps.length < logits.length) scratch.exps = new Float64Array(logits.length);
    const e = scratch.exps;
    for (let i = 0; i < logits.length; i++) {
      const v = logits[i];
      e[i] = Number.isNaN(v) ? 0 : expNonPositive((v - m) / temperature);
    }
    return e;
  }

  /**
   * Plain temperature sampling over the whole vocabulary, no sort: the exponentials are
   * computed once (kept for the scan; a 100k vocabulary costs one pass of exp, not two) and
   * the draw walks their running sum in index order, so the result is a function of the
   * logits and the seed only.
   */
  private drawFull(logits: Float32Array, temperature: number): number {
    const e = this.expsOf(logits, temperature);
    let z = 0;
    for (let i = 0; i < logits.length; i++) z += e[i];
    let u = this.rng.next() * z;
    let last = -1;
    for (let i = 0; i < logits.length; i++) {
      if (Number.isNaN(logits[i])) continue;
      last = i;
      u -= e[i];
      if (u < 0) return i;
    }
    return last;
  }
}
