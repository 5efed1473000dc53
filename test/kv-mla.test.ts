import { afterAll, describe, expect, it } from 'vitest';
import { Tensor, backendInfo, getThreads, setThreads } from '../lib';
import { KvantError } from '../lib/errors';
import { KV_CACHE_TYPES, KvCacheType } from '../lib/kv/format';
import { MlaKVCache } from '../lib/kv/mla-cache';
import { flashAttention } from '../lib/ops/attention';
import { errorCode as code, isaLevels } from './helpers/checks';

const levels = isaLevels({ avx512: false });
const EPS = 2 ** -24;

/** f64 absorbed attention of one sequence: q [H, L+R], rows [T, L+R] -> out [H, L], lse [H]. */
function refDecode(q: Float32Array, rows: Float32Array, H: number, L: number, R: number, T: number, scale: number) {
  const D = L + R;
  const out = new Float64Array(H * L);
  const lse = new Float64Array(H);
  for (let h = 0; h < H; h++) {
    if (T === 0) {
      lse[h] = Infinity;
      continue;
    }
    const s = new Float64Array(T);
    for (let t = 0; t < T; t++) {
      let d = 0;
      for (let i = 0; i < D; i++) d += q[h * D + i] * rows[t * D + i];
      s[t] = d * scale;
    }
    const m = Math.max(...s);
    let z = 0;
    for (let t = 0; t < T; t++) z += Math.exp(s[t] - m);
    lse[h] = m + Math.log(z);
    for (let t = 0; t < T; t++) {
      const p = Math.exp(s[t] - m) / z;
      for (let i = 0; i < L; i++) out[h * L + i] += p * rows[t * D + i];
    }
  }
  return { out, lse };
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}
function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < a.length; i++) e = Math.max(e, Math.abs(a[i] - b[i]));
  return e;
}

/** Rows with realistic structure: normal latents, a few outlier channels x8, rope part ~1. */
function makeRows(T: number, L: number, R: number, seed: number): Tensor {
  const t = Tensor.random([T, L + R], 'f32', { seed, dist: 'normal' });
  const d = t.toFloat32Array();
  for (let r = 0; r < T; r++) for (const ch of [3, 77 % L, L - 5]) d[r * (L + R) + ch] *= 8;
  return Tensor.from(d, { shape: [T, L + R] });
}

/**
 * Bound on |kernel - f64| when both see the same stored rows: the f32 score dot over D terms
 * (plus 5 Hadamard butterfly roundings of q and the 1/32 scaling) errs by at most
 * dS = scale·(D + 8)·eps·Σ|q_i k_i| (Higham's γ_n); a softmax perturbed by ≤ dS per logit moves
 * the output by ≤ (e^{2dS} - 1)·max|c|; accumulating ≤ 512 rows per split, ≤ 32 rescales
 * and the split merge add ≤ (512 + 64)·eps·max|c|.
 */
function f32Bounds(q: Float32Array, rows: Float32Array, H: number, D: number, L: number, T: number, scale: number): { out: number; lse: number } {
  let sumAbs = 0;
  for (let h = 0; h < H; h++)
    for (let t = 0; t < T; t++) {
      let s = 0;
      for (let i = 0; i < D; i++) s += Math.abs(q[h * D + i] * rows[t * D + i]);
      sumAbs = Math.max(sumAbs, s);
    }
  let maxC = 0;
  for (let t = 0; t < T; t++) for (let i = 0; i < L; i++) maxC = Math.max(maxC, Math.abs(rows[t * D + i]));
  const dS = scale * (D + 8) * EPS * sumAbs;
  // lse = m + ln(l): shifted by at most dS, plus the relative error of the f32 sum l.
  return { out: (Math.expm1(2 * dS) + 576 * EPS) * maxC + 1e-30, lse: dS + 576 * EPS };
}
const f32Bound = (q: Float32Array, rows: Float32Array, H: number, D: number, L: number, T: number, scale: number) => f32Bounds(q, rows, H, D, L, T, scale).out;

const L = 96;
const R = 32;
const H = 5;
const SCALE = 0.11;

