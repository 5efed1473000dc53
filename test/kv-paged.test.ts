import { afterAll, describe, expect, it } from 'vitest';
import { Tensor, backendInfo, getThreads, setThreads } from '../lib';
import { KvantError } from '../lib/errors';
import { KV_CACHE_TYPES, KvCacheType } from '../lib/kv/format';
import { PagedKVCache } from '../lib/kv/paged-cache';
import { flashAttention } from '../lib/ops/attention';
import { errorCode as code, isaLevels } from './helpers/checks';

const levels = isaLevels({ avx512: false });
const EPS = 2 ** -24;
const HKV = 2;
const HQ = 6;
const D = 64;

/** Keys/values with outlier channels (x8 on 3 channels of every head), as real keys have. */
function kv(T: number, seed: number): Tensor {
  const d = Tensor.random([T, HKV, D], 'f32', { seed, dist: 'normal' }).toFloat32Array();
  for (let i = 0; i < d.length; i++) if (i % D === 1 || i % D === 40 || i % D === 63) d[i] *= 8;
  return Tensor.from(d, { shape: [T, HKV, D] });
}

/** Unnormalized 32-point Walsh–Hadamard transform of one group (f64). */
function wht32(x: ArrayLike<number>): Float64Array {
  const y = Float64Array.from(x);
  for (let len = 1; len < 32; len *= 2)
    for (let i = 0; i < 32; i += 2 * len)
      for (let j = i; j < i + len; j++) {
        const a = y[j];
        const b = y[j + len];
        y[j] = a + b;
        y[j + len] = a - b;
      }
  return y;
}

/**
 * Worst-case score change of the integer score path (q8/q4 keys, one query head per kv
 * head) before the softmax scale: the kernel rounds the rotated query q̃ = H·q/32 per group
 * of 32 to qd·int8 with qd = max|q̃|/127, so each element moves <= qd/2 and the score
 * q̃·y (y = H·k̂, the stored group) moves <= (qd/2)·‖y‖₁. Exact-arithmetic figure; f32
 * rounding of q̃ can only flip a rounding that is within an ulp of a tie, covered by the
 * f32 score term it is added to.
 */
function intSlack(q: ArrayLike<number>, k: ArrayLike<number>): number {
  let e = 0;
  for (let g = 0; g < D; g += 32) {
    const qt = wht32(Array.from({ length: 32 }, (_, i) => q[g + i] / 32));
    const y = wht32(Array.from({ length: 32 }, (_, i) => k[g + i]));
    let qmax = 0;
    let y1 = 0;
    for (let i = 0; i < 32; i++) {
      qmax = Math.max(qmax, Math.abs(qt[i]));
      y1 += Math.abs(y[i]);
    }
    e += (qmax / 127 / 2) * y1;
  }
  return e;
}

/** f64 GQA decode of one sequence: q [HQ, D], k/v [T, HKV, D]. */
function ref(q: Float32Array, k: Float32Array, v: Float32Array, T: number, scale: number, HQ = 6, intScore = false) {
  const out = new Float64Array(HQ * D);
  const lse = new Float64Array(HQ);
  let bound = 0;
  const g = HQ / HKV;
  for (let h = 0; h < HQ; h++) {
    const hk = Math.floor(h / g);
    const s = new Float64Array(T);
    let m = -Infinity;
    let maxV = 0;
    for (let t = 0; t < T; t++) {
      let d = 0;
      let a = 0;
      for (let i = 0; i < D; i++) {
        d += q[h * D + i] * k[(t * HKV + hk) * D + i];
        a += Math.abs(q[h * D + i] * k[(t * HKV + hk) * D + i]);
        maxV = Math.max(maxV, Math.abs(v[(t * HKV + hk) * D + i]));
      }
      s[t] = d * scale;
      m = Math.max(m, s[t]);
      // Same worst-case f32 bound as the MLA test: γ_(D+8) on the score, softmax factor
      // (e^{2dS} - 1), plus ≤ 576 roundings along the accumulation, times max|v|.
      let dS = scale * (D + 8) * EPS * a;
      if (intScore) dS += scale * intSlack(q.subarray(h * D, (h + 1) * D), k.subarray((t * HKV + hk) * D, (t * HKV + hk + 1) * D));
      bound = Math.max(bound, (Math.expm1(2 * dS) + 576 * EPS) * maxV);
    }
    let z = 0;
    for (let t = 0; t < T; t++) z += Math.exp(s[t] - m);
    lse[h] = T ? m + Math.log(z) : Infinity;
    for (let t = 0; t < T; t++) for (let i = 0; i < D; i++) out[h * D + i] += (Math.exp(s[t] - m) / z) * v[(t * HKV + hk) * D + i];
  }
  return { out, lse, bound };
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let e = 0;
  for (let i = 0; i < a.length; i++) e = a[i] === b[i] ? e : Math.max(e, Math.abs(a[i] - b[i]));
  return e;
}

