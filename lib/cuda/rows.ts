/**
 * The device ops the DeepSeek-V2 forward needs beyond the kernel families in ops.ts: dense
 * (float-weight) linear layers, also as H per-head linears with strides (the absorbed MLA
 * matrices), strided row copies and gathers, the weighted row accumulate of the residual and the
 * MoE combine, and the paged MLA latent cache on the device (append with quantization, absorbed
 * paged decode over the stored pages). Contracts: csrc/cuda/dense.cuh and kv_cache.cuh.
 * Shapes are checked here with messages naming the argument; the binding re-checks every extent.
 */
import { DType, dtypeCode } from '../dtype';
import { KvantError, callNative, expected } from '../errors';
import { KV_DEFAULT_HADAMARD, KV_TYPE_CODE, KvCacheType, isQuantized, segmentBytes } from '../kv/format';
import { Admission, PageAccounting, SequenceCache, SequenceTable } from '../kv/pages';
import { DeviceTensor, StreamOptions, checkDeviceTensor, streamArg } from './device';
import { DeviceBufferHandle, MlaPagesArgs, cudaNative } from './native';

type Raw = [DeviceBufferHandle, number, number];
const NIL: [null, number, number] = [null, 0, 0];
const opt = (t: DeviceTensor | undefined): [DeviceBufferHandle | null, number, number] => (t ? t.rawArgs() : NIL);

/** A tensor's raw triple starting `elems` elements in. */
function at(t: DeviceTensor, elems: number): Raw {
  const [b, o, n] = t.rawArgs();
  const skip = elems * (t.byteLength / Math.max(1, t.numel));
  if (skip > n) throw new KvantError('KVANT_SHAPE', `Expected an element offset within ${t.numel} elements but received ${elems}`);
  return [b, o + skip, n - skip];
}

function f32(t: unknown, name: string): DeviceTensor {
  const x = checkDeviceTensor(t, name);
  if (x.dtype !== 'f32') throw expected('KVANT_DTYPE', 'an f32 tensor', `${name}.dtype`, x.dtype);
  return x;
}

const FLOAT_W: readonly DType[] = ['f32', 'f16', 'bf16'];

/** Geometry of H independent linears y[m, h, n] = Σ_k x[m·xRow + h·xHead + k] · W[wOffset + h·wHead + n·wRow + k] (element strides). */
export interface DenseHeadsGeometry {
  M: number;
  H: number;
  N: number;
  K: number;
  xRow: number;
  xHead: number;
  /** First element of W used (e.g. the value rows of kv_b_proj). Default 0. */
  wOffset?: number;
  wHead: number;
  wRow: number;
  yRow: number;
  yHead: number;
  /** First element of y written. Default 0. */
  yOffset?: number;
  /** First element of x read. Default 0. */
  xOffset?: number;
}

/**
 * H per-head dense linears with strides (f32 activations, f32 / f16 / bf16 weights, f32
 * accumulation; each output is one warp's fixed-order sum over K, so a row's result does not
 * depend on the other rows).
 */
export function denseLinearHeads(x: DeviceTensor, w: DeviceTensor, y: DeviceTensor, g: DenseHeadsGeometry, opts: StreamOptions = {}): DeviceTensor {
  f32(x, 'x');
  checkDeviceTensor(w, 'w');
  f32(y, 'y');
  if (!FLOAT_W.includes(w.dtype)) throw expected('KVANT_DTYPE', 'an f32, f16 or bf16 weight', 'w.dtype', w.dtype);
  for (const k of ['M', 'H', 'N', 'K', 'xRow', 'xHead', 'wHead', 'wRow', 'yRow', 'yHead'] as const)
    if (!Number.isSafeInteger(g[k]) || g[k] < 0) throw expected('KVANT_RANGE', 'a non-negative integer', k, g[k]);
  const nat = cudaNative();
  callNative(() =>
    nat.denseLinear(...at(x, g.xOffset ?? 0), ...at(w, g.wOffset ?? 0), dtypeCode(w.dtype), ...at(y, g.yOffset ?? 0), g.M, g.H, g.N, g.K, g.xRow, g.xHead, g.wHead,
      g.wRow, g.yRow, g.yHead, streamArg(opts.stream)),
  );
  return y;
}

