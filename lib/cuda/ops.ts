/**
 * The CUDA kernels over device tensors (device-tensor-first: inputs and outputs stay on the
 * device, so a decode loop moves only tokens and logits across the bus). Same contracts as the
 * CPU ops in lib/ops (which are the reference the tests hold these to), with the GPU's limits:
 *  - activations are f32 (rmsNorm/embedding weights and attention q/k/v may be f16/bf16);
 *  - flash attention instantiates (Dqk, Dv) in {(64, 64), (128, 128), (192, 128), (256, 256)},
 *    MLA decode the latent shapes (L, R) in {(512, 64), (64, 32)};
 *  - the GEMV takes 1..8 rows (qlinear switches to the tensor-core GEMM beyond, or on request).
 * Shapes are checked here with messages naming the argument; the binding re-checks every size.
 * Every op takes an optional stream; outputs are allocated unless `out` is given.
 */
import { DType, dtypeCode } from '../dtype';
import { KvantError, callNative, expected } from '../errors';
import { QTensor, QuantFormat, checkQuantFormat, effectiveGroup, encodeQuantFormat, groupCount, qweightRows, qzerosCols } from '../quant/format';
import { RouteOptions } from '../ops/small';
import { DeviceTensor, StreamOptions, checkDeviceTensor, streamArg } from './device';
import { DeviceBufferHandle, cudaNative } from './native';

type Raw = [DeviceBufferHandle, number, number];
const NIL: [null, number, number] = [null, 0, 0];

function f32(t: unknown, name: string): DeviceTensor {
  const x = checkDeviceTensor(t, name);
  if (x.dtype !== 'f32') throw expected('KVANT_DTYPE', 'an f32 tensor', `${name}.dtype`, x.dtype);
  return x;
}
function i32(t: unknown, name: string): DeviceTensor {
  const x = checkDeviceTensor(t, name);
  if (x.dtype !== 'i32') throw expected('KVANT_DTYPE', 'an i32 tensor', `${name}.dtype`, x.dtype);
  return x;
}
function lastDim(t: DeviceTensor, name: string): number {
  if (t.ndim === 0) throw new KvantError('KVANT_SHAPE', `Expected ${name} to have at least one dimension`);
  return t.shape[t.ndim - 1];
}
function output(out: DeviceTensor | undefined, shape: readonly number[], dtype: DType, name = 'out'): DeviceTensor {
  if (out === undefined) return DeviceTensor.empty(shape, dtype);
  checkDeviceTensor(out, name);
  const numel = shape.reduce((a, b) => a * b, 1);
  if (out.dtype !== dtype) throw expected('KVANT_DTYPE', `a ${dtype} tensor`, `${name}.dtype`, out.dtype);
  if (out.numel !== numel)
    throw new KvantError('KVANT_SHAPE', `Expected ${name} to be ${dtype} with ${numel} elements but it is ${out.dtype} with ${out.numel}`);
  return out;
}
// An input given as a host array is uploaded for the call and freed after it.
function deviceI32(v: DeviceTensor | Int32Array, name: string, temps: DeviceTensor[]): DeviceTensor {
  if (v instanceof Int32Array) {
    const t = DeviceTensor.fromHost(v);
    temps.push(t);
    return t;
  }
  return i32(v, name);
}
function deviceF32(v: DeviceTensor | Float32Array, name: string, temps: DeviceTensor[]): DeviceTensor {
  if (v instanceof Float32Array) {
    const t = DeviceTensor.fromHost(v);
    temps.push(t);
    return t;
  }
  return f32(v, name);
}
function withTemps<T>(fn: (temps: DeviceTensor[]) => T): T {
  const temps: DeviceTensor[] = [];
  try {
    return fn(temps);
  } finally {
    for (const t of temps) t.free();
  }
}

/** Options of the ops that write a fresh or given output. */
export interface DeviceOutOptions extends StreamOptions {
  /** Output tensor (overwritten); allocated when absent. */
  out?: DeviceTensor;
}

