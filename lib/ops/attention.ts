/**
 * Attention: FlashAttention-2 forward (prefill) and the absorbed MLA decode over a paged latent
 * cache. Inputs may be f32, f16 or bf16; accumulation is f32 (no f16 overflow).
 */
import { KvantError, callNative, expected } from '../errors';
import { RawStorage, native } from '../native';
import { Tensor, checkTensor } from '../tensor';
import { IsaLevel, raw } from './small';

const ISA = { scalar: 0, avx2: 1, avx512: 2 } as const;

export interface FlashOptions {
  causal?: boolean;
  /** Softmax scale; default Dqk^-0.5. */
  scale?: number;
  /** Variable-length batches: int32 offsets of length B+1 into the token dimension. */
  cuSeqlensQ?: Int32Array;
  cuSeqlensK?: Int32Array;
  isa?: IsaLevel;
  /**
   * Run the textbook materialized attention instead (S = Q·Kᵀ, softmax, P·V with O(Sq·Sk)
   * memory): the baseline of the benchmarks. Fixed-length batches only.
   */
  naive?: boolean;
}

function f32(t: Tensor): Tensor {
  if (t.dtype === 'f32') return t;
  if (t.dtype === 'f16' || t.dtype === 'bf16') return t.to('f32');
  throw expected('KVANT_DTYPE', 'f32, f16 or bf16', 'dtype', t.dtype);
}

const i32raw = (a: Int32Array): [RawStorage, number, number] => [new Uint8Array(a.buffer, a.byteOffset, a.byteLength), 0, a.byteLength];

/**
 * q [B, Sq, Hq, Dqk], k [B, Sk, Hkv, Dqk], v [B, Sk, Hkv, Dv] -> out [B, Sq, Hq, Dv] (f32) and
 * lse [B, Hq, Sq] (natural log). Varlen: q [Tq, Hq, Dqk], k/v [Tk, Hkv, D], lse [Hq, Tq].
 */
export function flashAttention(q: Tensor, k: Tensor, v: Tensor, opts: FlashOptions = {}): { out: Tensor; lse: Tensor } {
  checkTensor(q, 'q');
  checkTensor(k, 'k');
  checkTensor(v, 'v');
  if (q.dtype !== k.dtype || k.dtype !== v.dtype) throw new KvantError('KVANT_DTYPE', `Expected q, k and v to share a dtype but they are ${q.dtype}, ${k.dtype}, ${v.dtype}`);
  const varlen = opts.cuSeqlensQ !== undefined || opts.cuSeqlensK !== undefined;
  const rank = varlen ? 3 : 4;
  for (const [t, n] of [[q, 'q'], [k, 'k'], [v, 'v']] as const)
    if (t.ndim !== rank) throw expected('KVANT_SHAPE', `a ${rank}-D tensor`, `${n}.shape`, t.shape);
  const [Hq, Dqk] = q.shape.slice(-2);
  const [Hkv, Dk] = k.shape.slice(-2);
  const [Hv, Dv] = v.shape.slice(-2);
  if (Dk !== Dqk) throw new KvantError('KVANT_SHAPE', `Expected k's head dim to equal q's (${Dqk}) but it is ${Dk}`);
  if (Hv !== Hkv) throw new KvantError('KVANT_SHAPE', `Expected v to have ${Hkv} heads like k but it has ${Hv}`);
  if (Hkv === 0 || Hq % Hkv !== 0) throw new KvantError('KVANT_SHAPE', `Expected the query heads (${Hq}) to be a multiple of the key/value heads (${Hkv})`);
  for (const [d, n] of [[Dqk, 'Dqk'], [Dv, 'Dv']] as const) if (d < 1 || d > 1024) throw expected('KVANT_SHAPE', 'a head dim in 1..1024', n, d);
  let B: number;
  let Sq: number;
  let Sk: number;
  let cq: [RawStorage | null, number, number] = [null, 0, 0];
  let ck: [RawStorage | null, number, number] = [null, 0, 0];
  if (varlen) {
    const cuQ = opts.cuSeqlensQ;
    const cuK = opts.cuSeqlensK;
    if (!(cuQ instanceof Int32Array) || !(cuK instanceof Int32Array) || cuQ.length !== cuK.length || cuQ.length < 2)
      throw expected('KVANT_SHAPE', 'two Int32Arrays of equal length B+1 >= 2', 'cuSeqlensQ/cuSeqlensK', [opts.cuSeqlensQ, opts.cuSeqlensK]);
    B = cuQ.length - 1;
    Sq = q.shape[0];
    Sk = k.shape[0];
    if (v.shape[0] !== Sk) throw new KvantError('KVANT_SHAPE', `Expected v to have ${Sk} tokens like k but it has ${v.shape[0]}`);
    for (let b = 0; b <= B; b++) {
      if (!(cuQ[b] >= (b ? cuQ[b - 1] : 0)) || !(cuK[b] >= (b ? cuK[b - 1] : 0)))
        throw new KvantError('KVANT_RANGE', `Expected cuSeqlens to be non-decreasing from 0 but at ${b} they are ${cuQ[b]}, ${cuK[b]}`);
    }
    if (cuQ[0] !== 0 || cuK[0] !== 0 || cuQ[B] !== Sq || cuK[B] !== Sk)
      throw new KvantError('KVANT_RANGE', `Expected cuSeqlensQ to run 0..${Sq} and cuSeqlensK 0..${Sk} but they are ${cuQ[0]}..${cuQ[B]} and ${cuK[0]}..${cuK[B]}`);
    cq = i32raw(cuQ);
    ck = i32raw(cuK);
  } else {
    [B, Sq] = q.shape;
    Sk = k.shape[1];
    if (k.shape[0] !== B || v.shape[0] !== B || v.shape[1] !== Sk)
      throw new KvantError('KVANT_SHAPE', `Expected k and v as [${B}, Sk, Hkv, D] with equal Sk but they are [${k.shape}] and [${v.shape}]`);
  }
  const scale = opts.scale ?? Dqk ** -0.5;
  if (!Number.isFinite(scale)) throw expected('KVANT_RANGE', 'a finite number', 'scale', scale);
  const tokens = varlen ? Sq : B * Sq;
  const out = Tensor.zeros(varlen ? [Sq, Hq, Dv] : [B, Sq, Hq, Dv], 'f32');
  const lse = Tensor.zeros(varlen ? [Hq, Sq] : [B, Hq, Sq], 'f32');
  void tokens;
  const isa = opts.isa === undefined ? undefined : ISA[opts.isa];
  if (opts.isa !== undefined && isa === undefined) throw expected('KVANT_BACKEND', "'scalar', 'avx2' or 'avx512'", 'isa', opts.isa);
  const [qf, kf, vf] = [f32(q), f32(k), f32(v)];
  callNative(() =>
    native().flashAttention(...raw(qf), ...raw(kf), ...raw(vf), ...raw(out), ...raw(lse), B, Sq, Sk, Hq, Hkv, Dqk, Dv, scale, opts.causal ?? false,
      cq[0], cq[1], cq[2], ck[0], ck[1], ck[2], isa, opts.naive ?? false),
  );
  return { out, lse };
}

