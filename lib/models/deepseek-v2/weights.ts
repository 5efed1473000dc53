/**
 * DeepSeek-V2 weights: a checkpoint folder checked against the architecture's tensor inventory
 * (every missing tensor named, every shape and dtype checked) and turned into per-layer weight
 * records. Float weights stay views of the memory-mapped safetensors shards (nothing is copied
 * into the JS heap); the only tensors built at load are the per-head absorbed-attention matrices
 * W_UK(h)ᵀ, which are a transpose of kv_b_proj's key rows (SPEC §1.8).
 */
import { KvantError } from '../../errors';
import { Checkpoint } from '../../io/checkpoint';
import { bindLinear, linear } from '../../ops/linear';
import { QActivations, bindQlinear, qlinear } from '../../ops/qlinear';
import { QuantizeConfig, isQuantized, loadQTensor, readQuantizeConfig } from '../../quant/checkpoint';
import { QTensor } from '../../quant/format';
import { dequantize } from '../../quant/quantize';
import { Tensor } from '../../tensor';
import { DeepSeekV2Config, isMoeLayer, parseConfig } from './config';
import { TensorSpec, expectedTensors } from './tensors';

/** Float dtypes a weight may have in the checkpoint. */
const FLOAT_ST: Record<string, true> = { F32: true, F16: true, BF16: true };

/**
 * One linear layer y = x · Wᵀ, W [N, K]. Every projection of the forward goes through
 * `applyLinear`, so the dense and the quantized paths differ in one place only.
 */
export interface LinearWeight {
  name: string;
  N: number;
  K: number;
  /** Dense weight [N, K] or GPTQ QTensor, both views of the mapped checkpoint. */
  w: Tensor | QTensor;
}

/** y [M, N] f32 = x [M, K] · Wᵀ (quantized W: activations as given, default f32). Rows are independent (batch-invariant kernels). */
export function applyLinear(x: Tensor, w: LinearWeight, out?: Tensor, activations?: QActivations): Tensor {
  return w.w instanceof Tensor ? linear(x, w.w, { out }) : qlinear(x, w.w, { out, activations });
}

/** applyLinear(x, w, out, activations) with its arguments checked and packed once: a call to repeat on the same x and out. */
export function bindApplyLinear(x: Tensor, w: LinearWeight, out: Tensor, activations?: QActivations): () => void {
  return w.w instanceof Tensor ? bindLinear(x, w.w, out) : bindQlinear(x, w.w, out, activations);
}

/** Bytes a linear layer's weights occupy (packed codes, zeros, scales, g_idx for GPTQ). */
export function weightBytes(w: Tensor | QTensor): number {
  if (w instanceof Tensor) return w.byteLength;
  return w.qweight.byteLength + w.qzeros.byteLength + w.scales.byteLength + (w.gIdx?.byteLength ?? 0) + (w.perm?.byteLength ?? 0);
}

export interface MlpWeights {
  gate: LinearWeight;
  up: LinearWeight;
  down: LinearWeight;
}

export interface AttentionWeights {
  /** q_lora_rank null: q_proj; else q_a_proj, q_a_layernorm, q_b_proj. */
  qProj: LinearWeight | null;
  qA: LinearWeight | null;
  qANorm: Tensor | null;
  qB: LinearWeight | null;
  kvA: LinearWeight;
  kvANorm: Tensor;
  /** kv_b_proj [nh·(P+Dv), L] (explicit form, prefill). */
  kvB: LinearWeight;
  /**
   * Absorbed form (decode): W_UK(h)ᵀ for all heads, [nh, L, P], so q_lat(h) = q_nope(h) · W_UK(h)
   * is one per-head linear (linearHeads).
   */
  wUkT: Tensor;
  /**
   * W_UV(h) for all heads as rows wUvRow0 .. wUvRow0+Dv of each head of a [nh, rows, L] tensor
   * (o(h) = o_lat(h) · W_UV(h)ᵀ): a view of kv_b_proj itself ([nh, P+Dv, L], rows from P) when it
   * is float, a compact f32 [nh, Dv, L] copy (rows from 0) when kv_b was dequantized.
   */
  wUv: Tensor;
  wUvRow0: number;
  oProj: LinearWeight;
}

export interface MoeWeights {
  /** Router [E, H] (kept in its file dtype; logits are accumulated in f32). */
  router: Tensor;
  experts: MlpWeights[];
  shared: MlpWeights | null;
}

export interface LayerWeights {
  inputNorm: Tensor;
  postNorm: Tensor;
  attn: AttentionWeights;
  mlp: MlpWeights | null;
  moe: MoeWeights | null;
}

export interface ModelWeights {
  config: DeepSeekV2Config;
  checkpoint: Checkpoint;
  embed: Tensor;
  layers: LayerWeights[];
  finalNorm: Tensor;
  lmHead: LinearWeight;
  /** Bytes of the weights the forward reads (mapped views + the W_UKᵀ copies). */
  bytes: number;
}

