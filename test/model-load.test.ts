/**
 * DeepSeekV2Model.load and the argument checks of prefill/decode: every bad input ends in a
 * typed KvantError whose message names the field, tensor or argument (issue #6, bad input).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { KvantError } from '../lib/errors';
import { Checkpoint } from '../lib/io/checkpoint';
import { writeSafetensors } from '../lib/io/safetensors';
import { makeModel } from '../lib/models/deepseek-v2/make-model';
import { DeepSeekV2Model } from '../lib/models/deepseek-v2/model';
import { loadWeights } from '../lib/models/deepseek-v2/weights';
import { Tensor } from '../lib/tensor';
import { tinyModel } from './helpers/model-fixtures';

/** A copy of a checkpoint folder whose config.json is rewritten by `edit`. */
function withConfig(src: string, edit: (c: Record<string, unknown>) => void): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-badcfg-'));
  for (const f of fs.readdirSync(src)) fs.copyFileSync(path.join(src, f), path.join(dir, f));
  const c = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
  edit(c);
  fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(c));
  return dir;
}

/** A copy whose weights are rewritten: `edit` maps name -> tensor (undefined drops it). */
function withTensors(src: string, edit: (name: string, t: Tensor) => Tensor | undefined): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-badw-'));
  for (const f of fs.readdirSync(src)) if (!f.endsWith('.safetensors') && !f.endsWith('.index.json')) fs.copyFileSync(path.join(src, f), path.join(dir, f));
  const ck = Checkpoint.open(src);
  const out: [string, Tensor][] = [];
  for (const n of ck.names().sort()) {
    const t = edit(n, ck.tensor(n));
    if (t) out.push([n, t]);
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), out);
  ck.close();
  return dir;
}

function code(fn: () => unknown): { code: string; message: string } {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(KvantError);
    return { code: (e as KvantError).code, message: (e as KvantError).message };
  }
  throw new Error('expected a KvantError');
}

describe('DeepSeekV2Model.load: bad checkpoints', () => {
  const good = tinyModel('bf16');

  it('loads the good checkpoint and reports progress up to done === total', () => {
    const seen: { done: number; total: number; what: string }[] = [];
    const m = DeepSeekV2Model.load(good, { onProgress: (p) => seen.push(p) });
    expect(m.vocabSize).toBe(512);
    expect(m.maxContext).toBe(1024);
    const last = seen[seen.length - 1];
    expect(last.done).toBe(last.total);
    expect(seen.some((p) => p.what.includes('model.layers.2'))).toBe(true);
    expect(m.memory().weightsBytes).toBeGreaterThan(0);
    m.dispose();
  });

  it('weights are views of the mapped files; a sharded checkpoint (index + shards) gives the same logits', () => {
    const w = loadWeights(good);
    for (const t of [w.embed, w.layers[0].attn.oProj.w as Tensor, w.layers[2].moe!.experts[5].down.w as Tensor, w.lmHead.w as Tensor])
      expect(t.storage.kind).toBe('native');
    w.checkpoint.close();
    const sharded = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-shards-'));
    makeModel({ preset: 'tiny', out: sharded, seed: 1, dtype: 'bf16', maxShardBytes: 1 << 20 });
    expect(fs.existsSync(path.join(sharded, 'model.safetensors.index.json'))).toBe(true);
    expect(fs.readdirSync(sharded).filter((f) => f.endsWith('.safetensors')).length).toBeGreaterThan(1);
    const a = DeepSeekV2Model.load(good);
    const b = DeepSeekV2Model.load(sharded);
    const la = a.prefill(a.cache.open(5), [1, 2, 3, 4, 5]);
    const lb = b.prefill(b.cache.open(5), [1, 2, 3, 4, 5]);
    expect(lb).toEqual(la);
    a.dispose();
    b.dispose();
  });

  it('malformed or inconsistent config.json names the field (KVANT_FORMAT)', () => {
    const cases: [(c: Record<string, unknown>) => void, string][] = [
      [(c) => (c.hidden_size = 'big'), 'hidden_size'],
      [(c) => delete c.kv_lora_rank, 'kv_lora_rank'],
      [(c) => (c.num_experts_per_tok = 99), 'num_experts_per_tok'],
      [(c) => (c.topk_method = 'noaux_tc'), 'topk_method'],
      [(c) => (c.rope_scaling = { type: 'linear', factor: 2 }), 'rope_scaling.type'],
      [(c) => (c.architectures = ['LlamaForCausalLM']), 'architecture'],
    ];
    for (const [edit, field] of cases) {
      const e = code(() => DeepSeekV2Model.load(withConfig(good, edit)));
      expect(e.code).toBe('KVANT_FORMAT');
      expect(e.message).toContain(field);
    }
  });

  it('missing tensors are named (KVANT_FORMAT)', () => {
    const drop = 'model.layers.1.self_attn.kv_a_layernorm.weight';
    const e = code(() => DeepSeekV2Model.load(withTensors(good, (n, t) => (n === drop || n === 'lm_head.weight' ? undefined : t))));
    expect(e.code).toBe('KVANT_FORMAT');
    expect(e.message).toContain(drop);
    expect(e.message).toContain('lm_head.weight');
    expect(e.message).toContain('missing 2 tensors');
    // A config promising more layers than the files hold.
    const more = code(() => DeepSeekV2Model.load(withConfig(good, (c) => (c.num_hidden_layers = 4))));
    expect(more.code).toBe('KVANT_FORMAT');
    expect(more.message).toContain('model.layers.3.input_layernorm.weight');
  });

  it('wrong shapes (KVANT_SHAPE) and dtypes (KVANT_DTYPE) name the tensor', () => {
    const s = code(() => DeepSeekV2Model.load(withConfig(good, (c) => (c.intermediate_size = 544))));
    expect(s.code).toBe('KVANT_SHAPE');
    expect(s.message).toMatch(/model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight/);
    expect(s.message).toContain('544');
    const name = 'model.layers.2.mlp.experts.3.up_proj.weight';
    const d = code(() => DeepSeekV2Model.load(withTensors(good, (n, t) => (n === name ? Tensor.zeros(t.shape, 'i32') : t))));
    expect(d.code).toBe('KVANT_DTYPE');
    expect(d.message).toContain(name);
    const r = code(() => DeepSeekV2Model.load(withTensors(good, (n, t) => (n === name ? Tensor.zeros([t.shape[1], t.shape[0]], 'bf16') : t))));
    expect(r.code).toBe('KVANT_SHAPE');
    expect(r.message).toContain(name);
  });

  it('not a folder / no config (KVANT_IO)', () => {
    expect(code(() => DeepSeekV2Model.load(path.join(os.tmpdir(), 'kvant-no-such-dir'))).code).toBe('KVANT_IO');
    const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-empty-'));
    expect(code(() => DeepSeekV2Model.load(empty)).code).toBe('KVANT_IO');
  });
});

