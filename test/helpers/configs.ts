/** DeepSeek-V2-Lite's config.json fields (SPEC §1.1). */
export const LITE = {
  architectures: ['DeepseekV2ForCausalLM'], model_type: 'deepseek_v2', hidden_size: 2048, num_hidden_layers: 27, num_attention_heads: 16,
  num_key_value_heads: 16, q_lora_rank: null, kv_lora_rank: 512, qk_nope_head_dim: 128, qk_rope_head_dim: 64, v_head_dim: 128,
  n_routed_experts: 64, n_shared_experts: 2, num_experts_per_tok: 6, moe_intermediate_size: 1408, intermediate_size: 10944,
  first_k_dense_replace: 1, moe_layer_freq: 1, n_group: 1, topk_group: 1, topk_method: 'greedy', norm_topk_prob: false,
  routed_scaling_factor: 1.0, scoring_func: 'softmax', hidden_act: 'silu', rope_theta: 10000,
  rope_scaling: { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 0.707, mscale_all_dim: 0.707 },
  max_position_embeddings: 163840, vocab_size: 102400, rms_norm_eps: 1e-6, tie_word_embeddings: false, bos_token_id: 100000,
  eos_token_id: 100001, attention_bias: false, torch_dtype: 'bfloat16',
};

