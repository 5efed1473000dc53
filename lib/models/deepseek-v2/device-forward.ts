/**
 * The DeepSeek-V2 forward on the CUDA backend: the CPU forward's steps (forward.ts) over device
 * tensors, with the same config, weight naming and constants. Only token ids go up and logits
 * come down (plus, per MoE layer, the routed expert ids, T·k int32, which the host needs to
 * launch each selected expert's kernels: only those experts' weights are read).
 *
 * MLA runs in the weight-absorbed form for prefill *and* decode: q_lat(h) = W_UK(h)ᵀ q_nope(h),
 * attention over the paged latent cache [c | k_pe] (the device paged decode kernel, which reads
 * the stored — possibly quantized — pages directly), o(h) = W_UV(h) o_lat(h). A prefill chunk
 * of T tokens at positions S..S+T-1 appends its T rows first and then runs the paged decode with
 * T query rows over the same pages, row i seeing the first S+i+1 rows: that is the causal mask,
 * and every key is read at the cache's precision as on the CPU. The CPU prefills in the explicit
 * form (kv_b expanded, FlashAttention); the two forms are the same function up to f32 rounding,
 * and the device FlashAttention instantiations do not cover small head dims, so the absorbed
 * form is the simpler single path here.
 *
 * Every kernel used is row-independent with fixed-order sums (dense linear: one warp per output;
 * quantized linear: the GEMV, at most 8 rows per launch, never the f16 tensor-core GEMM, whose
 * rounding of x would differ between prefill and decode), so a row's logits do not depend on the
 * other rows of its batch.
 */
import { KvantError } from '../../errors';
import { Tensor } from '../../tensor';
import { DeviceTensor } from '../../cuda/device';
import { DeviceQTensor, embedding, freeQTensor, qlinear, rmsNorm, ropeInPlace, routeTopK, siluGate, uploadQTensor } from '../../cuda/ops';
import { accumulateRows, copyRows, denseLinear, denseLinearHeads } from '../../cuda/rows';
import { DeepSeekV2Config } from './config';
import { ForwardConsts } from './forward';
import { LinearWeight, ModelWeights, weightBytes } from './weights';

/** A linear layer on the device: a float weight [N, K] or a packed GPTQ matrix. */
export interface DeviceLinear {
  name: string;
  N: number;
  K: number;
  w: DeviceTensor | DeviceQTensor;
}

export interface DeviceMlp {
  gate: DeviceLinear;
  up: DeviceLinear;
  down: DeviceLinear;
}

export interface DeviceAttention {
  qProj: DeviceLinear | null;
  qA: DeviceLinear | null;
  qANorm: DeviceTensor | null;
  qB: DeviceLinear | null;
  kvA: DeviceLinear;
  kvANorm: DeviceTensor;
  /** W_UK(h)ᵀ [nh, L, P] (the file's dtype). */
  wUkT: DeviceTensor;
  /** W_UV(h) as rows wUvRow0.. of each head of [nh, wUvRows, L]. */
  wUv: DeviceTensor;
  wUvRow0: number;
  oProj: DeviceLinear;
}

export interface DeviceLayer {
  inputNorm: DeviceTensor;
  postNorm: DeviceTensor;
  attn: DeviceAttention;
  mlp: DeviceMlp | null;
  moe: { router: DeviceTensor; experts: DeviceMlp[]; shared: DeviceMlp | null } | null;
}

export interface DeviceWeights {
  config: DeepSeekV2Config;
  embed: DeviceTensor;
  layers: DeviceLayer[];
  finalNorm: DeviceTensor;
  lmHead: DeviceLinear;
  invFreq: DeviceTensor;
  /** Device bytes of all of the above. */
  bytes: number;
}

/** Device bytes uploadWeights will allocate for these host weights (the kv_b explicit form is not uploaded). */
export function deviceWeightBytes(w: ModelWeights): number {
  const seen = new Set<unknown>();
  let n = 0;
  const t = (x: Tensor | null) => {
    if (x && !seen.has(x)) (seen.add(x), (n += x.byteLength));
  };
  const l = (x: LinearWeight | null) => {
    if (x && !seen.has(x.w)) (seen.add(x.w), (n += weightBytes(x.w) - (x.w instanceof Tensor ? 0 : (x.w.gIdx?.byteLength ?? 0))));
  };
  t(w.embed);
  t(w.finalNorm);
  l(w.lmHead);
  for (const layer of w.layers) {
    const a = layer.attn;
    [layer.inputNorm, layer.postNorm, a.qANorm, a.kvANorm, a.wUkT, a.wUv].forEach(t);
    [a.qProj, a.qA, a.qB, a.kvA, a.oProj].forEach(l);
    const mlps = layer.moe ? [...layer.moe.experts, ...(layer.moe.shared ? [layer.moe.shared] : [])] : [layer.mlp!];
    if (layer.moe) t(layer.moe.router);
    for (const m of mlps) [m.gate, m.up, m.down].forEach(l);
  }
  return n + w.config.qkRopeHeadDim * 2;
}

