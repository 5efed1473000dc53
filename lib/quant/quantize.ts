/**
 * Group quantization of weight matrices W [N out, K in] into the AutoGPTQ tensor set
 * (see ./format.ts): round-to-nearest, GPTQ, dequantization and the act-order repack.
 * Shapes and options are validated here with messages naming the argument; the native
 * layer checks every size again before touching memory.
 */
import { dtypeCode } from '../dtype';
import { KvantError, callNative, expected } from '../errors';
import { NativeGptqStats, RawStorage, native } from '../native';
import { Tensor, checkTensor, runAbortable } from '../tensor';
import { CheckpointFormat, QTensor, QuantBits, QuantFormat, checkQuantFormat, effectiveGroup, encodeQuantFormat, groupCount, qweightRows, qzerosCols } from './format';

/** How to quantize a matrix. */
export interface QuantizeOptions {
  bits: QuantBits;
  /** Input channels per group: 32, 64, 128 (any positive value works), or -1 for one group. */
  groupSize: number;
  /** Symmetric grid (zero fixed at 2^(bits-1)); default true. */
  sym?: boolean;
  /** GPTQ only: process columns by decreasing Hessian diagonal (desc_act), giving a non-monotonic g_idx. */
  actOrder?: boolean;
  /** GPTQ only: fit all group grids on the original weights first (g_idx stays k / G under act-order). */
  staticGroups?: boolean;
  /** GPTQ only: damping as a fraction of the mean Hessian diagonal, in (0, 1); default 0.01. */
  dampPercent?: number;
  /** GPTQ only: columns per lazy block update; default 128. */
  blockSize?: number;
  /** Zero-point convention of the packed qzeros: "gptq" (v1, stores zero - 1, default) or "gptq_v2". */
  checkpointFormat?: CheckpointFormat;
  /** Tensor name used in error messages. */
  name?: string;
  /** GPTQ only: fall back to round-to-nearest below this many calibration tokens (default 16; MoE experts). */
  minCalibTokens?: number;
  /** GPTQ only: compute the relative output error from H (costs 2·N·K² FLOPs more); default true. */
  errorStats?: boolean;
  /** ISA level of the native kernels (tests compare levels). */
  isa?: 'scalar' | 'avx2' | 'avx512';
}

/** (storage, byteOffset, byteLength) of a tensor, as the bindings take it. */
export function rawSpan(t: Tensor): [RawStorage, number, number] {
  const [s, o] = t.rawArgs();
  return [s, o, t.byteLength];
}

function rawInt32(a: Int32Array): [RawStorage, number, number] {
  return [new Uint8Array(a.buffer, a.byteOffset, a.byteLength), 0, a.byteLength];
}

/** Validates options against a weight shape and returns the format. */
export function formatFor(N: number, K: number, o: QuantizeOptions): QuantFormat {
  if (typeof o !== 'object' || o === null) throw expected('KVANT_FORMAT', 'an options object', 'options', o);
  const name = o.name ?? 'w';
  return checkQuantFormat({ bits: o.bits, groupSize: o.groupSize, sym: o.sym ?? true, checkpointFormat: o.checkpointFormat ?? 'gptq', K, N }, `${name} quantization`);
}

/** A 2-D float weight as f32 (converted once when f16/bf16). */
export function weightF32(w: Tensor, name: string): Tensor {
  checkTensor(w, name);
  if (w.ndim !== 2) throw expected('KVANT_SHAPE', 'a 2-D weight [N, K]', `${name}.shape`, w.shape);
  if (w.dtype === 'f32') return w;
  if (w.dtype === 'f16' || w.dtype === 'bf16') return w.to('f32', { native: w.byteLength * 2 > 1 << 28 });
  throw expected('KVANT_DTYPE', 'f32, f16 or bf16 weights', `${name}.dtype`, w.dtype);
}

/** The sequential g_idx k / G. */
export function sequentialGIdx(f: Pick<QuantFormat, 'K' | 'groupSize'>): Tensor {
  const g = Tensor.zeros([f.K], 'i32');
  const d = g.data() as Int32Array;
  const G = effectiveGroup(f);
  for (let k = 0; k < f.K; k++) d[k] = Math.floor(k / G);
  return g;
}

