/**
 * The DeepSeek-V2 forward over kvant's kernels (SPEC §1.3–1.9), in two shapes:
 *
 * - `prefillChunk`: T new tokens of one sequence. MLA in the explicit ("MHA") form: the latent
 *   rows of the cached prefix and of the chunk are expanded through kv_b_proj into per-head keys
 *   and values, and flashAttention runs causal, lower-right aligned (query i of the chunk sits at
 *   position S+i and sees keys 0..S+i).
 * - `decodeStep`: one token for each of B sequences. MLA in the weight-absorbed ("MQA") form
 *   over the latent cache: q_lat(h) = W_UK(h)ᵀ q_nope(h), attention over rows [c_n | k_pe] with
 *   one shared KV head, then o(h) = W_UV(h) o_lat(h).
 *
 * Activations are f32 throughout (residual stream, router logits and softmax included: SPEC §6.4).
 * Every step is row-independent — linear layers, norms, rotary and routing work per row and MoE
 * sums a row's experts in that row's top-k order — so a row's result never depends on which
 * other rows share the batch, and the kernels make it independent of the thread count.
 */
import { bindLinear, linear, linearHeads } from '../../ops/linear';
import { flashAttention } from '../../ops/attention';
import { MlpWeights as KernelMlp, MlpSet, QActivations, moeMlp } from '../../ops/qlinear';
import { addRmsNorm, axpyInPlace, embedding, rmsNorm, ropeInPlace, routeTopK, siluGate } from '../../ops/small';
import { Tensor } from '../../tensor';
import { DeepSeekV2Config } from './config';
import { ropeAmplitude, ropeInvFreq, softmaxScale } from './rope';
import { AttentionWeights, LayerWeights, LinearWeight, MlpWeights, ModelWeights, MoeWeights, applyLinear, bindApplyLinear, weightBytes } from './weights';

const f32 = (t: Tensor): Float32Array => t.data() as Float32Array;

/** The parts of the forward that profiling separates. */
export type ForwardComponent = 'attention' | 'experts' | 'dense_mlp' | 'lm_head';

/**
 * Wall time (ms) and weight bytes read per component, accumulated over forward calls while
 * profiling is on. Bytes count each weight once per call (for MoE: router, shared experts and
 * the distinct experts selected in that call). `total_ms` covers whole calls; what the four
 * components leave is embedding, norms, residual adds and JS glue.
 */
export interface ForwardProfile {
  calls: number;
  total_ms: number;
  ms: Record<ForwardComponent, number>;
  bytes: Record<ForwardComponent, number>;
}

export function emptyProfile(): ForwardProfile {
  const z = (): Record<ForwardComponent, number> => ({ attention: 0, experts: 0, dense_mlp: 0, lm_head: 0 });
  return { calls: 0, total_ms: 0, ms: z(), bytes: z() };
}

/** Constants of the forward derived once from the config. */
export interface ForwardConsts {
  cfg: DeepSeekV2Config;
  invFreq: Float32Array;
  amplitude: number;
  scale: number;
  /** When set, every forward call adds its timings and bytes here. */
  profile?: ForwardProfile;
  /** Calibration hook (GPTQ): sees every Linear's input. Unset in normal inference. */
  observer?: ForwardObserver;
  /** Activation precision of the quantized linears and experts (default 'f32'; see QActivations). */
  activations?: QActivations;
  /**
   * Reusable activation buffers for decodeStep (set by the model): a warm decode step then
   * allocates no tensors. The logits decodeStep returns live in it too, so they are valid only
   * until the next decodeStep with the same consts (the model copies them out at once).
   */
  buffers?: StepBuffers;
}

/**
 * The activation buffers of a decode step, by role. Layers run one after another and each role
 * is dead before the next layer writes it, so one buffer per role serves every layer. A role's
 * storage only grows (to the largest batch seen) and a batch of another size gets a view of its
 * first elements, so continuous batching, whose batch size changes from step to step, allocates
 * nothing either. Every op writes its whole output, so no buffer is cleared between uses.
 */
export class StepBuffers {
  private readonly stores = new Map<string, Tensor>();
  private readonly views = new Map<string, Tensor>();
  private readonly bound = new Map<object, { x: Tensor; out: Tensor; call: () => void }>();
  private readonly reshapes = new WeakMap<Tensor, Tensor>();