/** y [..., N] f32 = x [..., K] · Wᵀ for a float weight W [N, K] on the device (out: a given output). */
export function denseLinear(x: DeviceTensor, w: DeviceTensor, opts: StreamOptions & { out?: DeviceTensor } = {}): DeviceTensor {
  f32(x, 'x');
  checkDeviceTensor(w, 'w');
  if (w.ndim !== 2) throw expected('KVANT_SHAPE', 'a 2-D weight [N, K]', 'w.shape', w.shape);
  const [N, K] = w.shape;
  if (x.ndim === 0 || x.shape[x.ndim - 1] !== K) throw new KvantError('KVANT_SHAPE', `Expected x's last dimension to be K = ${K} (w is [${N}, ${K}]) but x is [${x.shape.join(', ')}]`);
  const M = x.numel / K;
  const y = opts.out ?? DeviceTensor.empty([...x.shape.slice(0, -1), N], 'f32');
  if (y.numel !== M * N) throw new KvantError('KVANT_SHAPE', `Expected out to have ${M * N} elements but it has ${y.numel}`);
  return denseLinearHeads(x, w, y, { M, H: 1, N, K, xRow: K, xHead: 0, wHead: 0, wRow: K, yRow: N, yHead: 0 }, opts);
}

/** Options of {@link copyRows}: element offsets and row strides of both sides, an optional row gather. */
export interface CopyRowsOptions extends StreamOptions {
  rows: number;
  n: number;
  srcRow: number;
  dstRow: number;
  srcOffset?: number;
  dstOffset?: number;
  /** i32 [rows]: source row of each destination row (a gather); default row r. */
  idx?: DeviceTensor;
}

/** dst[dstOffset + r·dstRow + i] = src[srcOffset + idx[r]·srcRow + i] for i < n (f32). */
export function copyRows(src: DeviceTensor, dst: DeviceTensor, o: CopyRowsOptions): DeviceTensor {
  f32(src, 'src');
  f32(dst, 'dst');
  if (o.idx !== undefined && checkDeviceTensor(o.idx, 'idx').dtype !== 'i32') throw expected('KVANT_DTYPE', 'an i32 tensor', 'idx.dtype', o.idx.dtype);
  const nat = cudaNative();
  callNative(() =>
    nat.copyRows(...at(src, o.srcOffset ?? 0), o.srcRow, ...opt(o.idx), ...at(dst, o.dstOffset ?? 0), o.dstRow, o.rows, o.n, streamArg(o.stream)),
  );
  return dst;
}

/**
 * y[r] += Σ_j w[r, j] · src[idx[r, j]] (rows of n f32 values), j in order 0..J-1; without idx,
 * J = 1 and src row r; without w, weight 1 (the residual add).
 */
export function accumulateRows(y: DeviceTensor, src: DeviceTensor, o: StreamOptions & { idx?: DeviceTensor; w?: DeviceTensor; J?: number } = {}): DeviceTensor {
  f32(y, 'y');
  f32(src, 'src');
  if (y.ndim === 0) throw new KvantError('KVANT_SHAPE', 'Expected y to have at least one dimension');
  const n = y.shape[y.ndim - 1];
  const rows = y.numel / Math.max(1, n);
  if (o.w !== undefined) f32(o.w, 'w');
  if (o.idx !== undefined && checkDeviceTensor(o.idx, 'idx').dtype !== 'i32') throw expected('KVANT_DTYPE', 'an i32 tensor', 'idx.dtype', o.idx.dtype);
  const nat = cudaNative();
  callNative(() =>
    nat.accumulateRows(...y.rawArgs(), rows, n, ...src.rawArgs(), ...opt(o.idx), ...opt(o.w), o.J ?? 1, streamArg(o.stream)),
  );
  return y;
}

/**
 * Page accounting of a fixed pool that lives elsewhere (device memory): what SequenceTable uses
 * of PagePool (require / alloc / refcount / incref / decref / admission) without PagePool's host
 * storage, which would shadow every device page in host memory. Lowest free page first, as
 * PagePool. Copy-on-write (only reached through fork, which the device cache does not offer) is
 * refused.
 */
export class PageBook implements PageAccounting {
  readonly pageBytes: number;
  readonly maxPages: number;
  private readonly refs: Int32Array;
  private readonly free: number[] = [];
  private used = 0;