/** Load progress: `done` of `total` steps (tensors), `what` names the current one. */
export interface LoadProgress {
  done: number;
  total: number;
  what: string;
}

/** `prefix.weight` -> `prefix` (the module name GPTQ tensors hang off). */
const modulePrefix = (name: string): string => name.replace(/\.weight$/, '');

/**
 * Checks the checkpoint's tensors against the inventory: all present, shapes and dtypes right.
 * A linear layer may instead be GPTQ-quantized (`prefix.qweight` ...), checked when loaded.
 */
function checkInventory(ck: Checkpoint, specs: TensorSpec[], quantized: (s: TensorSpec) => boolean): void {
  const missing = specs.filter((s) => !quantized(s) && !ck.has(s.name)).map((s) => s.name);
  if (missing.length > 0) {
    const shown = missing.slice(0, 8).map((n) => `"${n}"`).join(', ');
    throw new KvantError(
      'KVANT_FORMAT',
      `${ck.dir}: missing ${missing.length} tensor${missing.length > 1 ? 's' : ''} the config requires: ${shown}${missing.length > 8 ? `, … (${missing.length - 8} more)` : ''}`,
    );
  }
  for (const s of specs) {
    if (quantized(s)) continue;
    const info = ck.info(s.name);
    if (!FLOAT_ST[info.dtype])
      throw new KvantError('KVANT_DTYPE', `${ck.dir}: expected tensor "${s.name}" to be F32, F16 or BF16 but it is ${info.dtype}`);
    if (info.shape.length !== s.shape.length || info.shape.some((d, i) => d !== s.shape[i]))
      throw new KvantError('KVANT_SHAPE', `${ck.dir}: expected tensor "${s.name}" of shape [${s.shape.join(', ')}] (from config.json) but it is [${info.shape.join(', ')}]`);
  }
}

/**
 * W_UK(h)ᵀ for every head: kv_b rows h·(P+Dv) .. h·(P+Dv)+P-1 are W_UK(h) [P, L]; the absorbed
 * query needs q_nope · W_UK(h), i.e. a linear layer with weight W_UK(h)ᵀ [L, P]. The transpose
 * is a bit-exact element copy in the file's dtype (bf16 stays bf16), so both forms use the
 * same weight values.
 */
function transposeKeyHeads(kvB: Tensor, nh: number, P: number, Dv: number, L: number): Tensor {
  const src = kvB.data() as Float32Array | Uint16Array;
  const t = Tensor.zeros([nh, L, P], kvB.dtype);
  const dst = t.data() as Float32Array | Uint16Array;
  for (let h = 0; h < nh; h++) {
    const base = h * (P + Dv) * L;
    const out = h * L * P;
    for (let p = 0; p < P; p++) {
      const row = base + p * L;
      for (let l = 0; l < L; l++) dst[out + l * P + p] = src[row + l];
    }
  }
  return t;
}

/** W_UV(h) = rows P..P+Dv of head h of kv_b [nh·(P+Dv), L], copied into a compact f32 [nh, Dv, L]. */
function valueHeads(kvB: Tensor, nh: number, P: number, Dv: number, L: number): Tensor {
  const f = kvB.dtype === 'f32' ? kvB : kvB.to('f32');
  const src = f.data() as Float32Array;
  const t = Tensor.zeros([nh, Dv, L], 'f32');
  const dst = t.data() as Float32Array;
  for (let h = 0; h < nh; h++) dst.set(src.subarray((h * (P + Dv) + P) * L, (h + 1) * (P + Dv) * L), h * Dv * L);
  return t;
}