/**
 * Uploads the host weights (float tensors as device tensors in their dtype, GPTQ matrices packed)
 * and the absorbed per-head matrices. On any failure everything uploaded so far is freed.
 */
export function uploadWeights(w: ModelWeights, k: ForwardConsts, onProgress?: (done: number, total: number, what: string) => void): DeviceWeights {
  const made: Array<DeviceTensor | DeviceQTensor> = [];
  const cache = new Map<unknown, DeviceTensor | DeviceQTensor>();
  let bytes = 0;
  const t = (x: Tensor): DeviceTensor => {
    let d = cache.get(x) as DeviceTensor | undefined;
    if (!d) {
      d = DeviceTensor.fromHost(x);
      made.push(d);
      cache.set(x, d);
      bytes += d.byteLength;
    }
    return d;
  };
  const lin = (x: LinearWeight): DeviceLinear => {
    let d = cache.get(x.w);
    if (!d) {
      if (x.w instanceof Tensor) d = t(x.w);
      else {
        const q = uploadQTensor(x.w);
        made.push(q);
        cache.set(x.w, q);
        bytes += q.qweight.byteLength + q.qzeros.byteLength + q.scales.byteLength + (q.perm?.byteLength ?? 0);
        d = q;
      }
    }
    return { name: x.name, N: x.N, K: x.K, w: d };
  };
  const mlp = (m: { gate: LinearWeight; up: LinearWeight; down: LinearWeight }): DeviceMlp => ({ gate: lin(m.gate), up: lin(m.up), down: lin(m.down) });
  const total = w.layers.length + 2;
  try {
    const embed = t(w.embed);
    const invFreq = DeviceTensor.fromHost(k.invFreq);
    made.push(invFreq);
    bytes += invFreq.byteLength;
    onProgress?.(1, total, 'uploaded model.embed_tokens');
    const layers = w.layers.map((layer, i): DeviceLayer => {
      const a = layer.attn;
      const d: DeviceLayer = {
        inputNorm: t(layer.inputNorm),
        postNorm: t(layer.postNorm),
        attn: {
          qProj: a.qProj && lin(a.qProj),
          qA: a.qA && lin(a.qA),
          qANorm: a.qANorm && t(a.qANorm),
          qB: a.qB && lin(a.qB),
          kvA: lin(a.kvA),
          kvANorm: t(a.kvANorm),
          wUkT: t(a.wUkT),
          wUv: t(a.wUv),
          wUvRow0: a.wUvRow0,
          oProj: lin(a.oProj),
        },
        mlp: layer.mlp && mlp(layer.mlp),
        moe: layer.moe && { router: t(layer.moe.router), experts: layer.moe.experts.map(mlp), shared: layer.moe.shared && mlp(layer.moe.shared) },
      };
      onProgress?.(i + 2, total, `uploaded model.layers.${i}`);
      return d;
    });
    const finalNorm = t(w.finalNorm);
    const lmHead = lin(w.lmHead);
    onProgress?.(total, total, 'uploaded lm_head');
    return { config: w.config, embed, layers, finalNorm, lmHead, invFreq, bytes };
  } catch (e) {
    freeAll(made);
    throw e;
  }
}

function freeAll(list: ReadonlyArray<DeviceTensor | DeviceQTensor>): void {
  for (const x of list) {
    try {
      if (x instanceof DeviceTensor) x.free();
      else freeQTensor(x);
    } catch {
      // freeing is best effort during cleanup
    }
  }
}

/** Frees every device buffer of the weights (shared tensors once). */
export function freeWeights(w: DeviceWeights): void {
  const all = new Set<DeviceTensor | DeviceQTensor>([w.embed, w.finalNorm, w.invFreq, w.lmHead.w]);
  for (const l of w.layers) {
    const a = l.attn;
    for (const x of [l.inputNorm, l.postNorm, a.qANorm, a.kvANorm, a.wUkT, a.wUv]) if (x) all.add(x);
    for (const x of [a.qProj, a.qA, a.qB, a.kvA, a.oProj]) if (x) all.add(x.w);
    const mlps = l.moe ? [...l.moe.experts, ...(l.moe.shared ? [l.moe.shared] : [])] : [l.mlp!];
    if (l.moe) all.add(l.moe.router);
    for (const m of mlps) for (const x of [m.gate, m.up, m.down]) all.add(x.w);
  }
  freeAll([...all]);
}

