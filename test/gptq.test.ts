import { describe, expect, it } from 'vitest';
import { KvantError, Tensor, backendInfo, getThreads, setThreads } from '../lib';
import { syntheticActivations } from '../lib/quant/calibration';
import { QuantBits } from '../lib/quant/format';
import { Hessian, dequantize, quantizeGptq, quantizeGptqAsync, quantizeRtn } from '../lib/quant/quantize';
import { gptqRef, relErrorF64 } from './helpers/gptq-ref';
import { errorCode as code, isaLevels } from './helpers/checks';

const levels = isaLevels();


// K = 288 spans three 96-wide factorization panels and three 128-column blocks (the last
// partial), and with G = 64 groups straddle nothing but are not aligned to the panels.
const N = 64;
const K = 288;
const w = Tensor.random([N, K], 'f32', { seed: 1, dist: 'normal', std: 0.05 });
const wd = w.data() as Float32Array;
const h = new Hessian(K);
for (let b = 0; b < 4; b++) h.add(syntheticActivations(64, K, { seed: b }), 1);
const H = h.H.data() as Float32Array;

describe('Hessian', () => {
  it('H = 2/n Σ x xᵀ over sequences, symmetric, within f32 accumulation error of f64, every ISA level', () => {
    const xs = [syntheticActivations(40, 72, { seed: 7 }), syntheticActivations(25, 72, { seed: 8 })];
    const want = new Float64Array(72 * 72);
    const seqs = [2, 3];
    for (let b = 0; b < 2; b++) {
      const x = xs[b].data() as Float32Array;
      for (let t = 0; t < x.length / 72; t++)
        for (let i = 0; i < 72; i++) for (let j = 0; j < 72; j++) want[i * 72 + j] += (2 / 5) * x[t * 72 + i] * x[t * 72 + j];
    }
    for (const isa of levels) {
      const hh = new Hessian(72);
      xs.forEach((x, b) => hh.add(x, seqs[b], { isa }));
      expect(hh.samples).toBe(5);
      expect(hh.tokens).toBe(65);
      const got = hh.H.data() as Float32Array;
      // f32 products summed over T = 40 terms then rescaled once: |err| <= (T + 2) 2^-24 Σ|x_i x_j|;
      // Σ|x_i x_j| <= sqrt(H_ii H_jj) (Cauchy-Schwarz), so 42 * 2^-24 * sqrt(H_ii H_jj) bounds it.
      let worst = 0;
      for (let i = 0; i < 72; i++)
        for (let j = 0; j < 72; j++) {
          expect(got[i * 72 + j]).toBe(got[j * 72 + i]);
          const bound = 42 * 2 ** -24 * Math.sqrt(want[i * 72 + i] * want[j * 72 + j]);
          worst = Math.max(worst, Math.abs(got[i * 72 + j] - want[i * 72 + j]) / bound);
        }
      expect(worst).toBeLessThanOrEqual(1);
      hh.dispose();
    }
  });

  it('bad input: NaN names the index, wrong width, wrong dtype, bad sequence count', () => {
    const hh = new Hessian(32);
    const x = syntheticActivations(10, 32, { seed: 1 });
    (x.data() as Float32Array)[3 * 32 + 5] = NaN;
    expect(code(() => hh.add(x))).toBe('KVANT_RANGE');
    expect(() => hh.add(x)).toThrow(/x\[3, 5\]/);
    expect(hh.samples).toBe(0);
    expect(code(() => hh.add(Tensor.zeros([4, 31])))).toBe('KVANT_SHAPE');
    expect(code(() => hh.add(Tensor.zeros([4, 32], 'i32')))).toBe('KVANT_DTYPE');
    expect(code(() => hh.add(Tensor.zeros([4, 32]), 0))).toBe('KVANT_RANGE');
    expect(code(() => new Hessian(0))).toBe('KVANT_SHAPE');
  });
});

