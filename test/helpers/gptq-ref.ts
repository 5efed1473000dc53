/**
 * Test-only f64 GPTQ straight from SPEC §2.2 without any of the native shortcuts: explicit
 * H⁻¹ (Cholesky, inverse), U = chol_upper(H⁻¹) by a second Cholesky, one column at a time with
 * the full update of all later columns (the lazy blocks are a reordering of the same sums).
 * Grid fitted on a group's current weights, f16-rounded scale (as documented in quant.h).
 */
import { RefGrid, codeRef, fitGridRef } from './quant-ref';

export function cholLower(A: Float64Array, K: number): Float64Array | null {
  const L = new Float64Array(K * K);
  for (let j = 0; j < K; j++) {
    let d = A[j * K + j];
    for (let p = 0; p < j; p++) d -= L[j * K + p] ** 2;
    if (!(d > 0)) return null;
    L[j * K + j] = Math.sqrt(d);
    for (let i = j + 1; i < K; i++) {
      let s = A[i * K + j];
      for (let p = 0; p < j; p++) s -= L[i * K + p] * L[j * K + p];
      L[i * K + j] = s / L[j * K + j];
    }
  }
  return L;
}

/** H⁻¹ from its Cholesky factor. */
export function inverseSpd(A: Float64Array, K: number): Float64Array {
  const L = cholLower(A, K)!;
  const X = new Float64Array(K * K); // L⁻¹
  for (let j = 0; j < K; j++) {
    X[j * K + j] = 1 / L[j * K + j];
    for (let i = j + 1; i < K; i++) {
      let s = 0;
      for (let p = j; p < i; p++) s += L[i * K + p] * X[p * K + j];
      X[i * K + j] = -s / L[i * K + i];
    }
  }
  const inv = new Float64Array(K * K); // X^T X
  for (let i = 0; i < K; i++)
    for (let j = 0; j <= i; j++) {
      let s = 0;
      for (let p = i; p < K; p++) s += X[p * K + i] * X[p * K + j];
      inv[i * K + j] = inv[j * K + i] = s;
    }
  return inv;
}

export interface GptqRefResult {
  codes: Int32Array; // [N, K] original order
  deq: Float64Array; // [N, K] original order
  gIdx: Int32Array;
  grids: RefGrid[][]; // [ng][N]
}

export function gptqRef(
  w: ArrayLike<number>, H0: ArrayLike<number>, N: number, K: number,
  o: { bits: number; G: number; sym: boolean; actOrder: boolean; staticGroups: boolean; damp: number },
): GptqRefResult {
  const G = o.G < 0 ? K : o.G;
  const ng = Math.ceil(K / G);
  const H = Float64Array.from(H0);
  const W = Float64Array.from(w);
  const diag = Array.from({ length: K }, (_, k) => H[k * K + k]);
  for (let k = 0; k < K; k++)
    if (diag[k] === 0) {
      H[k * K + k] = 1;
      diag[k] = 1;
      for (let n = 0; n < N; n++) W[n * K + k] = 0;
    }
  const grids: RefGrid[][] = Array.from({ length: ng }, () => new Array(N));
  if (o.staticGroups)
    for (let g = 0; g < ng; g++)
      for (let n = 0; n < N; n++) grids[g][n] = fitGridRef(W.subarray(n * K + g * G, n * K + Math.min(K, (g + 1) * G)), o.bits, o.sym);
  const perm = Array.from({ length: K }, (_, k) => k);
  if (o.actOrder) perm.sort((a, b) => diag[b] - diag[a] || a - b);
  const Hp = new Float64Array(K * K);
  for (let i = 0; i < K; i++) for (let j = 0; j < K; j++) Hp[i * K + j] = H[perm[i] * K + perm[j]];
  const lambda = (o.damp * diag.reduce((a, b) => a + b, 0)) / K;
  for (let i = 0; i < K; i++) Hp[i * K + i] += lambda;
  const Lc = cholLower(inverseSpd(Hp, K), K)!; // H⁻¹ = Lc Lcᵀ, U = Lcᵀ
  const U = (i: number, j: number) => Lc[j * K + i];
  const Wp = new Float64Array(N * K);
  for (let n = 0; n < N; n++) for (let c = 0; c < K; c++) Wp[n * K + c] = W[n * K + perm[c]];
  const codes = new Int32Array(N * K);
  const deq = new Float64Array(N * K);
  const gIdx = new Int32Array(K);
  for (let n = 0; n < N; n++) {
    let grid: RefGrid | undefined;
    for (let c = 0; c < K; c++) {
      if (o.staticGroups) grid = grids[Math.floor(perm[c] / G)][n];
      else if (c % G === 0) {
        grid = fitGridRef(Wp.subarray(n * K + c, n * K + Math.min(K, c + G)), o.bits, o.sym);
        grids[c / G][n] = grid;
      }
      const x = Wp[n * K + c];
      const code = codeRef(x, grid!, o.bits);
      const q = (code - grid!.zero) * grid!.scale;
      codes[n * K + perm[c]] = code;
      deq[n * K + perm[c]] = q;
      const e = (x - q) / U(c, c);
      for (let j = c + 1; j < K; j++) Wp[n * K + j] -= e * U(c, j);
    }
  }
  for (let k = 0; k < K; k++) gIdx[k] = o.actOrder && !o.staticGroups ? Math.floor(perm.indexOf(k) / G) : Math.floor(k / G);
  return { codes, deq, gIdx, grids };
}

/** ‖(W − Q)X‖ / ‖WX‖ through H (f64). */
export function relErrorF64(w: ArrayLike<number>, q: ArrayLike<number>, H: ArrayLike<number>, N: number, K: number): number {
  let num = 0;
  let den = 0;
  const d = new Float64Array(K);
  for (let n = 0; n < N; n++) {
    for (let k = 0; k < K; k++) d[k] = w[n * K + k] - q[n * K + k];
    for (let i = 0; i < K; i++) {
      let a = 0;
      let b = 0;
      for (let j = 0; j < K; j++) {
        a += H[i * K + j] * d[j];
        b += H[i * K + j] * w[n * K + j];
      }
      num += d[i] * a;
      den += w[n * K + i] * b;
    }
  }
  return Math.sqrt(num / den);
}
