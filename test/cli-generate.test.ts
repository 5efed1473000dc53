/**
 * `kvant generate` and `kvant logits`, spawned as the built CLI (node bin/kvant.js, needs
 * dist/) on a tiny checkpoint made in a temp dir. Machine-readable stdout must hold exactly
 * the JSON and nothing else.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadModel } from '../lib/model';
import { makeModel } from '../lib/models/deepseek-v2/make-model';
import { MODEL_UNDER_TEST } from './helpers/model-under-test';

const root = path.join(__dirname, '..');
let dir: string;

function kvant(args: string[]) {
  const env = { ...process.env };
  if (MODEL_UNDER_TEST) env.KVANT_TEST_MODEL_IMPL = `${MODEL_UNDER_TEST.module}#${MODEL_UNDER_TEST.export}`;
  else delete env.KVANT_TEST_MODEL_IMPL;
  const r = spawnSync(process.execPath, [path.join(root, 'bin', 'kvant.js'), ...args], { encoding: 'utf8', env, timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-cli-gen-'));
  makeModel({ preset: 'tiny', out: dir, layers: 1, dtype: 'f32' });
});
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

describe('kvant generate', () => {
  it('--json prints exactly the documented object, deterministic for a seed', () => {
    const args = ['generate', '--model', dir, '--tokens', '5,6,7', '--max-tokens', '6', '--temperature', '0.8', '--seed', '11', '--ignore-eos', '--json'];
    const a = kvant(args);
    expect(a.code, a.stderr).toBe(0);
    const lines = a.stdout.trim().split('\n');
    expect(lines).toHaveLength(1);
    const j = JSON.parse(lines[0]);
    expect(Object.keys(j).sort()).toEqual(['finish_reason', 'text', 'timing', 'tokens', 'usage']);
    expect(Object.keys(j.usage).sort()).toEqual(['completion_tokens', 'prompt_tokens']);
    expect(Object.keys(j.timing).sort()).toEqual(['decode_tokens_per_s', 'prefill_tokens_per_s']);
    expect(j.tokens).toHaveLength(6);
    expect(j.usage).toEqual({ prompt_tokens: 3, completion_tokens: 6 });
    expect(j.finish_reason).toBe('length');
    expect(typeof j.text).toBe('string');
    expect(j.timing.prefill_tokens_per_s).toBeGreaterThan(0);
    expect(j.timing.decode_tokens_per_s).toBeGreaterThan(0);
    const b = JSON.parse(kvant(args).stdout);
    expect(b.tokens).toEqual(j.tokens);
  });

  it('streams text to stdout and the summary to stderr; same tokens as the API', async () => {
    const r = kvant(['generate', '--model', dir, '--prompt', 'the cat', '--max-tokens', '5', '--ignore-eos']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/finish: length; \d+ prompt \+ 5 generated tokens/);
    const m = await loadModel(dir, MODEL_UNDER_TEST ? { implementation: MODEL_UNDER_TEST } : {});
    try {
      const g = await m.generate('the cat', { maxTokens: 5, ignoreEos: true });
      expect(r.stdout).toBe(g.text + '\n');
    } finally {
      await m.close();
    }
  });

  it('a checkpoint without a tokenizer takes and prints token ids', () => {
    const bare = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-cli-bare-'));
    try {
      for (const f of fs.readdirSync(dir)) if (!f.startsWith('tokenizer')) fs.copyFileSync(path.join(dir, f), path.join(bare, f));
      const r = kvant(['generate', '--model', bare, '--tokens', '1,2', '--max-tokens', '4', '--ignore-eos']);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/^\d+(,\d+){3}\n$/);
      const j = JSON.parse(kvant(['generate', '--model', bare, '--tokens', '1,2', '--max-tokens', '4', '--ignore-eos', '--json']).stdout);
      expect(j.text).toBeNull();
      expect(j.tokens.join(',') + '\n').toBe(r.stdout);
      const t = kvant(['generate', '--model', bare, '--prompt', 'hi']);
      expect(t.code).toBe(1);
      expect(t.stderr).toContain('KVANT_FORMAT');
    } finally {
      fs.rmSync(bare, { recursive: true, force: true });
    }
  });

  it('bad arguments exit 1 with a typed message on stderr and nothing on stdout', () => {
    const cases: [string[], string][] = [
      [['generate', '--tokens', '1'], 'KVANT_IO'],
      [['generate', '--model', dir], 'KVANT_RANGE'],
      [['generate', '--model', dir, '--tokens', '1,two'], 'KVANT_RANGE'],
      [['generate', '--model', dir, '--tokens', '1', '--max-tokens', '0'], 'KVANT_RANGE'],
      [['generate', '--model', dir, '--tokens', '1', '--kv-cache', 'q5'], 'KVANT_RANGE'],
      [['generate', '--model', dir, '--tokens', '1', '--activations', 'int4'], 'KVANT_RANGE'],
      [['logits', '--model', dir, '--tokens', '1', '--activations', 'f16', '--json'], 'KVANT_RANGE'],
      [['generate', '--model', dir, '--tokens', '99999', '--json'], 'KVANT_RANGE'],
      [['generate', '--model', path.join(dir, 'missing'), '--tokens', '1'], 'KVANT_IO'],
      [['logits', '--model', dir, '--tokens', '1', '--mode', 'both', '--json'], 'KVANT_RANGE'],
    ];
    for (const [args, code] of cases) {
      const r = kvant(args);
      expect(r.code, args.join(' ')).toBe(1);
      expect(r.stderr).toContain(code);
      expect(r.stdout).toBe('');
    }
  });
});

describe('kvant logits', () => {
  it('--json rows per position at f32 round-trip precision, equal to the API; decode mode too', async () => {
    const tokens = [3, 14, 15, 92, 65];
    const r = kvant(['logits', '--model', dir, '--tokens', tokens.join(','), '--json']);
    expect(r.code, r.stderr).toBe(0);
    const j = JSON.parse(r.stdout) as { logits: number[][] };
    expect(Object.keys(j)).toEqual(['logits']);
    expect(j.logits).toHaveLength(tokens.length);
    const m = await loadModel(dir, MODEL_UNDER_TEST ? { implementation: MODEL_UNDER_TEST } : {});
    try {
      const api = await m.logits(tokens);
      const apiD = await m.logits(tokens, { mode: 'decode' });
      j.logits.forEach((row, i) => {
        expect(row).toHaveLength(m.vocabSize);
        // Reading each printed value back as f32 must give the model's exact bits.
        expect(Float32Array.from(row)).toEqual(api[i]);
      });
      const d = JSON.parse(kvant(['logits', '--model', dir, '--tokens', tokens.join(','), '--mode', 'decode', '--json']).stdout) as { logits: number[][] };
      d.logits.forEach((row, i) => expect(Float32Array.from(row)).toEqual(apiD[i]));
    } finally {
      await m.close();
    }
  });
});