/** Device temporaries of one forward call, freed together at its end. */
class Scope {
  private readonly list: DeviceTensor[] = [];
  t(shape: readonly number[], dtype: 'f32' | 'i32' = 'f32'): DeviceTensor {
    return this.keep(DeviceTensor.empty(shape, dtype));
  }
  keep(x: DeviceTensor): DeviceTensor {
    this.list.push(x);
    return x;
  }
  free(): void {
    for (const x of this.list) x.free();
  }
}

/** y [M, N] = x [M, K] · Wᵀ: dense, or the GEMV in launches of at most 8 rows. */
function lin(s: Scope, x: DeviceTensor, l: DeviceLinear, out?: DeviceTensor): DeviceTensor {
  const M = x.numel / l.K;
  const x2 = x.reshape([M, l.K]);
  const y = out ?? s.t([M, l.N]);
  if (l.w instanceof DeviceTensor) return denseLinear(x2, l.w, { out: y });
  for (let m = 0; m < M; m += 8) {
    const e = Math.min(M, m + 8);
    qlinear(x2.slice(m, e), l.w, { kernel: 'gemv', out: y.slice(m, e) });
  }
  return y;
}

function mlpForward(s: Scope, m: DeviceMlp, x: DeviceTensor, out?: DeviceTensor): DeviceTensor {
  const g = lin(s, x, m.gate);
  const u = lin(s, x, m.up);
  const h = siluGate(g, u, { out: s.t(g.shape) });
  return lin(s, h, m.down, out);
}

/** MoE FFN on normalized rows xn [T, H]: as forward.ts moeForward (shared expert, then the row's top-k order). */
function moeForward(s: Scope, m: NonNullable<DeviceLayer['moe']>, cfg: DeepSeekV2Config, xn: DeviceTensor): DeviceTensor {
  const [T, H] = xn.shape;
  const K = cfg.numExpertsPerTok;
  const logits = denseLinear(xn, m.router, { out: s.t([T, m.router.shape[0]]) });
  const { idx, weights } = routeTopK(logits, {
    k: K,
    method: cfg.topkMethod,
    nGroup: cfg.nGroup,
    topkGroup: cfg.topkGroup,
    normTopkProb: cfg.normTopkProb,
    routedScalingFactor: cfg.routedScalingFactor,
  });
  s.keep(idx);
  s.keep(weights);
  // The routed ids come to the host: each selected expert is launched on the rows routed to it.
  const id = idx.toArray() as Int32Array;
  const rowsOf = new Map<number, number[]>();
  for (let t = 0; t < T; t++)
    for (let j = 0; j < K; j++) {
      const e = id[t * K + j];
      if (!rowsOf.has(e)) rowsOf.set(e, []);
      const r = rowsOf.get(e)!;
      if (r[r.length - 1] !== t) r.push(t);
    }
  const selected = [...rowsOf.keys()].sort((a, b) => a - b);
  const Y = s.t([T * K, H]);
  const offset = new Map<number, number>();
  let off = 0;
  for (const e of selected) {
    const rows = rowsOf.get(e)!;
    offset.set(e, off);
    const ri = s.keep(DeviceTensor.fromHost(Int32Array.from(rows)));
    const xe = copyRows(xn, s.t([rows.length, H]), { idx: ri, rows: rows.length, n: H, srcRow: H, dstRow: H });
    mlpForward(s, m.experts[e], xe, Y.slice(off, off + rows.length));
    off += rows.length;
  }
  const src = new Int32Array(T * K);
  for (let t = 0; t < T; t++)
    for (let j = 0; j < K; j++) {
      const e = id[t * K + j];
      src[t * K + j] = offset.get(e)! + rowsOf.get(e)!.indexOf(t);
    }
  const out = m.shared ? mlpForward(s, m.shared, xn) : s.keep(DeviceTensor.zeros([T, H]));
  if (off > 0) accumulateRows(out, Y.slice(0, off), { idx: s.keep(DeviceTensor.fromHost(src)), w: weights, J: K });
  return out;
}

/** What the forward needs from the device cache, per layer. */
export interface DeviceCacheIO {
  /** Stores the rows [T, L+R] (row t: token t of the call). */
  append(layer: number, rows: DeviceTensor): void;
  /** Absorbed attention of the query rows q [T, nh, L+R] -> [T, nh, L] (freed by the caller). */
  attend(layer: number, q: DeviceTensor): DeviceTensor;
}