/** Zeroed tensors of a QTensor for a format (qweight in native memory when large), g_idx sequential. */
export function emptyQTensor(f: QuantFormat): QTensor {
  const ng = groupCount(f);
  const big = (qweightRows(f) * f.N * 4) > 1 << 28;
  return {
    format: f,
    qweight: Tensor.zeros([qweightRows(f), f.N], 'i32', { native: big }),
    qzeros: Tensor.zeros([ng, qzerosCols(f)], 'i32'),
    scales: Tensor.zeros([ng, f.N], 'f16'),
    gIdx: sequentialGIdx(f),
    perm: null,
  };
}

/** Prefixes native errors with the tensor's name. */
export function named<T>(name: string | undefined, fn: () => T): T {
  try {
    return callNative(fn);
  } catch (e) {
    if (name && e instanceof KvantError) throw new KvantError(e.code, `${name}: ${e.message}`);
    throw e;
  }
}

/**
 * Round-to-nearest quantization with the min-max grid per group (SPEC §2.3): one f16 scale
 * (and zero point) per `groupSize` input channels of each output row; groups sequential.
 * NaN/Inf weights are KVANT_RANGE naming the index.
 */
export function quantizeRtn(w: Tensor, o: QuantizeOptions): QTensor {
  const name = o?.name ?? 'w';
  const wf = weightF32(w, name);
  const [N, K] = wf.shape;
  const f = formatFor(N, K, o);
  const q = emptyQTensor(f);
  named(o.name, () => native().quantRtn(encodeQuantFormat(f), ...rawSpan(wf), ...rawSpan(q.qweight), ...rawSpan(q.qzeros), ...rawSpan(q.scales)));
  if (wf !== w) wf.dispose();
  return q;
}

/** Checks a QTensor's tensors against its format (dtypes and shapes). */
export function checkQTensor(q: QTensor, name = 'q'): QuantFormat {
  if (typeof q !== 'object' || q === null) throw expected('KVANT_FORMAT', 'a QTensor', name, q);
  const f = checkQuantFormat(q.format, `${name}.format`);
  const ng = groupCount(f);
  const want: Array<[string, Tensor | null, string, number[]]> = [
    ['qweight', q.qweight, 'i32', [qweightRows(f), f.N]],
    ['qzeros', q.qzeros, 'i32', [ng, qzerosCols(f)]],
    ['scales', q.scales, 'f16', [ng, f.N]],
    ['gIdx', q.gIdx, 'i32', [f.K]],
  ];
  for (const [field, t, dtype, shape] of want) {
    if (t === null && field === 'gIdx') continue;
    checkTensor(t, `${name}.${field}`);
    if (t!.dtype !== dtype) throw expected('KVANT_DTYPE', dtype, `${name}.${field}.dtype`, t!.dtype);
    if (t!.shape.length !== shape.length || t!.shape.some((d, i) => d !== shape[i]))
      throw new KvantError('KVANT_SHAPE', `Expected ${name}.${field} of shape [${shape.join(', ')}] (K ${f.K}, N ${f.N}, ${f.bits} bits, group ${f.groupSize}) but it is [${t!.shape.join(', ')}]`);
  }
  if (q.perm !== null && q.perm !== undefined) {
    if (!(q.perm instanceof Int32Array)) throw expected('KVANT_DTYPE', 'an Int32Array or null', `${name}.perm`, q.perm);
    if (q.perm.length !== f.K) throw expected('KVANT_SHAPE', `${f.K} entries`, `${name}.perm.length`, q.perm.length);
  }
  return f;
}

/** Output dtypes of {@link dequantize}. */
export type DequantDType = 'f32' | 'f16' | 'bf16';