describe.each(levels)('PagedKVCache decode at ISA level %s', (isa) => {
  it.each(KV_CACHE_TYPES.map((t) => [t]))('%s: batched GQA decode matches f64 over the stored K/V and over the originals within the quantization bound', (type) => {
    const cache = new PagedKVCache({ layers: 2, kvHeads: HKV, headDim: D, type: type as KvCacheType, pageSize: 16, isa });
    const lens = [3, 600, 0];
    const seqs = lens.map(() => cache.open(8));
    const ks = lens.map((n, b) => kv(n, 20 + b));
    const vs = lens.map((n, b) => kv(n, 30 + b));
    seqs.forEach((s, b) => cache.append(s, 1, ks[b], vs[b]));
    const q = Tensor.random([3, HQ, D], 'f32', { seed: 4, dist: 'normal' });
    const scale = 0.15;
    const { out, lse } = cache.decode(1, seqs, q, scale);
    seqs.forEach((s, b) => {
      const T = lens[b];
      const { k, v } = cache.gather(s, 1, 0, T);
      const qb = q.toFloat32Array().subarray(b * HQ * D, (b + 1) * HQ * D);
      const got = out.toFloat32Array().subarray(b * HQ * D, (b + 1) * HQ * D);
      const r = ref(qb, k.toFloat32Array(), v.toFloat32Array(), T, scale);
      expect(maxDiff(got, r.out)).toBeLessThanOrEqual(r.bound + 1e-30);
      expect(maxDiff(lse.toFloat32Array().subarray(b * HQ, (b + 1) * HQ), r.lse)).toBeLessThanOrEqual(1e-4);
      // Versus the originals: convex combination of values (moves <= max|v̂ - v|) with logits
      // moved by <= δ = scale·max|q·(k̂ - k)|: (e^{2δ} - 1)·max|v|.
      const ko = ks[b].toFloat32Array();
      const vo = vs[b].toFloat32Array();
      const kq = k.toFloat32Array();
      const vq = v.toFloat32Array();
      const dv = maxDiff(vq, vo);
      let delta = 0;
      let maxV = 0;
      for (let t = 0; t < T; t++)
        for (let h = 0; h < HQ; h++) {
          const hk = Math.floor(h / (HQ / HKV));
          let d = 0;
          for (let i = 0; i < D; i++) {
            d += qb[h * D + i] * (kq[(t * HKV + hk) * D + i] - ko[(t * HKV + hk) * D + i]);
            maxV = Math.max(maxV, Math.abs(vo[(t * HKV + hk) * D + i]));
          }
          delta = Math.max(delta, Math.abs(d) * scale);
        }
      const w = ref(qb, ko, vo, T, scale);
      expect(maxDiff(got, w.out)).toBeLessThanOrEqual(dv + Math.expm1(2 * delta) * maxV + r.bound + 1e-30);
    });
    expect(Array.from(lse.toFloat32Array().subarray(2 * HQ))).toEqual(new Array(HQ).fill(Infinity));
    // One query head per kv head takes the fused decode-in-registers path: same bound, plus
    // the query rounding of the integer score path for q8/q4 keys.
    const q1 = Tensor.random([3, HKV, D], 'f32', { seed: 6, dist: 'normal' });
    const r1 = cache.decode(1, seqs, q1, scale);
    const intScore = type === 'q8' || type === 'q4';
    seqs.forEach((s, b) => {
      const { k, v } = cache.gather(s, 1, 0, lens[b]);
      const r = ref(q1.toFloat32Array().subarray(b * HKV * D, (b + 1) * HKV * D), k.toFloat32Array(), v.toFloat32Array(), lens[b], scale, HKV, intScore);
      expect(maxDiff(r1.out.toFloat32Array().subarray(b * HKV * D, (b + 1) * HKV * D), r.out)).toBeLessThanOrEqual(r.bound + 1e-30);
      // lse moves by at most the largest score change (it is 1-Lipschitz in every score):
      // a tight check of the integer scores, which the output bound above amplifies by e^{2δ}.
      if (intScore && lens[b] > 0) {
        let slack = 0;
        const qq = q1.toFloat32Array().subarray(b * HKV * D, (b + 1) * HKV * D);
        const kk = k.toFloat32Array();
        for (let h = 0; h < HKV; h++)
          for (let t = 0; t < lens[b]; t++) slack = Math.max(slack, scale * intSlack(qq.subarray(h * D, (h + 1) * D), kk.subarray((t * HKV + h) * D, (t * HKV + h + 1) * D)));
        expect(maxDiff(r1.lse.toFloat32Array().subarray(b * HKV, (b + 1) * HKV), r.lse)).toBeLessThanOrEqual(slack + 1e-4);
      }
    });
    cache.dispose();
  });
});