  constructor(pageBytes: number, pages: number) {
    this.pageBytes = pageBytes;
    this.maxPages = pages;
    this.refs = new Int32Array(pages);
    for (let p = pages - 1; p >= 0; p--) this.free.push(p);
  }
  get usedPages(): number {
    return this.used;
  }
  get numPages(): number {
    return this.maxPages;
  }
  admission(pages: number): Admission {
    const needed = pages * this.pageBytes;
    const available = (this.maxPages - this.used) * this.pageBytes;
    return { verdict: needed <= available ? 'ok' : needed <= this.maxPages * this.pageBytes ? 'wait' : 'never', needed, available };
  }
  require(pages: number, what: string): void {
    if (pages <= 0) return;
    const a = this.admission(pages);
    if (a.verdict !== 'ok')
      throw new KvantError('KVANT_OOM', `${what} needs ${a.needed} bytes (${pages} pages of ${this.pageBytes}) but ${a.available} bytes are available within the device KV cache budget`);
  }
  alloc(what: string): number {
    this.require(1, what);
    const p = this.free.pop()!;
    this.refs[p] = 1;
    this.used++;
    return p;
  }
  incref(p: number): void {
    this.refs[p]++;
  }
  decref(p: number): void {
    if (--this.refs[p] === 0) {
      this.used--;
      this.free.push(p);
      this.free.sort((a, b) => b - a);
    }
  }
  refcount(p: number): number {
    return this.refs[p] ?? 0;
  }
  copyOnWrite(): number {
    throw new KvantError('KVANT_RANGE', 'The device KV cache does not share pages between sequences');
  }
}

/**
 * The pages of a device cache: one device pool of budgetBytes / pageBytes pages allocated up
 * front (a page holds pageSize tokens of every layer), a page book of it and the CPU caches'
 * sequence table (page tables, lengths, reservations), so running out is the bookkeeping's
 * KVANT_OOM before anything is written.
 */
export abstract class DevicePagedStore extends SequenceCache {
  readonly pageSize: number;
  readonly layers: number;
  /** Bytes of one token of one layer. */
  readonly rowBytes: number;
  /** Bytes per token over all layers. */
  readonly bytesPerToken: number;
  readonly pageBytes: number;
  readonly numPages: number;
  protected readonly pool: PageBook;
  protected readonly seqs: SequenceTable;
  private storage: DeviceTensor | null;

  protected constructor(layers: number, pageSize: number, rowBytes: number, budgetBytes: number) {
    super();
    this.layers = layers;
    this.pageSize = pageSize;
    this.rowBytes = rowBytes;
    this.bytesPerToken = rowBytes * layers;
    this.pageBytes = rowBytes * pageSize * layers;
    this.numPages = Math.floor(budgetBytes / this.pageBytes);
    if (!(this.numPages >= 1)) // also a missing or NaN budget
      throw new KvantError('KVANT_OOM', `The device KV cache needs at least one page of ${this.pageBytes} bytes but its budget is ${budgetBytes} bytes`);
    this.pool = new PageBook(this.pageBytes, this.numPages);
    // SequenceTable only calls the accounting methods PageBook implements (it never reads storage).
    this.seqs = new SequenceTable(this.pool, this.pageSize, this.layers);
    this.storage = DeviceTensor.empty([this.numPages * this.pageBytes], 'u8');
  }

  /** The device pool; KVANT_RANGE once disposed. */
  protected live(): DeviceTensor {
    if (!this.storage) throw new KvantError('KVANT_RANGE', 'Expected a live KV cache but it was disposed');
    return this.storage;
  }

  /** Device bytes of the pool (allocated at construction). */
  get deviceBytes(): number {
    return this.numPages * this.pageBytes;
  }

  /** Frees the device pool; the cache is unusable afterwards. */
  dispose(): void {
    this.storage?.free();
    this.storage = null;
  }
}

/** Options of a device MLA latent cache. */
export interface DeviceMlaCacheOptions {
  layers: number;
  latentDim: number;
  ropeDim: number;
  type?: KvCacheType;
  /** Tokens per page (default 64). */
  pageSize?: number;
  /** Bytes of device memory for the pages (allocated once, at construction). */
  budgetBytes: number;
  hadamard?: boolean;
}

/**
 * The paged MLA latent cache in device memory: the CPU cache's row format exactly (latent in the
 * cache type, quantized groups optionally Hadamard-rotated, rope part bf16; see MlaKVCache), the
 * CPU's sequence bookkeeping (SequenceTable: page tables, lengths, reservations) over a page book of the device pool,
 * and one device pool of budgetBytes / pageBytes pages allocated up front, so running out is the
 * bookkeeping's KVANT_OOM before anything is written.
 */
export class DeviceMlaCache extends DevicePagedStore {
  readonly type: KvCacheType;
  readonly latentDim: number;
  readonly ropeDim: number;
  readonly hadamard: boolean;