/** Dequantizes to a dense [N, K] tensor in the original input-channel order. */
export function dequantize(
  q: QTensor,
  dtype: DequantDType = 'f32',
  opts: { isa?: 'scalar' | 'avx2' | 'avx512'; native?: boolean; out?: Tensor } = {},
): Tensor {
  const f = checkQTensor(q);
  if (dtype !== 'f32' && dtype !== 'f16' && dtype !== 'bf16') throw expected('KVANT_DTYPE', "'f32', 'f16' or 'bf16'", 'dtype', dtype);
  const isa = opts.isa === undefined ? undefined : ({ scalar: 0, avx2: 1, avx512: 2 } as const)[opts.isa];
  if (opts.isa !== undefined && isa === undefined) throw expected('KVANT_BACKEND', "'scalar', 'avx2' or 'avx512'", 'isa', opts.isa);
  const out = opts.out ?? Tensor.zeros([f.N, f.K], dtype, { native: opts.native ?? f.N * f.K * 4 > 1 << 28 });
  checkTensor(out, 'out');
  if (out.dtype !== dtype || out.numel !== f.N * f.K)
    throw new KvantError('KVANT_SHAPE', `Expected out to be ${dtype} [${f.N}, ${f.K}] but it is ${out.dtype} [${out.shape.join(', ')}]`);
  const gi: [RawStorage | null, number, number] = q.gIdx ? rawSpan(q.gIdx) : [null, 0, 0];
  const pm: [RawStorage | null, number, number] = q.perm ? rawInt32(q.perm) : [null, 0, 0];
  callNative(() =>
    native().quantDequant(encodeQuantFormat(f), ...rawSpan(q.qweight), ...rawSpan(q.qzeros), ...rawSpan(q.scales), ...gi, ...pm, ...rawSpan(out), dtypeCode(dtype), isa),
  );
  return out;
}

/** True when g_idx is the sequential k / G (null counts as sequential). */
export function isSequentialGIdx(q: QTensor): boolean {
  if (!q.gIdx) return true;
  const G = effectiveGroup(q.format);
  const d = q.gIdx.data() as Int32Array;
  for (let k = 0; k < d.length; k++) if (d[k] !== Math.floor(k / G)) return false;
  return true;
}

/**
 * Act-order -> sequential groups: kernel rows sorted stably by g_idx and qweight repacked,
 * so kernel row j belongs to group j / G and holds input channel perm[j] (kernels read
 * x[perm[j]]). Lossless; {@link restoreOrder} is its inverse. A matrix whose g_idx is
 * already sequential is returned as is.
 */
export function makeSequential(q: QTensor): QTensor {
  const f = checkQTensor(q);
  if (q.perm || isSequentialGIdx(q)) return q;
  const out = Tensor.zeros(q.qweight.shape, 'i32', { native: q.qweight.storage.kind === 'native' });
  const perm = new Int32Array(f.K);
  callNative(() => native().quantMakeSequential(encodeQuantFormat(f), ...rawSpan(q.qweight), ...rawSpan(q.gIdx!), ...rawInt32(perm), ...rawSpan(out), true));
  return { format: f, qweight: out, qzeros: q.qzeros, scales: q.scales, gIdx: sequentialGIdx(f), perm };
}

/** Inverse of {@link makeSequential}: qweight back in input-channel order with its g_idx. */
export function restoreOrder(q: QTensor): QTensor {
  const f = checkQTensor(q);
  if (!q.perm) return q;
  const out = Tensor.zeros(q.qweight.shape, 'i32', { native: q.qweight.storage.kind === 'native' });
  const gIdx = Tensor.zeros([f.K], 'i32');
  callNative(() => native().quantMakeSequential(encodeQuantFormat(f), ...rawSpan(q.qweight), ...rawSpan(gIdx), ...rawInt32(q.perm!), ...rawSpan(out), false));
  return { format: f, qweight: out, qzeros: q.qzeros, scales: q.scales, gIdx, perm: null };
}

/** The native struct's layout and bytes, for the format agreement test. */
export function nativeQuantFormat(f: QuantFormat): { layout: ReturnType<ReturnType<typeof native>['quantFormatLayout']>; bytes: Uint8Array } {
  return {
    layout: native().quantFormatLayout(),
    bytes: native().quantEncodeFormat(f.bits, f.groupSize, f.sym, f.checkpointFormat === 'gptq_v2' ? 1 : 0, f.K, f.N),
  };
}

const ISA_CODES = { scalar: 0, avx2: 1, avx512: 2 } as const;
function isaCode(isa: QuantizeOptions['isa']): number | undefined {
  if (isa === undefined) return undefined;
  if (!(isa in ISA_CODES)) throw expected('KVANT_BACKEND', "'scalar', 'avx2' or 'avx512'", 'isa', isa);
  return ISA_CODES[isa];
}

