import { describe, expect, it } from 'vitest';
import { Tensor, backendInfo, getThreads, setThreads } from '../lib';
import { native } from '../lib/native';
import { encodeQuantFormat, type QuantBits } from '../lib/quant/format';
import { moeMlp, qlinear } from '../lib/ops/qlinear';
import { raw } from '../lib/ops/small';
import { getBits, makeQuant, packAlongK, packAlongN, rng, type MadeQuant } from './helpers/gptq-pack';

const ORDER = ['scalar', 'avx2', 'avx512'] as const;
const levels = ORDER.filter((l) => ORDER.indexOf(l) <= ORDER.indexOf(backendInfo().bestIsa));
const bytes = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const U = 2 ** -24;

function randX(M: number, K: number, seed: number): Tensor {
  return Tensor.random([M, K], 'f32', { seed, dist: 'normal' });
}

function poisoned(M: number, N: number): Tensor {
  return Tensor.from(new Float32Array(M * N).fill(NaN), { shape: [M, N] });
}

/**
 * f64 reference y = x · Wᵀ (+ bias) on the exact dequantized weights, with a per-output bound.
 * activations 'f32': the kernels compute per group A = Σ x·c (n_g sequential FMAs, error
 * <= n_g·u·Σ|x c|), X = Σ x (n_g adds; times z: <= z·n_g·u·Σ|x|), t = A − z·X (one rounding,
 * <= u·Σ|x|(c+z)), then y = Σ_g fma(s_g, t_g, y) (ng roundings, <= ng·u·Σ|s t|), then + bias:
 *   |y − y64| <= (G + ng + 3)·u·Σ_k |x_k|·|s|·(c_k + z) + u·|y64|      (first order, u = 2^-24).
 * activations 'int8' (every width): x̂ = d_b·q with q = round(x·fl(127/m_b)), d_b = fl(m_b/127),
 * m_b = max|x| over the block of 32 kernel rows, so |x − x̂| <= d_b/2·(1+2u) + 4u·|x|; the
 * integer block sums are exact, then bpg roundings per group and ng in the combine:
 *   |y − y64| <= Σ_k |W_k|·(d_b/2·(1+2u) + 4u|x_k|) + (bpg + ng + 3)·u·Σ_k |s|(c+z)(|x_k| + d_b) + u·|y64|.
 * Measured (2048x1408 g128 random matrices, 4 rows, /tmp script at the time of writing): int8
 * vs f32 relative RMS error 0.52% for normal x at 2, 4 and 8 bits alike (the activation
 * rounding dominates, not the weight width), 1.3% when every 97th channel is 20x larger (LLM-
 * like outliers). The model's tests compare against f64 with 1e-4, so 'f32' stays the default.
 */
function check(y: Float32Array, x: Float32Array, q: MadeQuant, M: number, bias?: Float32Array, activations: 'f32' | 'int8' = 'f32'): void {
  const { K, N } = q.w.format;
  const int8 = activations === 'int8';
  const perm = q.w.perm;
  const bpg = Math.ceil(q.G / 32);
  const d = new Float64Array(K); // block scale of each input channel (int8 mode)
  for (let m = 0; m < M; m++) {
    if (int8)
      for (let g0 = 0; g0 < K; g0 += q.G)
        for (let b0 = g0; b0 < Math.min(g0 + q.G, K); b0 += 32) {
          const b1 = Math.min(b0 + 32, g0 + q.G, K);
          let mx = 0;
          for (let j = b0; j < b1; j++) mx = Math.max(mx, Math.abs(x[m * K + (perm ? perm[j] : j)]));
          for (let j = b0; j < b1; j++) d[perm ? perm[j] : j] = mx / 127;
        }
    for (let n = 0; n < N; n++) {
      let s = 0;
      let mag = 0;
      let qerr = 0;
      for (let k = 0; k < K; k++) {
        const xv = x[m * K + k];
        s += xv * q.W[n * K + k];
        if (int8) {
          mag += (Math.abs(xv) + d[k]) * q.mag[n * K + k];
          qerr += Math.abs(q.W[n * K + k]) * (0.5 * d[k] * (1 + 2 * U) + 4 * U * Math.abs(xv));
        } else {
          mag += Math.abs(xv) * q.mag[n * K + k];
        }
      }
      if (bias) s += bias[n];
      const bound = qerr + ((int8 ? bpg : q.G) + q.ng + 3) * U * mag + U * Math.abs(s) + 1e-30;
      const got = y[m * N + n];
      if (!(Math.abs(got - s) <= bound)) throw new Error(`y[${m}, ${n}] = ${got} vs f64 ${s} (bound ${bound}, ${activations})`);
    }
  }
}

const code = (fn: () => unknown): string => {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
  return 'none';
};

// Awkward sizes per bit width: K and N not multiples of the 32/64-column blocks or of the
// groups (partial last group), within what the packing allows (3 bits: K, N % 32 == 0).
const SIZES: Record<QuantBits, [number, number]> = { 2: [304, 112], 3: [160, 96], 4: [296, 104], 8: [300, 108] };
const VARIANTS = [
  { sym: true, v2: false },
  { sym: false, v2: false },
  { sym: false, v2: true },
];