describe.each(levels)('MlaKVCache decode at ISA level %s', (isa) => {
  it.each(KV_CACHE_TYPES.map((t) => [t]))('%s: decode matches f64 over the stored rows and over the originals within the quantization bound', (type) => {
    const cache = new MlaKVCache({ layers: 3, latentDim: L, ropeDim: R, type: type as KvCacheType, pageSize: 16, isa });
    const lens = [1, 37, 700]; // one row, a partial page, two splits of 512
    const seqs = lens.map((n) => cache.open(n));
    const originals = lens.map((n, b) => makeRows(n, L, R, 10 + b));
    // Appended in uneven pieces into layer 2 (layers 0 and 1 get other data).
    seqs.forEach((s, b) => {
      const rows = originals[b];
      const cut = Math.floor(lens[b] / 3);
      cache.append(s, 2, rows.slice(0, cut));
      cache.append(s, 2, rows.slice(cut));
      cache.append(s, 0, makeRows(5, L, R, 99));
    });
    const q = Tensor.random([3, H, L + R], 'f32', { seed: 5, dist: 'normal' });
    const { out, lse } = cache.decode(2, seqs, q, SCALE);
    const o = out.toFloat32Array();
    const ls = lse.toFloat32Array();
    const qa = q.toFloat32Array();
    seqs.forEach((s, b) => {
      const T = lens[b];
      const stored = cache.gather(s, 2, 0, T).toFloat32Array();
      const orig = originals[b].toFloat32Array();
      const qb = qa.subarray(b * H * (L + R), (b + 1) * H * (L + R));
      const got = o.subarray(b * H * L, (b + 1) * H * L);
      const ref = refDecode(qb, stored, H, L, R, T, SCALE);
      const bounds = f32Bounds(qb, stored, H, L + R, L, T, SCALE);
      const bound = bounds.out;
      expect(maxDiff(got, ref.out)).toBeLessThanOrEqual(bound);
      expect(maxDiff(ls.subarray(b * H, (b + 1) * H), ref.lse)).toBeLessThanOrEqual(bounds.lse + 2 * EPS * maxAbs(ref.lse));
      // Versus the unquantized rows: the output is a convex combination of the latents, so it
      // moves by at most max|ĉ - c| plus the softmax shift from logits that moved by at most
      // δ = scale·max_t|q·(k̂_t - k_t)|: (e^{2δ} - 1)·max|c|.
      const want = refDecode(qb, orig, H, L, R, T, SCALE);
      let dc = 0;
      let delta = 0;
      for (let t = 0; t < T; t++) {
        for (let i = 0; i < L; i++) dc = Math.max(dc, Math.abs(stored[t * (L + R) + i] - orig[t * (L + R) + i]));
        for (let h = 0; h < H; h++) {
          let d = 0;
          for (let i = 0; i < L + R; i++) d += qb[h * (L + R) + i] * (stored[t * (L + R) + i] - orig[t * (L + R) + i]);
          delta = Math.max(delta, Math.abs(d) * SCALE);
        }
      }
      const maxC = maxAbs(orig);
      expect(maxDiff(got, want.out)).toBeLessThanOrEqual(dc + Math.expm1(2 * delta) * maxC + bound);
    });
    cache.dispose();
  });
});

describe('MlaKVCache invariances', () => {
  const threads = getThreads();
  afterAll(() => setThreads(threads));

  it('split-KV equals the unsplit FlashAttention on the same rows; thread count and batch mates change no bit', () => {
    const cache = new MlaKVCache({ layers: 1, latentDim: L, ropeDim: R, type: 'q4', pageSize: 32 });
    const a = cache.open(0);
    const b = cache.open(0);
    cache.append(a, 0, makeRows(1100, L, R, 1)); // 3 splits
    cache.append(b, 0, makeRows(90, L, R, 2));
    const q = Tensor.random([2, H, L + R], 'f32', { seed: 3, dist: 'normal' });
    setThreads(1);
    const one = cache.decode(0, [a, b], q, SCALE);
    setThreads(2);
    const two = cache.decode(0, [a, b], q, SCALE);
    expect(Buffer.from(two.out.byteView()).equals(Buffer.from(one.out.byteView()))).toBe(true);
    expect(Buffer.from(two.lse.byteView()).equals(Buffer.from(one.lse.byteView()))).toBe(true);
    // Alone in the batch, sequence b gives the same bits as beside a.
    const alone = cache.decode(0, [b], q.slice(1, 2), SCALE);
    expect(Array.from(alone.out.toFloat32Array())).toEqual(Array.from(one.out.toFloat32Array().subarray(H * L)));
    // Unsplit reference: FlashAttention over the gathered rows (k = row, v = latent prefix).
    const rows = cache.gather(a, 0, 0, 1100).toFloat32Array();
    const k = Tensor.from(rows, { shape: [1, 1100, 1, L + R] });
    const vv = new Float32Array(1100 * L);
    for (let t = 0; t < 1100; t++) vv.set(rows.subarray(t * (L + R), t * (L + R) + L), t * L);
    const fa = flashAttention(q.slice(0, 1).reshape([1, 1, H, L + R]), k, Tensor.from(vv, { shape: [1, 1100, 1, L] }), { scale: SCALE });
    const qa = q.toFloat32Array().subarray(0, H * (L + R));
    const bound = 2 * f32Bound(qa, rows, H, L + R, L, 1100, SCALE); // both sides err by at most the f32 bound
    expect(maxDiff(one.out.toFloat32Array().subarray(0, H * L), fa.out.toFloat32Array())).toBeLessThanOrEqual(bound);
    cache.dispose();
  });
});