/**
 * Calibration statistics of one Linear's input: H = (2/n) Σ x xᵀ over n sequences (SPEC §2.1),
 * accumulated natively in f32 batch by batch. The absolute scale is irrelevant to GPTQ.
 */
export class Hessian {
  /** Input channels. */
  readonly K: number;
  /** f32 [K, K] in native memory. */
  readonly H: Tensor;
  private nSamples = 0;
  private nTokens = 0;

  constructor(K: number) {
    if (!Number.isSafeInteger(K) || K <= 0) throw expected('KVANT_SHAPE', 'a positive integer', 'K', K);
    this.K = K;
    this.H = Tensor.zeros([K, K], 'f32', { native: true });
  }

  /** Sequences seen so far (the n of the running average). */
  get samples(): number {
    return this.nSamples;
  }

  /** Token rows seen so far. */
  get tokens(): number {
    return this.nTokens;
  }

  /**
   * Adds a batch: x [tokens, K] holding `sequences` sequences (default 1), or [b, s, K] holding
   * b. f16/bf16 are converted to f32 once. NaN/Inf is KVANT_RANGE naming the index.
   */
  add(x: Tensor, sequences?: number, opts: { isa?: QuantizeOptions['isa'] } = {}): void {
    checkTensor(x, 'x');
    if (x.ndim < 2 || x.shape[x.ndim - 1] !== this.K)
      throw new KvantError('KVANT_SHAPE', `Expected calibration activations [tokens, ${this.K}] but x is [${x.shape.join(', ')}]`);
    const b = sequences ?? (x.ndim === 3 ? x.shape[0] : 1);
    if (!Number.isSafeInteger(b) || b <= 0) throw expected('KVANT_RANGE', 'a positive integer', 'sequences', b);
    let xf = x;
    if (x.dtype === 'f16' || x.dtype === 'bf16') xf = x.to('f32');
    else if (x.dtype !== 'f32') throw expected('KVANT_DTYPE', 'f32, f16 or bf16 activations', 'x.dtype', x.dtype);
    const T = x.numel / this.K;
    if (T === 0) return;
    callNative(() => native().gptqHessianAdd(...rawSpan(this.H), this.K, ...rawSpan(xf), T, this.nSamples, b, isaCode(opts.isa)));
    this.nSamples += b;
    this.nTokens += T;
  }

  /** Frees the native matrix now. */
  dispose(): void {
    this.H.dispose();
  }
}

/** What GPTQ did to one matrix. */
export interface GptqStats {
  /** 'rtn' when the matrix fell back to round-to-nearest (too few calibration tokens). */
  method: 'gptq' | 'rtn';
  fallbackReason: string | null;
  /** ‖(W − Ŵ)X‖ / ‖WX‖ over the calibration set (from H); NaN when not computed. */
  relError: number;
  /** GPTQ's objective Σ (w − q)² / [H⁻¹]cc / 2. */
  loss: number;
  /** Damping finally used (fraction of the mean diagonal) and how many Cholesky failures preceded it. */
  dampPercent: number;
  retries: number;
  /** Input channels with diag(H) = 0 (zeroed, as AutoGPTQ does). */
  deadColumns: number;
  samples: number;
  tokens: number;
  seconds: { factor: number; quant: number; update: number; error: number; total: number };
  /** FLOPs of the factorization (Cholesky + triangular inverse) and of the lazy block updates. */
  flops: { factor: number; update: number };
}

interface Prepared {
  f: QuantFormat;
  wf: Tensor;
  q: QTensor;
  args: Parameters<ReturnType<typeof native>['gptqQuantize']>;
  fallback: string | null;
}

