import { describe, expect, it } from 'vitest';
import { parseConfig } from '../lib/models/deepseek-v2/config';
import { plan } from '../lib/models/deepseek-v2/plan';
import { expectedTensors } from '../lib/models/deepseek-v2/tensors';
import { LITE } from './helpers/configs';

describe('tensor inventory and memory plan', () => {
  it('V2-Lite has the published parameter count (SPEC §1.10)', () => {
    const cfg = parseConfig(LITE);
    const params = expectedTensors(cfg).reduce((a, t) => a + t.shape[0] * (t.shape[1] ?? 1), 0);
    expect(params).toBe(15_706_484_224);
    const v2 = parseConfig({ ...LITE, hidden_size: 5120, num_hidden_layers: 60, num_attention_heads: 128, num_key_value_heads: 128, q_lora_rank: 1536,
      n_routed_experts: 160, moe_intermediate_size: 1536, intermediate_size: 12288, n_group: 8, topk_group: 3, topk_method: 'group_limited_greedy' });
    expect(expectedTensors(v2).reduce((a, t) => a + t.shape[0] * (t.shape[1] ?? 1), 0)).toBe(235_741_434_880);
  });

  it('KV bytes per token match the MLA latent sizes (SPEC §1.8) and shrink with quantized caches', () => {
    const cfg = parseConfig(LITE);
    expect(plan(cfg, { kvCache: 'bf16' }).kv_bytes_per_token).toBe(31_104);
    expect(plan(cfg, { kvCache: 'q8' }).kv_bytes_per_token).toBe(27 * (512 * 1.0625 + 128));
    expect(plan(cfg, { kvCache: 'q4' }).kv_bytes_per_token).toBe(27 * (512 * 0.5625 + 128));
    const p = plan(cfg, { bits: 4, groupSize: 128, context: 1000 });
    expect(p.kv_bytes).toBe(1000 * p.kv_bytes_per_token);
    expect(p.total_bytes).toBe(p.weights_bytes + p.kv_bytes);
    expect(p.fits).toBe(p.total_bytes <= p.available_bytes);
    // 4-bit g128 is about a quarter of bf16 (plus embeddings and norms that stay 16-bit)
    const bf16 = plan(cfg, { bits: 16 });
    expect(p.weights_bytes / bf16.weights_bytes).toBeGreaterThan(0.25);
    expect(p.weights_bytes / bf16.weights_bytes).toBeLessThan(0.32);
  });
});

describe('presets', () => {
  it('tiny exercises every path and has packable, partially-grouped dims; lite matches V2-Lite', async () => {
    const { presetConfig } = await import('../lib/models/deepseek-v2/presets');
    const tiny = parseConfig(presetConfig('tiny'));
    expect(tiny.qLoraRank).not.toBeNull();
    expect(tiny.ropeScaling).not.toBeNull();
    expect(tiny.nSharedExperts).toBeGreaterThan(0);
    for (const t of expectedTensors(tiny).filter((t) => t.role === 'linear')) {
      expect(t.shape[1]! % 32).toBe(0); // K: 3-bit packing needs multiples of 32
      expect(t.shape[0] % 32).toBe(0); // N: qzeros packing
    }
    expect(expectedTensors(tiny).some((t) => t.role === 'linear' && t.shape[1]! % 128 !== 0)).toBe(true);
    const lite = parseConfig(presetConfig('lite', 27));
    expect(expectedTensors(lite).reduce((a, t) => a + t.shape[0] * (t.shape[1] ?? 1), 0)).toBe(15_706_484_224);
  });
});
