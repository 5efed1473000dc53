/**
 * Layer-by-layer sequential GPTQ on a DeepSeek-V2 model's own activations (SPEC §2.1).
 *
 * The calibration sequences are embedded once; then for each decoder layer l:
 *   1. for each true-sequential group of its Linears (q_a/q + kv_a, q_b + kv_b, o, gate + up,
 *      down): the layer runs on the current residual stream of every sequence (a copy) with a
 *      forward observer attached, which adds the group's input rows to each Linear's Hessian
 *      (H = 2/n Σ x xᵀ, n = sequences). Attention projections and the dense MLP are observed
 *      directly; for an MoE layer the observer gets the FFN input and the routing, and each
 *      routed expert's gate/up Hessian is fed only the rows routed to it (its down_proj the
 *      silu(gate)·up of those rows), the shared experts every row. The group is quantized from
 *      its Hessians (a routed expert that saw fewer than 16 tokens falls back to
 *      round-to-nearest, reported by the quantizer) and its weights replace the float ones in
 *      the in-memory layer, so the next group is calibrated behind them;
 *   2. the quantized layer runs again on every sequence, in place: layer l+1 is calibrated on
 *      the outputs of the already-quantized layers 0..l, so it sees (and GPTQ compensates)
 *      their error.
 *
 * Memory: one Hessian per Linear of the current group (K² f32 each; for V2-Lite's gate + up
 * group, 64 experts × 2 × 2048² × 4 B ≈ 2.1 GB), the residual streams of the calibration
 * sequences, and the weights mapped from the checkpoint.
 */
import { KvantError } from '../errors';
import { siluGate, embedding } from '../ops/small';
import { Tensor } from '../tensor';
import { ForwardObserver, forwardConsts, prefillLayer } from '../models/deepseek-v2/forward';
import { LayerWeights, LinearWeight, MlpWeights, MoeWeights, applyLinear, loadWeights } from '../models/deepseek-v2/weights';
import { QTensor } from './format';
import { Hessian, isSequentialGIdx, makeSequential } from './quantize';

/** Quantizes one Linear ("model.layers.3.mlp.experts.5.up_proj") from its Hessian; null keeps it float. */
export type QuantizeLinear = (prefix: string, w: Tensor, h: Hessian) => Promise<QTensor | null>;

export interface SequentialOptions {
  signal?: AbortSignal;
  /**
   * Quantize a layer's Linears in groups, re-collecting inputs after each (q_a/q + kv_a ->
   * q_b + kv_b -> o -> gate + up -> down; default true). false: one collection per layer.
   */
  trueSequential?: boolean;
  /** Called after each layer's Linears are quantized. */
  onLayer?: (layer: number, layers: number) => void;
}

const prefixOf = (lw: LinearWeight): string => lw.name.replace(/\.weight$/, '');

/** Rows `rows` of x [T, H] as a new f32 tensor [rows.length, H]. */
function gatherRows(x: Tensor, rows: number[]): Tensor {
  const H = x.shape[1];
  const src = x.data() as Float32Array;
  const out = Tensor.zeros([rows.length, H], 'f32');
  const dst = out.data() as Float32Array;
  rows.forEach((r, i) => dst.set(src.subarray(r * H, (r + 1) * H), i * H));
  return out;
}

/**
 * A layer's Linears in true-sequential groups (AutoGPTQ's order for DeepSeek-V2): the
 * projections of the layer input (q_a or q, kv_a), then q_b and kv_b, o_proj, every MLP's
 * gate and up (dense, shared and routed experts), every down. Each group is calibrated with
 * the groups before it already quantized. Without true sequential: one group.
 */
function layerGroups(layer: LayerWeights, trueSequential: boolean): LinearWeight[][] {
  const a = layer.attn;
  const mlps: MlpWeights[] = layer.mlp ? [layer.mlp] : [...(layer.moe?.shared ? [layer.moe.shared] : []), ...(layer.moe?.experts ?? [])];
  const groups: LinearWeight[][] = [
    [a.qProj, a.qA, a.kvA].filter((x): x is LinearWeight => x !== null),
    [a.qB, a.kvB].filter((x): x is LinearWeight => x !== null),
    [a.oProj],
    mlps.flatMap((m) => [m.gate, m.up]),
    mlps.map((m) => m.down),
  ].filter((g) => g.length > 0);
  return trueSequential ? groups : [groups.flat()];
}

/**
 * Runs sequential GPTQ over the model in `dir` (a float DeepSeek-V2 checkpoint) with the given
 * calibration sequences (token ids); `quantize` decides each Linear's settings and returns its
 * QTensor. Linears the forward never reaches are not quantized here (the caller handles them).
 */