/** y = w ⊙ x / sqrt(mean(x²) + eps) over the last dimension (out may be x). w: f32, f16 or bf16. */
export function rmsNorm(x: DeviceTensor, w: DeviceTensor, eps: number, opts: DeviceOutOptions = {}): DeviceTensor {
  f32(x, 'x');
  checkDeviceTensor(w, 'w');
  const n = lastDim(x, 'x');
  if (w.numel !== n) throw new KvantError('KVANT_SHAPE', `Expected w to have ${n} elements (x's last dimension) but it has ${w.numel}`);
  if (!['f32', 'f16', 'bf16'].includes(w.dtype)) throw expected('KVANT_DTYPE', 'an f32, f16 or bf16 weight', 'w.dtype', w.dtype);
  if (!(eps >= 0)) throw expected('KVANT_RANGE', 'eps >= 0', 'eps', eps);
  const y = output(opts.out, x.shape, 'f32');
  const n2 = cudaNative();
  callNative(() => n2.rmsNorm(...x.rawArgs(), ...w.rawArgs(), dtypeCode(w.dtype), ...y.rawArgs(), x.numel / Math.max(1, n), n, eps, streamArg(opts.stream)));
  return y;
}

/** Rotary options on the device: positions and inv_freq as device tensors or host arrays. */
export interface DeviceRopeOptions extends StreamOptions {
  /** Position of each row (token), i32 [rows]. */
  positions: DeviceTensor | Int32Array;
  /** inv_freq per rotary pair, f32 [pairs]. */
  invFreq: DeviceTensor | Float32Array;
  /** First rotated dimension inside each head. */
  offset: number;
  /** Amplitude on cos and sin (YaRN's A; default 1). */
  amplitude?: number;
}

/** In-place rotary on x [rows, heads, headDim] (adjacent pairs from `offset`), as lib/ops ropeInPlace. */
export function ropeInPlace(x: DeviceTensor, o: DeviceRopeOptions): DeviceTensor {
  f32(x, 'x');
  if (x.ndim !== 3) throw expected('KVANT_SHAPE', 'a [rows, heads, headDim] tensor', 'x.shape', x.shape);
  const [rows, heads, stride] = x.shape;
  return withTemps((temps) => {
    const pos = deviceI32(o.positions, 'positions', temps);
    const inv = deviceF32(o.invFreq, 'invFreq', temps);
    if (pos.numel !== rows) throw expected('KVANT_SHAPE', `${rows} positions (one per row)`, 'positions.numel', pos.numel);
    const pairs = inv.numel;
    if (!Number.isInteger(o.offset) || o.offset < 0 || o.offset + 2 * pairs > stride)
      throw expected('KVANT_SHAPE', `an offset with offset + ${2 * pairs} <= ${stride}`, 'offset', o.offset);
    const n = cudaNative();
    callNative(() => n.rope(...x.rawArgs(), rows, heads, stride, o.offset, pairs, ...pos.rawArgs(), ...inv.rawArgs(), o.amplitude ?? 1, streamArg(o.stream)));
    return x;
  });
}

/** y = silu(gate) ⊙ up; with one tensor, `gateUp` is [rows, 2n] holding gate then up. */
export function siluGate(gateUp: DeviceTensor, up?: DeviceTensor, opts: DeviceOutOptions = {}): DeviceTensor {
  f32(gateUp, 'gate');
  let rows: number;
  let n: number;
  let stride: number;
  let uArgs: Raw;
  if (up === undefined) {
    const w = lastDim(gateUp, 'gateUp');
    if (w % 2) throw new KvantError('KVANT_SHAPE', `Expected gateUp's last dimension to be even (gate | up) but it is ${w}`);
    n = w / 2;
    rows = gateUp.numel / Math.max(1, w);
    stride = w;
    const [b, o, len] = gateUp.rawArgs();
    uArgs = [b, o + n * 4, len - n * 4];
  } else {
    f32(up, 'up');
    n = lastDim(gateUp, 'gate');
    if (up.numel !== gateUp.numel) throw new KvantError('KVANT_SHAPE', `Expected up to have ${gateUp.numel} elements like gate but it has ${up.numel}`);
    rows = gateUp.numel / Math.max(1, n);
    stride = n;
    uArgs = up.rawArgs();
  }
  const y = output(opts.out, [rows, n], 'f32');
  const nat = cudaNative();
  callNative(() => nat.siluGate(...gateUp.rawArgs(), ...uArgs, stride, ...y.rawArgs(), rows, n, streamArg(opts.stream)));
  return y;
}

