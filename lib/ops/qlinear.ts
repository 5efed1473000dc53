/**
 * Quantized linear layers straight from the GPTQ checkpoint layout (no repacking, so mapped
 * checkpoint tensors are used in place): y[M, N] = x[M, K] · dequant(W)[N, K]ᵀ (+ bias), and
 * the grouped MoE MLP that runs a whole DeepSeek MoE layer in one native call.
 *
 * Results are bit-identical for any thread count and batch-invariant: a row's output does
 * not depend on how many other rows share the call (GEMV for M <= 8 and the panel GEMM for
 * larger M perform the same operations per output; see csrc/cpu/gemm_q.h).
 */
import { dtypeCode } from '../dtype';
import { KvantError, callNative, expected } from '../errors';
import { MoeExpertSetHandle, RawStorage, native } from '../native';
import { QTensor, checkQuantFormat, encodeQuantFormat, effectiveGroup, groupCount, qweightRows, qzerosCols } from '../quant/format';
import { Tensor, checkTensor } from '../tensor';
import { IsaLevel, raw } from './small';

const ISA = { scalar: 0, avx2: 1, avx512: 2 } as const;

function isaCode(isa?: IsaLevel): number | undefined {
  if (isa === undefined) return undefined;
  if (!(isa in ISA)) throw expected('KVANT_BACKEND', "'scalar', 'avx2' or 'avx512'", 'isa', isa);
  return ISA[isa];
}

/** Output dtypes of {@link qlinear}. */
export type QLinearOutDtype = 'f32' | 'f16' | 'bf16';

export interface QLinearOptions {
  /** Output [..., N] of dtype f32, f16 or bf16 (overwritten); must not overlap x, the weights or bias. */
  out?: Tensor;
  /**
   * Output dtype when `out` is not given (default 'f32'; with `out`, it must match out's dtype).
   * f16/bf16: the f32 result, bias included, is rounded once to nearest even, so it equals
   * the f32 output converted with `Tensor.to()`.
   */
  outDtype?: QLinearOutDtype;
  /** f32 [N], added after the product. */
  bias?: Tensor;
  /** Force an ISA level (tests and benchmarks); default: the level chosen at load. */
  isa?: IsaLevel;
  /** Activation precision inside the kernel (see {@link QActivations}); default 'f32'. */
  activations?: QActivations;
}

/**
 * 'f32': x enters the dot products as f32 (error: f32 rounding of the sums only).
 * 'int8': for every weight width (2, 3, 4, 8 bits), x is quantized per block of 32 inputs to
 * int8 with one f32 scale (max|x|/127, round half to even), and the dot products run on bytes
 * (about 2-3x fewer instructions per weight in the GEMV). Extra error per output
 * <= Σ_k |W_k|·d_b/2 (d_b the block's scale). Either way a row's result does not depend on M
 * or on the thread count.
 */
export type QActivations = 'f32' | 'int8';

function actCode(a: QActivations | undefined): number {
  if (a === undefined || a === 'f32') return 0;
  if (a === 'int8') return 1;
  throw expected('KVANT_RANGE', "'f32' or 'int8'", 'activations', a);
}

const FLOAT_X = ['f32', 'f16', 'bf16'];
const OUT_DTYPES: readonly string[] = ['f32', 'f16', 'bf16'];

function shapeIs(t: Tensor, dims: number[]): boolean {
  return t.ndim === dims.length && t.shape.every((d, i) => d === dims[i]);
}

// g_idx tensors already checked to be sequential (kernel row j in group j / G): checking
// K values on every call would cost more than a decode GEMV of a small matrix.
const sequentialGIdx = new WeakSet<Tensor>();

/** Validates a QTensor against its format; returns the native argument tuple. */
type QArgs = [Uint8Array, RawStorage, number, number, RawStorage, number, number, RawStorage, number, number, RawStorage | null, number, number];

/**
 * QTensors already validated, with their argument list: a decode step makes dozens of qgemm
 * calls on the same weights, and re-checking the format and encoding it each time was a
 * measurable share of the step's JS time. An entry is reused only while every field is still
 * the same object; the binding re-checks sizes against the format on every call regardless.
 */
