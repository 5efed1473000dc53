/**
 * The small ops of the decode loop over Tensors: RMSNorm, rotary (interleaved pairs),
 * SiLU-gate, softmax, MoE routing, embedding gather, argmax, axpy. Activations are f32;
 * shapes are checked here with messages naming the argument, then re-checked natively.
 */
import { DType, dtypeCode } from '../dtype';
import { KvantError, callNative, expected } from '../errors';
import { RawStorage, native } from '../native';
import { Tensor, checkOutTensor, checkTensor } from '../tensor';

export type IsaLevel = 'scalar' | 'avx2' | 'avx512';
const ISA = { scalar: 0, avx2: 1, avx512: 2 } as const;

function isaCode(isa?: IsaLevel): number | undefined {
  if (isa === undefined) return undefined;
  if (!(isa in ISA)) throw expected('KVANT_BACKEND', "'scalar', 'avx2' or 'avx512'", 'isa', isa);
  return ISA[isa];
}

function f32(t: unknown, name: string): Tensor {
  const x = checkTensor(t, name);
  if (x.dtype !== 'f32') throw expected('KVANT_DTYPE', 'an f32 tensor', `${name}.dtype`, x.dtype);
  return x;
}

/** (storage, byteOffset, byteLength) of a tensor, as the bindings take it. */
export function raw(t: Tensor): [RawStorage, number, number] {
  const [s, o] = t.rawArgs();
  return [s, o, t.byteLength];
}

function lastDim(t: Tensor, name: string): number {
  if (t.ndim === 0) throw new KvantError('KVANT_SHAPE', `Expected ${name} to have at least one dimension`);
  return t.shape[t.ndim - 1];
}

/** y = w ⊙ x / sqrt(mean(x²) + eps) over the last dimension (y may be x). */
/** The checks rmsNorm and addRmsNorm share; returns the output and the normalized width. */
function normArgs(x: Tensor, w: Tensor, eps: number, out: Tensor | undefined): { y: Tensor; n: number } {
  f32(x, 'x');
  checkTensor(w, 'w');
  const n = lastDim(x, 'x');
  if (w.numel !== n) throw new KvantError('KVANT_SHAPE', `Expected w to have ${n} elements (x's last dimension) but it has ${w.numel}`);
  if (!['f32', 'f16', 'bf16'].includes(w.dtype)) throw expected('KVANT_DTYPE', 'an f32, f16 or bf16 weight', 'w.dtype', w.dtype);
  if (!(eps >= 0)) throw expected('KVANT_RANGE', 'eps >= 0', 'eps', eps);
  const y = out ?? Tensor.zeros(x.shape, 'f32');
  f32(y, 'out');
  if (y.numel !== x.numel) throw new KvantError('KVANT_SHAPE', `Expected out to have ${x.numel} elements but it has ${y.numel}`);
  return { y, n };
}

export function rmsNorm(x: Tensor, w: Tensor, eps: number, out?: Tensor, isa?: IsaLevel): Tensor {
  const { y, n } = normArgs(x, w, eps, out);
  callNative(() => native().rmsNorm(...raw(x), ...raw(w), dtypeCode(w.dtype as DType), ...raw(y), x.numel / Math.max(1, n), n, eps, isaCode(isa)));
  return y;
}

/**
 * A decoder layer's residual add and the norm after it in one call: x += delta in place, then
 * y = rmsNorm(x, w, eps). Bit for bit axpyInPlace(1, delta, x) followed by rmsNorm(x, w, eps, out).
 * out must not overlap x or delta (it is written, x updated).
 */
export function addRmsNorm(x: Tensor, delta: Tensor, w: Tensor, eps: number, out?: Tensor, isa?: IsaLevel): Tensor {
  f32(delta, 'delta');
  const { y, n } = normArgs(x, w, eps, out);
  if (delta.numel !== x.numel) throw new KvantError('KVANT_SHAPE', `Expected delta to have ${x.numel} elements like x but it has ${delta.numel}`);
  callNative(() => native().addRmsNorm(...raw(x), ...raw(delta), ...raw(w), dtypeCode(w.dtype as DType), ...raw(y), x.numel / Math.max(1, n), n, eps, isaCode(isa)));
  return y;
}