/** Softmax over the last dimension, in place. */
export function softmaxInPlace(x: DeviceTensor, opts: StreamOptions = {}): DeviceTensor {
  f32(x, 'x');
  const n = lastDim(x, 'x');
  const nat = cudaNative();
  callNative(() => nat.softmax(...x.rawArgs(), x.numel / Math.max(1, n), n, streamArg(opts.stream)));
  return x;
}

/** Index of the largest value in each row (NaN never wins, ties to the lower index): i32 [rows]. */
export function argmax(x: DeviceTensor, opts: DeviceOutOptions = {}): DeviceTensor {
  f32(x, 'x');
  const n = lastDim(x, 'x');
  const rows = x.numel / Math.max(1, n);
  const out = output(opts.out, [rows], 'i32');
  const nat = cudaNative();
  callNative(() => nat.argmax(...x.rawArgs(), rows, n, ...out.rawArgs(), streamArg(opts.stream)));
  return out;
}

/** Rows of an embedding table [vocab, dim] (f32/f16/bf16) for token ids, as f32 [n, dim]; a bad id is KVANT_RANGE. */
export function embedding(table: DeviceTensor, ids: DeviceTensor | Int32Array, opts: DeviceOutOptions = {}): DeviceTensor {
  checkDeviceTensor(table, 'table');
  if (table.ndim !== 2) throw expected('KVANT_SHAPE', 'a [vocab, dim] tensor', 'table.shape', table.shape);
  if (!['f32', 'f16', 'bf16'].includes(table.dtype)) throw expected('KVANT_DTYPE', 'an f32, f16 or bf16 table', 'table.dtype', table.dtype);
  const [vocab, dim] = table.shape;
  return withTemps((temps) => {
    const id = deviceI32(ids, 'ids', temps);
    const y = output(opts.out, [id.numel, dim], 'f32');
    const nat = cudaNative();
    callNative(() => nat.embedding(...table.rawArgs(), dtypeCode(table.dtype), vocab, dim, ...id.rawArgs(), ...y.rawArgs(), streamArg(opts.stream)));
    return y;
  });
}

/** MoE routing from router logits [rows, E] (E <= 1024): expert ids i32 [rows, k] and weights f32 [rows, k]. */
export function routeTopK(logits: DeviceTensor, o: RouteOptions & StreamOptions): { idx: DeviceTensor; weights: DeviceTensor } {
  f32(logits, 'logits');
  if (logits.ndim !== 2) throw expected('KVANT_SHAPE', 'a [rows, experts] tensor', 'logits.shape', logits.shape);
  const [rows, E] = logits.shape;
  const nGroup = o.nGroup ?? 1;
  const topkGroup = o.topkGroup ?? 1;
  if (!Number.isInteger(o.k) || o.k < 1 || o.k > E) throw expected('KVANT_RANGE', `an integer k in 1..${E}`, 'k', o.k);
  if (!Number.isInteger(nGroup) || nGroup < 1 || E % nGroup) throw expected('KVANT_RANGE', `a divisor of ${E}`, 'nGroup', nGroup);
  if (!Number.isInteger(topkGroup) || topkGroup < 1 || topkGroup > nGroup) throw expected('KVANT_RANGE', `an integer in 1..${nGroup}`, 'topkGroup', topkGroup);
  const idx = DeviceTensor.empty([rows, o.k], 'i32');
  const weights = DeviceTensor.empty([rows, o.k], 'f32');
  const nat = cudaNative();
  try {
    callNative(() =>
      nat.routeTopK(...logits.rawArgs(), rows, E, o.k, nGroup, topkGroup, o.method === 'group_limited_greedy', o.normTopkProb ?? false,
        o.routedScalingFactor ?? 1, ...idx.rawArgs(), ...weights.rawArgs(), streamArg(o.stream)),
    );
  } catch (e) {
    idx.free();
    weights.free();
    throw e;
  }
  return { idx, weights };
}