const validatedArgs = new WeakMap<QTensor, { fields: unknown[]; args: QArgs }>();
const qFields = (w: QTensor): unknown[] => [w.format, w.qweight, w.qzeros, w.scales, w.gIdx, w.perm];
const sameFields = (w: QTensor, f: unknown[]): boolean =>
  w.format === f[0] && w.qweight === f[1] && w.qzeros === f[2] && w.scales === f[3] && w.gIdx === f[4] && w.perm === f[5];

function qArgs(w: QTensor, name: string): QArgs {
  if (w === null || typeof w !== 'object') throw expected('KVANT_DTYPE', 'a QTensor', name, w);
  const hit = validatedArgs.get(w);
  // The cached list holds the same storage objects (a tensor's storage and offset never
  // change): the binding rejects a disposed NativeMemory or a detached ArrayBuffer on every
  // call (KVANT_RANGE naming the argument), so nothing here needs re-reading.
  if (hit && sameFields(w, hit.fields)) return hit.args;
  const args = validateQArgs(w, name);
  validatedArgs.set(w, { fields: qFields(w), args });
  return args;
}

function validateQArgs(w: QTensor, name: string): QArgs {
  const f = checkQuantFormat(w.format, `${name}.format`);
  const G = effectiveGroup(f);
  const unit = f.bits === 3 ? 32 : 32 / f.bits;
  if (G < f.K && G % unit !== 0)
    throw new KvantError('KVANT_FORMAT', `Expected ${name}.format.groupSize to be a multiple of ${unit} (codes per packed word at ${f.bits} bits) but it is ${f.groupSize}`);
  const ng = groupCount(f);
  const want: [string, Tensor, string, number[]][] = [
    ['qweight', w.qweight, 'i32', [qweightRows(f), f.N]],
    ['qzeros', w.qzeros, 'i32', [ng, qzerosCols(f)]],
    ['scales', w.scales, 'f16', [ng, f.N]],
  ];
  for (const [field, t, dtype, dims] of want) {
    checkTensor(t, `${name}.${field}`);
    if (t.dtype !== dtype) throw expected('KVANT_DTYPE', `${dtype}`, `${name}.${field}.dtype`, t.dtype);
    if (!shapeIs(t, dims)) throw expected('KVANT_SHAPE', `shape [${dims.join(', ')}]`, `${name}.${field}.shape`, t.shape);
  }
  if (w.gIdx !== null && w.gIdx !== undefined && !sequentialGIdx.has(w.gIdx)) {
    checkTensor(w.gIdx, `${name}.gIdx`);
    if (w.gIdx.dtype !== 'i32' || !shapeIs(w.gIdx, [f.K])) throw expected('KVANT_SHAPE', `i32 [${f.K}]`, `${name}.gIdx`, w.gIdx.shape);
    const g = w.gIdx.data() as Int32Array;
    for (let j = 0; j < f.K; j++)
      if (g[j] !== Math.floor(j / G))
        throw new KvantError('KVANT_FORMAT', `Expected ${name}.gIdx to be sequential in kernel row order (g_idx[j] = j / ${G}; act-order rows are made sequential at load with perm) but gIdx[${j}] = ${g[j]}`);
    sequentialGIdx.add(w.gIdx);
  }
  let perm: [RawStorage | null, number, number] = [null, 0, 0];
  if (w.perm !== null && w.perm !== undefined) {
    if (!(w.perm instanceof Int32Array) || w.perm.length !== f.K) throw expected('KVANT_SHAPE', `an Int32Array of ${f.K} (K) values`, `${name}.perm`, w.perm);
    perm = [new Uint8Array(w.perm.buffer, w.perm.byteOffset, w.perm.byteLength), 0, w.perm.byteLength];
  }
  return [encodeQuantFormat(f), ...raw(w.qweight), ...raw(w.qzeros), ...raw(w.scales), ...perm];
}

/**
 * y = x · dequant(w)ᵀ (+ bias). x: f32, f16 or bf16 [..., K]; returns [..., N] in f32 (or
 * f16/bf16 through `outDtype` / `out`, rounded once from the f32 result).
 * Every format of the GPTQ checkpoints: 2/3/4/8 bits, any group size that is a multiple of
 * the codes per packed word (32/64/128) or -1, a partial last group, sym/asym, v1 ("gptq",
 * zero − 1 stored) and v2 zeros, and act-order through `w.perm`.
 */