describe('GPTQ test packer', () => {
  it('packs 3-bit codes in the 10-1-10-1-10 cross-word layout of SPEC §2.5', () => {
    const v = Array.from({ length: 32 }, (_, j) => (j * 5 + 3) & 7);
    const w = packAlongK(v, 32, 1, 3); // one column, 32 codes -> 3 words
    expect(w.length).toBe(3);
    for (let j = 0; j < 10; j++) expect((w[0] >>> (3 * j)) & 7).toBe(v[j]);
    expect(((w[0] >>> 30) & 3) | ((w[1] & 1) << 2)).toBe(v[10]);
    for (let j = 11; j < 21; j++) expect((w[1] >>> (3 * (j - 11) + 1)) & 7).toBe(v[j]);
    expect(((w[1] >>> 31) & 1) | ((w[2] & 3) << 1)).toBe(v[21]);
    for (let j = 22; j < 32; j++) expect((w[2] >>> (3 * (j - 22) + 2)) & 7).toBe(v[j]);
  });

  it('round-trips codes along K and N for every bit width; v1 sym 4-bit zeros read 0x77777777', () => {
    for (const bits of [2, 3, 4, 8]) {
      const K = 64;
      const N = 32;
      const r = rng(bits);
      const c = Array.from({ length: K * N }, () => Math.floor(r() * (1 << bits)));
      const w = packAlongK(c, K, N, bits);
      for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) expect(getBits(w, n, N, bits * k, bits)).toBe(c[k * N + n]);
      const z = packAlongN(c, K, N, bits);
      for (let g = 0; g < K; g++) for (let n = 0; n < N; n++) expect(getBits(z, (g * N * bits) / 32, 1, bits * n, bits)).toBe(c[g * N + n]);
    }
    const q = makeQuant({ K: 64, N: 16, bits: 4, groupSize: 32, sym: true, v2: false, seed: 1 });
    expect(Array.from(new Uint32Array((q.w.qzeros.data() as Int32Array).buffer))).toEqual(new Array(4).fill(0x77777777));
  });
});

describe.each(levels)('qlinear at ISA level %s', (isa) => {
  it.each([2, 3, 4, 8] as const)('%i bits: groups 32/64/128/-1, sym/asym, v1/v2, M in 1..9 and 37, against f64 and the scalar reference', (bits) => {
    const [K, N] = SIZES[bits];
    let seed = bits * 1000;
    for (const groupSize of [32, 64, 128, -1])
      for (const v of VARIANTS) {
        if (bits === 2 && groupSize === 32 && v.sym) continue; // covered by the asym rows; keeps the suite fast
        const q = makeQuant({ K, N, bits, groupSize, ...v, seed: ++seed });
        for (const M of [1, 2, 3, 5, 8, 9, 37]) {
          const x = randX(M, K, seed * 7 + M);
          const out = poisoned(M, N);
          qlinear(x, q.w, { out, isa });
          check(out.data() as Float32Array, x.toFloat32Array(), q, M);
          if (isa !== 'scalar') {
            // Same operation sequence as the reference, so the same bits.
            const ref = qlinear(x, q.w, { isa: 'scalar' }).data() as Float32Array;
            expect(bytes(out.data() as Float32Array).equals(bytes(ref))).toBe(true);
          }
        }
      }
  });

  it.each([2, 3, 4, 8] as const)("%i bits with int8 activations: groups 32/64/128/-1, M in 1..9 and 37, against f64 and the scalar reference", (bits) => {
    const [K, N] = SIZES[bits];
    let seed = bits * 2000;
    for (const groupSize of [32, 64, 128, -1])
      for (const v of VARIANTS) {
        const q = makeQuant({ K, N, bits, groupSize, ...v, seed: ++seed });
        for (const M of [1, 2, 3, 5, 8, 9, 37]) {
          const x = randX(M, K, seed * 7 + M);
          const out = poisoned(M, N);
          qlinear(x, q.w, { out, isa, activations: 'int8' });
          check(out.data() as Float32Array, x.toFloat32Array(), q, M, undefined, 'int8');
          if (isa !== 'scalar') {
            const ref = qlinear(x, q.w, { isa: 'scalar', activations: 'int8' }).data() as Float32Array;
            expect(bytes(out.data() as Float32Array).equals(bytes(ref))).toBe(true);
          }
        }
      }
  });

  it('int8 activations: act-order (4 and 3 bits), batch invariance (M = 1 vs 37)', () => {
    for (const [bits, K, N, G] of [[4, 296, 104, 64], [3, 352, 96, 32]] as const) {
      // 3 bits: K = 352 with g32 gives 11 groups (split-K at M = 1, the byte panel at M = 37).
      const q = makeQuant({ K, N, bits, groupSize: G, sym: false, v2: false, seed: 31 + bits, actOrder: true });
      const x = randX(37, K, 6);
      const all = qlinear(x, q.w, { isa, activations: 'int8' }).data() as Float32Array;
      check(all, x.toFloat32Array(), q, 37, undefined, 'int8');
      for (const r of [0, 7, 36]) {
        const one = qlinear(x.slice(r, r + 1), q.w, { isa, activations: 'int8' }).data() as Float32Array;
        expect(bytes(one).equals(bytes(all.subarray(r * N, (r + 1) * N)))).toBe(true);
      }
      if (isa !== 'scalar') {
        const ref = qlinear(x, q.w, { isa: 'scalar', activations: 'int8' }).data() as Float32Array;
        expect(bytes(all).equals(bytes(ref))).toBe(true);
      }
    }
  });

  it('act-order: permutes x through perm (random permutation), with a sequential gIdx and bias', () => {
    for (const bits of [3, 4] as const) {
      const [K, N] = SIZES[bits];
      const q = makeQuant({ K, N, bits, groupSize: 32, sym: false, v2: false, seed: 77 + bits, actOrder: true, withGIdx: true });
      const bias = Tensor.random([N], 'f32', { seed: 3 });
      for (const M of [1, 4, 13]) {
        const x = randX(M, K, M);
        const out = poisoned(M, N);
        qlinear(x, q.w, { out, bias, isa });
        check(out.data() as Float32Array, x.toFloat32Array(), q, M, bias.toFloat32Array());
      }
    }
  });

  it('is batch-invariant: a row gives the same bits alone (GEMV) and inside M = 5 and M = 37 (GEMM)', () => {
    const q = makeQuant({ K: 296, N: 104, bits: 4, groupSize: 32, sym: false, v2: false, seed: 9 }); // ng = 10: M <= 8 takes the split-K path
    const x = randX(37, 296, 5);
    const all = qlinear(x, q.w, { isa }).data() as Float32Array;
    const five = qlinear(x.slice(0, 5), q.w, { isa }).data() as Float32Array;
    for (const r of [0, 4, 6, 36]) {
      const one = qlinear(x.slice(r, r + 1), q.w, { isa }).data() as Float32Array;
      expect(bytes(one).equals(bytes(all.subarray(r * 104, (r + 1) * 104)))).toBe(true);
      if (r < 5) expect(bytes(one).equals(bytes(five.subarray(r * 104, (r + 1) * 104)))).toBe(true);
    }
  });

  it('accepts f16 and bf16 activations (converted exactly, same bits as f32 of the same values)', () => {
    const q = makeQuant({ K: 296, N: 104, bits: 4, groupSize: 64, sym: true, v2: false, seed: 4 });
    for (const dt of ['f16', 'bf16'] as const) {
      const xh = randX(3, 296, 8).to(dt);
      const a = qlinear(xh, q.w, { isa }).data() as Float32Array;
      const b = qlinear(Tensor.from(xh.toFloat32Array(), { shape: [3, 296] }), q.w, { isa }).data() as Float32Array;
      expect(bytes(a).equals(bytes(b))).toBe(true);
    }
  });
});