// ---- quantized weights ----

/**
 * A quantized matrix W [N, K] on the device: the GPTQ tensors (qweight i32 [K·bits/32, N], qzeros
 * i32 [ng, N·bits/32], scales f16 [ng, N]) with groups sequential in kernel-row order, and for
 * act-order checkpoints the permutation (kernel row j holds input channel perm[j]).
 */
export interface DeviceQTensor {
  format: QuantFormat;
  qweight: DeviceTensor;
  qzeros: DeviceTensor;
  scales: DeviceTensor;
  perm: DeviceTensor | null;
}

function checkDeviceQ(w: DeviceQTensor, name: string): QuantFormat {
  if (w === null || typeof w !== 'object') throw expected('KVANT_DTYPE', 'a DeviceQTensor', name, w);
  const f = checkQuantFormat(w.format, `${name}.format`);
  const unit = f.bits === 3 ? 32 : 32 / f.bits;
  const G = effectiveGroup(f);
  if (G < f.K && G % unit !== 0)
    throw new KvantError('KVANT_FORMAT', `Expected ${name}.format.groupSize to be a multiple of ${unit} (codes per packed word at ${f.bits} bits) but it is ${f.groupSize}`);
  const ng = groupCount(f);
  const want: [string, DeviceTensor, DType, number[]][] = [
    ['qweight', w.qweight, 'i32', [qweightRows(f), f.N]],
    ['qzeros', w.qzeros, 'i32', [ng, qzerosCols(f)]],
    ['scales', w.scales, 'f16', [ng, f.N]],
  ];
  for (const [field, t, dtype, dims] of want) {
    checkDeviceTensor(t, `${name}.${field}`);
    if (t.dtype !== dtype) throw expected('KVANT_DTYPE', dtype, `${name}.${field}.dtype`, t.dtype);
    if (t.ndim !== dims.length || t.shape.some((d, i) => d !== dims[i])) throw expected('KVANT_SHAPE', `shape [${dims.join(', ')}]`, `${name}.${field}.shape`, t.shape);
  }
  if (w.perm !== null && w.perm !== undefined) {
    i32(w.perm, `${name}.perm`);
    if (w.perm.numel !== f.K) throw expected('KVANT_SHAPE', `${f.K} (K) values`, `${name}.perm.numel`, w.perm.numel);
  }
  return f;
}

function qRaw(w: DeviceQTensor, f: QuantFormat): [Uint8Array, ...Raw, ...Raw, ...Raw, DeviceBufferHandle | null, number, number] {
  return [encodeQuantFormat(f), ...w.qweight.rawArgs(), ...w.qzeros.rawArgs(), ...w.scales.rawArgs(), ...(w.perm ? w.perm.rawArgs() : NIL)];
}

/**
 * Uploads a host QTensor (as lib/quant makes or loads it). Its g_idx must be sequential in kernel
 * row order (act-order checkpoints are made sequential at load; `perm` carries the order).
 */
export function uploadQTensor(w: QTensor, opts: StreamOptions = {}): DeviceQTensor {
  if (w === null || typeof w !== 'object') throw expected('KVANT_DTYPE', 'a QTensor', 'w', w);
  const f = checkQuantFormat(w.format, 'w.format');
  if (w.gIdx) {
    const G = effectiveGroup(f);
    const g = w.gIdx.data() as Int32Array;
    for (let j = 0; j < g.length; j++)
      if (g[j] !== Math.floor(j / G))
        throw new KvantError('KVANT_FORMAT', `Expected w.gIdx to be sequential in kernel row order (g_idx[j] = j / ${G}; make act-order rows sequential with makeSequential first) but gIdx[${j}] = ${g[j]}`);
  }
  if (w.perm !== null && w.perm !== undefined && (!(w.perm instanceof Int32Array) || w.perm.length !== f.K))
    throw expected('KVANT_SHAPE', `an Int32Array of ${f.K} (K) values`, 'w.perm', w.perm);
  const made: DeviceTensor[] = [];
  const up = (t: DeviceTensor) => (made.push(t), t);
  try {
    const d: DeviceQTensor = {
      format: { ...f },
      qweight: up(DeviceTensor.fromHost(w.qweight, opts)),
      qzeros: up(DeviceTensor.fromHost(w.qzeros, opts)),
      scales: up(DeviceTensor.fromHost(w.scales, opts)),
      perm: w.perm ? up(DeviceTensor.fromHost(w.perm, opts)) : null,
    };
    checkDeviceQ(d, 'w');
    return d;
  } catch (e) {
    for (const t of made) t.free();
    throw e;
  }
}