export function qlinear(x: Tensor, w: QTensor, opts: QLinearOptions = {}): Tensor {
  const { args, y } = qgemmArgs(x, w, opts);
  callNative(() => native().qgemm(...args));
  return y;
}

/**
 * qlinear(x, w, { out }) as a call with its arguments checked and packed once (internal: the
 * decode step runs every linear on the same x and out buffers step after step). The bound
 * call holds the same storage objects; the binding still rejects a disposed NativeMemory or a
 * detached ArrayBuffer on every call.
 */
export function bindQlinear(x: Tensor, w: QTensor, out: Tensor, activations?: QActivations): () => void {
  const { args } = qgemmArgs(x, w, { out, activations });
  // native().qgemm looked up per call (not captured): instrumentation that wraps the binding's
  // functions later (the model bench's outside-native pass) still sees these calls.
  return () => callNative(() => native().qgemm(...args));
}

/** qlinear's checked native argument list, and its output (opts.out, or allocated once x and w are checked). */
function qgemmArgs(x: Tensor, w: QTensor, opts: QLinearOptions): { args: Parameters<ReturnType<typeof native>['qgemm']>; y: Tensor } {
  checkTensor(x, 'x');
  const args = qArgs(w, 'w');
  const { K, N } = w.format;
  if (!FLOAT_X.includes(x.dtype)) throw expected('KVANT_DTYPE', 'f32, f16 or bf16 activations', 'x.dtype', x.dtype);
  if (x.ndim === 0 || x.shape[x.ndim - 1] !== K)
    throw new KvantError('KVANT_SHAPE', `Expected x's last dimension to be K = ${K} (w is [${N}, ${K}]) but x is [${x.shape.join(', ')}]`);
  const M = x.numel / K;
  if (opts.outDtype !== undefined && !OUT_DTYPES.includes(opts.outDtype)) throw expected('KVANT_DTYPE', "'f32', 'f16' or 'bf16'", 'outDtype', opts.outDtype);
  const y = opts.out ?? Tensor.zeros([...x.shape.slice(0, -1), N], opts.outDtype ?? 'f32');
  checkTensor(y, 'out');
  if (!OUT_DTYPES.includes(y.dtype)) throw expected('KVANT_DTYPE', 'f32, f16 or bf16', 'out.dtype', y.dtype);
  if (opts.outDtype !== undefined && y.dtype !== opts.outDtype) throw expected('KVANT_DTYPE', `out.dtype to match outDtype '${opts.outDtype}'`, 'out.dtype', y.dtype);
  if (y.numel !== M * N) throw new KvantError('KVANT_SHAPE', `Expected out to have ${M * N} elements ([..., N = ${N}]) but it has ${y.numel}`);
  let b: [RawStorage | null, number, number] = [null, 0, 0];
  if (opts.bias !== undefined) {
    checkTensor(opts.bias, 'bias');
    if (opts.bias.dtype !== 'f32' || opts.bias.numel !== N) throw new KvantError('KVANT_SHAPE', `Expected bias to be f32 with ${N} elements but it is ${opts.bias.dtype} with ${opts.bias.numel}`);
    b = raw(opts.bias);
  }
  const isa = isaCode(opts.isa);
  const act = actCode(opts.activations);
  return { args: [...raw(x), dtypeCode(x.dtype), M, ...args, ...b, ...raw(y), isa, act, dtypeCode(y.dtype)], y };
}

/** One MLP: down(silu(gate(x)) ⊙ up(x)); each weight is a QTensor or a dense f32/f16/bf16 Tensor [N, K]. */
export interface MlpWeights {
  gate: QTensor | Tensor;
  up: QTensor | Tensor;
  down: QTensor | Tensor;
}

/** Routing of a grouped MoE call: pair i sends row `row[i]` through MLP `mlp[i]` with `weight[i]`. */
export interface MoeRoutes {
  mlp: Int32Array;
  row: Int32Array;
  weight: Float32Array;
}

