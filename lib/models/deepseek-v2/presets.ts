/**
 * config.json presets for `kvant make-model` (random checkpoints in the real DeepSeek-V2 file
 * layout, since no weights can be downloaded here).
 *
 * "tiny" is small enough for tests yet exercises every path: the q_lora path, YaRN, MoE with a
 * shared expert, a dense first layer, head dims the attention kernels accept (Dqk 96 != Dv 64),
 * every input dimension a multiple of 32 (so 3-bit packing works) and every output dimension a
 * multiple of 32 (qzeros packing), with moe_intermediate_size = 160, which is not a multiple of
 * 128: expert down_proj gets a partial last group at group size 128.
 * "lite" has DeepSeek-V2-Lite's exact shapes (SPEC §1.1), 4 layers by default.
 */

export type PresetName = 'tiny' | 'lite';

const YARN_LITE = { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 0.707, mscale_all_dim: 0.707 };

export function presetConfig(name: PresetName, layers?: number): Record<string, unknown> {
  const common = {
    architectures: ['DeepseekV2ForCausalLM'],
    model_type: 'deepseek_v2',
    hidden_act: 'silu',
    scoring_func: 'softmax',
    attention_bias: false,
    tie_word_embeddings: false,
    rope_theta: 10000,
    rms_norm_eps: 1e-6,
    moe_layer_freq: 1,
    first_k_dense_replace: 1,
    norm_topk_prob: false,
    torch_dtype: 'bfloat16',
    aux_loss_alpha: 0.001,
    seq_aux: true,
    ep_size: 1,
  };
  if (name === 'lite') {
    return {
      ...common,
      hidden_size: 2048,
      num_hidden_layers: layers ?? 4,
      num_attention_heads: 16,
      num_key_value_heads: 16,
      q_lora_rank: null,
      kv_lora_rank: 512,
      qk_nope_head_dim: 128,
      qk_rope_head_dim: 64,
      v_head_dim: 128,
      n_routed_experts: 64,
      n_shared_experts: 2,
      num_experts_per_tok: 6,
      moe_intermediate_size: 1408,
      intermediate_size: 10944,
      n_group: 1,
      topk_group: 1,
      topk_method: 'greedy',
      routed_scaling_factor: 1.0,
      rope_scaling: YARN_LITE,
      max_position_embeddings: 163840,
      vocab_size: 102400,
      bos_token_id: 100000,
      eos_token_id: 100001,
    };
  }
  return {
    ...common,
    hidden_size: 256,
    num_hidden_layers: layers ?? 3,
    num_attention_heads: 4,
    num_key_value_heads: 4,
    q_lora_rank: 96,
    kv_lora_rank: 128,
    qk_nope_head_dim: 64,
    qk_rope_head_dim: 32,
    v_head_dim: 64,
    n_routed_experts: 8,
    n_shared_experts: 1,
    num_experts_per_tok: 2,
    moe_intermediate_size: 160,
    intermediate_size: 512,
    n_group: 2,
    topk_group: 1,
    topk_method: 'greedy',
    routed_scaling_factor: 1.0,
    rope_scaling: { type: 'yarn', factor: 4, original_max_position_embeddings: 256, beta_fast: 32, beta_slow: 1, mscale: 0.707, mscale_all_dim: 0.707 },
    max_position_embeddings: 1024,
    vocab_size: 512,
    bos_token_id: 510,
    eos_token_id: 511,
  };
}

/**
 * Standard deviation of a tensor's random init: 1/sqrt(fan_in) for linear layers so activations
 * keep their scale through the stack, 1 for embeddings; norm weights are drawn around 1.
 */
export function initStd(role: string, shape: readonly number[]): number {
  if (role === 'embed') return 1;
  if (role === 'norm') return 0.1;
  return 1 / Math.sqrt(shape[shape.length - 1]);
}
