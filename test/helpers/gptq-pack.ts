/**
 * A small test-only GPTQ packer (independent of lib/quant): builds QTensors with known codes,
 * zeros and scales, and the exact dequantized weights in f64, per SPEC §2.5.
 *
 * Packing is written from the "one long little-endian bit string" statement of the layout:
 * code i along the packed dimension occupies bits [bits·i, bits·i + bits) of the column's (or
 * row's) concatenated 32-bit words. For 2/4/8 bits that is word i / (32/bits) at shift
 * bits·(i % (32/bits)); for 3 bits it is the 10-1-10-1-10 cross-word layout (the 96-bit units).
 */
import { Tensor } from '../../lib/tensor';
import type { QTensor, QuantBits } from '../../lib/quant/format';

/** Deterministic PRNG (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Writes `bits`-wide value v at bit position pos of a word array (words[w] at w*stride + base). */
function putBits(words: Uint32Array, base: number, stride: number, pos: number, bits: number, v: number): void {
  for (let b = 0; b < bits; b++) {
    if (!((v >> b) & 1)) continue;
    const p = pos + b;
    const idx = base + Math.floor(p / 32) * stride;
    words[idx] = (words[idx] | (1 << (p % 32))) >>> 0;
  }
}

/** Reads back (for round-trip tests). */
export function getBits(words: Uint32Array, base: number, stride: number, pos: number, bits: number): number {
  let v = 0;
  for (let b = 0; b < bits; b++) {
    const p = pos + b;
    if ((words[base + Math.floor(p / 32) * stride] >>> (p % 32)) & 1) v |= 1 << b;
  }
  return v;
}

/** codes [K][N] (codes[k*N + n]) -> qweight words [K*bits/32][N], packed along K. */
export function packAlongK(codes: ArrayLike<number>, K: number, N: number, bits: number): Uint32Array {
  const out = new Uint32Array(((K * bits) / 32) * N);
  for (let k = 0; k < K; k++) for (let n = 0; n < N; n++) putBits(out, n, N, bits * k, bits, codes[k * N + n]);
  return out;
}

/** zero codes [ng][N] -> qzeros words [ng][N*bits/32], packed along N. */
export function packAlongN(codes: ArrayLike<number>, rows: number, N: number, bits: number): Uint32Array {
  const cols = (N * bits) / 32;
  const out = new Uint32Array(rows * cols);
  for (let g = 0; g < rows; g++) for (let n = 0; n < N; n++) putBits(out, g * cols, 1, bits * n, bits, codes[g * N + n]);
  return out;
}

export interface MadeQuant {
  w: QTensor;
  /** Exact dequantized weights, original input-channel order: W[n*K + k]. */
  W: Float64Array;
  /** |s|·(c + z) per weight (for the error bounds), same indexing as W. */
  mag: Float64Array;
  /** Effective group size. */
  G: number;
  ng: number;
}

export interface MakeOptions {
  K: number;
  N: number;
  bits: QuantBits;
  groupSize: number;
  sym: boolean;
  v2: boolean;
  seed: number;
  /** Random act-order permutation (kernel row j holds input channel perm[j]). */
  actOrder?: boolean;
  /** Pass a sequential gIdx tensor (instead of null). */
  withGIdx?: boolean;
}

/** Random codes, zeros (asym: include 0, to exercise v1's "zero − 1 masked" rule) and f16 scales. */
export function makeQuant(o: MakeOptions): MadeQuant {
  const { K, N, bits } = o;
  const r = rng(o.seed);
  const maxq = (1 << bits) - 1;
  const G = o.groupSize < 0 ? K : o.groupSize;
  const ng = Math.ceil(K / G);
  const codes = new Int32Array(K * N).map(() => Math.floor(r() * (maxq + 1)));
  const zeros = new Int32Array(ng * N).map(() => (o.sym ? 1 << (bits - 1) : r() < 0.15 ? 0 : Math.floor(r() * (maxq + 1))));
  const stored = zeros.map((z) => (o.v2 ? z : (z - 1) & maxq));
  const scalesF32 = new Float32Array(ng * N).map(() => (r() < 0.5 ? -1 : 1) * (0.005 + 0.05 * r()));
  const scales = Tensor.from(scalesF32, { shape: [ng, N] }).to('f16');
  const s = scales.toFloat32Array(); // exact f16 values
  const perm = o.actOrder ? shuffle(K, r) : null;
  const W = new Float64Array(N * K);
  const mag = new Float64Array(N * K);
  for (let j = 0; j < K; j++) {
    const g = Math.floor(j / G);
    const k = perm ? perm[j] : j;
    for (let n = 0; n < N; n++) {
      const c = codes[j * N + n];
      const z = zeros[g * N + n];
      W[n * K + k] = s[g * N + n] * (c - z);
      mag[n * K + k] = Math.abs(s[g * N + n]) * (c + z);
    }
  }
  const qweight = Tensor.from(new Int32Array(packAlongK(codes, K, N, bits).buffer), { shape: [(K * bits) / 32, N] });
  const qzeros = Tensor.from(new Int32Array(packAlongN(stored, ng, N, bits).buffer), { shape: [ng, (N * bits) / 32] });
  const gIdx = o.withGIdx ? Tensor.from(new Int32Array(K).map((_, j) => Math.floor(j / G)), { shape: [K] }) : null;
  return {
    w: { format: { bits, groupSize: o.groupSize, sym: o.sym, checkpointFormat: o.v2 ? 'gptq_v2' : 'gptq', K, N }, qweight, qzeros, scales, gIdx, perm },
    W,
    mag,
    G,
    ng,
  };
}

function shuffle(K: number, r: () => number): Int32Array {
  const p = new Int32Array(K).map((_, i) => i);
  for (let i = K - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}