/** Frees a DeviceQTensor's buffers. */
export function freeQTensor(w: DeviceQTensor): void {
  for (const t of [w.qweight, w.qzeros, w.scales, w.perm]) t?.free();
}

/** W [N, K] in input-channel order as f32 or f16 (the CPU's dequantize, bit for bit). */
export function dequantize(w: DeviceQTensor, dtype: 'f32' | 'f16' = 'f32', opts: DeviceOutOptions = {}): DeviceTensor {
  const f = checkDeviceQ(w, 'w');
  if (dtype !== 'f32' && dtype !== 'f16') throw expected('KVANT_DTYPE', "'f32' or 'f16' on the GPU", 'dtype', dtype);
  const out = output(opts.out, [f.N, f.K], dtype);
  const nat = cudaNative();
  callNative(() => nat.dequantize(...qRaw(w, f), ...out.rawArgs(), dtypeCode(dtype), streamArg(opts.stream)));
  return out;
}

/**
 * Round-to-nearest quantization of W [N, K] f32 on the device into the GPTQ format (group size a
 * multiple of 32, or -1). The same rules and bits as lib/quant quantizeRtn.
 */
export function quantizeRtn(w: DeviceTensor, format: Omit<QuantFormat, 'K' | 'N'>, opts: StreamOptions = {}): DeviceQTensor {
  f32(w, 'w');
  if (w.ndim !== 2) throw expected('KVANT_SHAPE', 'a 2-D weight [N, K]', 'w.shape', w.shape);
  const [N, K] = w.shape;
  const f = checkQuantFormat({ ...format, K, N } as QuantFormat, 'format');
  const G = effectiveGroup(f);
  if (G !== K && G % 32 !== 0) throw expected('KVANT_FORMAT', 'a group size that is a multiple of 32 (or -1) for RTN on the GPU', 'format.groupSize', f.groupSize);
  const ng = groupCount(f);
  const q: DeviceQTensor = {
    format: f,
    qweight: DeviceTensor.empty([qweightRows(f), N], 'i32'),
    qzeros: DeviceTensor.empty([ng, qzerosCols(f)], 'i32'),
    scales: DeviceTensor.empty([ng, N], 'f16'),
    perm: null,
  };
  const nat = cudaNative();
  try {
    callNative(() => nat.quantizeRtn(encodeQuantFormat(f), ...w.rawArgs(), ...q.qweight.rawArgs(), ...q.qzeros.rawArgs(), ...q.scales.rawArgs(), streamArg(opts.stream)));
  } catch (e) {
    freeQTensor(q);
    throw e;
  }
  return q;
}

/** Options of the device qlinear. */
export interface DeviceQLinearOptions extends DeviceOutOptions {
  /**
   * 'gemv' (1..8 rows: f32 dot products, the decode kernel), 'gemm' (tensor cores: x and the
   * weights rounded to f16, f32 accumulation; the prefill kernel), or 'auto' (default): gemv up
   * to 8 rows, gemm beyond. Within one kernel a row's result does not depend on M.
   */
  kernel?: 'auto' | 'gemv' | 'gemm';
}