describe('qlinear', () => {
  it('gives the same bits for any thread count (GEMV and GEMM)', () => {
    const before = getThreads();
    const q = makeQuant({ K: 512, N: 328, bits: 4, groupSize: 128, sym: false, v2: false, seed: 11 });
    for (const M of [1, 21]) {
      const x = randX(M, 512, 12);
      const outs = [1, 2, 3].map((t) => {
        setThreads(t);
        return qlinear(x, q.w).data() as Float32Array;
      });
      setThreads(before);
      expect(bytes(outs[1]).equals(bytes(outs[0]))).toBe(true);
      expect(bytes(outs[2]).equals(bytes(outs[0]))).toBe(true);
    }
  });

  it('split-K decode over several 2048-column blocks (the last one partial) with bias: f64, scalar, threads 1/2/3 and M = 1 vs 11 agree', () => {
    // N > 2048 gives several column blocks, each combined by whichever task finishes its last
    // group (one parallel phase): the result must not depend on who that is. 3 bits: N % 32.
    const before = getThreads();
    const Ns: Record<QuantBits, number> = { 2: 2064, 3: 2080, 4: 2392, 8: 2380 }; // 8 bits: the N % 8 == 4 tail
    for (const bits of [2, 3, 4, 8] as const) {
      const K = bits === 3 ? 544 : bits === 2 ? 528 : 520, N = Ns[bits];
      const q = makeQuant({ K, N, bits, groupSize: 128, sym: false, v2: bits === 8, seed: 500 + bits }); // ng = 5 (partial last group)
      const bias = Tensor.random([N], 'f32', { seed: 3 });
      const x = randX(11, K, 40 + bits);
      for (const activations of ['f32', 'int8'] as const) {
        const ref = qlinear(x.slice(0, 2), q.w, { bias, isa: 'scalar', activations }).data() as Float32Array;
        check(ref, x.slice(0, 2).toFloat32Array(), q, 2, bias.toFloat32Array(), activations);
        const batch = qlinear(x, q.w, { bias, activations }).data() as Float32Array; // M = 11: the panel GEMM
        for (const t of [1, 2, 3]) {
          setThreads(t);
          for (const lvl of levels) {
            const out = poisoned(2, N);
            qlinear(x.slice(0, 2), q.w, { out, bias, isa: lvl, activations });
            expect(bytes(out.data() as Float32Array).equals(bytes(ref))).toBe(true);
          }
        }
        setThreads(before);
        expect(bytes(batch.subarray(0, 2 * N)).equals(bytes(ref))).toBe(true);
      }
    }
  });

  it('split-K block-major task order (int8, 4 bits, terms above 4 MiB): same bits as group-major, scalar and f64', () => {
    // M = 8, ng = 32 (g32), N = 4160: T = 8·32·4160·4 bytes = 4.26 MB > kQBlockMajorTermBytes, so
    // the 4-bit M = 8 call runs its tasks block-major, while each M = 1 call (T = 0.53 MB), every
    // f32-activation call and the 2-bit case (a group-major control) run group-major. Rows must agree bit for bit across the two orders,
    // thread counts 1/2/3 and ISA levels, and stay within the int8 bound against f64.
    const before = getThreads();
    for (const bits of [2, 4] as const) {
      const K = 1024, N = 4160, M = 8;
      const q = makeQuant({ K, N, bits, groupSize: 32, sym: false, v2: bits === 4, seed: 700 + bits });
      const x = randX(M, K, 70 + bits);
      const rows: Float32Array[] = [];
      for (let m = 0; m < M; m++) rows.push(qlinear(x.slice(m, m + 1), q.w, { activations: 'int8' }).data() as Float32Array);
      const ref = qlinear(x.slice(0, 2), q.w, { isa: 'scalar', activations: 'int8' }).data() as Float32Array;
      check(ref, x.slice(0, 2).toFloat32Array(), q, 2, undefined, 'int8');
      expect(bytes(rows[0]).equals(bytes(ref.subarray(0, N)))).toBe(true);
      expect(bytes(rows[1]).equals(bytes(ref.subarray(N, 2 * N)))).toBe(true);
      for (const t of [1, 2, 3]) {
        setThreads(t);
        for (const lvl of levels.filter((l) => l !== 'scalar')) {
          const out = poisoned(M, N);
          qlinear(x, q.w, { out, isa: lvl, activations: 'int8' });
          const y = out.data() as Float32Array;
          for (let m = 0; m < M; m++) expect(bytes(y.subarray(m * N, (m + 1) * N)).equals(bytes(rows[m]))).toBe(true);
        }
      }
      setThreads(before);
    }
  });

  it('y in f16/bf16: the f32 result (bias included) rounded once to nearest even, every path and ISA level', () => {
    // Rounding once from f32 must give exactly Tensor.to(dtype) of the f32 output (RNE), and
    // so lie within half an ulp of it: f16 2^-11 relative (normals) + 2^-25 absolute
    // (subnormals), bf16 2^-8 relative. The f32 output itself is checked against f64.
    const u16 = (t: Tensor) => Buffer.from((t.data() as Uint16Array).buffer, (t.data() as Uint16Array).byteOffset, t.byteLength);
    for (const bits of [3, 4] as const) {
      const [K, N] = SIZES[bits];
      const q = makeQuant({ K, N, bits, groupSize: 32, sym: false, v2: false, seed: 90 + bits }); // ng >= 5: M <= 8 is split-K
      const qFew = makeQuant({ K, N, bits, groupSize: -1, sym: false, v2: false, seed: 95 + bits }); // 1 group: the column-block GEMV
      const bias = Tensor.random([N], 'f32', { seed: 4 });
      for (const w of [q, qFew])
        for (const activations of ['f32', 'int8'] as const)
          for (const M of [1, 3, 37]) {
            const x = randX(M, K, M + bits);
            const y32 = qlinear(x, w.w, { bias, activations }).data() as Float32Array;
            check(y32, x.toFloat32Array(), w, M, bias.toFloat32Array(), activations);
            for (const dt of ['f16', 'bf16'] as const) {
              const want = Tensor.from(y32, { shape: [M, N] }).to(dt);
              for (const lvl of levels) {
                const out = Tensor.from(new Float32Array(M * N).fill(NaN), { shape: [M, N] }).to(dt); // NaN-poisoned
                const r = qlinear(x, w.w, { out, bias, isa: lvl, activations });
                expect(r).toBe(out);
                expect(u16(out).equals(u16(want))).toBe(true);
              }
              const y = qlinear(x, w.w, { bias, activations, outDtype: dt });
              expect(y.dtype).toBe(dt);
              expect(u16(y).equals(u16(want))).toBe(true);
              const yf = y.toFloat32Array();
              const rel = dt === 'f16' ? 2 ** -11 : 2 ** -8;
              for (let i = 0; i < M * N; i++) expect(Math.abs(yf[i] - y32[i])).toBeLessThanOrEqual(rel * Math.abs(y32[i]) + 2 ** -25);
            }
          }
    }
  });

  it('rejects bad output dtypes with typed errors', () => {
    const q = makeQuant({ K: 64, N: 16, bits: 4, groupSize: 32, sym: true, v2: false, seed: 2 });
    const x = randX(2, 64, 1);
    expect(code(() => qlinear(x, q.w, { outDtype: 'i8' as unknown as 'f16' }))).toBe('KVANT_DTYPE');
    expect(code(() => qlinear(x, q.w, { out: Tensor.zeros([2, 16], 'f16'), outDtype: 'bf16' }))).toBe('KVANT_DTYPE');
    expect(code(() => qlinear(x, q.w, { out: Tensor.zeros([2, 16], 'i32') }))).toBe('KVANT_DTYPE');
    expect(code(() => qlinear(x, q.w, { out: Tensor.zeros([2, 15], 'f16') }))).toBe('KVANT_SHAPE');
    // The binding checks too: a y of the wrong byte length for its dtype, and an unknown dtype code.
    const fmt = encodeQuantFormat(q.w.format);
    const call = (y: Uint8Array, yDtype: number) =>
      code(() => native().qgemm(...raw(x), 0, 2, fmt, ...raw(q.w.qweight), ...raw(q.w.qzeros), ...raw(q.w.scales), null, 0, 0, null, 0, 0, y, 0, y.byteLength, undefined, 0, yDtype));
    expect(call(new Uint8Array(2 * 16 * 4), 1)).toBe('KVANT_SHAPE'); // f32-sized buffer declared f16
    expect(call(new Uint8Array(2 * 16 * 2), 3)).toBe('KVANT_DTYPE'); // i8
    expect(call(new Uint8Array(2 * 16 * 2), 99)).toBe('KVANT_DTYPE');
    expect(call(new Uint8Array(2 * 16 * 2), 2)).toBe('none'); // bf16 of the right size works
  });

  it('rejects bad input with typed errors', () => {
    const q = makeQuant({ K: 64, N: 16, bits: 4, groupSize: 32, sym: true, v2: false, seed: 2 });
    const x = randX(2, 64, 1);
    const w = q.w;
    expect(code(() => qlinear(randX(2, 63, 1), w))).toBe('KVANT_SHAPE');
    expect(code(() => qlinear(Tensor.zeros([2, 64], 'i32'), w))).toBe('KVANT_DTYPE');
    expect(code(() => qlinear(x, { ...w, qweight: Tensor.zeros([7, 16], 'i32') }))).toBe('KVANT_SHAPE');
    expect(code(() => qlinear(x, { ...w, qweight: Tensor.zeros([8, 16], 'f32') }))).toBe('KVANT_DTYPE');
    expect(code(() => qlinear(x, { ...w, scales: Tensor.zeros([2, 16], 'bf16') }))).toBe('KVANT_DTYPE');
    expect(code(() => qlinear(x, { ...w, qzeros: Tensor.zeros([1, 2], 'i32') }))).toBe('KVANT_SHAPE');
    expect(code(() => qlinear(x, { ...w, format: { ...w.format, bits: 5 as QuantBits } }))).toBe('KVANT_FORMAT');
    expect(code(() => qlinear(x, { ...w, format: { ...w.format, groupSize: 20 } }))).toBe('KVANT_FORMAT');
    expect(code(() => qlinear(x, { ...w, format: { ...w.format, N: 12 } }))).toBe('KVANT_SHAPE');
    expect(code(() => qlinear(x, { ...w, perm: new Int32Array(64) }))).toBe('KVANT_RANGE'); // not a permutation
    expect(code(() => qlinear(x, { ...w, perm: new Int32Array(3) }))).toBe('KVANT_SHAPE');
    expect(code(() => qlinear(x, { ...w, gIdx: Tensor.from(new Int32Array(64).fill(0)) }))).toBe('KVANT_FORMAT'); // not sequential
    expect(code(() => qlinear(x, w, { out: Tensor.zeros([2, 15]) }))).toBe('KVANT_SHAPE');
    expect(code(() => qlinear(x, w, { bias: Tensor.zeros([15]) }))).toBe('KVANT_SHAPE');
    expect(code(() => qlinear(x, w, { isa: 'sse' as 'avx2' }))).toBe('KVANT_BACKEND');
    expect(code(() => qlinear(x, w, { activations: 'int4' as 'int8' }))).toBe('KVANT_RANGE');
    const buf = new ArrayBuffer(2 * 64 * 4 + 2 * 16 * 4);
    const xa = Tensor.fromBuffer(buf, 'f32', [2, 64]);
    xa.byteView().set(x.byteView());
    expect(code(() => qlinear(xa, w, { out: Tensor.fromBuffer(buf, 'f32', [2, 16], 64) }))).toBe('KVANT_RANGE'); // out aliases x
    expect(code(() => qlinear(x, w, { out: Tensor.fromBuffer((w.qweight.byteView().buffer as ArrayBuffer), 'f32', [2, 16], w.qweight.byteView().byteOffset) }))).toBe('KVANT_RANGE');
    // The native layer re-checks packed sizes against the format (bypassing the TS checks).
    const y = Tensor.zeros([2, 16]);
    const short = Tensor.zeros([7, 16], 'i32');
    expect(code(() => {
      try {
        native().qgemm(...raw(x), 0, 2, encodeQuantFormat(w.format), ...raw(short), ...raw(w.qzeros), ...raw(w.scales), null, 0, 0, null, 0, 0, ...raw(y));
      } catch (e) {
        throw e;
      }
    })).toBe('KVANT_SHAPE');
    expect(code(() => native().qgemm(...raw(x), 0, 2, new Uint8Array(31), ...raw(w.qweight), ...raw(w.qzeros), ...raw(w.scales), null, 0, 0, null, 0, 0, ...raw(y)))).toBe('KVANT_FORMAT');
  });
});