/** Opens and validates a checkpoint folder and builds the weight records. */
export function loadWeights(dir: string, onProgress?: (p: LoadProgress) => void): ModelWeights {
  const ck = Checkpoint.open(dir, (done, total, file) => onProgress?.({ done, total, what: `mapped ${file}` }));
  try {
    const cfg = parseConfig(ck.config);
    const qc: QuantizeConfig | null = readQuantizeConfig(ck);
    const specs = expectedTensors(cfg);
    // Only linear layers may be quantized (norms, embeddings, the router stay float).
    const quantized = (s: TensorSpec): boolean => (s.role === 'linear' || s.role === 'lm_head') && isQuantized(ck, modulePrefix(s.name));
    const anyQuantized = specs.some(quantized);
    if (anyQuantized && qc === null)
      throw new KvantError('KVANT_FORMAT', `${dir}: the checkpoint holds GPTQ tensors (e.g. "${modulePrefix(specs.find(quantized)!.name)}.qweight") but no quantize_config.json, quant_config.json or quantization_config`);
    if (qc !== null && !anyQuantized)
      throw new KvantError('KVANT_FORMAT', `${dir}: quantize_config says the model is ${qc.bits}-bit GPTQ but no linear layer has a .qweight tensor`);
    for (const s of specs)
      if (s.role !== 'linear' && s.role !== 'lm_head' && isQuantized(ck, modulePrefix(s.name)))
        throw new KvantError('KVANT_FORMAT', `${dir}: "${modulePrefix(s.name)}" is quantized but kvant keeps ${s.role} tensors in float`);
    checkInventory(ck, specs, quantized);
    const specOf = new Map(specs.map((s) => [s.name, s]));
    let bytes = 0;
    let done = 0;
    const total = cfg.numLayers + 2;
    const tensor = (name: string): Tensor => {
      const t = ck.tensor(name);
      bytes += t.byteLength;
      return t;
    };
    const lin = (name: string): LinearWeight => {
      const spec = specOf.get(name)!;
      const [N, K] = [spec.shape[0], spec.shape[1] ?? 1];
      if (!quantized(spec)) return { name, N, K, w: tensor(name) };
      const prefix = modulePrefix(name);
      const q = loadQTensor(ck, prefix, qc!);
      if (q.format.N !== N || q.format.K !== K)
        throw new KvantError(
          'KVANT_SHAPE',
          `${dir}: expected "${prefix}" to be [${N}, ${K}] (from config.json) but its GPTQ tensors at ${q.format.bits} bits (quantize_config) give [${q.format.N}, ${q.format.K}]`,
        );
      bytes += weightBytes(q);
      return { name, N, K, w: q };
    };
    const mlp = (p: string): MlpWeights => ({ gate: lin(`${p}.gate_proj.weight`), up: lin(`${p}.up_proj.weight`), down: lin(`${p}.down_proj.weight`) });
    const embed = tensor('model.embed_tokens.weight');
    onProgress?.({ done: ++done, total, what: 'model.embed_tokens' });
    const nh = cfg.numHeads;
    const P = cfg.qkNopeHeadDim;
    const Dv = cfg.vHeadDim;
    const L = cfg.kvLoraRank;
    const layers: LayerWeights[] = [];
    for (let l = 0; l < cfg.numLayers; l++) {
      const p = `model.layers.${l}`;
      const a = `${p}.self_attn`;
      const kvB = lin(`${a}.kv_b_proj.weight`);
      // The absorbed form needs kv_b's per-head slices as dense matrices: a quantized kv_b is
      // dequantized once here (f32, [nh·(P+Dv), L]; the explicit form keeps using the QTensor).
      const quantKvB = !(kvB.w instanceof Tensor);
      const kvBDense = kvB.w instanceof Tensor ? kvB.w : dequantize(kvB.w, 'f32');
      const wUkT = transposeKeyHeads(kvBDense, nh, P, Dv, L);
      bytes += wUkT.byteLength;
      // W_UV(h) rows are contiguous in kv_b_proj: a view of the mapped tensor, no copy. From a
      // dequantized kv_b they are copied out so the temporary [nh·(P+Dv), L] matrix is freed:
      // the absorbed form then holds exactly kv_b's values once, in f32 (what plan counts).
      const wUv = quantKvB ? valueHeads(kvBDense, nh, P, Dv, L) : kvBDense.reshape([nh, P + Dv, L]);
      const wUvRow0 = quantKvB ? 0 : P;
      if (quantKvB) {
        bytes += wUv.byteLength;
        kvBDense.dispose(); // frees it now if it is native memory (a no-op for JS memory)
      }
      const attn: AttentionWeights = {
        qProj: cfg.qLoraRank === null ? lin(`${a}.q_proj.weight`) : null,
        qA: cfg.qLoraRank === null ? null : lin(`${a}.q_a_proj.weight`),
        qANorm: cfg.qLoraRank === null ? null : tensor(`${a}.q_a_layernorm.weight`),
        qB: cfg.qLoraRank === null ? null : lin(`${a}.q_b_proj.weight`),
        kvA: lin(`${a}.kv_a_proj_with_mqa.weight`),
        kvANorm: tensor(`${a}.kv_a_layernorm.weight`),
        kvB,
        wUkT,
        wUv,
        wUvRow0,
        oProj: lin(`${a}.o_proj.weight`),
      };
      const m = `${p}.mlp`;
      const moe = isMoeLayer(cfg, l);
      layers.push({
        inputNorm: tensor(`${p}.input_layernorm.weight`),
        postNorm: tensor(`${p}.post_attention_layernorm.weight`),
        attn,
        mlp: moe ? null : mlp(m),
        moe: moe
          ? {
              router: tensor(`${m}.gate.weight`),
              experts: Array.from({ length: cfg.nRoutedExperts }, (_, e) => mlp(`${m}.experts.${e}`)),
              shared: cfg.nSharedExperts > 0 ? mlp(`${m}.shared_experts`) : null,
            }
          : null,
      });
      onProgress?.({ done: ++done, total, what: `model.layers.${l}` });
    }
    const finalNorm = tensor('model.norm.weight');
    const lmHead = cfg.tieWordEmbeddings ? { name: 'model.embed_tokens.weight', N: embed.shape[0], K: embed.shape[1], w: embed } : lin('lm_head.weight');
    onProgress?.({ done: ++done, total, what: 'lm_head' });
    return { config: cfg, checkpoint: ck, embed, layers, finalNorm, lmHead, bytes };
  } catch (e) {
    ck.close();
    throw e;
  }
}
