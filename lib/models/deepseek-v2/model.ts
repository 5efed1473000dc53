/**
 * DeepSeekV2Model: a loaded checkpoint (weights mapped in place), its MLA latent cache, and the
 * forward in its two shapes — chunked prefill of one sequence and batched one-token decode.
 * Everything is synchronous; the generation layer runs it inside a worker thread.
 *
 * Attention always reads a token's latent row [c_n | k_pe] as the cache stores it (rows are
 * appended first, then read back), in prefill and decode alike. So a sequence's logits depend
 * only on the tokens and the cache type, not on how the prompt was chunked, and prefill and
 * decode see the same keys.
 */
import { KvantError, expected } from '../../errors';
import { KvCacheType, MlaKVCache } from '../../kv/mla-cache';
import type { Tensor } from '../../tensor';
import { DeepSeekV2Config } from './config';
import { ForwardConsts, ForwardProfile, StepBuffers, decodeStep, emptyProfile, forwardConsts, prefillChunk } from './forward';
import { LoadProgress, ModelWeights, loadWeights } from './weights';
import { checkActivations, checkContextRoom, checkTokenIds, prefillInChunks } from './inputs';
import type { QActivations } from '../../ops/qlinear';

export interface LoadOptions {
  /** Latent cache storage type (default 'bf16'). */
  kvCache?: KvCacheType;
  /** Tokens per cache page. */
  pageSize?: number;
  /** Cache memory budget in bytes. */
  kvBudgetBytes?: number;
  /** Called as loading proceeds (files mapped, layers checked). */
  onProgress?: (p: LoadProgress) => void;
  /**
   * Activation precision inside the quantized linears and MoE experts, in prefill and decode
   * alike (so a row's result stays independent of the batch): 'f32' (default) or 'int8' (x
   * quantized per block of 32 inputs, byte dot products; faster prefill, a small extra error;
   * see QActivations). Float weights are unaffected. CPU only.
   */
  activations?: QActivations;
}

export interface PrefillOptions {
  /** Return the logits of every position ([T·V]) instead of the last one only. */
  allLogits?: boolean;
  /** Tokens per forward chunk (default 256). */
  chunkSize?: number;
}

/** Default prefill chunk: long enough to keep the GEMMs efficient, short enough to bound scratch. */
const DEFAULT_CHUNK = 256;

export class DeepSeekV2Model {
  readonly config: DeepSeekV2Config;
  readonly cache: MlaKVCache;
  readonly vocabSize: number;
  /** Longest sequence (prompt + generated) the model accepts: max_position_embeddings. */
  readonly maxContext: number;
  private weights: ModelWeights | null;
  private readonly k: ForwardConsts;

  private constructor(weights: ModelWeights, cache: MlaKVCache, activations: QActivations) {
    this.weights = weights;
    this.config = weights.config;
    this.cache = cache;
    this.vocabSize = weights.config.vocabSize;
    this.maxContext = weights.config.maxPositionEmbeddings;
    this.k = { ...forwardConsts(weights.config), buffers: new StepBuffers(), activations };
  }

  /** Opens a checkpoint folder (config.json + safetensors, optionally GPTQ) and creates the cache. */
  static load(dir: string, o: LoadOptions = {}): DeepSeekV2Model {
    if (typeof dir !== 'string' || dir.length === 0) throw expected('KVANT_IO', 'a checkpoint folder path', 'dir', dir);
    if (o.onProgress !== undefined && typeof o.onProgress !== 'function') throw expected('KVANT_DTYPE', 'a function', 'onProgress', o.onProgress);
    const activations = checkActivations(o.activations);
    const w = loadWeights(dir, o.onProgress);
    try {
      const cfg = w.config;
      const cache = new MlaKVCache({
        layers: cfg.numLayers,
        latentDim: cfg.kvLoraRank,
        ropeDim: cfg.qkRopeHeadDim,
        type: o.kvCache ?? 'bf16',
        pageSize: o.pageSize,
        budgetBytes: o.kvBudgetBytes,
      });
      return new DeepSeekV2Model(w, cache, activations);
    } catch (e) {
      w.checkpoint.close();
      throw e;
    }
  }

