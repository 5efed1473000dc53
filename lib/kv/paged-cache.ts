/**
 * The standard paged KV cache: per token and layer, K and V of every kv head, each head's
 * vector stored in the cache type (groups of 32 along the head dim for q8/q6/q4). Row layout:
 * [K head 0 | … | K head Hkv-1 | V head 0 | … | V head Hkv-1]. Decode attention reads the
 * quantized pages directly for a batch of sequences (continuous batching), GQA included.
 *
 * Inside a page, a layer's block is head-major (as vLLM's): head h holds pageSize consecutive
 * token entries [K (headDim) | V (headDim)], so a decode task that walks one kv head over a
 * run of tokens reads pageSize·2·headBytes contiguous bytes instead of 2·headBytes every
 * rowBytes (a 16 KB stride defeats the hardware prefetcher: one DRAM latency per 256 bytes).
 */
import { KvantError, expected } from '../errors';
import { IsaLevel } from '../ops/small';
import { Tensor, checkTensor } from '../tensor';
import { KV_DEFAULT_HADAMARD, KvCacheType, KvSegmentDesc, checkKvType, isQuantized, segmentBytes } from './format';
import { PagedCacheBase, checkDim, checkPaging } from './mla-cache';
import { DecodeLayout, pagedDecodeRaw, readRows, writeRows } from './rows';

/** Options of a standard paged K/V cache. */
export interface PagedCacheOptions {
  layers: number;
  kvHeads: number;
  /** Head dim of K and V; a multiple of 32 for quantized types. */
  headDim: number;
  type?: KvCacheType;
  /** Tokens per page, 16..256 (default 64). */
  pageSize?: number;
  budgetBytes?: number;
  hadamard?: boolean;
  isa?: IsaLevel;
}

/** Paged K/V cache with batched paged decode attention. */
export class PagedKVCache extends PagedCacheBase {
  readonly kvHeads: number;
  readonly headDim: number;
  private readonly kSegs: KvSegmentDesc[];
  private readonly vSegs: KvSegmentDesc[];
  private readonly headBytes: number;
  // The decode layout (keys and values head-major in separate segments): fixed, so packed once.
  private readonly layout: DecodeLayout;

  constructor(o: PagedCacheOptions) {
    if (typeof o !== 'object' || o === null) throw expected('KVANT_SHAPE', 'an options object', 'options', o);
    const layers = checkDim(o.layers, 'layers');
    const kvHeads = checkDim(o.kvHeads, 'kvHeads');
    const headDim = checkDim(o.headDim, 'headDim');
    const type = checkKvType(o.type ?? 'bf16');
    const pageSize = checkPaging(o.pageSize, o.budgetBytes);
    if (isQuantized(type) && headDim % 32 !== 0) throw new KvantError('KVANT_SHAPE', `Expected headDim to be a multiple of 32 for a ${type} cache but it is ${headDim}`);
    const hadamard = isQuantized(type) && (o.hadamard ?? KV_DEFAULT_HADAMARD[type]);
    const headBytes = segmentBytes(type, headDim);
    const kSegs: KvSegmentDesc[] = [];
    const vSegs: KvSegmentDesc[] = [];
    const headBlock = pageSize * 2 * headBytes; // one head's pageSize entries
    for (let h = 0; h < kvHeads; h++) {
      kSegs.push({ type, n: headDim, hadamard, offset: h * headBlock, src: h * headDim });
      vSegs.push({ type, n: headDim, hadamard, offset: h * headBlock + headBytes, src: h * headDim });
    }
    super(layers, type, pageSize, o.budgetBytes, hadamard, 2 * kvHeads * headBytes, [...kSegs, ...vSegs], o.isa, 2 * headBytes);
    this.kvHeads = kvHeads;
    this.headDim = headDim;
    this.kSegs = kSegs;
    this.vSegs = vSegs;
    this.headBytes = headBytes;
    const none: KvSegmentDesc = { type: 'bf16', n: 0, hadamard: false, offset: 0, src: 0 };
    this.layout = { k0: kSegs[0], k1: none, v: vSegs[0], headStride: headBlock, vFromKey: false };
  }