describe('PagedKVCache invariances and round trips', () => {
  const threads = getThreads();
  afterAll(() => setThreads(threads));

  it('split == unsplit FlashAttention, thread-count and batch invariant, fork/truncate round trip', () => {
    const cache = new PagedKVCache({ layers: 1, kvHeads: HKV, headDim: D, type: 'q8', pageSize: 64 });
    const a = cache.open(0);
    const k = kv(1300, 1);
    const v = kv(1300, 2);
    cache.append(a, 0, k, v);
    const b = cache.fork(a);
    cache.truncate(b, 700);
    const k2 = kv(5, 3);
    cache.append(b, 0, k2, k2);
    expect(cache.length(a)).toBe(1300);
    expect(cache.length(b)).toBe(705);
    const ga = cache.gather(a, 0, 0, 1300);
    const gb = cache.gather(b, 0, 0, 705);
    expect(Array.from(gb.k.toFloat32Array().subarray(0, 700 * HKV * D))).toEqual(Array.from(ga.k.toFloat32Array().subarray(0, 700 * HKV * D)));
    const q = Tensor.random([2, HQ, D], 'f32', { seed: 9, dist: 'normal' });
    setThreads(1);
    const one = cache.decode(0, [a, b], q);
    setThreads(2);
    const two = cache.decode(0, [a, b], q);
    expect(Buffer.from(one.out.byteView()).equals(Buffer.from(two.out.byteView()))).toBe(true);
    const alone = cache.decode(0, [b], q.slice(1, 2));
    expect(Array.from(alone.out.toFloat32Array())).toEqual(Array.from(one.out.toFloat32Array().subarray(HQ * D)));
    const fa = flashAttention(q.slice(0, 1).reshape([1, 1, HQ, D]), ga.k.reshape([1, 1300, HKV, D]), ga.v.reshape([1, 1300, HKV, D]));
    const r = ref(q.toFloat32Array().subarray(0, HQ * D), ga.k.toFloat32Array(), ga.v.toFloat32Array(), 1300, D ** -0.5);
    expect(maxDiff(one.out.toFloat32Array().subarray(0, HQ * D), fa.out.toFloat32Array())).toBeLessThanOrEqual(2 * r.bound);
    cache.close(a);
    cache.close(b);
    expect(cache.usedBytes()).toBe(0);
    cache.dispose();
  });

  it.each(KV_CACHE_TYPES.map((t) => [t]))('%s: the fused path (one query head per kv head) is thread-count and batch invariant', (type) => {
    // Head dim 128: f16 / bf16 / q8 rows take 8-row softmax steps, q6 / q4 16-row steps; 1100
    // rows = two full splits and a 76-row tail (not a multiple of either step).
    const Dh = 128;
    const cache = new PagedKVCache({ layers: 1, kvHeads: 3, headDim: Dh, type: type as KvCacheType, pageSize: 32 });
    const a = cache.open(0);
    const b = cache.open(0);
    cache.append(a, 0, Tensor.random([1100, 3, Dh], 'f32', { seed: 41, dist: 'normal' }), Tensor.random([1100, 3, Dh], 'f32', { seed: 42, dist: 'normal' }));
    cache.append(b, 0, Tensor.random([37, 3, Dh], 'f32', { seed: 43, dist: 'normal' }), Tensor.random([37, 3, Dh], 'f32', { seed: 44, dist: 'normal' }));
    const q = Tensor.random([2, 3, Dh], 'f32', { seed: 45, dist: 'normal' });
    setThreads(1);
    const one = cache.decode(0, [a, b], q);
    setThreads(2);
    const two = cache.decode(0, [a, b], q);
    const alone = cache.decode(0, [a], q.slice(0, 1));
    expect(Buffer.from(one.out.byteView()).equals(Buffer.from(two.out.byteView()))).toBe(true);
    expect(Buffer.from(one.lse.byteView()).equals(Buffer.from(two.lse.byteView()))).toBe(true);
    expect(Array.from(alone.out.toFloat32Array())).toEqual(Array.from(one.out.toFloat32Array().subarray(0, 3 * Dh)));
    cache.dispose();
  });

  it('bytes per token: 32 heads x 128 per layer', () => {
    const sizes = Object.fromEntries(KV_CACHE_TYPES.map((t) => [t, new PagedKVCache({ layers: 1, kvHeads: 32, headDim: 128, type: t }).bytesPerToken]));
    expect(sizes).toEqual({ f16: 16384, bf16: 16384, q8: 8704, q6: 6656, q4: 4608 });
  });
});

