/**
 * The tensors a DeepSeek-V2 checkpoint holds (SPEC §1.2, original hub naming): names, shapes
 * ([out, in] for linear layers) and roles. The loader checks a checkpoint against this list
 * (naming what is missing), the model maker writes it, and `plan` sizes it.
 */
import { DeepSeekV2Config, isMoeLayer, qkHeadDim } from './config';

export type TensorRole =
  | 'embed'
  | 'norm'
  | 'lm_head'
  | 'router'
  /** A linear layer that may be quantized (attention projections, MLP and expert matrices). */
  | 'linear';

export interface TensorSpec {
  name: string;
  shape: [number] | [number, number];
  role: TensorRole;
  layer: number | null;
  /** For routed-expert matrices: the expert index. */
  expert?: number;
}

export function expectedTensors(cfg: DeepSeekV2Config): TensorSpec[] {
  const H = cfg.hiddenSize;
  const nh = cfg.numHeads;
  const qk = qkHeadDim(cfg);
  const out: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [cfg.vocabSize, H], role: 'embed', layer: null }];
  const lin = (name: string, o: number, i: number, layer: number, expert?: number) => out.push({ name, shape: [o, i], role: 'linear', layer, expert });
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    out.push({ name: `${p}.input_layernorm.weight`, shape: [H], role: 'norm', layer: l });
    out.push({ name: `${p}.post_attention_layernorm.weight`, shape: [H], role: 'norm', layer: l });
    const a = `${p}.self_attn`;
    if (cfg.qLoraRank === null) {
      lin(`${a}.q_proj.weight`, nh * qk, H, l);
    } else {
      lin(`${a}.q_a_proj.weight`, cfg.qLoraRank, H, l);
      out.push({ name: `${a}.q_a_layernorm.weight`, shape: [cfg.qLoraRank], role: 'norm', layer: l });
      lin(`${a}.q_b_proj.weight`, nh * qk, cfg.qLoraRank, l);
    }
    lin(`${a}.kv_a_proj_with_mqa.weight`, cfg.kvLoraRank + cfg.qkRopeHeadDim, H, l);
    out.push({ name: `${a}.kv_a_layernorm.weight`, shape: [cfg.kvLoraRank], role: 'norm', layer: l });
    lin(`${a}.kv_b_proj.weight`, nh * (cfg.qkNopeHeadDim + cfg.vHeadDim), cfg.kvLoraRank, l);
    lin(`${a}.o_proj.weight`, H, nh * cfg.vHeadDim, l);
    const m = `${p}.mlp`;
    if (isMoeLayer(cfg, l)) {
      out.push({ name: `${m}.gate.weight`, shape: [cfg.nRoutedExperts, H], role: 'router', layer: l });
      for (let e = 0; e < cfg.nRoutedExperts; e++) {
        lin(`${m}.experts.${e}.gate_proj.weight`, cfg.moeIntermediateSize, H, l, e);
        lin(`${m}.experts.${e}.up_proj.weight`, cfg.moeIntermediateSize, H, l, e);
        lin(`${m}.experts.${e}.down_proj.weight`, H, cfg.moeIntermediateSize, l, e);
      }
      if (cfg.nSharedExperts > 0) {
        const si = cfg.nSharedExperts * cfg.moeIntermediateSize;
        lin(`${m}.shared_experts.gate_proj.weight`, si, H, l);
        lin(`${m}.shared_experts.up_proj.weight`, si, H, l);
        lin(`${m}.shared_experts.down_proj.weight`, H, si, l);
      }
    } else {
      lin(`${m}.gate_proj.weight`, cfg.intermediateSize, H, l);
      lin(`${m}.up_proj.weight`, cfg.intermediateSize, H, l);
      lin(`${m}.down_proj.weight`, H, cfg.intermediateSize, l);
    }
  }
  out.push({ name: 'model.norm.weight', shape: [H], role: 'norm', layer: null });
  if (!cfg.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [cfg.vocabSize, H], role: 'lm_head', layer: null });
  return out;
}
