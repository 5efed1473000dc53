/**
 * DeviceDeepSeekV2Model: DeepSeekV2Model's interface (load / prefill / decode / cache / memory /
 * dispose, what the generation worker and the scheduler drive) with the weights and the paged
 * latent KV cache in device memory and the forward on the CUDA backend (device-forward.ts).
 * Config parsing, the checkpoint inventory, weight naming and the absorbed per-head matrices
 * come from the CPU loader (weights.ts); the host mapping is closed once everything is uploaded.
 */
import { KvantError, expected } from '../../errors';
import { KV_TYPE_CODE, KvCacheType } from '../../kv/format';
import { memoryStats } from '../../cuda/device';
import { cudaNative } from '../../cuda/native';
import { DeviceMlaCache } from '../../cuda/rows';
import { DeviceSampleRow, sampleTokens } from '../../cuda/sampling';
import { DeepSeekV2Config } from './config';
import { ForwardConsts, forwardConsts } from './forward';
import { DeviceWeights, deviceForward, deviceForwardWith, deviceWeightBytes, freeWeights, uploadWeights } from './device-forward';
import type { LoadOptions, PrefillOptions } from './model';
import { loadWeights } from './weights';
import { checkActivations, checkContextRoom, checkTokenIds, prefillInChunks } from './inputs';

/** Tokens of KV cache the default device budget holds: this many full contexts (capped by free device memory). */
const DEFAULT_CONTEXTS = 4;
const DEFAULT_CHUNK = 256;

export class DeviceDeepSeekV2Model {
  readonly config: DeepSeekV2Config;
  readonly cache: DeviceMlaCache;
  readonly vocabSize: number;
  readonly maxContext: number;
  /** Always 'cuda'. */
  readonly backend = 'cuda' as const;
  /** The largest topK decodeSample takes (the device sampler's candidate limit, csrc/cuda/sampling.cuh). */
  readonly sampleMaxTopK = 1024;
  private weights: DeviceWeights | null;
  private readonly k: ForwardConsts;

  private constructor(weights: DeviceWeights, cache: DeviceMlaCache, k: ForwardConsts) {
    this.weights = weights;
    this.config = weights.config;
    this.cache = cache;
    this.vocabSize = weights.config.vocabSize;
    this.maxContext = weights.config.maxPositionEmbeddings;
    this.k = k;
  }

  /**
   * Opens a checkpoint folder, uploads its weights and allocates the device KV cache. Throws
   * KVANT_BACKEND (with the reason) without a usable device, and KVANT_OOM — before allocating
   * anything — when the weights and the cache do not fit the device memory budget.
   */
  static load(dir: string, o: LoadOptions = {}): DeviceDeepSeekV2Model {
    if (typeof dir !== 'string' || dir.length === 0) throw expected('KVANT_IO', 'a checkpoint folder path', 'dir', dir);
    if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw expected('KVANT_DTYPE', 'a function', 'onProgress', o.onProgress);
    const type: KvCacheType = o.kvCache ?? 'bf16';
    if (!(type in KV_TYPE_CODE)) throw expected('KVANT_RANGE', "'f16', 'bf16', 'q8', 'q6' or 'q4'", 'kvCache', o.kvCache);
    if (checkActivations(o.activations) !== 'f32')
      throw new KvantError('KVANT_BACKEND', "Expected activations 'f32' for the cuda backend (int8 activations are CPU-only) but received 'int8'");
    cudaNative(); // KVANT_BACKEND with the reason before any file work
    const host = loadWeights(dir, o.onProgress);
    try {
      const cfg = host.config;
      const k = forwardConsts(cfg);
      const pageSize = o.pageSize ?? 64;
      // Geometry first (a throwaway computation, no allocation): bytes per page of this cache.
      const rowBytes = (type === 'f16' || type === 'bf16' ? 2 * cfg.kvLoraRank : (cfg.kvLoraRank / 32) * { q8: 34, q6: 26, q4: 18 }[type]) + 2 * cfg.qkRopeHeadDim;
      const pageBytes = rowBytes * pageSize * cfg.numLayers;
      const weightBytes = deviceWeightBytes(host);
      const stats = memoryStats();
      const available = stats.budget - stats.allocated;
      const contextPages = Math.ceil(cfg.maxPositionEmbeddings / pageSize) * DEFAULT_CONTEXTS;
      const cacheBytes =
        o.kvBudgetBytes ?? Math.max(pageBytes, Math.min(contextPages * pageBytes, Math.floor(Math.max(0, available - weightBytes) / 2 / pageBytes) * pageBytes));
      if (weightBytes + cacheBytes > available)
        throw new KvantError(
          'KVANT_OOM',
          `Loading ${dir} on the device needs ${weightBytes + cacheBytes} bytes (weights ${weightBytes} + KV cache ${cacheBytes}) but ${available} bytes are available within the device memory budget (${stats.budget} bytes, ${stats.allocated} in use)`,
        );
      const total = cfg.numLayers + 2;
      const weights = uploadWeights(host, k, (done, _t, what) => o.onProgress?.({ done: total + done, total: 2 * total, what }));
      let cache: DeviceMlaCache;
      try {
        cache = new DeviceMlaCache({ layers: cfg.numLayers, latentDim: cfg.kvLoraRank, ropeDim: cfg.qkRopeHeadDim, type, pageSize, budgetBytes: cacheBytes });
      } catch (e) {
        freeWeights(weights);
        throw e;
      }
      return new DeviceDeepSeekV2Model(weights, cache, k);
    } finally {
      host.checkpoint.close();
    }
  }