/** Peak scratch bytes of flashAttention tasks since the last reset (for the O(tile) memory test). */
export function flashScratchBytes(reset = false): number {
  return native().flashScratchBytes(reset);
}

export interface PagedLatentView {
  /** All pages: [numPages, pageSize, L + R] bf16. */
  pool: Tensor;
  pageSize: number;
  /** [B, maxPages] page indices per sequence. */
  pageTable: Int32Array;
  maxPages: number;
  /** Tokens per sequence. */
  seqLens: Int32Array;
}

/**
 * Absorbed MLA decode: q [B, H, L+R] (q_latent | q_rope) over the latent cache rows [c | k_pe]
 * -> out [B, H, L] = Σ softmax(scale · q·row) · c, and lse [B, H].
 */
export function mlaDecode(q: Tensor, cache: PagedLatentView, o: { L: number; R: number; scale: number; isa?: IsaLevel }): { out: Tensor; lse: Tensor } {
  checkTensor(q, 'q');
  if (!Number.isInteger(o.L) || o.L < 1) throw expected('KVANT_SHAPE', 'an integer latent width >= 1', 'L', o.L);
  if (!Number.isInteger(o.R) || o.R < 0) throw expected('KVANT_SHAPE', 'an integer rope width >= 0', 'R', o.R);
  if (q.dtype !== 'f32' || q.ndim !== 3 || q.shape[2] !== o.L + o.R) throw expected('KVANT_SHAPE', `an f32 [B, H, ${o.L + o.R}] tensor`, 'q', q.shape);
  const [B, H] = q.shape;
  checkTensor(cache.pool, 'cache.pool');
  if (cache.pool.dtype !== 'bf16') throw new KvantError('KVANT_DTYPE', `Expected a bf16 latent cache to match q's layout but it is ${cache.pool.dtype}`);
  const rowBytes = (o.L + o.R) * 2;
  const numPages = Math.floor(cache.pool.byteLength / (rowBytes * cache.pageSize));
  if (cache.pageTable.length !== B * cache.maxPages || cache.seqLens.length !== B)
    throw new KvantError('KVANT_SHAPE', `Expected a page table of ${B} x ${cache.maxPages} and ${B} sequence lengths`);
  const out = Tensor.zeros([B, H, o.L], 'f32');
  const lse = Tensor.zeros([B, H], 'f32');
  const isa = o.isa === undefined ? undefined : ISA[o.isa];
  callNative(() =>
    native().mlaDecode(...raw(q), ...raw(out), ...raw(lse), B, H, o.L, o.R, o.scale, ...raw(cache.pool), numPages, cache.pageSize, cache.maxPages,
      ...i32raw(cache.pageTable), ...i32raw(cache.seqLens), isa),
  );
  return { out, lse };
}