export interface RopeOptions {
  /** Position of each row (token). */
  positions: Int32Array;
  /** inv_freq per rotary pair (f32). */
  invFreq: Float32Array;
  /** First rotated dimension inside each head. */
  offset: number;
  /** Amplitude on cos and sin (YaRN's A; 1 for shipped configs). */
  amplitude?: number;
}

/** In-place rotary on x [rows, heads, headDim]: rotates adjacent pairs starting at `offset`. */
export function ropeInPlace(x: Tensor, o: RopeOptions): Tensor {
  f32(x, 'x');
  if (x.ndim !== 3) throw expected('KVANT_SHAPE', 'a [rows, heads, headDim] tensor', 'x.shape', x.shape);
  const [rows, heads, stride] = x.shape;
  if (!(o.positions instanceof Int32Array) || o.positions.length !== rows) throw expected('KVANT_SHAPE', `an Int32Array of ${rows} positions`, 'positions', o.positions);
  if (!(o.invFreq instanceof Float32Array)) throw expected('KVANT_DTYPE', 'a Float32Array', 'invFreq', o.invFreq);
  const pairs = o.invFreq.length;
  if (!Number.isInteger(o.offset) || o.offset < 0 || o.offset + 2 * pairs > stride)
    throw expected('KVANT_SHAPE', `an offset with offset + ${2 * pairs} <= ${stride}`, 'offset', o.offset);
  const pos = new Uint8Array(o.positions.buffer, o.positions.byteOffset, o.positions.byteLength);
  const inv = new Uint8Array(o.invFreq.buffer, o.invFreq.byteOffset, o.invFreq.byteLength);
  callNative(() => native().rope(...raw(x), rows, heads, stride, o.offset, pairs, pos, 0, pos.byteLength, inv, 0, inv.byteLength, o.amplitude ?? 1));
  return x;
}

/**
 * y = silu(gate) ⊙ up. With one argument, `gateUp` is [rows, 2n] holding gate then up
 * (a fused gate+up projection's output).
 */
export function siluGate(gateUp: Tensor, up?: Tensor, out?: Tensor, isa?: IsaLevel): Tensor {
  f32(gateUp, 'gate');
  let rows: number;
  let n: number;
  let stride: number;
  let u: Tensor;
  if (up === undefined) {
    const w = lastDim(gateUp, 'gateUp');
    if (w % 2) throw new KvantError('KVANT_SHAPE', `Expected gateUp's last dimension to be even (gate | up) but it is ${w}`);
    n = w / 2;
    rows = gateUp.numel / Math.max(1, w);
    stride = w;
    u = gateUp;
  } else {
    f32(up, 'up');
    n = lastDim(gateUp, 'gate');
    if (up.numel !== gateUp.numel) throw new KvantError('KVANT_SHAPE', `Expected up to have ${gateUp.numel} elements like gate but it has ${up.numel}`);
    rows = gateUp.numel / Math.max(1, n);
    stride = n;
    u = up;
  }
  const y = out ?? Tensor.zeros([rows, n], 'f32');
  f32(y, 'out');
  if (y.numel !== rows * n) throw new KvantError('KVANT_SHAPE', `Expected out to have ${rows * n} elements but it has ${y.numel}`);
  const [us, uo] = u.rawArgs();
  const uOff = up === undefined ? uo + n * 4 : uo;
  const uBytes = up === undefined ? gateUp.byteLength - n * 4 : u.byteLength;
  callNative(() => native().siluGate(...raw(gateUp), us, uOff, uBytes, stride, ...raw(y), rows, n, isaCode(isa)));
  return y;
}

/** Softmax over the last dimension, in place. */
export function softmaxInPlace(x: Tensor, isa?: IsaLevel): Tensor {
  f32(x, 'x');
  const n = lastDim(x, 'x');
  callNative(() => native().softmax(...raw(x), x.numel / Math.max(1, n), n, isaCode(isa)));
  return x;
}