  private live(): DeviceWeights {
    if (!this.weights) throw new KvantError('KVANT_RANGE', 'Expected a live model but it was disposed');
    return this.weights;
  }

  private checkTokens(tokens: readonly number[], name: string): Int32Array {
    return checkTokenIds(tokens, this.vocabSize, name);
  }

  private checkRoom(seq: number, adding: number, name: string): number {
    return checkContextRoom(seq, this.cache.length(seq), adding, this.maxContext, name);
  }

  /**
   * Feeds `tokens` of sequence `seq` at positions cache.length(seq)..; returns the logits of the
   * last position (V) or of every position (T·V) with allLogits. Chunked like the CPU model.
   */
  prefill(seq: number, tokens: readonly number[], o: PrefillOptions = {}): Float32Array {
    const w = this.live();
    const ids = this.checkTokens(tokens, 'tokens');
    const start = this.checkRoom(seq, ids.length, 'tokens');
    const cache = this.cache;
    return prefillInChunks(ids, start, this.vocabSize, o, DEFAULT_CHUNK, (part, pos0) => {
      const positions = Int32Array.from({ length: part.length }, (_, i) => pos0 + i);
      const lens = Int32Array.from({ length: part.length }, (_, i) => pos0 + i + 1);
      const rowSeqs = new Array<number>(part.length).fill(seq);
      return deviceForward(w, this.k, part, positions, {
        append: (layer, rows) => cache.append(seq, layer, rows),
        attend: (layer, q) => cache.attend(layer, rowSeqs, lens, q, this.k.scale),
      }, !o.allLogits);
    }, () => cache.truncate(seq, start));
  }

  /** One decode step for a batch, one token per sequence; each row independent of the others. */
  decode(seqs: readonly number[], tokens: readonly number[]): Float32Array[] {
    const w = this.live();
    const ids = this.checkTokens(tokens, 'tokens');
    if (!Array.isArray(seqs) || seqs.length !== ids.length) throw expected('KVANT_SHAPE', `${ids.length} sequence ids (one per token)`, 'seqs', seqs);
    if (ids.length === 0) return [];
    if (new Set(seqs).size !== seqs.length) throw expected('KVANT_RANGE', 'distinct sequence ids', 'seqs', seqs);
    const positions = Int32Array.from(seqs, (s, b) => this.checkRoom(s, 1, `tokens[${b}]`));
    const lens = positions.map((p) => p + 1);
    const cache = this.cache;
    let logits: Float32Array;
    try {
      logits = deviceForward(w, this.k, ids, positions, {
        append: (layer, rows) => seqs.forEach((s, b) => cache.append(s, layer, rows.slice(b, b + 1))),
        attend: (layer, q) => cache.attend(layer, seqs, lens, q, this.k.scale),
      }, false);
    } catch (e) {
      seqs.forEach((s, b) => cache.truncate(s, positions[b]));
      throw e;
    }
    const V = this.vocabSize;
    return seqs.map((_, b) => logits.slice(b * V, (b + 1) * V));
  }

  /**
   * A decode step that also samples on the device: the logits never leave it, only the B
   * sampled token ids come back (rows[b]: sequence b's sampling options, generator counter and
   * penalty history; see cuda.sampleTokens).
   */
  decodeSample(seqs: readonly number[], tokens: readonly number[], rows: readonly DeviceSampleRow[]): Int32Array {
    const w = this.live();
    const ids = this.checkTokens(tokens, 'tokens');
    if (!Array.isArray(seqs) || seqs.length !== ids.length) throw expected('KVANT_SHAPE', `${ids.length} sequence ids (one per token)`, 'seqs', seqs);
    if (!Array.isArray(rows) || rows.length !== ids.length) throw expected('KVANT_SHAPE', `${ids.length} sampling rows (one per token)`, 'rows', rows);
    if (ids.length === 0) return new Int32Array(0);
    if (new Set(seqs).size !== seqs.length) throw expected('KVANT_RANGE', 'distinct sequence ids', 'seqs', seqs);
    const positions = Int32Array.from(seqs, (s, b) => this.checkRoom(s, 1, `tokens[${b}]`));
    const lens = positions.map((p) => p + 1);
    const cache = this.cache;
    try {
      return deviceForwardWith(w, this.k, ids, positions, {
        append: (layer, r) => seqs.forEach((s, b) => cache.append(s, layer, r.slice(b, b + 1))),
        attend: (layer, q) => cache.attend(layer, seqs, lens, q, this.k.scale),
      }, false, (logits) => sampleTokens(logits, rows));
    } catch (e) {
      seqs.forEach((s, b) => cache.truncate(s, positions[b]));
      throw e;
    }
  }

  /** Device bytes of the weights and of the cache pages in use. */
  memory(): { weightsBytes: number; cacheBytes: number } {
    if (!this.weights) return { weightsBytes: 0, cacheBytes: 0 };
    return { weightsBytes: this.weights.bytes, cacheBytes: this.cache.usedBytes() };
  }

  /** Frees the device weights and cache; the model is unusable afterwards. */
  dispose(): void {
    if (!this.weights) return;
    freeWeights(this.weights);
    this.weights = null;
    this.cache.dispose();
  }
}