  private checkKv(t: Tensor, name: string): number {
    checkTensor(t, name);
    if (t.dtype !== 'f32') throw expected('KVANT_DTYPE', 'f32', `${name}.dtype`, t.dtype);
    if (t.ndim !== 3 || t.shape[1] !== this.kvHeads || t.shape[2] !== this.headDim)
      throw expected('KVANT_SHAPE', `a tensor of shape [T, ${this.kvHeads}, ${this.headDim}]`, `${name}.shape`, t.shape);
    return t.shape[0];
  }

  /** k, v f32 [T, kvHeads, headDim], written at positions length(seq, layer)..+T. */
  append(seq: number, layer: number, k: Tensor, v: Tensor): void {
    this.seqs.get(seq);
    this.seqs.layer(layer);
    const T = this.checkKv(k, 'k');
    if (this.checkKv(v, 'v') !== T) throw new KvantError('KVANT_SHAPE', `Expected k and v to hold the same number of tokens but they hold ${T} and ${v.shape[0]}`);
    if (T === 0) return;
    const slots = this.seqs.slotsForAppend(seq, layer, T);
    const w = this.kvHeads * this.headDim;
    writeRows(this.pages(layer), this.kSegs, k, w, slots, this.isa);
    writeRows(this.pages(layer), this.vSegs, v, w, slots, this.isa);
    this.seqs.get(seq).lengths[layer] += T;
  }

  /**
   * Batched paged decode: q f32 [B, Hq, headDim] (Hq a multiple of kvHeads; query head j uses
   * kv head j / (Hq / kvHeads)); seqs[b] attends over all its rows of `layer`.
   * Returns out f32 [B, Hq, headDim] and lse f32 [B, Hq]; scale defaults to headDim^-0.5.
   */
  decode(layer: number, seqs: readonly number[], q: Tensor, scale: number = this.headDim ** -0.5): { out: Tensor; lse: Tensor } {
    this.seqs.layer(layer);
    if (!Array.isArray(seqs) || seqs.length === 0) throw expected('KVANT_SHAPE', 'a non-empty array of sequence ids', 'seqs', seqs);
    checkTensor(q, 'q');
    if (q.dtype !== 'f32') throw new KvantError('KVANT_DTYPE', `Expected q as f32 (the cache decodes ${this.type} rows to f32) but it is ${q.dtype}`);
    if (q.ndim !== 3 || q.shape[0] !== seqs.length || q.shape[2] !== this.headDim)
      throw expected('KVANT_SHAPE', `q of shape [${seqs.length}, Hq, ${this.headDim}]`, 'q.shape', q.shape);
    const [B, Hq] = q.shape;
    if (Hq === 0 || Hq % this.kvHeads !== 0) throw new KvantError('KVANT_SHAPE', `Expected the query heads (${Hq}) to be a multiple of the kv heads (${this.kvHeads})`);
    if (typeof scale !== 'number' || !Number.isFinite(scale)) throw expected('KVANT_RANGE', 'a finite number', 'scale', scale);
    const { pageTable, maxPages, seqLens } = this.seqs.batch(seqs, layer);
    const out = Tensor.zeros([B, Hq, this.headDim], 'f32');
    const lse = Tensor.zeros([B, Hq], 'f32');
    pagedDecodeRaw(q, out, lse, B, Hq, this.kvHeads, scale, this.pages(layer), pageTable, maxPages, seqLens, this.layout, this.isa);
    return { out, lse };
  }

  /** Dequantized K and V of rows [start, end) of one layer: f32 [end-start, kvHeads, headDim] each. */
  gather(seq: number, layer: number, start: number, end: number): { k: Tensor; v: Tensor } {
    this.seqs.layer(layer);
    const slots = this.seqs.slotsForRead(seq, layer, start, end);
    const k = Tensor.zeros([end - start, this.kvHeads, this.headDim], 'f32');
    const v = Tensor.zeros([end - start, this.kvHeads, this.headDim], 'f32');
    if (slots.length) {
      const w = this.kvHeads * this.headDim;
      readRows(this.pages(layer), this.kSegs, k, w, slots, this.isa);
      readRows(this.pages(layer), this.vSegs, v, w, slots, this.isa);
    }
    return { k, v };
  }
}