// ---- MoE ----------------------------------------------------------------------------------

interface RefMlp {
  gate: { W: Float64Array; mag: Float64Array; G: number; ng: number } | null;
  dense?: Float64Array[];
}

function silu(v: number): number {
  return v / (1 + Math.exp(-v));
}

/** One projection applied in f64 with a propagated error bound: output o and its bound d. */
type F64Apply = (e: number, j: 0 | 1 | 2, v: Float64Array, dv: Float64Array, K: number, N: number) => { o: Float64Array; d: Float64Array };

/**
 * Checks MoE rows y [M, H] against f64: each pair (mlp[i], row[i], weight[i]) is
 * down(silu(gate(x)) * up(x)) through `apply` (projection j of MLP e), its bound propagated
 * through silu (slope <= 1.1) and the f32 product (4u), and the weighted sum adds 3u per term.
 */
function expectMoeWithinF64(y: Float32Array, xs: Float32Array, M: number, H: number, I: number, routes: { mlp: ArrayLike<number>; row: ArrayLike<number>; weight: ArrayLike<number> }, apply: F64Apply): void {
  const { mlp, row, weight } = routes;
  for (let r = 0; r < M; r++) {
    const want = new Float64Array(H);
    const bound = new Float64Array(H);
    for (let i = 0; i < mlp.length; i++) {
      if (row[i] !== r) continue;
      const e = mlp[i];
      const xv = Float64Array.from(xs.subarray(r * H, (r + 1) * H));
      const zero = new Float64Array(H);
      const g = apply(e, 0, xv, zero, H, I);
      const u = apply(e, 1, xv, zero, H, I);
      const h = new Float64Array(I);
      const dh = new Float64Array(I);
      for (let k = 0; k < I; k++) {
        h[k] = silu(g.o[k]) * u.o[k];
        dh[k] = 1.1 * g.d[k] * (Math.abs(u.o[k]) + u.d[k]) + Math.abs(silu(g.o[k])) * u.d[k] + 4 * U * Math.abs(h[k]) + 1e-30;
      }
      const d = apply(e, 2, h, dh, I, H);
      for (let c = 0; c < H; c++) {
        want[c] += weight[i] * d.o[c];
        bound[c] += Math.abs(weight[i]) * d.d[c] + 3 * U * Math.abs(weight[i] * d.o[c]);
      }
    }
    for (let c = 0; c < H; c++) {
      const got = y[r * H + c];
      if (!(Math.abs(got - want[c]) <= bound[c] + 1e-30)) throw new Error(`out[${r}, ${c}] = ${got} vs f64 ${want[c]} (bound ${bound[c]})`);
    }
  }
}

