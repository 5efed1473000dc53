/**
 * Linear layers: y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias) with dense f32/f16/bf16 weights.
 * x may be f32, f16 or bf16 (converted to f32 once); y is f32. Rows are batch-invariant and
 * thread-count invariant (see csrc/cpu/gemm.h).
 */
import { dtypeCode, dtypeSize } from '../dtype';
import { KvantError, callNative, expected } from '../errors';
import { RawStorage, native } from '../native';
import { Tensor, checkTensor } from '../tensor';
import { IsaLevel, raw } from './small';

const ISA = { scalar: 0, avx2: 1, avx512: 2 } as const;

export interface LinearOptions {
  bias?: Tensor;
  out?: Tensor;
  isa?: IsaLevel;
}

export function linear(x: Tensor, w: Tensor, opts: LinearOptions = {}): Tensor {
  const { args, y } = gemmArgs(x, w, opts);
  callNative(() => native().gemm(...args));
  return y;
}

/**
 * linear(x, w, { out }) as a call with its arguments checked and packed once (internal, for the
 * decode step's fixed buffers; f32 x only, since f16/bf16 x is converted per call). The bound
 * call holds the same storage objects; the binding still rejects a disposed NativeMemory or a
 * detached ArrayBuffer on every call.
 */
export function bindLinear(x: Tensor, w: Tensor, out: Tensor): () => void {
  if (x.dtype !== 'f32') throw expected('KVANT_DTYPE', 'f32 activations for a bound linear', 'x.dtype', x.dtype);
  const { args } = gemmArgs(x, w, { out });
  // native().gemm looked up per call (not captured): instrumentation that wraps the binding's
  // functions later (the model bench's outside-native pass) still sees these calls.
  return () => callNative(() => native().gemm(...args));
}

/** linear's checked native argument list, and its output (opts.out, or allocated once x and w are checked). */
function gemmArgs(x: Tensor, w: Tensor, opts: LinearOptions): { args: Parameters<ReturnType<typeof native>['gemm']>; y: Tensor } {
  checkTensor(x, 'x');
  checkTensor(w, 'w');
  if (w.ndim !== 2) throw expected('KVANT_SHAPE', 'a 2-D weight [N, K]', 'w.shape', w.shape);
  if (!['f32', 'f16', 'bf16'].includes(w.dtype)) throw expected('KVANT_DTYPE', 'f32, f16 or bf16 weights', 'w.dtype', w.dtype);
  const [N, K] = w.shape;
  if (x.ndim === 0 || x.shape[x.ndim - 1] !== K)
    throw new KvantError('KVANT_SHAPE', `Expected x's last dimension to be K = ${K} (w is [${N}, ${K}]) but x is [${x.shape.join(', ')}]`);
  let xf = x;
  if (x.dtype === 'f16' || x.dtype === 'bf16') xf = x.to('f32');
  else if (x.dtype !== 'f32') throw expected('KVANT_DTYPE', 'f32, f16 or bf16 activations', 'x.dtype', x.dtype);
  const M = K === 0 ? 0 : x.numel / K;
  const y = opts.out ?? Tensor.zeros([...x.shape.slice(0, -1), N], 'f32');
  checkTensor(y, 'out');
  if (y.dtype !== 'f32' || y.numel !== M * N) throw new KvantError('KVANT_SHAPE', `Expected out to be f32 with ${M * N} elements but it is ${y.dtype} with ${y.numel}`);
  let b: [RawStorage | null, number, number] = [null, 0, 0];
  if (opts.bias) {
    checkTensor(opts.bias, 'bias');
    if (opts.bias.dtype !== 'f32' || opts.bias.numel !== N) throw new KvantError('KVANT_SHAPE', `Expected bias to be f32 with ${N} elements`);
    b = raw(opts.bias);
  }
  if (opts.isa !== undefined && !(opts.isa in ISA)) throw expected('KVANT_BACKEND', "'scalar', 'avx2' or 'avx512'", 'isa', opts.isa);
  const isa = opts.isa === undefined ? undefined : ISA[opts.isa];
  return { args: [...raw(xf), M, K, ...raw(w), dtypeCode(w.dtype), N, b[0], b[1], b[2], ...raw(y), isa], y };
}