export interface RouteOptions {
  k: number;
  method: 'greedy' | 'group_limited_greedy';
  nGroup?: number;
  topkGroup?: number;
  normTopkProb?: boolean;
  routedScalingFactor?: number;
}

/**
 * MoE routing from router logits [rows, E]: expert ids [rows, k] (i32) and weights [rows, k] (f32).
 * `out`: tensors of those dtypes and sizes to write (overwritten) instead of allocating them.
 */
export function routeTopK(logits: Tensor, o: RouteOptions, out?: { idx: Tensor; weights: Tensor }): { idx: Tensor; weights: Tensor } {
  f32(logits, 'logits');
  if (logits.ndim !== 2) throw expected('KVANT_SHAPE', 'a [rows, experts] tensor', 'logits.shape', logits.shape);
  const [rows, E] = logits.shape;
  const nGroup = o.nGroup ?? 1;
  const topkGroup = o.topkGroup ?? 1;
  if (!Number.isInteger(o.k) || o.k < 1 || o.k > E) throw expected('KVANT_RANGE', `an integer k in 1..${E}`, 'k', o.k);
  if (!Number.isInteger(nGroup) || nGroup < 1 || E % nGroup) throw expected('KVANT_RANGE', `a divisor of ${E}`, 'nGroup', nGroup);
  if (!Number.isInteger(topkGroup) || topkGroup < 1 || topkGroup > nGroup) throw expected('KVANT_RANGE', `an integer in 1..${nGroup}`, 'topkGroup', topkGroup);
  let idx: Tensor, weights: Tensor;
  if (out) {
    idx = checkOutTensor(out.idx, 'out.idx', 'i32', [rows, o.k]);
    weights = checkOutTensor(out.weights, 'out.weights', 'f32', [rows, o.k]);
  } else {
    idx = Tensor.zeros([rows, o.k], 'i32');
    weights = Tensor.zeros([rows, o.k], 'f32');
  }
  callNative(() =>
    native().routeTopK(...raw(logits), rows, E, o.k, nGroup, topkGroup, o.method === 'group_limited_greedy', o.normTopkProb ?? false,
      o.routedScalingFactor ?? 1, ...raw(idx), ...raw(weights)),
  );
  return { idx, weights };
}

/** Rows of an embedding table [vocab, dim] (f32/f16/bf16) for token ids, as f32 [n, dim]. */
export function embedding(table: Tensor, ids: Int32Array, out?: Tensor): Tensor {
  checkTensor(table, 'table');
  if (table.ndim !== 2) throw expected('KVANT_SHAPE', 'a [vocab, dim] tensor', 'table.shape', table.shape);
  if (!(ids instanceof Int32Array)) throw expected('KVANT_DTYPE', 'an Int32Array', 'ids', ids);
  const [vocab, dim] = table.shape;
  const y = out ?? Tensor.zeros([ids.length, dim], 'f32');
  f32(y, 'out');
  const idb = new Uint8Array(ids.buffer, ids.byteOffset, ids.byteLength);
  callNative(() => native().embedding(...raw(table), dtypeCode(table.dtype), vocab, dim, idb, 0, idb.byteLength, ...raw(y)));
  return y;
}

/** Index of the largest value in each row (ties to the lower index). */
export function argmax(x: Tensor): Int32Array {
  f32(x, 'x');
  const n = lastDim(x, 'x');
  const rows = x.numel / Math.max(1, n);
  const out = new Int32Array(rows);
  callNative(() => native().argmax(...raw(x), rows, n, new Uint8Array(out.buffer), 0, out.byteLength));
  return out;
}

/** y += a * x (same element count). */
export function axpyInPlace(a: number, x: Tensor, y: Tensor, isa?: IsaLevel): Tensor {
  f32(x, 'x');
  f32(y, 'y');
  if (x.numel !== y.numel) throw new KvantError('KVANT_SHAPE', `Expected y to have ${x.numel} elements like x but it has ${y.numel}`);
  callNative(() => native().axpy(a, ...raw(x), ...raw(y), isaCode(isa)));
  return y;
}