/** y = x · dequant(w)ᵀ. x: f32 [..., K] on the device; returns f32 [..., N]. */
export function qlinear(x: DeviceTensor, w: DeviceQTensor, opts: DeviceQLinearOptions = {}): DeviceTensor {
  f32(x, 'x');
  const f = checkDeviceQ(w, 'w');
  const { K, N } = f;
  if (x.ndim === 0 || x.shape[x.ndim - 1] !== K)
    throw new KvantError('KVANT_SHAPE', `Expected x's last dimension to be K = ${K} (w is [${N}, ${K}]) but x is [${x.shape.join(', ')}]`);
  const M = x.numel / K;
  const kernel = opts.kernel ?? 'auto';
  if (kernel !== 'auto' && kernel !== 'gemv' && kernel !== 'gemm') throw expected('KVANT_RANGE', "'auto', 'gemv' or 'gemm'", 'kernel', kernel);
  const useGemm = kernel === 'gemm' || (kernel === 'auto' && (M > 8 || effectiveGroup(f) < 16));
  const y = output(opts.out, [...x.shape.slice(0, -1), N], 'f32');
  const nat = cudaNative();
  const args = [...x.rawArgs(), M, ...qRaw(w, f), ...y.rawArgs(), streamArg(opts.stream)] as Parameters<typeof nat.qgemv>;
  callNative(() => (useGemm ? nat.qgemm(...args) : nat.qgemv(...args)));
  return y;
}

// ---- attention ----

/** Options of the device flash attention. */
export interface DeviceFlashOptions extends StreamOptions {
  causal?: boolean;
  /** Softmax scale; default Dqk^-0.5. */
  scale?: number;
  /** Split-KV decode (flash-decoding): keys per split, a multiple of 32; 0 (default) = no split. */
  keysPerSplit?: number;
  /** Skip the LSE output. */
  noLse?: boolean;
}

/**
 * FlashAttention-2 forward: q [B, Sq, Hq, Dqk], k [B, Sk, Hkv, Dqk], v [B, Sk, Hkv, Dv] (f32, f16
 * or bf16, one dtype) -> out f32 [B, Sq, Hq, Dv] and lse f32 [B, Hq, Sq]; causal is lower-right
 * aligned; a row that sees no key gets O = 0 and LSE = +inf.
 */
export function flashAttention(q: DeviceTensor, k: DeviceTensor, v: DeviceTensor, opts: DeviceFlashOptions = {}): { out: DeviceTensor; lse: DeviceTensor | null } {
  checkDeviceTensor(q, 'q');
  checkDeviceTensor(k, 'k');
  checkDeviceTensor(v, 'v');
  if (q.dtype !== k.dtype || k.dtype !== v.dtype) throw new KvantError('KVANT_DTYPE', `Expected q, k and v to share a dtype but they are ${q.dtype}, ${k.dtype}, ${v.dtype}`);
  if (!['f32', 'f16', 'bf16'].includes(q.dtype)) throw expected('KVANT_DTYPE', 'f32, f16 or bf16', 'q.dtype', q.dtype);
  for (const [t, n] of [[q, 'q'], [k, 'k'], [v, 'v']] as const) if (t.ndim !== 4) throw expected('KVANT_SHAPE', 'a 4-D tensor', `${n}.shape`, t.shape);
  const [B, Sq, Hq, Dqk] = q.shape;
  const [Bk, Sk, Hkv, Dk] = k.shape;
  const [Bv, Sv, Hv, Dv] = v.shape;
  if (Bk !== B || Bv !== B || Sv !== Sk) throw new KvantError('KVANT_SHAPE', `Expected k and v as [${B}, Sk, Hkv, D] with equal Sk but they are [${k.shape}] and [${v.shape}]`);
  if (Dk !== Dqk) throw new KvantError('KVANT_SHAPE', `Expected k's head dim to equal q's (${Dqk}) but it is ${Dk}`);
  if (Hv !== Hkv) throw new KvantError('KVANT_SHAPE', `Expected v to have ${Hkv} heads like k but it has ${Hv}`);
  if (Hkv === 0 || Hq % Hkv !== 0) throw new KvantError('KVANT_SHAPE', `Expected the query heads (${Hq}) to be a multiple of the key/value heads (${Hkv})`);
  const scale = opts.scale ?? Dqk ** -0.5;
  if (!Number.isFinite(scale)) throw expected('KVANT_RANGE', 'a finite number', 'scale', scale);
  const kps = opts.keysPerSplit ?? 0;
  if (!Number.isInteger(kps) || kps < 0 || kps % 32 !== 0) throw expected('KVANT_SHAPE', '0 or a positive multiple of 32', 'keysPerSplit', kps);
  const out = DeviceTensor.empty([B, Sq, Hq, Dv], 'f32');
  const lse = opts.noLse ? null : DeviceTensor.empty([B, Hq, Sq], 'f32');
  const nat = cudaNative();
  const lseArgs: [DeviceBufferHandle | null, number, number] = lse ? lse.rawArgs() : NIL;
  try {
    callNative(() =>
      nat.flashAttention(...q.rawArgs(), ...k.rawArgs(), ...v.rawArgs(), dtypeCode(q.dtype), ...out.rawArgs(), ...lseArgs, B, Sq, Sk, Hq, Hkv, Dqk, Dv,
        scale, opts.causal ?? false, kps, streamArg(opts.stream)),
    );
  } catch (e) {
    out.free();
    lse?.free();
    throw e;
  }
  return { out, lse };
}