describe('MlaKVCache pages: append / fork / truncate / close', () => {
  it('round-trips rows exactly for f16/bf16 and shares forked pages copy-on-write', () => {
    const cache = new MlaKVCache({ layers: 2, latentDim: 64, ropeDim: 16, type: 'bf16', pageSize: 16 });
    const s = cache.open(20); // 2 pages
    const pageBytes = 2 * 16 * (64 + 16) * 2;
    expect(cache.bytesPerToken).toBe(2 * 80 * 2);
    expect(cache.usedBytes()).toBe(2 * pageBytes);
    const rows = makeRows(40, 64, 16, 7);
    cache.append(s, 0, rows);
    cache.append(s, 1, rows.slice(0, 10));
    expect(cache.length(s, 0)).toBe(40);
    expect(cache.length(s, 1)).toBe(10);
    expect(cache.usedBytes()).toBe(3 * pageBytes);
    const want = rows.to('bf16').to('f32').toFloat32Array();
    expect(Array.from(cache.gather(s, 0, 0, 40).toFloat32Array())).toEqual(Array.from(want));
    expect(Array.from(cache.gather(s, 0, 17, 23).toFloat32Array())).toEqual(Array.from(want.subarray(17 * 80, 23 * 80)));

    const f = cache.fork(s);
    expect(cache.usedBytes()).toBe(3 * pageBytes); // shared
    const extra = makeRows(3, 64, 16, 8);
    cache.append(f, 0, extra); // writes into shared page 2 -> copied
    expect(cache.usedBytes()).toBe(4 * pageBytes);
    expect(cache.length(s, 0)).toBe(40);
    expect(cache.length(f, 0)).toBe(43);
    expect(Array.from(cache.gather(s, 0, 0, 40).toFloat32Array())).toEqual(Array.from(want));
    expect(Array.from(cache.gather(f, 0, 40, 43).toFloat32Array())).toEqual(Array.from(extra.to('bf16').to('f32').toFloat32Array()));
    expect(Array.from(cache.gather(f, 0, 0, 40).toFloat32Array())).toEqual(Array.from(want));

    cache.truncate(s, 12);
    expect(cache.length(s, 0)).toBe(12);
    expect(cache.length(s, 1)).toBe(10);
    cache.append(s, 0, extra); // rewrites positions 12..14 of s only (page 0 is shared with f -> copied)
    expect(Array.from(cache.gather(f, 0, 12, 15).toFloat32Array())).toEqual(Array.from(want.subarray(12 * 80, 15 * 80)));
    expect(Array.from(cache.gather(s, 0, 12, 15).toFloat32Array())).toEqual(Array.from(extra.to('bf16').to('f32').toFloat32Array()));
    cache.close(f);
    cache.close(s);
    expect(cache.usedBytes()).toBe(0);
    cache.dispose();
  });

  it('appendBatch stores row b at the end of sequence b, as B single-row appends do (a fork copy-on-write included)', () => {
    for (const type of ['bf16', 'q4'] as const) {
      const a = new MlaKVCache({ layers: 2, latentDim: 64, ropeDim: 16, type, pageSize: 16 });
      const b = new MlaKVCache({ layers: 2, latentDim: 64, ropeDim: 16, type, pageSize: 16 });
      // Three sequences of different lengths (one ends on a page boundary), the third a fork of the first.
      const lens = [15, 16, 15];
      const ids = [a, b].map((c) => {
        const s0 = c.open(0);
        c.append(s0, 1, makeRows(lens[0], 64, 16, 1));
        const s1 = c.open(0);
        c.append(s1, 1, makeRows(lens[1], 64, 16, 2));
        return [s0, s1, c.fork(s0)];
      });
      const rows = makeRows(3, 64, 16, 9);
      a.appendBatch(ids[0], 1, rows);
      ids[1].forEach((s, i) => b.append(s, 1, rows.slice(i, i + 1)));
      ids[0].forEach((s, i) => {
        expect(a.length(s, 1)).toBe(lens[i] + 1);
        expect(a.length(s, 0)).toBe(0);
        expect(Buffer.from(a.gather(s, 1, 0, lens[i] + 1).toFloat32Array().buffer).equals(Buffer.from(b.gather(ids[1][i], 1, 0, lens[i] + 1).toFloat32Array().buffer))).toBe(true);
      });
      expect(a.usedBytes()).toBe(b.usedBytes());
      expect(code(() => a.appendBatch([ids[0][0], ids[0][0]], 1, makeRows(2, 64, 16, 3)))).toBe('KVANT_RANGE'); // ids repeat
      expect(code(() => a.appendBatch(ids[0], 1, makeRows(2, 64, 16, 3)))).toBe('KVANT_SHAPE'); // one row per sequence
      expect(code(() => a.appendBatch([ids[0][0], 999], 1, makeRows(2, 64, 16, 3)))).toBe('KVANT_RANGE'); // unknown id
      expect(code(() => a.appendBatch(ids[0], 2, rows))).toBe('KVANT_RANGE'); // layer
      expect(a.length(ids[0][0], 1)).toBe(lens[0] + 1); // the rejected calls stored nothing
      a.dispose();
      b.dispose();
    }
  });

  it('empty sequences decode to 0 with lse +inf; admission follows the budget', () => {
    const cache = new MlaKVCache({ layers: 1, latentDim: 32, ropeDim: 0, type: 'q8', pageSize: 16, budgetBytes: 4 * 16 * 34 });
    expect(cache.bytesPerToken).toBe(34);
    const s = cache.open(0);
    const { out, lse } = cache.decode(0, [s], Tensor.random([1, 2, 32], 'f32', { seed: 1 }), 1);
    expect(Array.from(out.toFloat32Array()).every((x) => x === 0)).toBe(true);
    expect(Array.from(lse.toFloat32Array())).toEqual([Infinity, Infinity]);
    expect(cache.admission(64)).toEqual({ verdict: 'ok', needed: 4 * 16 * 34, available: 4 * 16 * 34 });
    const a = cache.open(40); // 3 pages
    expect(cache.admission(32).verdict).toBe('wait');
    expect(cache.admission(65).verdict).toBe('never');
    cache.close(a);
    expect(cache.admission(32).verdict).toBe('ok');
    cache.dispose();
  });
});