describe('DeepSeekV2Model: bad arguments', () => {
  const m = DeepSeekV2Model.load(tinyModel('bf16', { max_position_embeddings: 16 }));

  it('token ids out of range or not integers (KVANT_RANGE), empty prompt (KVANT_SHAPE)', () => {
    const seq = m.cache.open(16);
    for (const bad of [[1, 512], [-1], [1.5], [Number.NaN]]) {
      const e = code(() => m.prefill(seq, bad));
      expect(e.code).toBe('KVANT_RANGE');
      expect(e.message).toContain('tokens[');
    }
    expect(code(() => m.prefill(seq, [])).code).toBe('KVANT_SHAPE');
    expect(code(() => m.decode([seq], [600])).code).toBe('KVANT_RANGE');
    expect(code(() => m.decode([seq, seq], [1, 2])).code).toBe('KVANT_RANGE');
    expect(code(() => m.decode([seq], [1, 2])).code).toBe('KVANT_SHAPE');
    expect(m.cache.length(seq)).toBe(0); // nothing was appended by the failed calls
    m.cache.close(seq);
  });

  it('a prompt longer than the context, and decoding past it (KVANT_RANGE)', () => {
    const seq = m.cache.open(16);
    const e = code(() => m.prefill(seq, Array.from({ length: 17 }, (_, i) => i)));
    expect(e.code).toBe('KVANT_RANGE');
    expect(e.message).toContain('maxContext 16');
    m.prefill(seq, Array.from({ length: 16 }, (_, i) => i));
    expect(code(() => m.decode([seq], [3])).code).toBe('KVANT_RANGE');
    m.cache.close(seq);
  });

  it('running out of the KV budget mid-prefill is KVANT_OOM and leaves the sequence as it was', () => {
    const small = DeepSeekV2Model.load(tinyModel('bf16'), { pageSize: 16, kvBudgetBytes: 1 });
    expect(code(() => small.cache.open(1)).code).toBe('KVANT_OOM');
    small.dispose();
    const probe = DeepSeekV2Model.load(tinyModel('bf16'), { pageSize: 16 });
    const pageBytes = probe.cache.bytesPerToken * 16;
    probe.dispose();
    const m1 = DeepSeekV2Model.load(tinyModel('bf16'), { pageSize: 16, kvBudgetBytes: pageBytes });
    const seq = m1.cache.open(4);
    const e = code(() => m1.prefill(seq, Array.from({ length: 20 }, (_, i) => i), { chunkSize: 8 }));
    expect(e.code).toBe('KVANT_OOM');
    for (let l = 0; l < m1.config.numLayers; l++) expect(m1.cache.length(seq, l)).toBe(0);
    expect(m1.prefill(seq, [1, 2, 3]).length).toBe(m1.vocabSize);
    for (let l = 0; l < m1.config.numLayers; l++) expect(m1.cache.length(seq, l)).toBe(3);
    m1.dispose();
  });

  it('a disposed model refuses work (KVANT_RANGE)', () => {
    const m2 = DeepSeekV2Model.load(tinyModel('bf16'));
    m2.dispose();
    expect(code(() => m2.prefill(0, [1])).code).toBe('KVANT_RANGE');
    expect(code(() => m2.decode([0], [1])).code).toBe('KVANT_RANGE');
    expect(m2.memory()).toEqual({ weightsBytes: 0, cacheBytes: 0 });
    m2.dispose(); // idempotent
  });
});
