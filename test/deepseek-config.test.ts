import { describe, expect, it } from 'vitest';
import { KvantError } from '../lib';
import { parseConfig } from '../lib/models/deepseek-v2/config';
import { ropeAmplitude, ropeInvFreq, softmaxScale } from '../lib/models/deepseek-v2/rope';
import { LITE } from './helpers/configs';

function formatError(fn: () => unknown): KvantError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvantError);
    expect((e as KvantError).code).toBe('KVANT_FORMAT');
    return e as KvantError;
  }
  throw new Error('expected KVANT_FORMAT');
}

describe('DeepSeek-V2 config', () => {
  it('parses the V2-Lite config', () => {
    const c = parseConfig(LITE);
    expect(c.qLoraRank).toBeNull();
    expect(c.ropeScaling?.factor).toBe(40);
    expect(c.eosTokenId).toEqual([100001]);
  });

  it('YaRN inverse frequencies match the published check values (SPEC §1.6)', () => {
    const c = parseConfig(LITE);
    const inv = ropeInvFreq(c);
    const check: Record<number, number> = { 0: 1, 1: 0.749894, 4: 0.316228, 10: 0.0562341, 11: 0.0390069, 12: 0.0268794, 16: 0.0055,
      20: 0.000790569, 22: 0.000177828, 23: 3.3338e-5, 31: 3.3338e-6 };
    for (const [i, v] of Object.entries(check)) expect(Math.abs(inv[Number(i)] - v) / v).toBeLessThan(2e-5);
    expect(ropeAmplitude(c)).toBe(1); // mscale == mscale_all_dim: A = 1 exactly
    expect(softmaxScale(c)).toBeCloseTo(0.1147214, 6);
    const noYarn = parseConfig({ ...LITE, rope_scaling: null });
    expect(softmaxScale(noYarn)).toBeCloseTo(192 ** -0.5, 10);
    expect(ropeInvFreq(noYarn)[31]).toBeCloseTo(10000 ** (-62 / 64), 9);
    const allDim1 = parseConfig({ ...LITE, rope_scaling: { ...LITE.rope_scaling, mscale: 1, mscale_all_dim: 1 } });
    expect(softmaxScale(allDim1)).toBeCloseTo(0.1352338, 6);
  });

  it('accepts the newer rope_parameters spelling', () => {
    const { rope_scaling, rope_theta, ...rest } = LITE;
    const c = parseConfig({ ...rest, rope_parameters: { rope_type: 'yarn', rope_theta, ...rope_scaling, type: undefined } });
    expect(c.ropeScaling?.factor).toBe(40);
    expect(c.ropeTheta).toBe(10000);
  });

  it('rejects malformed or unsupported configs, naming the field', () => {
    expect(formatError(() => parseConfig({ ...LITE, architectures: ['LlamaForCausalLM'] })).message).toContain('LlamaForCausalLM');
    expect(formatError(() => parseConfig({ ...LITE, hidden_size: '2048' })).message).toContain('hidden_size');
    expect(formatError(() => parseConfig({ ...LITE, kv_lora_rank: undefined })).message).toContain('kv_lora_rank');
    expect(formatError(() => parseConfig({ ...LITE, num_key_value_heads: 8 })).message).toContain('num_key_value_heads');
    expect(formatError(() => parseConfig({ ...LITE, scoring_func: 'sigmoid' })).message).toContain('scoring_func');
    expect(formatError(() => parseConfig({ ...LITE, topk_method: 'noaux_tc' })).message).toContain('topk_method');
    expect(formatError(() => parseConfig({ ...LITE, num_experts_per_tok: 65 })).message).toContain('num_experts_per_tok');
    expect(formatError(() => parseConfig({ ...LITE, n_group: 3 })).message).toContain('n_group');
    expect(formatError(() => parseConfig({ ...LITE, rope_scaling: { type: 'linear', factor: 2 } })).message).toContain('rope_scaling');
    expect(formatError(() => parseConfig({ ...LITE, qk_rope_head_dim: 63 })).message).toContain('qk_rope_head_dim');
    expect(formatError(() => parseConfig({ ...LITE, eos_token_id: 999999 })).message).toContain('eos_token_id');
    expect(formatError(() => parseConfig([])).message).toContain('(root)');
  });
});