function prepareGptq(w: Tensor, h: Hessian, o: QuantizeOptions): Prepared {
  const name = o?.name ?? 'w';
  if (!(h instanceof Hessian)) throw expected('KVANT_DTYPE', 'a Hessian', 'h', h);
  const wf = weightF32(w, name);
  const [N, K] = wf.shape;
  const f = formatFor(N, K, o);
  if (h.K !== K) throw new KvantError('KVANT_SHAPE', `Expected a Hessian of ${K} channels for ${name} [${N}, ${K}] but it has ${h.K}`);
  const damp = o.dampPercent ?? 0.01;
  if (typeof damp !== 'number' || !(damp > 0 && damp < 1)) throw expected('KVANT_RANGE', 'a number in (0, 1)', 'dampPercent', damp);
  const block = o.blockSize ?? 128;
  if (!Number.isInteger(block) || block < 1 || block > 4096) throw expected('KVANT_RANGE', 'an integer in 1..4096', 'blockSize', block);
  const minTokens = o.minCalibTokens ?? 16;
  const q = emptyQTensor(f);
  const fallback = h.tokens < minTokens ? `${h.tokens} calibration tokens (< ${minTokens})` : null;
  const args: Prepared['args'] = [
    encodeQuantFormat(f), ...rawSpan(wf), ...rawSpan(h.H), damp, block, o.actOrder ?? false, o.staticGroups ?? false, o.errorStats ?? true,
    ...rawSpan(q.qweight), ...rawSpan(q.qzeros), ...rawSpan(q.scales), ...rawSpan(q.gIdx!), isaCode(o.isa),
  ];
  return { f, wf, q, args, fallback };
}

function statsOf(s: NativeGptqStats, h: Hessian, total: number): GptqStats {
  return {
    method: 'gptq',
    fallbackReason: null,
    relError: s.errDen > 0 ? Math.sqrt(Math.max(0, s.errNum) / s.errDen) : NaN,
    loss: s.loss,
    dampPercent: s.dampPercent,
    retries: s.retries,
    deadColumns: s.deadColumns,
    samples: h.samples,
    tokens: h.tokens,
    seconds: { factor: s.secondsFactor, quant: s.secondsQuant, update: s.secondsUpdate, error: s.secondsError, total },
    flops: { factor: s.flopsFactor, update: s.flopsUpdate },
  };
}

function rtnFallback(w: Tensor, h: Hessian, o: QuantizeOptions, reason: string, t0: number): { q: QTensor; stats: GptqStats } {
  const q = quantizeRtn(w, o);
  const total = (performance.now() - t0) / 1e3;
  return {
    q,
    stats: {
      method: 'rtn', fallbackReason: reason, relError: NaN, loss: NaN, dampPercent: 0, retries: 0, deadColumns: 0,
      samples: h.samples, tokens: h.tokens, seconds: { factor: 0, quant: total, update: 0, error: 0, total }, flops: { factor: 0, update: 0 },
    },
  };
}

/**
 * GPTQ (SPEC §2.2) of W [N, K] given its input Hessian: columns quantized one by one with the
 * error spread onto the columns not yet quantized through U = chol(H⁻¹)ᵀ, lazy block updates,
 * optional act-order and static groups. Falls back to round-to-nearest (reported in stats)
 * below `minCalibTokens` tokens. Runs on the calling thread; see {@link quantizeGptqAsync}.
 */
export function quantizeGptq(w: Tensor, h: Hessian, o: QuantizeOptions): { q: QTensor; stats: GptqStats } {
  const t0 = performance.now();
  const p = prepareGptq(w, h, o);
  if (p.fallback) return rtnFallback(w, h, o, p.fallback, t0);
  const s = named(o.name, () => native().gptqQuantize(...p.args));
  if (p.wf !== w) p.wf.dispose();
  return { q: p.q, stats: statsOf(s, h, (performance.now() - t0) / 1e3) };
}

/** {@link quantizeGptq} off the event loop on kvant's job queue; abortable between column blocks. */
export async function quantizeGptqAsync(w: Tensor, h: Hessian, o: QuantizeOptions, opts: { signal?: AbortSignal } = {}): Promise<{ q: QTensor; stats: GptqStats }> {
  const t0 = performance.now();
  const p = prepareGptq(w, h, o);
  if (p.fallback) return rtnFallback(w, h, o, p.fallback, t0);
  let s: NativeGptqStats;
  try {
    s = await runAbortable(opts.signal, 'GPTQ', (token) => native().gptqQuantizeAsync(...p.args, token));
  } catch (e) {
    if (o.name && e instanceof KvantError) throw new KvantError(e.code, `${o.name}: ${e.message}`);
    throw e;
  }
  if (p.wf !== w) p.wf.dispose();
  return { q: p.q, stats: statsOf(s, h, (performance.now() - t0) / 1e3) };
}