/**
 * Forward of T rows (token ids at positions) through all layers and the head. Returns the
 * logits of every row [T·V] or of the last one [V] (lastOnly), on the host.
 */
export function deviceForward(w: DeviceWeights, k: ForwardConsts, ids: Int32Array, positions: Int32Array, io: DeviceCacheIO, lastOnly: boolean): Float32Array {
  return deviceForwardWith(w, k, ids, positions, io, lastOnly, (logits) => {
    const out = logits.toArray();
    if (!(out instanceof Float32Array)) throw new KvantError('KVANT_DTYPE', 'Expected f32 logits from the device');
    return out;
  });
}

/** The forward with the device logits f32 [T or 1, V] handed to `use` (e.g. device sampling) before they are freed. */
export function deviceForwardWith<R>(w: DeviceWeights, k: ForwardConsts, ids: Int32Array, positions: Int32Array, io: DeviceCacheIO, lastOnly: boolean,
  use: (logits: DeviceTensor) => R): R {
  const cfg = k.cfg;
  const T = ids.length;
  const nh = cfg.numHeads;
  const P = cfg.qkNopeHeadDim;
  const R = cfg.qkRopeHeadDim;
  const L = cfg.kvLoraRank;
  const W = L + R;
  const Dv = cfg.vHeadDim;
  const Hd = cfg.hiddenSize;
  const eps = cfg.rmsNormEps;
  const s = new Scope();
  try {
    const pos = s.keep(DeviceTensor.fromHost(positions));
    const x = embedding(w.embed, s.keep(DeviceTensor.fromHost(ids)), { out: s.t([T, Hd]) });
    w.layers.forEach((layer, l) => {
      const a = layer.attn;
      const xn = rmsNorm(x, layer.inputNorm, eps, { out: s.t([T, Hd]) });
      let q: DeviceTensor;
      if (a.qProj) q = lin(s, xn, a.qProj);
      else {
        const qa = lin(s, xn, a.qA!);
        rmsNorm(qa, a.qANorm!, eps, { out: qa });
        q = lin(s, qa, a.qB!);
      }
      ropeInPlace(q.reshape([T, nh, P + R]), { positions: pos, invFreq: w.invFreq, offset: P, amplitude: k.amplitude });
      // Latent rows [c | k_pe]: kv_a's output, the latent normalized, the rotary key rotated.
      const kv = lin(s, xn, a.kvA);
      const c = copyRows(kv, s.t([T, L]), { rows: T, n: L, srcRow: W, dstRow: L });
      rmsNorm(c, a.kvANorm, eps, { out: c });
      copyRows(c, kv, { rows: T, n: L, srcRow: L, dstRow: W });
      ropeInPlace(kv.reshape([T, 1, W]), { positions: pos, invFreq: w.invFreq, offset: L, amplitude: k.amplitude });
      io.append(l, kv);
      // Absorbed query [T, nh, L+R] = [W_UK(h)ᵀ q_nope(h) | q_pe(h)].
      const qAbs = s.t([T, nh, W]);
      denseLinearHeads(q, a.wUkT, qAbs, { M: T, H: nh, N: L, K: P, xRow: nh * (P + R), xHead: P + R, wHead: L * P, wRow: P, yRow: nh * W, yHead: W });
      copyRows(q, qAbs, { rows: T * nh, n: R, srcRow: P + R, srcOffset: P, dstRow: W, dstOffset: L });
      const oLat = s.keep(io.attend(l, qAbs));
      const rows = a.wUv.shape[1];
      const o = s.t([T, nh * Dv]);
      denseLinearHeads(oLat, a.wUv, o, { M: T, H: nh, N: Dv, K: L, xRow: nh * L, xHead: L, wOffset: a.wUvRow0 * L, wHead: rows * L, wRow: L, yRow: nh * Dv, yHead: Dv });
      accumulateRows(x, lin(s, o, a.oProj));
      const xn2 = rmsNorm(x, layer.postNorm, eps, { out: s.t([T, Hd]) });
      accumulateRows(x, layer.moe ? moeForward(s, layer.moe, cfg, xn2) : mlpForward(s, layer.mlp!, xn2));
    });
    const xs = lastOnly ? x.slice(T - 1, T) : x;
    const xn = rmsNorm(xs, w.finalNorm, eps, { out: s.t(xs.shape) });
    return use(lin(s, xn, w.lmHead));
  } finally {
    s.free();
  }
}