describe('PagedKVCache bad input', () => {
  it('ends in the documented codes', () => {
    expect(code(() => new PagedKVCache({ layers: 1, kvHeads: 2, headDim: 48, type: 'q8' }))).toBe('KVANT_SHAPE');
    expect(code(() => new PagedKVCache({ layers: 1, kvHeads: 2, headDim: 64, pageSize: 512 }))).toBe('KVANT_RANGE');
    const cache = new PagedKVCache({ layers: 1, kvHeads: HKV, headDim: D, type: 'q4', pageSize: 16, budgetBytes: 2 * 16 * 2 * HKV * 36 });
    const s = cache.open(0);
    cache.append(s, 0, kv(20, 1), kv(20, 2));
    expect(code(() => cache.append(s, 0, kv(13, 1), kv(13, 2)))).toBe('KVANT_OOM'); // a third page: over budget
    expect(cache.length(s)).toBe(20);
    expect(code(() => cache.append(s, 0, kv(2, 1), kv(3, 2)))).toBe('KVANT_SHAPE');
    expect(code(() => cache.append(s, 0, Tensor.zeros([1, 3, D]), Tensor.zeros([1, 3, D])))).toBe('KVANT_SHAPE');
    expect(code(() => cache.append(s, 0, Tensor.zeros([1, HKV, D], 'f16'), Tensor.zeros([1, HKV, D], 'f16')))).toBe('KVANT_DTYPE');
    expect(code(() => cache.decode(0, [s], Tensor.zeros([1, 5, D])))).toBe('KVANT_SHAPE'); // 5 heads over 2 kv heads
    expect(code(() => cache.decode(0, [s], Tensor.zeros([1, 4, D], 'bf16')))).toBe('KVANT_DTYPE');
    expect(code(() => cache.decode(0, [s], Tensor.zeros([1, 4, D - 1])))).toBe('KVANT_SHAPE');
    expect(code(() => cache.decode(1, [s], Tensor.zeros([1, 4, D])))).toBe('KVANT_RANGE');
    expect(code(() => cache.gather(s, 0, 0, 21))).toBe('KVANT_RANGE');
    expect(code(() => cache.truncate(s, -1))).toBe('KVANT_RANGE');
    cache.dispose();
  });
});