describe.each(levels)('moeMlp at ISA level %s', (isa) => {
  it('matches an f64 MoE of quantized and dense MLPs (pairs in order), and is batch-invariant', () => {
    const H = 128;
    const I = 128;
    // MLP 0, 1: 4-bit g32 and 3-bit g32 (asym, v1/v2; 4 groups, so one row alone takes the
    // split-K decode path while the 10 rows of the batch take the panel GEMM); MLP 2: dense
    // bf16 (a "shared expert").
    const qs = [4, 3].map((bits, e) => {
      const mk = (K: number, N: number, s: number) => makeQuant({ K, N, bits: bits as QuantBits, groupSize: 32, sym: false, v2: e === 1, seed: 100 + 10 * e + s });
      return { gate: mk(H, I, 1), up: mk(H, I, 2), down: mk(I, H, 3) };
    });
    const dense = [Tensor.random([I, H], 'bf16', { seed: 5, std: 0.1, dist: 'normal' }), Tensor.random([I, H], 'bf16', { seed: 6, std: 0.1, dist: 'normal' }), Tensor.random([H, I], 'bf16', { seed: 7, std: 0.1, dist: 'normal' })];
    const mlps = [...qs.map((m) => ({ gate: m.gate.w, up: m.up.w, down: m.down.w })), { gate: dense[0], up: dense[1], down: dense[2] }];
    const M = 10;
    const x = randX(M, H, 3);
    // Each row: two routed experts (0/1 in varying order with weights) + the shared one (2, weight 1).
    const mlp: number[] = [];
    const row: number[] = [];
    const weight: number[] = [];
    for (let r = 0; r < M; r++) {
      for (const e of r % 2 ? [1, 0] : [0, 1]) {
        mlp.push(e);
        row.push(r);
        weight.push(0.25 + 0.1 * e + 0.01 * r);
      }
      mlp.push(2);
      row.push(r);
      weight.push(1);
    }
    const routes = { mlp: Int32Array.from(mlp), row: Int32Array.from(row), weight: Float32Array.from(weight) };
    const out = poisoned(M, H);
    moeMlp(x, mlps, routes, out, { isa });
    const y = out.data() as Float32Array;
    // f64 reference and a propagated bound: each projection's kernel bound (as in check())
    // plus the effect of its input's error through |W|; silu' <= 1.1; f32 silu·up <= 4u·|h|
    // (exp, add, divide, multiply); the weighted sum adds P·u·Σ|w·d|.
    const xs = x.toFloat32Array();
    const dW = dense.map((t) => Float64Array.from(t.toFloat32Array()));
    type Proj = { W: Float64Array; mag: Float64Array; G: number; ng: number } | { W: Float64Array; mag: null; G: number; ng: number };
    const projOf = (e: number, j: number): Proj => {
      if (e < 2) {
        const m = [qs[e].gate, qs[e].up, qs[e].down][j];
        return { W: m.W, mag: m.mag, G: m.G, ng: m.ng };
      }
      return { W: dW[j], mag: null, G: j === 2 ? I : H, ng: 1 };
    };
    // value and error bound of one projection applied to (v, dv)
    const apply = (p: Proj, v: Float64Array, dv: Float64Array, K: number, N: number) => {
      const o = new Float64Array(N);
      const d = new Float64Array(N);
      for (let n = 0; n < N; n++) {
        let s = 0;
        let mag = 0;
        let prop = 0;
        for (let k = 0; k < K; k++) {
          const wv = p.W[n * K + k];
          s += v[k] * wv;
          mag += Math.abs(v[k]) * (p.mag ? p.mag[n * K + k] : Math.abs(wv));
          prop += dv[k] * Math.abs(wv);
        }
        o[n] = s;
        d[n] = (p.G + p.ng + 3) * U * mag * (p.mag ? 1 : 1) + U * Math.abs(s) + prop * 1.0001;
      }
      return { o, d };
    };
    expectMoeWithinF64(y, xs, M, H, I, { mlp, row, weight }, (e, j, v, dv, K, N) => apply(projOf(e, j), v, dv, K, N));
    // Batch invariance: row 3 alone (its three pairs, same order) gives the same bits.
    const sel = mlp.map((_, i) => i).filter((i) => row[i] === 3);
    const one = moeMlp(x.slice(3, 4), mlps, { mlp: Int32Array.from(sel.map((i) => mlp[i])), row: new Int32Array(sel.length), weight: Float32Array.from(sel.map((i) => weight[i])) }, undefined, { isa });
    expect(bytes(one.data() as Float32Array).equals(bytes(y.subarray(3 * H, 4 * H)))).toBe(true);
    if (isa !== 'scalar') {
      // Quantized MLPs perform the reference's operation sequence on every level (dense tiles
      // do not: the dense GEMM's vector sum order differs from its scalar one by design).
      const q = mlp.map((_, i) => i).filter((i) => mlp[i] !== 2);
      const qr = { mlp: Int32Array.from(q.map((i) => mlp[i])), row: Int32Array.from(q.map((i) => row[i])), weight: Float32Array.from(q.map((i) => weight[i])) };
      const a = moeMlp(x, mlps, qr, undefined, { isa }).data() as Float32Array;
      const ref = moeMlp(x, mlps, qr, undefined, { isa: 'scalar' }).data() as Float32Array;
      expect(bytes(ref).equals(bytes(a))).toBe(true);
    }
  });
});