/** Options of moeMlp (beyond the positional out). */
export interface MoeMlpOptions {
  isa?: IsaLevel;
  /** Activation precision of the quantized projections (see {@link QActivations}); default 'f32'. */
  activations?: QActivations;
}

type ProjArgs = (RawStorage | Uint8Array | number | null)[];

function projArgs(p: QTensor | Tensor, name: string): { args: ProjArgs; N: number; K: number } {
  if (p instanceof Tensor) {
    if (p.ndim !== 2) throw expected('KVANT_SHAPE', 'a 2-D weight [N, K]', `${name}.shape`, p.shape);
    if (!FLOAT_X.includes(p.dtype)) throw expected('KVANT_DTYPE', 'f32, f16 or bf16 weights', `${name}.dtype`, p.dtype);
    const [N, K] = p.shape;
    return { args: [0, N, K, dtypeCode(p.dtype), null, ...raw(p), null, 0, 0, null, 0, 0, null, 0, 0], N, K };
  }
  const q = qArgs(p, name);
  return { args: [1, p.format.N, p.format.K, 0, ...q], N: p.format.N, K: p.format.K };
}

/** One MLP's native argument list (its three projections), checked against x's width H. */
function mlpArgs(m: MlpWeights, e: number, H: number): ProjArgs {
  if (m === null || typeof m !== 'object') throw expected('KVANT_DTYPE', '{ gate, up, down }', `mlps[${e}]`, m);
  const g = projArgs(m.gate, `mlps[${e}].gate`);
  const u = projArgs(m.up, `mlps[${e}].up`);
  const d = projArgs(m.down, `mlps[${e}].down`);
  if (g.K !== H || u.K !== H || d.N !== H)
    throw new KvantError('KVANT_SHAPE', `Expected mlps[${e}].gate and up to be [I, ${H}] and down [${H}, I] (H = x's last dimension) but they are [${g.N}, ${g.K}], [${u.N}, ${u.K}], [${d.N}, ${d.K}]`);
  if (g.N !== u.N || d.K !== g.N)
    throw new KvantError('KVANT_SHAPE', `Expected mlps[${e}] gate and up to share I = down's K but they are [${g.N}, ${g.K}], [${u.N}, ${u.K}], [${d.N}, ${d.K}]`);
  return [...g.args, ...u.args, ...d.args];
}

/** Every MLP's argument list (mlpArgs), concatenated in order. */
function mlpListArgs(mlps: readonly MlpWeights[], H: number): ProjArgs {
  const out: ProjArgs = [];
  mlps.forEach((m, e) => {
    for (const v of mlpArgs(m, e, H)) out.push(v);
  });
  return out;
}

/**
 * A fixed set of MLPs of width H (a model's routed and shared experts), checked once, for
 * repeated grouped calls: `moeMlp(x, set, routes)` with routes.mlp naming MLPs by their index
 * in the set. The set is built natively once (every member's weights checked and referenced),
 * so a call passes only x, the routes and the output: a decode step of an MoE model makes this
 * call once per layer, and checking and encoding the selected experts' ~380 arguments on each
 * call was the largest item of the step's JS and N-API time. The result equals moeMlp over
 * exactly the routed members as an array, bit for bit. The weights must not be replaced
 * afterwards (the set keeps their storage); a disposed one is rejected by the call that routes
 * to it (KVANT_RANGE), never read.
 */
export class MlpSet {
  /** Number of MLPs. */
  readonly size: number;
  /** Their input and output width. */
  readonly H: number;
  /** @internal The native set the kernel call takes. */
  readonly handle: MoeExpertSetHandle;

  constructor(mlps: readonly MlpWeights[], H: number) {
    if (!Array.isArray(mlps) || mlps.length === 0) throw expected('KVANT_SHAPE', 'a non-empty array of MLP weights', 'mlps', mlps);
    if (!Number.isInteger(H) || H <= 0) throw expected('KVANT_SHAPE', 'a positive integer width', 'H', H);
    this.size = mlps.length;
    this.H = H;
    const args = mlpListArgs(mlps, H);
    this.handle = callNative(() => new (native().MoeExpertSet)(H, ...args));
  }
}