  /**
   * Runs the call bind() makes for `key` (a weight) on x and out, bound once and repeated while
   * x and out are the same views (see lin); a new x or out (a new batch size) binds again.
   * Returns out.
   */
  runBound(key: object, x: Tensor, out: Tensor, bind: () => () => void): Tensor {
    const hit = this.bound.get(key);
    if (hit && hit.x === x && hit.out === out) {
      hit.call();
      return out;
    }
    const call = bind();
    this.bound.set(key, { x, out, call });
    call();
    return out;
  }

  /** t.reshape(shape) as the same view object each time (so a linear bound to it stays bound). */
  reshaped(t: Tensor, shape: readonly number[]): Tensor {
    const hit = this.reshapes.get(t);
    if (hit && sameShape(hit.shape, shape)) return hit;
    const view = t.reshape(shape);
    this.reshapes.set(t, view);
    return view;
  }

  /** The buffer of `role` for this shape (f32 unless the role is i32; a role keeps one dtype). */
  get(role: string, shape: readonly number[], dtype: 'f32' | 'i32' = 'f32'): Tensor {
    const view = this.views.get(role);
    if (view && sameShape(view.shape, shape)) return view;
    const numel = shape.reduce((a, d) => a * d, 1);
    let store = this.stores.get(role);
    if (!store || store.numel < numel) {
      store = Tensor.zeros([numel], dtype);
      this.stores.set(role, store);
    }
    const fresh = store.slice(0, numel).reshape(shape);
    this.views.set(role, fresh);
    return fresh;
  }
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** The decode buffer of `role`, or undefined (the op allocates) outside decode. */
const buf = (k: ForwardConsts, role: string, shape: readonly number[]): Tensor | undefined => k.buffers?.get(role, shape);

/**
 * Sees the inputs of the forward's Linears, for calibration (lib/quant/calibrate-model.ts).
 * `linear` gets each projection that goes through applyLinear (attention, dense MLP) with its
 * input rows [T, K] before it runs; `moe` gets an MoE FFN's normalized input rows [T, H] and
 * the routed expert ids [T, k] (the experts run inside one grouped kernel, so their inputs are
 * derived from these). Observers must not modify the tensors.
 */
export interface ForwardObserver {
  linear?(w: LinearWeight, x: Tensor): void;
  moe?(m: MoeWeights, xn: Tensor, experts: Int32Array): void;
}

/**
 * applyLinear, shown to the observer first when one is set. Into a step buffer (decode), the
 * call is checked and packed once per (weight, x, out) and repeated from then on: the step's
 * buffers are the same tensors step after step, and the JS that runs between two kernels runs
 * with caches the weight stream just emptied (docs/bench.md), so every line of it not run
 * counts. A new batch size (new views) binds again.
 */
function lin(k: ForwardConsts, x: Tensor, w: LinearWeight, out?: Tensor): Tensor {
  if (k.observer) k.observer.linear?.(w, x);
  else if (out && k.buffers && x.dtype === 'f32') return k.buffers.runBound(w, x, out, () => bindApplyLinear(x, w, out, k.activations));
  return applyLinear(x, w, out, k.activations);
}

function timed<T>(k: ForwardConsts, part: ForwardComponent, bytes: number, fn: () => T): T {
  const p = k.profile;
  if (!p) return fn();
  const t0 = performance.now();
  const r = fn();
  p.ms[part] += performance.now() - t0;
  p.bytes[part] += bytes;
  return r;
}

function timedCall<T>(k: ForwardConsts, fn: () => T): T {
  const p = k.profile;
  if (!p) return fn();
  const t0 = performance.now();
  const r = fn();
  p.total_ms += performance.now() - t0;
  p.calls++;
  return r;
}

export function forwardConsts(cfg: DeepSeekV2Config): ForwardConsts {
  return { cfg, invFreq: ropeInvFreq(cfg), amplitude: ropeAmplitude(cfg), scale: softmaxScale(cfg) };
}

/** Queries [T, nh, P+R] with RoPE applied to the last R dims of each head. */
function queries(a: AttentionWeights, k: ForwardConsts, xn: Tensor, positions: Int32Array): Tensor {
  const cfg = k.cfg;
  const T = positions.length;
  const qOut = buf(k, 'q', [T, cfg.numHeads * (cfg.qkNopeHeadDim + cfg.qkRopeHeadDim)]);
  let q: Tensor;
  if (a.qProj) {
    q = lin(k, xn, a.qProj, qOut);
  } else {
    const qa = lin(k, xn, a.qA!, buf(k, 'q_a', [T, a.qA!.N]));
    rmsNorm(qa, a.qANorm!, cfg.rmsNormEps, qa);
    q = lin(k, qa, a.qB!, qOut);
  }
  const q3 = q.reshape([positions.length, cfg.numHeads, cfg.qkNopeHeadDim + cfg.qkRopeHeadDim]);
  ropeInPlace(q3, { positions, invFreq: k.invFreq, offset: cfg.qkNopeHeadDim, amplitude: k.amplitude });
  return q3;
}

/**
 * The cache rows of T tokens, [T, L+R] = [c_n | k_pe]: kv_a_proj_with_mqa's output with the
 * latent part normalized by kv_a_layernorm (its weight included) and the rotary key rotated.
 */
function latentRows(a: AttentionWeights, k: ForwardConsts, xn: Tensor, positions: Int32Array): Tensor {
  const cfg = k.cfg;
  const L = cfg.kvLoraRank;
  const W = L + cfg.qkRopeHeadDim;
  const T = positions.length;
  const rows = lin(k, xn, a.kvA, buf(k, 'kv_a', [T, W]));
  if (T === 1) {
    // One row (decode): its latent is contiguous, so it is normalized in place.
    const c = rows.reshape([W]).slice(0, L);
    rmsNorm(c, a.kvANorm, cfg.rmsNormEps, c);
  } else {
    const rd = f32(rows);
    const c = buf(k, 'c', [T, L]) ?? Tensor.zeros([T, L], 'f32');
    const cd = f32(c);
    for (let t = 0; t < T; t++) cd.set(rd.subarray(t * W, t * W + L), t * L);
    rmsNorm(c, a.kvANorm, cfg.rmsNormEps, c);
    for (let t = 0; t < T; t++) rd.set(cd.subarray(t * L, (t + 1) * L), t * W);
  }
  ropeInPlace(rows.reshape([T, 1, W]), { positions, invFreq: k.invFreq, offset: L, amplitude: k.amplitude });
  return rows;
}

/**
 * Explicit-form attention for a chunk: q [T, nh, P+R] against the latent rows `all` [S+T, L+R]
 * (cached prefix then the chunk). Returns o_proj's output [T, H].
 */
function attendExplicit(a: AttentionWeights, k: ForwardConsts, q: Tensor, all: Tensor): Tensor {
  const cfg = k.cfg;
  const nh = cfg.numHeads;
  const P = cfg.qkNopeHeadDim;
  const R = cfg.qkRopeHeadDim;
  const Dv = cfg.vHeadDim;
  const L = cfg.kvLoraRank;
  const W = L + R;
  const T = q.shape[0];
  const Sk = all.shape[0];
  const ad = f32(all);
  const c = Tensor.zeros([Sk, L], 'f32');
  const cd = f32(c);
  for (let t = 0; t < Sk; t++) cd.set(ad.subarray(t * W, t * W + L), t * L);
  // kv [Sk, nh, P+Dv]: per head the non-rotary key (P) then the value (Dv).
  const kvd = f32(lin(k, c, a.kvB));
  const K = Tensor.zeros([1, Sk, nh, P + R], 'f32');
  const V = Tensor.zeros([1, Sk, nh, Dv], 'f32');
  const Kd = f32(K);
  const Vd = f32(V);
  for (let t = 0; t < Sk; t++) {
    const kpe = ad.subarray(t * W + L, (t + 1) * W);
    for (let h = 0; h < nh; h++) {
      const src = (t * nh + h) * (P + Dv);
      const kd = (t * nh + h) * (P + R);
      Kd.set(kvd.subarray(src, src + P), kd);
      Kd.set(kpe, kd + P); // the rotary key is shared by all heads
      Vd.set(kvd.subarray(src + P, src + P + Dv), (t * nh + h) * Dv);
    }
  }
  const { out } = flashAttention(q.reshape([1, T, nh, P + R]), K, V, { causal: true, scale: k.scale });
  return lin(k, out.reshape([T, nh * Dv]), a.oProj);
}

/** Absorbed-form query [B, nh, L+R] = [W_UK(h)ᵀ q_nope(h) | q_pe(h)] per head. */
function absorbQuery(a: AttentionWeights, k: ForwardConsts, q: Tensor): Tensor {
  const cfg = k.cfg;
  const nh = cfg.numHeads;
  const P = cfg.qkNopeHeadDim;
  const R = cfg.qkRopeHeadDim;
  const L = cfg.kvLoraRank;
  const B = q.shape[0];
  const qAbs = buf(k, 'q_abs', [B, nh, L + R]) ?? Tensor.zeros([B, nh, L + R], 'f32');
  // q_lat(h) for every head in one call, read from q's nope slices and written into qAbs's latent slices.
  linearHeads(q, a.wUkT, { out: qAbs });
  const qd = f32(q);
  const od = f32(qAbs);
  // q_pe(h) after the latent part; a plain loop (R = 64 values per head) is cheaper than 16 views.
  for (let i = 0; i < B * nh; i++) {
    const src = i * (P + R) + P;
    const dst = i * (L + R) + L;
    for (let r = 0; r < R; r++) od[dst + r] = qd[src + r];
  }
  return qAbs;
}

/** o [B, nh·Dv] from the attended latents oLat [B, nh, L]: o(h) = W_UV(h) · o_lat(h). */
function expandValues(a: AttentionWeights, k: ForwardConsts, oLat: Tensor): Tensor {
  const cfg = k.cfg;
  const o = linearHeads(oLat, a.wUv, { wRow0: a.wUvRow0, n: cfg.vHeadDim, out: buf(k, 'o_heads', [oLat.shape[0], cfg.numHeads, cfg.vHeadDim]) });
  const flat = [oLat.shape[0], cfg.numHeads * cfg.vHeadDim];
  return k.buffers ? k.buffers.reshaped(o, flat) : o.reshape(flat);
}

function mlpForward(m: MlpWeights, k: ForwardConsts, x: Tensor): Tensor {
  const T = x.shape[0];
  const g = lin(k, x, m.gate, buf(k, 'gate', [T, m.gate.N]));
  const u = lin(k, x, m.up, buf(k, 'up', [T, m.up.N]));
  return lin(k, siluGate(g, u, buf(k, 'act', [T, m.gate.N])), m.down, buf(k, 'ffn', [T, m.down.N]));
}

const kernelMlp = (m: MlpWeights): KernelMlp => ({ gate: m.gate.w, up: m.up.w, down: m.down.w });

// Each MoE layer's experts as one MlpSet (checked once, at the layer's first forward): the
// shared expert (if any) is member 0 and routed expert e is member e + 1 (else e).
const expertSets = new WeakMap<MoeWeights, MlpSet>();
function expertSet(m: MoeWeights, H: number): MlpSet {
  let set = expertSets.get(m);
  if (!set) {
    set = new MlpSet([...(m.shared ? [m.shared] : []), ...m.experts].map(kernelMlp), H);
    expertSets.set(m, set);
  }
  return set;
}

/**
 * MoE FFN for rows x [T, H]: router logits (f32), softmax + greedy or group-limited top-k
 * (ties to the lower expert index), then one grouped moeMlp call over the shared experts and
 * the selected routed experts only (each runs once on the rows routed to it, so only those
 * experts' weights are read). Pairs are listed row by row — shared expert (weight 1) first,
 * then the row's experts in top-k order j = 0..k-1 — and moeMlp accumulates in that order, so
 * a row's sum never depends on the other rows of the batch.
 */
function moeForward(m: MoeWeights, k: ForwardConsts, x: Tensor): Tensor {
  const cfg = k.cfg;
  const T = x.shape[0];
  const K = cfg.numExpertsPerTok;
  const rOut = buf(k, 'router', [T, m.router.shape[0]]);
  const logits = rOut && k.buffers && x.dtype === 'f32' ? k.buffers.runBound(m.router, x, rOut, () => bindLinear(x, m.router, rOut)) : linear(x, m.router, { out: rOut });
  const { idx, weights } = routeTopK(logits, {
    k: K,
    method: cfg.topkMethod,
    nGroup: cfg.nGroup,
    topkGroup: cfg.topkGroup,
    normTopkProb: cfg.normTopkProb,
    routedScalingFactor: cfg.routedScalingFactor,
  }, k.buffers ? { idx: k.buffers.get('route_idx', [T, K], 'i32'), weights: k.buffers.get('route_w', [T, K]) } : undefined);
  const id = idx.data() as Int32Array;
  const wd = f32(weights);
  k.observer?.moe?.(m, x, id);
  if (k.profile) k.profile.bytes.experts += [...new Set(id)].reduce((n, e) => n + mlpBytes(m.experts[e]), 0);
  const first = m.shared ? 1 : 0;
  const per = K + first;
  const routes = { mlp: new Int32Array(T * per), row: new Int32Array(T * per), weight: new Float32Array(T * per) };
  let i = 0;
  for (let t = 0; t < T; t++) {
    if (m.shared) {
      routes.mlp[i] = 0;
      routes.row[i] = t;
      routes.weight[i++] = 1;
    }
    for (let j = 0; j < K; j++) {
      routes.mlp[i] = id[t * K + j] + first;
      routes.row[i] = t;
      routes.weight[i++] = wd[t * K + j];
    }
  }
  return moeMlp(x, expertSet(m, x.shape[1]), routes, buf(k, 'ffn', x.shape), { activations: k.activations });
}

const mlpBytes = (m: MlpWeights): number => weightBytes(m.gate.w) + weightBytes(m.up.w) + weightBytes(m.down.w);

/** The layer's FFN (MoE or dense MLP) on xn, its post-attention-normalized rows [T, H]. */
function ffn(layer: LayerWeights, k: ForwardConsts, xn: Tensor): Tensor {
  const moe = layer.moe;
  if (moe) return timed(k, 'experts', k.profile ? weightBytes(moe.router) + (moe.shared ? mlpBytes(moe.shared) : 0) : 0, () => moeForward(moe, k, xn));
  return timed(k, 'dense_mlp', k.profile ? mlpBytes(layer.mlp!) : 0, () => mlpForward(layer.mlp!, k, xn));
}

/**
 * The 'xn' rows: rmsNorm(x, w), after x += pending when a residual is pending (one addRmsNorm
 * call, bit for bit the add and the norm).
 */
function normAfter(k: ForwardConsts, x: Tensor, pending: Tensor | undefined, w: Tensor): Tensor {
  const out = buf(k, 'xn', x.shape);
  return pending ? addRmsNorm(x, pending, w, k.cfg.rmsNormEps, out) : rmsNorm(x, w, k.cfg.rmsNormEps, out);
}

/**
 * Final norm and lm_head on rows x [n, H] -> logits [n, V]. `pending`: the last layer's FFN
 * output, added to x here (x += pending, fused with the norm) rather than by the layer.
 */
function head(w: ModelWeights, k: ForwardConsts, x: Tensor, pending?: Tensor): Tensor {
  const xn = normAfter(k, x, pending, w.finalNorm);
  return timed(k, 'lm_head', weightBytes(w.lmHead.w), () => lin(k, xn, w.lmHead, buf(k, 'logits', [x.shape[0], w.lmHead.N])));
}

/** Weight bytes of the attention projections both forms use (q path, kv_a, o_proj). */
function attnCommonBytes(a: AttentionWeights): number {
  return [a.qProj, a.qA, a.qB, a.kvA, a.oProj].reduce((n, l) => n + (l ? weightBytes(l.w) : 0), 0);
}

/** What a prefill chunk needs from the cache, per layer. */
export interface PrefillCacheIO {
  /** Stores the chunk's rows [T, L+R] (positions start..start+T-1). */
  append(layer: number, rows: Tensor): void;
  /**
   * Every row of the sequence [start+T, L+R] (f32) as the cache stores it, the chunk's own rows
   * included: attention reads keys at the cache's precision whether the prompt came in one
   * chunk or several.
   */
  rows(layer: number): Tensor;
}

/**
 * Forward of T tokens at positions start..start+T-1 of one sequence. Returns the logits of the
 * last position [1, V], or of every position [T, V] with allLogits.
 */
export function prefillChunk(w: ModelWeights, kDecode: ForwardConsts, tokens: Int32Array, start: number, io: PrefillCacheIO, allLogits: boolean): Tensor {
  // Prefill allocates its activations: chunk lengths vary, and [T, V] logits must not be kept.
  const k = kDecode.buffers ? { ...kDecode, buffers: undefined } : kDecode;
  return timedCall(k, () => {
    const T = tokens.length;
    const positions = Int32Array.from({ length: T }, (_, i) => start + i);
    const x = embedding(w.embed, tokens);
    w.layers.forEach((layer, l) => prefillLayer(layer, l, k, x, positions, io));
    return head(w, k, allLogits ? x : x.slice(T - 1, T));
  });
}

/**
 * One decoder layer of a prefill chunk, in place: x [T, H] (the residual stream at `positions`)
 * becomes the layer's output. prefillChunk is embedding, this for every layer, then the head;
 * layer-by-layer calibration (GPTQ) calls it directly to feed each layer the outputs of the
 * already-quantized layers before it.
 */
export function prefillLayer(layer: LayerWeights, l: number, k: ForwardConsts, x: Tensor, positions: Int32Array, io: PrefillCacheIO): void {
  const a = layer.attn;
  const xn = rmsNorm(x, layer.inputNorm, k.cfg.rmsNormEps);
  const bytes = k.profile ? attnCommonBytes(a) + weightBytes(a.kvB.w) : 0;
  const o = timed(k, 'attention', bytes, () => {
    const q = queries(a, k, xn, positions);
    io.append(l, latentRows(a, k, xn, positions));
    return attendExplicit(a, k, q, io.rows(l));
  });
  // x += o and the post-attention norm in one call, then x += ffn (x is the layer's output).
  axpyInPlace(1, ffn(layer, k, normAfter(k, x, o, layer.postNorm)), x);
}

/** What a decode step needs from the cache, per layer. */
export interface DecodeCacheIO {
  /** Stores row b of rows [B, L+R] (the new token of sequence b). */
  append(layer: number, rows: Tensor): void;
  /**
   * Absorbed attention over each sequence's rows (the new one included): q [B, nh, L+R] -> [B, nh, L].
   * `into` (decode buffers, when the step has them): f32 out [B, nh, L] and lse [B, nh] to write.
   */
  attend(layer: number, q: Tensor, scale: number, into?: { out: Tensor; lse: Tensor }): Tensor;
}

/** One decode step: tokens[b] at positions[b] of sequence b. Returns logits [B, V]. */
export function decodeStep(w: ModelWeights, k: ForwardConsts, tokens: Int32Array, positions: Int32Array, io: DecodeCacheIO): Tensor {
  return timedCall(k, () => {
    const cfg = k.cfg;
    const B = tokens.length;
    const x = embedding(w.embed, tokens, buf(k, 'x', [B, cfg.hiddenSize]));
    const into = k.buffers ? { out: k.buffers.get('o_lat', [B, cfg.numHeads, cfg.kvLoraRank]), lse: k.buffers.get('lse', [B, cfg.numHeads]) } : undefined;
    // Each residual add is fused with the norm that follows it (addRmsNorm): x += attention
    // with the post-attention norm, and x += the FFN output (`pending`) with the next layer's
    // input norm, or the final norm. The same ops in the same order as separate calls.
    let pending: Tensor | undefined;
    w.layers.forEach((layer, l) => {
      const a = layer.attn;
      const xn = normAfter(k, x, pending, layer.inputNorm);
      const bytes = k.profile ? attnCommonBytes(a) + a.wUkT.byteLength + (a.wUv.byteLength * k.cfg.vHeadDim) / a.wUv.shape[1] : 0;
      const o = timed(k, 'attention', bytes, () => {
        const q = queries(a, k, xn, positions);
        io.append(l, latentRows(a, k, xn, positions));
        const oLat = io.attend(l, absorbQuery(a, k, q), k.scale, into);
        return lin(k, expandValues(a, k, oLat), a.oProj, buf(k, 'attn_out', x.shape));
      });
      // 'xn' is free again: the input norm's rows were last read by the q and kv_a projections.
      pending = ffn(layer, k, normAfter(k, x, o, layer.postNorm));
    });
    return head(w, k, x, pending);
  });
}