export async function sequentialCalibrate(dir: string, sequences: readonly Int32Array[], quantize: QuantizeLinear, o: SequentialOptions = {}): Promise<Set<string>> {
  if (sequences.length === 0) throw new KvantError('KVANT_SHAPE', 'Expected at least one calibration sequence');
  const w = loadWeights(dir);
  const visited = new Set<string>();
  try {
    const cfg = w.config;
    for (const [i, s] of sequences.entries())
      for (let t = 0; t < s.length; t++)
        if (!(s[t] >= 0 && s[t] < cfg.vocabSize)) throw new KvantError('KVANT_RANGE', `Expected calibration token ids in 0..${cfg.vocabSize - 1} but sequence ${i} has ${s[t]} at ${t}`);
    const hidden = sequences.map((ids) => embedding(w.embed, ids));
    const positions = sequences.map((ids) => Int32Array.from({ length: ids.length }, (_, i) => i));
    // Each sequence runs as one chunk, so the cache is just the chunk's own latent rows (f32).
    const chunkIO = () => {
      let rows: Tensor | null = null;
      return { append: (_l: number, r: Tensor) => void (rows = r), rows: () => rows! };
    };
    for (let l = 0; l < w.layers.length; l++) {
      if (o.signal?.aborted) throw new KvantError('KVANT_ABORTED', 'quantizeModel was aborted');
      const layer = w.layers[l];
      const groups = layerGroups(layer, o.trueSequential ?? true);
      for (const group of groups) {
        const members = new Set(group);
        const hess = new Map<LinearWeight, Hessian>();
        const hOf = (lw: LinearWeight) => {
          let h = hess.get(lw);
          if (!h) hess.set(lw, (h = new Hessian(lw.K)));
          return h;
        };
        const add = (lw: LinearWeight, x: () => Tensor) => {
          if (members.has(lw)) hOf(lw).add(x(), 1);
        };
        // An MLP inside the grouped MoE kernel: gate/up see x, down sees silu(gate(x))·up(x)
        // computed with the weights as they are now (gate/up already quantized when true
        // sequential has reached down).
        const addMlp = (m: MlpWeights, x: Tensor) => {
          add(m.gate, () => x);
          add(m.up, () => x);
          add(m.down, () => siluGate(applyLinear(x, m.gate), applyLinear(x, m.up)));
        };
        const observer: ForwardObserver = {
          linear: (lw, x) => add(lw, () => x),
          moe: (m: MoeWeights, xn, experts) => {
            if (m.shared) addMlp(m.shared, xn);
            const T = xn.shape[0];
            const k = experts.length / T;
            const rows = new Map<number, number[]>();
            for (let t = 0; t < T; t++)
              for (let j = 0; j < k; j++) {
                const e = experts[t * k + j];
                if (!rows.has(e)) rows.set(e, []);
                rows.get(e)!.push(t);
              }
            for (const [e, r] of [...rows].sort((a, b) => a[0] - b[0])) {
              const m2 = m.experts[e];
              if (members.has(m2.gate) || members.has(m2.up) || members.has(m2.down)) addMlp(m2, gatherRows(xn, r));
            }
          },
        };
        try {
          const kObs = { ...forwardConsts(cfg), observer };
          for (let s = 0; s < hidden.length; s++) prefillLayer(layer, l, kObs, hidden[s].to('f32'), positions[s], chunkIO());
          // Routed experts no token reached get an empty Hessian, hence the quantizer's
          // round-to-nearest fallback.
          for (const lw of group) {
            if (o.signal?.aborted) throw new KvantError('KVANT_ABORTED', 'quantizeModel was aborted');
            if (!(lw.w instanceof Tensor)) continue; // already quantized in the checkpoint
            visited.add(prefixOf(lw));
            const q = await quantize(prefixOf(lw), lw.w, hOf(lw));
            // The forward's kernels take act-order weights as sequential groups + perm (lossless).
            if (q) lw.w = q.gIdx && !isSequentialGIdx(q) ? makeSequential(q) : q;
          }
        } finally {
          for (const h of hess.values()) h.dispose();
        }
      }
      const k = forwardConsts(cfg);
      for (let s = 0; s < hidden.length; s++) prefillLayer(layer, l, k, hidden[s], positions[s], chunkIO());
      o.onLayer?.(l + 1, w.layers.length);
    }
    return visited;
  } finally {
    w.checkpoint.close();
  }
}

/**
 * Calibration token ids: `count` sequences of `length` ids, uniform over the vocabulary from a
 * seeded generator (xorshift32), or — with `text` and a tokenizer — the text's ids cut into
 * sequences of `length` (the last partial one kept when it has at least 2 tokens).
 */
export function calibrationSequences(o: { vocabSize: number; count: number; length: number; seed: number; textIds?: readonly number[] }): Int32Array[] {
  if (o.textIds) {
    const out: Int32Array[] = [];
    for (let i = 0; i < o.textIds.length && out.length < o.count; i += o.length) {
      const s = Int32Array.from(o.textIds.slice(i, i + o.length));
      if (s.length >= 2) out.push(s);
    }
    if (out.length === 0) throw new KvantError('KVANT_SHAPE', 'Expected the calibration text to give at least 2 tokens');
    return out;
  }
  let x = (o.seed * 2654435761 + 1) >>> 0 || 1;
  const next = () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
  return Array.from({ length: o.count }, () => Int32Array.from({ length: o.length }, () => next() % o.vocabSize));
}