describe.each(levels)('moeMlp with int8 activations at ISA level %s', (isa) => {
  it('3- and 4-bit experts: f64 within the propagated int8 bound, scalar bits, batch and thread invariance', () => {
    const H = 128;
    const I = 96;
    // MLP 0: 3-bit g32 asym v1, MLP 1: 4-bit g32 asym v2, MLP 2: 3-bit g32 v2 (the "shared"
    // expert). g32 gives 4 groups along H, 3 along I: a row alone takes split-K for gate/up
    // (>= 4 groups) and the column GEMV for down; the 10 rows of the batch take the byte panel.
    const qs = [3, 4, 3].map((bits, e) => {
      const mk = (K: number, N: number, s: number) => makeQuant({ K, N, bits: bits as QuantBits, groupSize: 32, sym: false, v2: e > 0, seed: 300 + 10 * e + s });
      return { gate: mk(H, I, 1), up: mk(H, I, 2), down: mk(I, H, 3) };
    });
    const mlps = qs.map((m) => ({ gate: m.gate.w, up: m.up.w, down: m.down.w }));
    const M = 10;
    const x = randX(M, H, 8);
    const mlp: number[] = [];
    const row: number[] = [];
    const weight: number[] = [];
    for (let r = 0; r < M; r++)
      for (const e of r % 2 ? [1, 0, 2] : [0, 1, 2]) {
        mlp.push(e);
        row.push(r);
        weight.push(e === 2 ? 1 : 0.3 + 0.1 * e + 0.01 * r);
      }
    const routes = { mlp: Int32Array.from(mlp), row: Int32Array.from(row), weight: Float32Array.from(weight) };
    const out = poisoned(M, H);
    moeMlp(x, mlps, routes, out, { isa, activations: 'int8' });
    const y = out.data() as Float32Array;
    // One projection on (v, dv), |v_kernel − v| <= dv: the kernel's block scale is at most
    // dm = max_b(|v| + dv)/127·(1+u); its own error is check()'s int8 bound with |x| <= |v| + dv
    // and d_b <= dm, plus the input error through |W|.
    const apply = (p: MadeQuant, v: Float64Array, dv: Float64Array, K: number, N: number) => {
      const dm = new Float64Array(K);
      for (let b0 = 0; b0 < K; b0 += 32) {
        let mx = 0;
        for (let k = b0; k < b0 + 32; k++) mx = Math.max(mx, Math.abs(v[k]) + dv[k]);
        for (let k = b0; k < b0 + 32; k++) dm[k] = (mx / 127) * (1 + U);
      }
      const o = new Float64Array(N);
      const d = new Float64Array(N);
      for (let n = 0; n < N; n++) {
        let s = 0;
        let mag = 0;
        let qerr = 0;
        let prop = 0;
        for (let k = 0; k < K; k++) {
          const wv = p.W[n * K + k];
          const ax = Math.abs(v[k]) + dv[k];
          s += v[k] * wv;
          mag += (ax + dm[k]) * p.mag[n * K + k];
          qerr += Math.abs(wv) * (0.5 * dm[k] * (1 + 2 * U) + 4 * U * ax);
          prop += dv[k] * Math.abs(wv);
        }
        o[n] = s;
        d[n] = qerr + (Math.ceil(p.G / 32) + p.ng + 3) * U * mag + U * Math.abs(s) + prop * 1.0001;
      }
      return { o, d };
    };
    const xs = x.toFloat32Array();
    expectMoeWithinF64(y, xs, M, H, I, routes, (e, j, v, dv, K, N) => apply([qs[e].gate, qs[e].up, qs[e].down][j], v, dv, K, N));
    // The int8 path really ran: it differs from the f32 one (by the activation rounding).
    const f32 = moeMlp(x, mlps, routes, undefined, { isa }).data() as Float32Array;
    expect(bytes(f32).equals(bytes(y))).toBe(false);
    for (const r0 of [0, 5]) {
      const sel = mlp.map((_, i) => i).filter((i) => row[i] === r0);
      const one = moeMlp(x.slice(r0, r0 + 1), mlps, { mlp: Int32Array.from(sel.map((i) => mlp[i])), row: new Int32Array(sel.length), weight: Float32Array.from(sel.map((i) => weight[i])) }, undefined, { isa, activations: 'int8' });
      expect(bytes(one.data() as Float32Array).equals(bytes(y.subarray(r0 * H, (r0 + 1) * H)))).toBe(true);
    }
    const ref = moeMlp(x, mlps, routes, undefined, { isa: 'scalar', activations: 'int8' }).data() as Float32Array;
    expect(bytes(ref).equals(bytes(y))).toBe(true);
    const before = getThreads();
    try {
      for (const t of [1, 3]) {
        setThreads(t);
        expect(bytes(moeMlp(x, mlps, routes, undefined, { isa, activations: 'int8' }).data() as Float32Array).equals(bytes(y))).toBe(true);
      }
    } finally {
      setThreads(before);
    }
  });
});