describe('GPTQ', () => {
  for (const bits of [2, 3, 4, 8] as QuantBits[])
    for (const [actOrder, staticGroups] of [[false, false], [true, false], [true, true]])
      it(`${bits}-bit g64${actOrder ? ' act-order' : ''}${staticGroups ? ' static' : ''}: matches the f64 reference, beats RTN`, () => {
        const sym = bits !== 3; // exercise asym too
        const ref = gptqRef(wd, H, N, K, { bits, G: 64, sym, actOrder, staticGroups, damp: 0.01 });
        const refErr = relErrorF64(wd, ref.deq, H, N, K);
        const rtn = relErrorF64(wd, dequantize(quantizeRtn(w, { bits, groupSize: 64, sym })).data() as Float32Array, H, N, K);
        for (const isa of levels) {
          const { q, stats } = quantizeGptq(w, h, { bits, groupSize: 64, sym, actOrder, staticGroups, isa });
          expect(stats.method).toBe('gptq');
          const deq = dequantize(q).data() as Float32Array;
          // f32 updates vs f64: a code differs only where a value sits within accumulated
          // roundoff (δ ≈ K·2^-24 ≈ 2e-5 of a step) of a rounding boundary, probability ~2δ per
          // code, ~1% per row of 288 codes; once it flips, the compensation changes the rest of
          // that row. So rows that differ are Poisson with mean ~0.6 over 64 rows: allow 3
          // (P(> 3) ≈ 0.3%); a systematic error would touch nearly every row.
          const rows = new Set<number>();
          for (let i = 0; i < N * K; i++) if (deq[i] !== ref.deq[i]) rows.add(Math.floor(i / K));
          expect(rows.size).toBeLessThanOrEqual(3);
          expect([...(q.gIdx!.data() as Int32Array)]).toEqual([...ref.gIdx]);
          // The reported error is an f32 GEMM over K = 288 terms reduced in f64: relative
          // error <= K * 2^-24 ≈ 2e-5 on num and den; 1e-4 on the ratio.
          const mine = relErrorF64(wd, deq, H, N, K);
          expect(Math.abs(stats.relError - mine) / mine).toBeLessThanOrEqual(1e-4);
          expect(Math.abs(mine - refErr) / refErr).toBeLessThanOrEqual(1e-2);
          expect(mine).toBeLessThan(rtn);
        }
      });

  it('K = 704 crosses the two-level lazy update (super-blocks of 4 x 128 columns): still the f64 reference', () => {
    const [n2, k2] = [32, 704];
    const w2 = Tensor.random([n2, k2], 'f32', { seed: 9, dist: 'normal', std: 0.05 });
    const h2 = new Hessian(k2);
    h2.add(syntheticActivations(256, k2, { seed: 12 }), 2);
    const H2 = h2.H.data() as Float32Array;
    const ref = gptqRef(w2.data() as Float32Array, H2, n2, k2, { bits: 4, G: 128, sym: true, actOrder: true, staticGroups: false, damp: 0.01 });
    for (const isa of levels) {
      const { q, stats } = quantizeGptq(w2, h2, { bits: 4, groupSize: 128, actOrder: true, isa });
      const deq = dequantize(q).data() as Float32Array;
      const rows = new Set<number>();
      for (let i = 0; i < n2 * k2; i++) if (deq[i] !== ref.deq[i]) rows.add(Math.floor(i / k2));
      // as above with δ ≈ 704·2^-24: at most ~6% of rows expected (a crude upper bound: most
      // roundoff is far below δ), i.e. ~2 of 32; a systematic error would touch all 32.
      expect(rows.size).toBeLessThanOrEqual(3);
      const mine = relErrorF64(w2.data() as Float32Array, deq, H2, n2, k2);
      expect(Math.abs(stats.relError - mine) / mine).toBeLessThanOrEqual(1e-4 * (704 / 288));
    }
    h2.dispose();
  });

  it('per-channel (group -1) with and without static groups: the f64 reference, better than RTN', () => {
    for (const [actOrder, staticGroups] of [[false, false], [true, true]]) {
      const ref = gptqRef(wd, H, N, K, { bits: 4, G: -1, sym: false, actOrder, staticGroups, damp: 0.01 });
      const { q } = quantizeGptq(w, h, { bits: 4, groupSize: -1, sym: false, actOrder, staticGroups });
      expect(q.scales.shape).toEqual([1, N]);
      const deq = dequantize(q).data() as Float32Array;
      const rows = new Set<number>();
      for (let i = 0; i < N * K; i++) if (deq[i] !== ref.deq[i]) rows.add(Math.floor(i / K));
      expect(rows.size).toBeLessThanOrEqual(3); // see the bound above
      const rtn = dequantize(quantizeRtn(w, { bits: 4, groupSize: -1, sym: false })).data() as Float32Array;
      expect(relErrorF64(wd, deq, H, N, K)).toBeLessThan(relErrorF64(wd, rtn, H, N, K));
    }
  });

  it('act-order helps on activations with outlier channels at every width', () => {
    for (const bits of [2, 3, 4, 8] as QuantBits[]) {
      const plain = quantizeGptq(w, h, { bits, groupSize: 64 }).stats.relError;
      const ao = quantizeGptq(w, h, { bits, groupSize: 64, actOrder: true }).stats.relError;
      expect(ao).toBeLessThan(plain);
    }
  });

  it('bit-identical for 1 and 2 threads, and sync == async', async () => {
    const before = getThreads();
    try {
      setThreads(1);
      const a = quantizeGptq(w, h, { bits: 4, groupSize: 32, actOrder: true });
      setThreads(2);
      const b = quantizeGptq(w, h, { bits: 4, groupSize: 32, actOrder: true });
      const c = await quantizeGptqAsync(w, h, { bits: 4, groupSize: 32, actOrder: true });
      for (const x of [b, c]) {
        expect(Buffer.from(x.q.qweight.byteView()).equals(Buffer.from(a.q.qweight.byteView()))).toBe(true);
        expect(Buffer.from(x.q.scales.byteView()).equals(Buffer.from(a.q.scales.byteView()))).toBe(true);
        expect(x.stats.relError).toBe(a.stats.relError);
      }
    } finally {
      setThreads(before);
    }
  });

  it('a diagonal Hessian leaves nothing to compensate: GPTQ equals RTN (act-order: RTN on permuted groups)', () => {
    const hd = new Hessian(K);
    hd.add(Tensor.zeros([16, K])); // 16 tokens of zeros count as calibration; H set by hand below
    const d = hd.H.data() as Float32Array;
    for (let k = 0; k < K; k++) d[k * K + k] = 1 + ((k * 37) % 11);
    const g = quantizeGptq(w, hd, { bits: 4, groupSize: 64, sym: false });
    const r = quantizeRtn(w, { bits: 4, groupSize: 64, sym: false });
    expect(Buffer.from(g.q.qweight.byteView()).equals(Buffer.from(r.qweight.byteView()))).toBe(true);
    expect(Buffer.from(g.q.qzeros.byteView()).equals(Buffer.from(r.qzeros.byteView()))).toBe(true);
    const ao = quantizeGptq(w, hd, { bits: 4, groupSize: 64, sym: false, actOrder: true });
    const ref = gptqRef(wd, hd.H.data() as Float32Array, N, K, { bits: 4, G: 64, sym: false, actOrder: true, staticGroups: false, damp: 0.01 });
    const deq = dequantize(ao.q).data() as Float32Array;
    let mism = 0;
    for (let i = 0; i < N * K; i++) if (deq[i] !== ref.deq[i]) mism++;
    expect(mism).toBe(0);
    hd.dispose();
  });

  it('dead columns are zeroed and reported; too few tokens fall back to RTN; damping is raised on failure', () => {
    const hz = new Hessian(K);
    const x = syntheticActivations(32, K, { seed: 3 });
    const xd = x.data() as Float32Array;
    for (let t = 0; t < 32; t++) for (const k of [5, 100, 287]) xd[t * K + k] = 0;
    hz.add(x);
    const { q, stats } = quantizeGptq(w, hz, { bits: 4, groupSize: 64 });
    expect(stats.deadColumns).toBe(3);
    const deq = dequantize(q).data() as Float32Array;
    for (let n = 0; n < N; n++) for (const k of [5, 100, 287]) expect(deq[n * K + k]).toBe(0);
    const few = new Hessian(K);
    few.add(syntheticActivations(8, K, { seed: 4 }));
    const fb = quantizeGptq(w, few, { bits: 4, groupSize: 64 });
    expect(fb.stats.method).toBe('rtn');
    expect(fb.stats.fallbackReason).toMatch(/8 calibration tokens/);
    expect(Buffer.from(fb.q.qweight.byteView()).equals(Buffer.from(quantizeRtn(w, { bits: 4, groupSize: 64 }).qweight.byteView()))).toBe(true);
    // Indefinite H with a positive diagonal: 2x2 blocks [[1, 1.1], [1.1, 1]] (eigenvalue -0.1)
    // need damping above 0.1: 0.01 and 0.04 fail, 0.16 succeeds.
    const hi = new Hessian(K);
    hi.add(Tensor.zeros([16, K]));
    const hv = hi.H.data() as Float32Array;
    for (let k = 0; k < K; k += 2) {
      hv[k * K + k] = hv[(k + 1) * K + k + 1] = 1;
      hv[k * K + k + 1] = hv[(k + 1) * K + k] = 1.1;
    }
    const st = quantizeGptq(w, hi, { bits: 4, groupSize: 64 }).stats;
    expect(st.retries).toBe(2);
    expect(st.dampPercent).toBeCloseTo(0.16, 12);
    for (const t of [hz, few, hi]) t.dispose();
  });

  it('bad input: NaN weights, mismatched Hessian, all-zero Hessian, options out of range; abort', async () => {
    const bad = Tensor.from(new Float32Array(wd), { shape: [N, K] });
    (bad.data() as Float32Array)[2 * K + 9] = NaN;
    expect(code(() => quantizeGptq(bad, h, { bits: 4, groupSize: 64, name: 'l0.down_proj' }))).toBe('KVANT_RANGE');
    expect(() => quantizeGptq(bad, h, { bits: 4, groupSize: 64, name: 'l0.down_proj' })).toThrow(/l0\.down_proj.*w\[2, 9\]/);
    expect(code(() => quantizeGptq(w, new Hessian(K + 32), { bits: 4, groupSize: 64 }))).toBe('KVANT_SHAPE');
    const hz = new Hessian(K);
    hz.add(Tensor.zeros([32, K]));
    expect(code(() => quantizeGptq(w, hz, { bits: 4, groupSize: 64 }))).toBe('KVANT_RANGE');
    expect(code(() => quantizeGptq(w, h, { bits: 4, groupSize: 64, dampPercent: 0 }))).toBe('KVANT_RANGE');
    expect(code(() => quantizeGptq(w, h, { bits: 4, groupSize: 64, blockSize: 0 }))).toBe('KVANT_RANGE');
    expect(code(() => quantizeGptq(w, h, { bits: 6 as QuantBits, groupSize: 64 }))).toBe('KVANT_FORMAT');
    expect(code(() => quantizeGptq(w, {} as Hessian, { bits: 4, groupSize: 64 }))).toBe('KVANT_DTYPE');
    const ctl = new AbortController();
    ctl.abort();
    await expect(quantizeGptqAsync(w, h, { bits: 4, groupSize: 64 }, { signal: ctl.signal })).rejects.toMatchObject({ code: 'KVANT_ABORTED' });
    // Aborted while queued behind a blocker on the FIFO job queue: the job starts with its flag
    // set and stops at the first check (deterministic, no timing involved).
    const big = Tensor.random([1 << 22], 'f32', { seed: 1 });
    const blocker = big.toAsync('f16');
    const ctl2 = new AbortController();
    const job = quantizeGptqAsync(w, h, { bits: 4, groupSize: 64 }, { signal: ctl2.signal });
    ctl2.abort();
    await blocker;
    await expect(job).rejects.toMatchObject({ code: 'KVANT_ABORTED' });
    hz.dispose();
  });
});
