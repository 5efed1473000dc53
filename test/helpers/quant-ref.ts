/**
 * Test-only reference of SPEC §2.3/§2.5, written independently of the native bit-stream
 * helpers: 2/4/8 bits with f = 32/bits codes per word, 3 bits by assembling each triple of
 * words as one 96-bit BigInt. The min-max grid is computed with Math.fround at every f32
 * step so it matches the native f32 arithmetic exactly.
 */
import { f16BitsRef, f16Value } from './half-ref';

export interface RefGrid {
  scale: number;
  zero: number;
  scaleBits: number;
}

const f = Math.fround;

export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export function fitGridRef(x: ArrayLike<number>, bits: number, sym: boolean): RefGrid {
  const maxq = (1 << bits) - 1;
  let xmin = 0;
  let xmax = 0;
  for (let i = 0; i < x.length; i++) {
    xmin = Math.min(xmin, x[i]);
    xmax = Math.max(xmax, x[i]);
  }
  if (sym) {
    xmax = Math.max(Math.abs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin === 0 && xmax === 0) {
    xmin = -1;
    xmax = 1;
  }
  const s32 = f(f(xmax - xmin) / maxq);
  const scaleBits = f16BitsRef(s32);
  const scale = f16Value(scaleBits);
  let zero: number;
  if (sym) zero = (maxq + 1) / 2;
  else if (scale === 0) zero = 0;
  else zero = Math.min(maxq, Math.max(0, roundHalfEven(f(-xmin / scale))));
  return { scale, zero, scaleBits };
}

export function codeRef(x: number, g: RefGrid, bits: number): number {
  const maxq = (1 << bits) - 1;
  if (g.scale === 0) return g.zero;
  return Math.min(maxq, Math.max(0, roundHalfEven(f(x / g.scale)) + g.zero));
}

/** Packs values v[0..len) (each < 2^bits) of one axis into 32-bit words. */
export function packAxis(v: ArrayLike<number>, bits: number): Uint32Array {
  const words = new Uint32Array((v.length * bits) / 32);
  if (bits === 3) {
    for (let t = 0; t < v.length / 32; t++) {
      let big = 0n;
      for (let j = 31; j >= 0; j--) big = (big << 3n) | BigInt(v[t * 32 + j]);
      words[3 * t] = Number(big & 0xffffffffn);
      words[3 * t + 1] = Number((big >> 32n) & 0xffffffffn);
      words[3 * t + 2] = Number((big >> 64n) & 0xffffffffn);
    }
    return words;
  }
  const per = 32 / bits;
  for (let i = 0; i < v.length; i++) words[Math.floor(i / per)] = (words[Math.floor(i / per)] | (v[i] << (bits * (i % per)))) >>> 0;
  return words;
}

export function unpackAxis(words: ArrayLike<number>, bits: number, len: number): number[] {
  const out: number[] = [];
  if (bits === 3) {
    for (let t = 0; t < len / 32; t++) {
      const big = BigInt(words[3 * t] >>> 0) | (BigInt(words[3 * t + 1] >>> 0) << 32n) | (BigInt(words[3 * t + 2] >>> 0) << 64n);
      for (let j = 0; j < 32; j++) out.push(Number((big >> BigInt(3 * j)) & 7n));
    }
    return out;
  }
  const per = 32 / bits;
  for (let i = 0; i < len; i++) out.push(((words[Math.floor(i / per)] >>> 0) >>> (bits * (i % per))) & ((1 << bits) - 1));
  return out;
}

export interface RefQuant {
  codes: number[][]; // [N][K]
  grids: RefGrid[][]; // [ng][N]
  qweight: Int32Array; // [K*bits/32, N]
  qzeros: Int32Array; // [ng, N*bits/32]
  scales: Uint16Array; // [ng, N]
  deq: Float64Array; // [N, K]
}

/** RTN with sequential groups, packed as AutoGPTQ would (v1 stores zero - 1). */
export function rtnRef(w: Float32Array, N: number, K: number, bits: number, G: number, sym: boolean, v2: boolean): RefQuant {
  const g = G < 0 ? K : G;
  const ng = Math.ceil(K / g);
  const maxq = (1 << bits) - 1;
  const codes: number[][] = [];
  const grids: RefGrid[][] = Array.from({ length: ng }, () => []);
  const deq = new Float64Array(N * K);
  for (let n = 0; n < N; n++) {
    const row: number[] = [];
    for (let gi = 0; gi < ng; gi++) {
      const part = w.subarray(n * K + gi * g, n * K + Math.min(K, (gi + 1) * g));
      const grid = fitGridRef(part, bits, sym);
      grids[gi].push(grid);
      for (let i = 0; i < part.length; i++) {
        const c = codeRef(part[i], grid, bits);
        row.push(c);
        deq[n * K + gi * g + i] = (c - grid.zero) * grid.scale;
      }
    }
    codes.push(row);
  }
  const qweight = new Int32Array((K * bits) / 32 * N);
  for (let n = 0; n < N; n++) {
    const col = packAxis(codes[n], bits);
    for (let r = 0; r < col.length; r++) qweight[r * N + n] = col[r];
  }
  const zc = (N * bits) / 32;
  const qzeros = new Int32Array(ng * zc);
  const scales = new Uint16Array(ng * N);
  for (let gi = 0; gi < ng; gi++) {
    const z = packAxis(grids[gi].map((gr) => (v2 ? gr.zero : (gr.zero - 1) & maxq)), bits);
    qzeros.set(new Int32Array(z.buffer), gi * zc);
    grids[gi].forEach((gr, n) => (scales[gi * N + n] = gr.scaleBits));
  }
  return { codes, grids, qweight, qzeros, scales, deq };
}