describe('moeMlp', () => {
  it('rejects bad input with typed errors; rows without pairs come out 0', () => {
    const H = 32;
    const I = 16;
    const mk = (K: number, N: number, s: number) => makeQuant({ K, N, bits: 4, groupSize: 32, sym: true, v2: false, seed: s }).w;
    const m = { gate: mk(H, I, 1), up: mk(H, I, 2), down: mk(I, H, 3) };
    const x = randX(2, H, 1);
    const routes = { mlp: Int32Array.of(0), row: Int32Array.of(1), weight: Float32Array.of(1) };
    const y = moeMlp(x, [m], routes).data() as Float32Array;
    expect(Array.from(y.subarray(0, H)).every((v) => v === 0)).toBe(true);
    expect(Array.from(y.subarray(H)).some((v) => v !== 0)).toBe(true);
    expect(code(() => moeMlp(x, [m], { ...routes, mlp: Int32Array.of(1) }))).toBe('KVANT_RANGE');
    expect(code(() => moeMlp(x, [m], { ...routes, row: Int32Array.of(2) }))).toBe('KVANT_RANGE');
    expect(code(() => moeMlp(x, [m], { ...routes, weight: Float32Array.of(1, 2) }))).toBe('KVANT_SHAPE');
    expect(code(() => moeMlp(x, [m], { ...routes, mlp: Float32Array.of(0) as unknown as Int32Array }))).toBe('KVANT_DTYPE');
    expect(code(() => moeMlp(randX(2, H + 8, 1), [m], routes))).toBe('KVANT_SHAPE');
    expect(code(() => moeMlp(x, [{ ...m, down: mk(H, I, 4) }], routes))).toBe('KVANT_SHAPE');
    expect(code(() => moeMlp(x, [{ ...m, gate: Tensor.zeros([I, H], 'i8') }], routes))).toBe('KVANT_DTYPE');
    expect(code(() => moeMlp(x.to('bf16'), [m], routes))).toBe('KVANT_DTYPE');
    expect(code(() => moeMlp(x, [m], routes, x))).toBe('KVANT_RANGE'); // out aliases x
    expect(code(() => moeMlp(x, [m], routes, Tensor.zeros([2, H + 1])))).toBe('KVANT_SHAPE');
  });
});