  private live(): ModelWeights {
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
   * Feeds `tokens` of sequence `seq` (opened with cache.open) at positions cache.length(seq)..;
   * returns the logits of the last position (Float32Array(V)), or of every position (f32 [T·V])
   * with allLogits. Chunked internally: each chunk runs MLA in the explicit form over
   * flashAttention, attending over the cached prefix and itself (lower-right causal).
   */
  prefill(seq: number, tokens: readonly number[], o: PrefillOptions = {}): Float32Array {
    const w = this.live();
    const ids = this.checkTokens(tokens, 'tokens');
    const start = this.checkRoom(seq, ids.length, 'tokens');
    const cache = this.cache;
    return prefillInChunks(ids, start, this.vocabSize, o, DEFAULT_CHUNK, (part, pos) =>
      prefillChunk(w, this.k, part, pos, {
        append: (layer, rows) => cache.append(seq, layer, rows),
        rows: (layer) => cache.gather(seq, layer, 0, pos + part.length),
      }, o.allLogits === true).data() as Float32Array,
    () => cache.truncate(seq, start));
  }

  /**
   * One decode step for a batch, one token per sequence (absorbed MLA over the latent cache).
   * Each row's logits are independent of the other rows in the batch; each row is a fresh
   * Float32Array of its own.
   */
  decode(seqs: readonly number[], tokens: readonly number[]): Float32Array[] {
    const w = this.live();
    const ids = this.checkTokens(tokens, 'tokens');
    if (!Array.isArray(seqs) || seqs.length !== ids.length) throw expected('KVANT_SHAPE', `${ids.length} sequence ids (one per token)`, 'seqs', seqs);
    if (ids.length === 0) return [];
    if (new Set(seqs).size !== seqs.length) throw expected('KVANT_RANGE', 'distinct sequence ids', 'seqs', seqs);
    const positions = Int32Array.from(seqs, (s, b) => this.checkRoom(s, 1, `tokens[${b}]`));
    const cache = this.cache;
    let logits: Tensor;
    try {
      logits = decodeStep(w, this.k, ids, positions, {
        append: (layer, rows) => (seqs.length === 1 ? cache.append(seqs[0], layer, rows) : cache.appendBatch(seqs, layer, rows)),
        attend: (layer, q, scale, into) => cache.decode(layer, seqs, q, scale, into).out,
      });
    } catch (e) {
      seqs.forEach((s, b) => cache.truncate(s, positions[b])); // all or nothing, as in prefill
      throw e;
    }
    // Each row is its own copy out of the step buffer (reused by the next step).
    const V = this.vocabSize;
    const all = logits.data() as Float32Array;
    return seqs.map((_, b) => all.slice(b * V, (b + 1) * V));
  }

  /**
   * Turns per-component profiling (attention, experts, dense MLP, lm_head: wall time and weight
   * bytes read) on or off; turning it on resets the counters. Off by default (no timers run).
   */
  setProfiling(on: boolean): void {
    this.k.profile = on ? emptyProfile() : undefined;
  }

  /** A copy of the profile accumulated since setProfiling(true), or null when profiling is off. */
  profile(): ForwardProfile | null {
    const p = this.k.profile;
    return p ? { calls: p.calls, total_ms: p.total_ms, ms: { ...p.ms }, bytes: { ...p.bytes } } : null;
  }

  /** Bytes of the weights the forward reads and of the cache pages in use. */
  memory(): { weightsBytes: number; cacheBytes: number } {
    if (!this.weights) return { weightsBytes: 0, cacheBytes: 0 };
    return { weightsBytes: this.weights.bytes, cacheBytes: this.cache.usedBytes() };
  }

  /** Unmaps the checkpoint and frees the cache; the model is unusable afterwards. */
  dispose(): void {
    if (!this.weights) return;
    this.weights.checkpoint.close();
    this.weights = null;
    this.cache.dispose();
  }
}

