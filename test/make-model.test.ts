import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Checkpoint } from '../lib/io/checkpoint';
import { parseConfig } from '../lib/models/deepseek-v2/config';
import { makeModel } from '../lib/models/deepseek-v2/make-model';
import { expectedTensors } from '../lib/models/deepseek-v2/tensors';
import { TextTokenizer } from '../lib/text/tokenizer';

const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-mm-'));

describe('make-model', () => {
  it('writes every tensor of the architecture with its shape, a config and a working tokenizer', () => {
    const dir = tmp();
    makeModel({ preset: 'tiny', out: dir, seed: 3 });
    const ck = Checkpoint.open(dir);
    const cfg = parseConfig(ck.config);
    const specs = expectedTensors(cfg);
    expect(ck.names().sort()).toEqual(specs.map((s) => s.name).sort());
    for (const s of specs) expect(ck.info(s.name)).toEqual({ dtype: 'BF16', shape: s.shape });
    const norm = ck.tensor('model.layers.0.input_layernorm.weight').toFloat32Array();
    expect(Math.abs(norm.reduce((a, b) => a + b, 0) / norm.length - 1)).toBeLessThan(0.05);
    const tok = TextTokenizer.fromFolder(dir)!;
    expect(tok.bosId).toBe(cfg.bosTokenId);
    expect(cfg.eosTokenId).toEqual([tok.eosId]);
    expect(tok.decode(tok.encode('hello world'))).toBe('hello world');
    ck.close();
  });

  it('is deterministic per seed; overrides produce the variants; bad options are typed errors', () => {
    const a = tmp();
    const b = tmp();
    makeModel({ preset: 'tiny', out: a, seed: 9, dtype: 'f32', configOverride: { q_lora_rank: null, rope_scaling: null } });
    makeModel({ preset: 'tiny', out: b, seed: 9, dtype: 'f32', configOverride: { q_lora_rank: null, rope_scaling: null } });
    expect(fs.readFileSync(path.join(a, 'model.safetensors')).equals(fs.readFileSync(path.join(b, 'model.safetensors')))).toBe(true);
    const ck = Checkpoint.open(a);
    expect(ck.has('model.layers.0.self_attn.q_proj.weight')).toBe(true);
    expect(ck.info('model.embed_tokens.weight').dtype).toBe('F32');
    ck.close();
    expect(() => makeModel({ preset: 'huge' as 'tiny', out: tmp() })).toThrow(expect.objectContaining({ code: 'KVANT_RANGE' }));
    expect(() => makeModel({ preset: 'tiny', out: tmp(), configOverride: { hidden_size: 'x' } })).toThrow(expect.objectContaining({ code: 'KVANT_FORMAT' }));
  });

  it('the CLI writes the folder and reports progress on stderr only', () => {
    const dir = tmp();
    const r = spawnSync(process.execPath, ['bin/kvant.js', 'make-model', '--preset', 'tiny', '--layers', '2', '--out', dir], { cwd: path.join(__dirname, '..'), encoding: 'utf8' });
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain('make-model');
    expect(JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')).num_hidden_layers).toBe(2);
  });
});