describe('MlaKVCache bad input', () => {
  it('ends in the documented codes', () => {
    expect(code(() => new MlaKVCache({ layers: 1, latentDim: 64, ropeDim: 8, pageSize: 8 }))).toBe('KVANT_RANGE');
    expect(code(() => new MlaKVCache({ layers: 1, latentDim: 64, ropeDim: 8, pageSize: 300 }))).toBe('KVANT_RANGE');
    expect(code(() => new MlaKVCache({ layers: 0, latentDim: 64, ropeDim: 8 }))).toBe('KVANT_SHAPE');
    expect(code(() => new MlaKVCache({ layers: 1, latentDim: 40, ropeDim: 8, type: 'q4' }))).toBe('KVANT_SHAPE');
    expect(code(() => new MlaKVCache({ layers: 1, latentDim: 64, ropeDim: 8, type: 'q5' as KvCacheType }))).toBe('KVANT_DTYPE');
    const cache = new MlaKVCache({ layers: 2, latentDim: 64, ropeDim: 8, type: 'q6', pageSize: 16, budgetBytes: 2 * 2 * 16 * (52 + 16) });
    const s = cache.open(16);
    expect(code(() => cache.open(40))).toBe('KVANT_OOM'); // needs 3 pages, 1 left
    expect(code(() => cache.append(s, 0, Tensor.zeros([33, 72])))).toBe('KVANT_OOM'); // past the reservation and the budget
    expect(cache.length(s, 0)).toBe(0); // nothing was written
    expect(code(() => cache.append(s, 2, Tensor.zeros([1, 72])))).toBe('KVANT_RANGE');
    expect(code(() => cache.append(s, 0, Tensor.zeros([1, 71])))).toBe('KVANT_SHAPE');
    expect(code(() => cache.append(s, 0, Tensor.zeros([1, 72], 'bf16')))).toBe('KVANT_DTYPE');
    expect(code(() => cache.append(99, 0, Tensor.zeros([1, 72])))).toBe('KVANT_RANGE');
    const bad = Tensor.zeros([1, 72]);
    (bad.data() as Float32Array)[3] = NaN;
    expect(code(() => cache.append(s, 0, bad))).toBe('KVANT_RANGE');
    cache.append(s, 0, Tensor.random([4, 72], 'f32', { seed: 1 }));
    expect(code(() => cache.decode(0, [s], Tensor.zeros([1, 2, 72], 'bf16'), 1))).toBe('KVANT_DTYPE');
    expect(code(() => cache.decode(0, [s], Tensor.zeros([1, 2, 70]), 1))).toBe('KVANT_SHAPE');
    expect(code(() => cache.decode(0, [s, s], Tensor.zeros([1, 2, 72]), 1))).toBe('KVANT_SHAPE');
    expect(code(() => cache.decode(0, [s], Tensor.zeros([1, 2, 72]), NaN))).toBe('KVANT_RANGE');
    expect(code(() => cache.gather(s, 0, 2, 5))).toBe('KVANT_RANGE');
    cache.close(s);
    expect(code(() => cache.length(s))).toBe('KVANT_RANGE');
    cache.dispose();
    expect(code(() => cache.open(1))).toBe('KVANT_RANGE');
  });
});
