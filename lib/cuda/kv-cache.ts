/**
 * The standard (non-MLA) paged K/V cache in device memory: {@link PagedKVCache}'s row format
 * and page layout exactly (per token and layer, K and V of every kv head in the cache type —
 * f16, bf16, or q8 / q6 / q4 blocks of 32 values, optionally Hadamard-rotated; inside a page a
 * layer's block is head-major, head h holding pageSize entries [K | V]), the CPU's sequence
 * bookkeeping (SequenceTable over a {@link PageBook} of one device pool allocated up front), and
 * batched split-KV paged decode attention reading the quantized pages directly
 * (csrc/cuda/kv_cache.cuh `pagedDecode`, GQA included). Same bytes as the CPU cache for the same
 * rows (tested), so the two caches' attention agrees to the kernels' f32 rounding.
 */
import { KvantError, callNative, expected } from '../errors';
import { KV_DEFAULT_HADAMARD, KV_TYPE_CODE, KvCacheType, checkKvType, isQuantized, segmentBytes } from '../kv/format';
import { checkDim, checkPaging } from '../kv/mla-cache';
import { DeviceTensor, StreamOptions, checkDeviceTensor, streamArg } from './device';
import { KvHeadPagesArgs, cudaNative } from './native';
import { DevicePagedStore } from './rows';

/** Head dims the device paged decode is instantiated for (append and gather take any). */
export const DEVICE_DECODE_HEAD_DIMS: readonly number[] = [64, 128];

/** Options of a device standard paged K/V cache (as {@link PagedCacheOptions}, budget required). */
export interface DevicePagedCacheOptions {
  layers: number;
  kvHeads: number;
  /** Head dim of K and V; a multiple of 32 for quantized types; 64 or 128 for decode. */
  headDim: number;
  type?: KvCacheType;
  /** Tokens per page, 16..256 (default 64). */
  pageSize?: number;
  /** Bytes of device memory for the pages (allocated once, at construction). */
  budgetBytes: number;
  hadamard?: boolean;
}

function f32Dev(t: unknown, name: string): DeviceTensor {
  const x = checkDeviceTensor(t, name);
  if (x.dtype !== 'f32') throw expected('KVANT_DTYPE', 'an f32 tensor', `${name}.dtype`, x.dtype);
  return x;
}

/** Paged K/V cache in device memory with batched paged decode attention on the device. */
export class DevicePagedKVCache extends DevicePagedStore {
  readonly type: KvCacheType;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly hadamard: boolean;

  /** rowBytes here: one token of one layer, K and V of every head. */
  constructor(o: DevicePagedCacheOptions) {
    if (typeof o !== 'object' || o === null) throw expected('KVANT_SHAPE', 'an options object', 'options', o);
    const layers = checkDim(o.layers, 'layers');
    const kvHeads = checkDim(o.kvHeads, 'kvHeads');
    const headDim = checkDim(o.headDim, 'headDim');
    const type = checkKvType(o.type ?? 'bf16');
    const pageSize = checkPaging(o.pageSize, o.budgetBytes);
    if (typeof o.budgetBytes !== 'number') throw expected('KVANT_RANGE', 'a number of bytes', 'budgetBytes', o.budgetBytes);
    if (isQuantized(type) && headDim % 32 !== 0)
      throw new KvantError('KVANT_SHAPE', `Expected headDim to be a multiple of 32 for a ${type} cache but it is ${headDim}`);
    super(layers, pageSize, 2 * kvHeads * segmentBytes(type, headDim), o.budgetBytes);
    this.type = type;
    this.kvHeads = kvHeads;
    this.headDim = headDim;
    this.hadamard = isQuantized(type) && (o.hadamard ?? KV_DEFAULT_HADAMARD[type]);
  }

  private pagesArgs(layer: number): KvHeadPagesArgs {
    this.seqs.layer(layer);
    return [...this.live().rawArgs(), this.pageSize, this.pageBytes, layer * this.pageSize * this.rowBytes, KV_TYPE_CODE[this.type], this.kvHeads, this.headDim,
      this.hadamard];
  }

  private checkKv(t: unknown, name: string): number {
    const x = f32Dev(t, name);
    if (x.ndim !== 3 || x.shape[1] !== this.kvHeads || x.shape[2] !== this.headDim)
      throw expected('KVANT_SHAPE', `a tensor of shape [T, ${this.kvHeads}, ${this.headDim}]`, `${name}.shape`, x.shape);
    return x.shape[0];
  }

  /** @internal The device pool (u8 [numPages · pageBytes]); the CPU cache's page bytes, page for page. */
  get poolTensor(): DeviceTensor {
    return this.live();
  }