  constructor(o: DeviceMlaCacheOptions) {
    const type = o.type ?? 'bf16';
    if (!(type in KV_TYPE_CODE)) throw expected('KVANT_RANGE', "'f16', 'bf16', 'q8', 'q6' or 'q4'", 'kvCache', o.type);
    const pageSize = o.pageSize ?? 64;
    if (!Number.isInteger(pageSize) || pageSize < 16 || pageSize > 256) throw expected('KVANT_RANGE', 'an integer page size in 16..256', 'pageSize', o.pageSize);
    if (isQuantized(type) && o.latentDim % 32 !== 0)
      throw new KvantError('KVANT_SHAPE', `Expected latentDim to be a multiple of 32 for a ${type} cache but it is ${o.latentDim}`);
    super(o.layers, pageSize, segmentBytes(type, o.latentDim) + 2 * o.ropeDim, o.budgetBytes);
    this.type = type;
    this.latentDim = o.latentDim;
    this.ropeDim = o.ropeDim;
    this.hadamard = isQuantized(type) && (o.hadamard ?? KV_DEFAULT_HADAMARD[type]);
  }

  private pagesArgs(layer: number): MlaPagesArgs {
    this.seqs.layer(layer);
    return [...this.live().rawArgs(), this.pageSize, this.pageBytes, layer * this.pageSize * this.rowBytes, this.rowBytes, KV_TYPE_CODE[this.type], this.latentDim,
      this.ropeDim, this.hadamard];
  }

  /**
   * Appends rows f32 [T, L+R] (device) of one sequence at its current length in `layer`
   * (quantized on the device, the CPU cache's bytes).
   */
  append(seq: number, layer: number, rows: DeviceTensor, opts: StreamOptions = {}): void {
    f32(rows, 'rows');
    const W = this.latentDim + this.ropeDim;
    if (rows.ndim !== 2 || rows.shape[1] !== W) throw expected('KVANT_SHAPE', `rows of shape [T, ${W}]`, 'rows.shape', rows.shape);
    const T = rows.shape[0];
    if (T === 0) return;
    const p = this.pagesArgs(layer);
    const slots = this.seqs.slotsForAppend(seq, layer, T);
    const dslots = DeviceTensor.fromHost(slots);
    try {
      const nat = cudaNative();
      callNative(() => nat.mlaAppend(...p, ...rows.rawArgs(), T, ...dslots.rawArgs(), streamArg(opts.stream)));
    } finally {
      dslots.free();
    }
    this.seqs.get(seq).lengths[layer] += T;
  }

  /**
   * Absorbed attention for R query rows: q f32 [R, H, L+R], row r over the first seqLens[r] rows
   * of sequence rowSeqs[r] in `layer` (prefill passes one sequence with growing lengths, the
   * causal mask; decode one row per sequence). Returns out f32 [R, H, L].
   */
  attend(layer: number, rowSeqs: readonly number[], seqLens: Int32Array, q: DeviceTensor, scale: number, opts: StreamOptions = {}): DeviceTensor {
    f32(q, 'q');
    const B = rowSeqs.length;
    const W = this.latentDim + this.ropeDim;
    if (q.ndim !== 3 || q.shape[0] !== B || q.shape[2] !== W) throw expected('KVANT_SHAPE', `q of shape [${B}, H, ${W}]`, 'q.shape', q.shape);
    const H = q.shape[1];
    const distinct = [...new Set(rowSeqs)];
    const t = this.seqs.batch(distinct, layer);
    const rowOf = new Map(distinct.map((s, i) => [s, i]));
    const pt = new Int32Array(B * t.maxPages);
    for (let r = 0; r < B; r++) {
      const i = rowOf.get(rowSeqs[r])!;
      if (seqLens[r] > t.seqLens[i]) throw new KvantError('KVANT_RANGE', `Expected seqLens[${r}] <= ${t.seqLens[i]} (rows stored) but it is ${seqLens[r]}`);
      pt.set(t.pageTable.subarray(i * t.maxPages, (i + 1) * t.maxPages), r * t.maxPages);
    }
    const dpt = DeviceTensor.fromHost(pt);
    const dsl = DeviceTensor.fromHost(seqLens);
    const out = DeviceTensor.empty([B, H, this.latentDim], 'f32');
    try {
      const nat = cudaNative();
      callNative(() =>
        nat.mlaPagedDecode(...q.rawArgs(), ...out.rawArgs(), ...NIL, B, H, scale, ...this.pagesArgs(layer), ...dpt.rawArgs(), t.maxPages, ...dsl.rawArgs(), 512,
          streamArg(opts.stream)),
      );
    } catch (e) {
      out.free();
      throw e;
    } finally {
      dpt.free();
      dsl.free();
    }
    return out;
  }
}