/**
 * Grouped MoE call: for every i, out[row[i]] += weight[i] * mlps[mlp[i]](x[row[i]]). One native call:
 * gate+up for all pairs, barrier, then downs; each MLP runs over its own subset of rows; the
 * accumulation order into out is fixed (pairs in the order given), so results are deterministic and
 * batch-invariant. Shared experts = one entry per row with weight 1.
 * x: f32 [M, H]; out (optional): f32 [M, H], overwritten (rows no pair names become 0).
 * mlps: the MLPs as an array (all of them are checked and passed to the kernel), or an
 * {@link MlpSet} (checked once; only the MLPs the routes name are passed).
 */
export function moeMlp(
  x: Tensor,
  mlps: readonly MlpWeights[] | MlpSet,
  routes: MoeRoutes,
  out?: Tensor,
  opts: MoeMlpOptions = {},
): Tensor {
  checkTensor(x, 'x');
  if (x.dtype !== 'f32') throw expected('KVANT_DTYPE', 'f32 activations', 'x.dtype', x.dtype);
  if (x.ndim !== 2) throw expected('KVANT_SHAPE', 'a 2-D x [M, H]', 'x.shape', x.shape);
  const [M, H] = x.shape;
  const isSet = mlps instanceof MlpSet;
  if (!isSet && (!Array.isArray(mlps) || mlps.length === 0)) throw expected('KVANT_SHAPE', 'a non-empty array of MLP weights', 'mlps', mlps);
  if (isSet && mlps.H !== H) throw new KvantError('KVANT_SHAPE', `Expected x's last dimension to be the MLP set's width ${mlps.H} but x is [${M}, ${H}]`);
  if (routes === null || typeof routes !== 'object') throw expected('KVANT_DTYPE', 'an object { mlp, row, weight }', 'routes', routes);
  const { row, weight } = routes;
  const mlp = routes.mlp;
  if (!(mlp instanceof Int32Array)) throw expected('KVANT_DTYPE', 'an Int32Array', 'routes.mlp', mlp);
  if (!(row instanceof Int32Array)) throw expected('KVANT_DTYPE', 'an Int32Array', 'routes.row', row);
  if (!(weight instanceof Float32Array)) throw expected('KVANT_DTYPE', 'a Float32Array', 'routes.weight', weight);
  if (row.length !== mlp.length || weight.length !== mlp.length)
    throw new KvantError('KVANT_SHAPE', `Expected routes.mlp, row and weight to have the same length but they have ${mlp.length}, ${row.length}, ${weight.length}`);
  const count = isSet ? mlps.size : mlps.length;
  for (let i = 0; i < mlp.length; i++) {
    if (!(mlp[i] >= 0 && mlp[i] < count)) throw expected('KVANT_RANGE', `an MLP index in [0, ${count})`, `routes.mlp[${i}]`, mlp[i]);
    if (!(row[i] >= 0 && row[i] < M)) throw expected('KVANT_RANGE', `a row index in [0, ${M})`, `routes.row[${i}]`, row[i]);
  }
  const y = out ?? Tensor.zeros([M, H], 'f32');
  checkTensor(y, 'out');
  if (y.dtype !== 'f32' || y.numel !== M * H) throw new KvantError('KVANT_SHAPE', `Expected out to be f32 with ${M * H} elements but it is ${y.dtype} with ${y.numel}`);
  const view = (a: Int32Array | Float32Array): [Uint8Array, number, number] => [new Uint8Array(a.buffer, a.byteOffset, a.byteLength), 0, a.byteLength];
  const isa = isaCode(opts.isa);
  const act = actCode(opts.activations);
  if (isSet) {
    const handle = mlps.handle;
    callNative(() => native().moeMlpSet(...raw(x), M, handle, ...view(mlp), ...view(row), ...view(weight), ...raw(y), isa, act));
    return y;
  }
  const projections = mlpListArgs(mlps, H);
  callNative(() => native().moeMlp(...raw(x), M, H, mlps.length, ...view(mlp), ...view(row), ...view(weight), ...raw(y), isa, act, ...projections));
  return y;
}