  /**
   * k, v f32 [T, kvHeads, headDim] (device), quantized on the device into positions
   * length(seq, layer)..+T: the CPU cache's bytes. KVANT_RANGE (nothing counted as appended) on
   * a row the CPU would refuse (non-finite, or overflowing the cache type).
   */
  append(seq: number, layer: number, k: DeviceTensor, v: DeviceTensor, opts: StreamOptions = {}): void {
    this.seqs.get(seq);
    this.seqs.layer(layer);
    const T = this.checkKv(k, 'k');
    if (this.checkKv(v, 'v') !== T) throw new KvantError('KVANT_SHAPE', `Expected k and v to hold the same number of tokens but they hold ${T} and ${v.shape[0]}`);
    if (T === 0) return;
    const p = this.pagesArgs(layer);
    const slots = this.seqs.slotsForAppend(seq, layer, T);
    const dslots = DeviceTensor.fromHost(slots);
    try {
      const nat = cudaNative();
      callNative(() => nat.kvHeadsAppend(...p, ...k.rawArgs(), ...v.rawArgs(), T, ...dslots.rawArgs(), streamArg(opts.stream)));
    } finally {
      dslots.free();
    }
    this.seqs.get(seq).lengths[layer] += T;
  }

  /**
   * Batched paged decode: q f32 [B, Hq, headDim] (device; Hq a multiple of kvHeads, query head j
   * uses kv head j / (Hq / kvHeads)); seqs[b] attends over all its rows of `layer`. Returns new
   * device tensors out f32 [B, Hq, headDim] and lse f32 [B, Hq]; scale defaults to headDim^-0.5.
   * Splits of `keysPerSplit` keys (default 512, as the CPU) are merged in a fixed order, so a
   * row's result depends on its own sequence only.
   */
  decode(layer: number, seqs: readonly number[], q: DeviceTensor, scale: number = this.headDim ** -0.5, opts: StreamOptions & { keysPerSplit?: number } = {}): { out: DeviceTensor; lse: DeviceTensor } {
    this.seqs.layer(layer);
    if (!Array.isArray(seqs) || seqs.length === 0) throw expected('KVANT_SHAPE', 'a non-empty array of sequence ids', 'seqs', seqs);
    checkDeviceTensor(q, 'q');
    if (q.dtype !== 'f32') throw new KvantError('KVANT_DTYPE', `Expected q as f32 (the cache decodes ${this.type} rows to f32) but it is ${q.dtype}`);
    if (q.ndim !== 3 || q.shape[0] !== seqs.length || q.shape[2] !== this.headDim)
      throw expected('KVANT_SHAPE', `q of shape [${seqs.length}, Hq, ${this.headDim}]`, 'q.shape', q.shape);
    const [B, Hq] = q.shape;
    if (Hq === 0 || Hq % this.kvHeads !== 0) throw new KvantError('KVANT_SHAPE', `Expected the query heads (${Hq}) to be a multiple of the kv heads (${this.kvHeads})`);
    if (!DEVICE_DECODE_HEAD_DIMS.includes(this.headDim))
      throw new KvantError('KVANT_SHAPE', `Expected headDim in {${DEVICE_DECODE_HEAD_DIMS.join(', ')}} for the device paged decode but it is ${this.headDim}`);
    if (typeof scale !== 'number' || !Number.isFinite(scale)) throw expected('KVANT_RANGE', 'a finite number', 'scale', scale);
    const kps = opts.keysPerSplit ?? 512;
    if (!Number.isInteger(kps) || kps < 32 || kps % 32 !== 0) throw expected('KVANT_SHAPE', 'a positive multiple of 32', 'keysPerSplit', kps);
    const p = this.pagesArgs(layer);
    const t = this.seqs.batch(seqs, layer);
    const dpt = DeviceTensor.fromHost(t.pageTable);
    const dsl = DeviceTensor.fromHost(t.seqLens);
    const out = DeviceTensor.empty([B, Hq, this.headDim], 'f32');
    const lse = DeviceTensor.empty([B, Hq], 'f32');
    try {
      const nat = cudaNative();
      callNative(() =>
        nat.kvHeadsPagedDecode(...q.rawArgs(), ...out.rawArgs(), ...lse.rawArgs(), B, Hq, scale, ...p, ...dpt.rawArgs(), t.maxPages, ...dsl.rawArgs(), kps,
          streamArg(opts.stream)),
      );
    } catch (e) {
      out.free();
      lse.free();
      throw e;
    } finally {
      dpt.free();
      dsl.free();
    }
    return { out, lse };
  }

  /** Dequantized K and V of rows [start, end) of one layer: new device tensors f32 [end-start, kvHeads, headDim]. */
  gather(seq: number, layer: number, start: number, end: number, opts: StreamOptions = {}): { k: DeviceTensor; v: DeviceTensor } {
    const p = this.pagesArgs(layer);
    const slots = this.seqs.slotsForRead(seq, layer, start, end);
    const k = DeviceTensor.empty([end - start, this.kvHeads, this.headDim], 'f32');
    const v = DeviceTensor.empty([end - start, this.kvHeads, this.headDim], 'f32');
    if (!slots.length) return { k, v };
    const dslots = DeviceTensor.fromHost(slots);
    try {
      const nat = cudaNative();
      callNative(() => nat.kvHeadsGather(...p, ...k.rawArgs(), ...v.rawArgs(), slots.length, ...dslots.rawArgs(), streamArg(opts.stream)));
    } catch (e) {
      k.free();
      v.free();
      throw e;
    } finally {
      dslots.free();
    }
    return { k, v };
  }
}