/** A paged bf16 latent cache on the device (the layout of lib/ops mlaDecode's PagedLatentView). */
export interface DevicePagedLatent {
  /** All pages: bf16 [numPages, pageSize, L + R]. */
  pool: DeviceTensor;
  pageSize: number;
  /** i32 [B, maxPages] page indices per sequence. */
  pageTable: DeviceTensor | Int32Array;
  maxPages: number;
  /** i32 [B] tokens per sequence. */
  seqLens: DeviceTensor | Int32Array;
}

/**
 * Absorbed MLA decode: q f32 [B, H, L+R] (q_latent | q_rope) over the latent rows [c | k_pe]
 * -> out f32 [B, H, L] = Σ softmax(scale · q·row) · c and lse f32 [B, H]. A page index outside
 * the pool (for a page a sequence uses) is KVANT_RANGE.
 */
export function mlaDecode(
  q: DeviceTensor,
  cache: DevicePagedLatent,
  o: { L: number; R: number; scale: number; keysPerSplit?: number } & StreamOptions,
): { out: DeviceTensor; lse: DeviceTensor } {
  f32(q, 'q');
  if (q.ndim !== 3 || q.shape[2] !== o.L + o.R) throw expected('KVANT_SHAPE', `an f32 [B, H, ${o.L + o.R}] tensor`, 'q.shape', q.shape);
  const [B, H] = q.shape;
  checkDeviceTensor(cache.pool, 'cache.pool');
  if (cache.pool.dtype !== 'bf16') throw new KvantError('KVANT_DTYPE', `Expected a bf16 latent cache but it is ${cache.pool.dtype}`);
  const kps = o.keysPerSplit ?? 256;
  if (!Number.isInteger(kps) || kps < 32 || kps % 32 !== 0) throw expected('KVANT_SHAPE', 'a positive multiple of 32', 'keysPerSplit', kps);
  return withTemps((temps) => {
    const pt = deviceI32(cache.pageTable, 'cache.pageTable', temps);
    const sl = deviceI32(cache.seqLens, 'cache.seqLens', temps);
    if (pt.numel !== B * cache.maxPages || sl.numel !== B)
      throw new KvantError('KVANT_SHAPE', `Expected a page table of ${B} x ${cache.maxPages} and ${B} sequence lengths but received ${pt.numel} and ${sl.numel} values`);
    const out = DeviceTensor.empty([B, H, o.L], 'f32');
    const lse = DeviceTensor.empty([B, H], 'f32');
    const nat = cudaNative();
    try {
      callNative(() =>
        nat.mlaDecode(...q.rawArgs(), ...out.rawArgs(), ...lse.rawArgs(), B, H, o.L, o.R, o.scale, ...cache.pool.rawArgs(), cache.pageSize, cache.maxPages,
          ...pt.rawArgs(), ...sl.rawArgs(), kps, streamArg(o.stream)),
      );
    } catch (e) {
      out.free();
      lse.free();
      throw e;
    }
    return { out, lse };
  });
}