/** Options of {@link linearHeads}. */
export interface LinearHeadsOptions {
  /** Where each (row, head) slice of x starts its K inputs (default 0): x[m, h, xStart .. xStart+K). */
  xStart?: number;
  /** First weight row used in every head (default 0): w[h, wRow0 .. wRow0+n). */
  wRow0?: number;
  /** Outputs per head (default: w's rows per head minus wRow0). */
  n?: number;
  /** Output f32 [M, H, T], written at out[m, h, outStart .. outStart+n); created as [M, H, n] when omitted. */
  out?: Tensor;
  outStart?: number;
  isa?: IsaLevel;
}

/**
 * H small linears, one per head, in one native call — MLA's weight-absorbed products
 * (q_lat(h) = W_UK(h)ᵀ q_nope(h), o(h) = W_UV(h) o_lat(h)):
 * `out[m, h, outStart + j] = Σ_k x[m, h, xStart + k] · w[h, wRow0 + j, k]`.
 * x is f32 [M, H, S]; w is f32/f16/bf16 [H, Nw, K]. Reading slices in place (no per-head copies)
 * and writing into a slice of a larger output is the point; the values equal H separate
 * {@link linear} calls bit for bit.
 */
export function linearHeads(x: Tensor, w: Tensor, opts: LinearHeadsOptions = {}): Tensor {
  checkTensor(x, 'x');
  checkTensor(w, 'w');
  if (x.dtype !== 'f32') throw expected('KVANT_DTYPE', 'f32', 'x.dtype', x.dtype);
  if (x.ndim !== 3) throw expected('KVANT_SHAPE', 'a 3-D input [M, H, S]', 'x.shape', x.shape);
  if (w.ndim !== 3) throw expected('KVANT_SHAPE', 'a 3-D weight [H, N, K]', 'w.shape', w.shape);
  if (!['f32', 'f16', 'bf16'].includes(w.dtype)) throw expected('KVANT_DTYPE', 'f32, f16 or bf16 weights', 'w.dtype', w.dtype);
  const [M, H, S] = x.shape;
  const [Hw, Nw, K] = w.shape;
  if (Hw !== H) throw new KvantError('KVANT_SHAPE', `Expected w to have x's ${H} heads but w is [${w.shape.join(', ')}]`);
  const int = (v: number | undefined, name: string, def: number): number => {
    const r = v ?? def;
    if (!Number.isInteger(r) || r < 0) throw expected('KVANT_RANGE', 'a non-negative integer', name, v);
    return r;
  };
  const xStart = int(opts.xStart, 'xStart', 0);
  const wRow0 = int(opts.wRow0, 'wRow0', 0);
  if (xStart + K > S) throw new KvantError('KVANT_SHAPE', `Expected xStart + K = ${xStart} + ${K} to fit x's last dimension ${S}`);
  if (wRow0 > Nw) throw new KvantError('KVANT_RANGE', `Expected wRow0 <= ${Nw} (w's rows per head) but it is ${wRow0}`);
  const n = int(opts.n, 'n', Nw - wRow0);
  if (wRow0 + n > Nw) throw new KvantError('KVANT_SHAPE', `Expected wRow0 + n = ${wRow0} + ${n} to fit w's ${Nw} rows per head`);
  const outStart = int(opts.outStart, 'outStart', 0);
  const y = opts.out ?? Tensor.zeros([M, H, n], 'f32');
  checkTensor(y, 'out');
  if (y.dtype !== 'f32') throw expected('KVANT_DTYPE', 'f32', 'out.dtype', y.dtype);
  if (y.ndim !== 3 || y.shape[0] !== M || y.shape[1] !== H || outStart + n > y.shape[2])
    throw new KvantError('KVANT_SHAPE', `Expected out to be [${M}, ${H}, >= ${outStart + n}] but it is [${y.shape.join(', ')}]`);
  if (opts.isa !== undefined && !(opts.isa in ISA)) throw expected('KVANT_BACKEND', "'scalar', 'avx2' or 'avx512'", 'isa', opts.isa);
  const isa = opts.isa === undefined ? undefined : ISA[opts.isa];
  const T = y.shape[2];
  if (M === 0 || H === 0 || n === 0) return y; // nothing to compute (and no slice to offset into)
  const es = dtypeSize(w.dtype);
  const [xs, xo, xb] = raw(x);
  const [ws, wo, wb] = raw(w);
  const [ys, yo, yb] = raw(y);
  callNative(() =>
    native().gemmHeads(xs, xo + 4 * xStart, xb - 4 * xStart, M, H, H * S, S, K, ws, wo + es * wRow0 * K, wb - es * wRow0 * K, dtypeCode(w.dtype), Nw * K, n,
      ys, yo + 4 * outStart, yb - 4 * outStart, H * T, T, isa),
  );
  return y;
}
