/**
 * The DeepSeek-V2 MLA latent cache: per token and layer one row [c (latentDim) | k_pe (ropeDim)]
 * (the normalized latent, then the rotary key after RoPE; SPEC §1.8), shared by all heads.
 * The latent is stored in the cache type (f16, bf16, q8, q6, q4; quantized groups optionally
 * Hadamard-rotated); the rope part always stays bf16, as FlashMLA keeps it.
 * Decode runs the weight-absorbed attention directly over the (quantized) pages.
 */
import { KvantError, expected } from '../errors';
import { IsaLevel } from '../ops/small';
import { Tensor, checkOutTensor, checkTensor } from '../tensor';
import { KV_DEFAULT_HADAMARD, KvCacheDescriptor, KvCacheType, KvSegmentDesc, checkKvType, isQuantized, segmentBytes } from './format';
import { PagePool, SequenceCache, SequenceTable } from './pages';
import { DecodeLayout, LayerPages, pagedDecodeRaw, readRows, writeRows } from './rows';

export type { KvCacheType } from './format';

/** Options of an MLA latent cache. */
export interface MlaCacheOptions {
  layers: number;
  /** kv_lora_rank (512 for DeepSeek-V2); a multiple of 32 for quantized types. */
  latentDim: number;
  /** qk_rope_head_dim (64). */
  ropeDim: number;
  /** Element type of the latent (default 'bf16'). */
  type?: KvCacheType;
  /** Tokens per page, 16..256 (default 64, FlashMLA's page). */
  pageSize?: number;
  /** Byte cap on the cache's pages (default: no budget beyond available memory). */
  budgetBytes?: number;
  /** Rotate quantized groups by the 32-point Hadamard transform (default: per type, KV_DEFAULT_HADAMARD). */
  hadamard?: boolean;
  /** Pin an ISA level (tests compare levels); default the process's chosen level. */
  isa?: IsaLevel;
}

/** Checks the options shared by both caches. */
export function checkPaging(pageSize: unknown, budgetBytes: unknown): number {
  const ps = pageSize ?? 64;
  if (typeof ps !== 'number' || !Number.isInteger(ps) || ps < 16 || ps > 256) throw expected('KVANT_RANGE', 'an integer page size in 16..256', 'pageSize', ps);
  if (budgetBytes !== undefined && (typeof budgetBytes !== 'number' || !(budgetBytes >= 0) || !Number.isFinite(budgetBytes)))
    throw expected('KVANT_RANGE', 'a non-negative number of bytes', 'budgetBytes', budgetBytes);
  return ps;
}

/** Validates an integer dimension in min..65536 (KVANT_SHAPE otherwise). */
export function checkDim(v: unknown, name: string, min = 1): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > 65536) throw expected('KVANT_SHAPE', `an integer in ${min}..65536`, name, v);
  return v;
}

/**
 * What every paged cache shares: the page pool, the sequence table and the page geometry.
 * Subclasses define the row layout and the attention.
 */
export abstract class PagedCacheBase extends SequenceCache {
  readonly type: KvCacheType;
  readonly pageSize: number;
  /** Bytes per token over all layers, this cache type. */
  readonly bytesPerToken: number;
  readonly layers: number;
  /** What the rows hold and how they are encoded. */
  readonly descriptor: KvCacheDescriptor;
  protected readonly pool: PagePool;
  protected readonly seqs: SequenceTable;
  protected readonly isa?: IsaLevel;

  /** Byte distance between consecutive tokens inside a layer's block of a page. */
  protected readonly rowStride: number;

  /**
   * rowBytes: one token of one layer (all heads); rowStride: token stride inside a layer's
   * block of pageSize·rowBytes (= rowBytes token-major; smaller for a head-major layout).
   */
  protected constructor(layers: number, type: KvCacheType, pageSize: number, budgetBytes: number | undefined, hadamard: boolean, rowBytes: number, segments: KvSegmentDesc[], isa?: IsaLevel, rowStride = rowBytes) {
    super();
    this.rowStride = rowStride;
    this.layers = layers;
    this.type = type;
    this.pageSize = pageSize;
    this.bytesPerToken = rowBytes * layers;
    this.descriptor = Object.freeze({ type, hadamard, pageSize, rowBytes, segments: Object.freeze(segments.map((x) => Object.freeze({ ...x }))) });
    this.pool = new PagePool(rowBytes * pageSize * layers, budgetBytes);
    this.seqs = new SequenceTable(this.pool, pageSize, layers);
    this.isa = isa;
  }

  protected pages(layer: number): LayerPages {
    const pool = this.pool.storage();
    const layerBytes = this.pageSize * this.descriptor.rowBytes;
    return { pool, numPages: this.pool.numPages, pageSize: this.pageSize, pageBytes: this.pool.pageBytes, layerOffset: layer * layerBytes, rowBytes: this.rowStride };
  }

  /** A new sequence sharing this one's rows (copy-on-write prefix sharing). */
  fork(seq: number): number {
    return this.seqs.fork(seq);
  }

  /** Frees the pool; the cache is unusable afterwards. */
  dispose(): void {
    this.pool.dispose();
  }
}

/** Paged MLA latent cache with absorbed decode attention. */
export class MlaKVCache extends PagedCacheBase {
  readonly latentDim: number;
  readonly ropeDim: number;
  private readonly segs: KvSegmentDesc[];
  // The decode layout: keys are the whole row (latent, then rope), values the latent (read from the key bytes).
  private readonly layout: DecodeLayout;

  constructor(o: MlaCacheOptions) {
    if (typeof o !== 'object' || o === null) throw expected('KVANT_SHAPE', 'an options object', 'options', o);
    const layers = checkDim(o.layers, 'layers');
    const latentDim = checkDim(o.latentDim, 'latentDim');
    const ropeDim = checkDim(o.ropeDim, 'ropeDim', 0);
    const type = checkKvType(o.type ?? 'bf16');
    const pageSize = checkPaging(o.pageSize, o.budgetBytes);
    if (isQuantized(type) && latentDim % 32 !== 0)
      throw new KvantError('KVANT_SHAPE', `Expected latentDim to be a multiple of 32 for a ${type} cache but it is ${latentDim}`);
    const hadamard = isQuantized(type) && (o.hadamard ?? KV_DEFAULT_HADAMARD[type]);
    const latBytes = segmentBytes(type, latentDim);
    const segs: KvSegmentDesc[] = [
      { type, n: latentDim, hadamard, offset: 0, src: 0 },
      { type: 'bf16', n: ropeDim, hadamard: false, offset: latBytes, src: latentDim },
    ];
    super(layers, type, pageSize, o.budgetBytes, hadamard, latBytes + 2 * ropeDim, segs, o.isa);
    this.latentDim = latentDim;
    this.ropeDim = ropeDim;
    this.segs = segs;
    this.layout = { k0: segs[0], k1: segs[1], v: { ...segs[0] }, headStride: 0, vFromKey: true };
  }

  private get width(): number {
    return this.latentDim + this.ropeDim;
  }

  /** rows f32 [T, latentDim + ropeDim] = [normalized latent c | k_pe after RoPE], written at positions length(seq, layer)..+T. */
  append(seq: number, layer: number, rows: Tensor): void {
    this.seqs.get(seq);
    this.seqs.layer(layer);
    checkTensor(rows, 'rows');
    if (rows.dtype !== 'f32') throw expected('KVANT_DTYPE', 'f32 rows', 'rows.dtype', rows.dtype);
    if (rows.ndim !== 2 || rows.shape[1] !== this.width) throw expected('KVANT_SHAPE', `rows of shape [T, ${this.width}]`, 'rows.shape', rows.shape);
    const T = rows.shape[0];
    if (T === 0) return;
    const slots = this.seqs.slotsForAppend(seq, layer, T);
    writeRows(this.pages(layer), this.segs, rows, this.width, slots, this.isa);
    this.seqs.get(seq).lengths[layer] += T;
  }

  /**
   * One new row per sequence, in one write: rows f32 [B, latentDim + ropeDim], row b at position
   * length(seqs[b], layer) of sequence seqs[b] (distinct ids). The same as B appends of one row
   * each (what a batched decode step stores per layer), in one native call instead of B.
   */
  appendBatch(seqs: readonly number[], layer: number, rows: Tensor): void {
    this.seqs.layer(layer);
    checkTensor(rows, 'rows');
    if (rows.dtype !== 'f32') throw expected('KVANT_DTYPE', 'f32 rows', 'rows.dtype', rows.dtype);
    if (!Array.isArray(seqs) || rows.ndim !== 2 || rows.shape[0] !== seqs.length || rows.shape[1] !== this.width)
      throw expected('KVANT_SHAPE', `rows of shape [${Array.isArray(seqs) ? seqs.length : 'B'}, ${this.width}] (one per sequence)`, 'rows.shape', rows.shape);
    if (new Set(seqs).size !== seqs.length) throw expected('KVANT_RANGE', 'distinct sequence ids', 'seqs', seqs);
    const states = seqs.map((q) => this.seqs.get(q));
    if (seqs.length === 0) return;
    // Every slot is reserved (pages allocated) before any row is written or any length moves.
    const slots = new Int32Array(seqs.length);
    seqs.forEach((q, b) => (slots[b] = this.seqs.slotsForAppend(q, layer, 1)[0]));
    writeRows(this.pages(layer), this.segs, rows, this.width, slots, this.isa);
    for (const s of states) s.lengths[layer] += 1;
  }

  /**
   * Absorbed decode for a batch: q f32 [B, H, L+R]; each seqs[b] attends over all rows of `layer`.
   * out f32 [B, H, L] = Σ softmax(scale·q·row)·c, lse f32 [B, H] (natural log; +inf for an empty sequence).
   * `into`: f32 tensors of those shapes to write (overwritten) instead of allocating them.
   */
  decode(layer: number, seqs: readonly number[], q: Tensor, scale: number, into?: { out: Tensor; lse: Tensor }): { out: Tensor; lse: Tensor } {
    this.seqs.layer(layer);
    if (!Array.isArray(seqs) || seqs.length === 0) throw expected('KVANT_SHAPE', 'a non-empty array of sequence ids', 'seqs', seqs);
    checkTensor(q, 'q');
    if (q.dtype !== 'f32') throw new KvantError('KVANT_DTYPE', `Expected q as f32 (the cache decodes ${this.type} rows to f32) but it is ${q.dtype}`);
    if (q.ndim !== 3 || q.shape[0] !== seqs.length || q.shape[2] !== this.width)
      throw expected('KVANT_SHAPE', `q of shape [${seqs.length}, H, ${this.width}]`, 'q.shape', q.shape);
    if (typeof scale !== 'number' || !Number.isFinite(scale)) throw expected('KVANT_RANGE', 'a finite number', 'scale', scale);
    const [B, H] = q.shape;
    const { pageTable, maxPages, seqLens } = this.seqs.batch(seqs, layer);
    let out: Tensor, lse: Tensor;
    if (into) {
      out = checkOutTensor(into.out, 'into.out', 'f32', [B, H, this.latentDim]);
      lse = checkOutTensor(into.lse, 'into.lse', 'f32', [B, H]);
    } else {
      out = Tensor.zeros([B, H, this.latentDim], 'f32');
      lse = Tensor.zeros([B, H], 'f32');
    }
    if (H === 0) return { out, lse };
    pagedDecodeRaw(q, out, lse, B, H, 1, scale, this.pages(layer), pageTable, maxPages, seqLens, this.layout, this.isa);
    return { out, lse };
  }

  /** Dequantized rows [start, end) of one layer, f32 [end-start, L+R] (chunked prefill). */
  gather(seq: number, layer: number, start: number, end: number): Tensor {
    this.seqs.layer(layer);
    const slots = this.seqs.slotsForRead(seq, layer, start, end);
    const out = Tensor.zeros([end - start, this.width], 'f32');
    if (slots.length) readRows(this.pages(layer), this.segs, out, this.width, slots, this.isa);
    return out;
  }
}
