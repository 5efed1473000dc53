import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Tensor } from '../lib';
import { Checkpoint } from '../lib/io/checkpoint';
import { SafetensorsFile } from '../lib/io/safetensors';
import { makeModel } from '../lib/models/deepseek-v2/make-model';
import { configFor, isQuantized, loadQTensor, readQuantizeConfig } from '../lib/quant/checkpoint';
import { dequantize } from '../lib/quant/quantize';
import { isLinearWeight, quantizeModel } from '../lib/quant/quantize-model';

const root = path.join(__dirname, '..');
const tmp = () => fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-qm-'));
const src = tmp();
makeModel({ preset: 'tiny', out: src, seed: 5 });

function relFrobenius(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

describe('quantizeModel', () => {
  it('writes an AutoGPTQ-layout folder that reads back: rules, bf16 rest, config in both places, sharded with index', async () => {
    const out = tmp();
    const progress: number[] = [];
    const rules = { '-:.*kv_b_proj': {}, '+:.*\\.down_proj': { bits: 8, group_size: 64, desc_act: false } };
    const r = await quantizeModel({ input: src, output: out, bits: 4, groupSize: 128, actOrder: true, rules, calib: 'synthetic', calibTokens: 48, seed: 1, maxShardBytes: 1 << 20, onProgress: (p) => progress.push(p.done) });
    expect(progress[progress.length - 1]).toBe(r.quantized.length + r.kept.filter((k) => k.reason.startsWith('rule')).length);
    // routed experts get 48 * 2 / 8 = 12 tokens (< 16): they fall back to RTN, reported
    const experts = r.quantized.filter((t) => /experts\.\d+\./.test(t.name));
    expect(experts.length).toBeGreaterThan(0);
    for (const t of experts) expect(t.method).toBe('rtn');
    for (const t of r.quantized.filter((t) => !/experts\.\d+\./.test(t.name))) expect(t.method).toBe('gptq');
    expect(r.files.length).toBeGreaterThan(1);
    expect(fs.existsSync(path.join(out, 'model.safetensors.index.json'))).toBe(true);
    expect(fs.existsSync(path.join(out, 'tokenizer.json'))).toBe(true);
    expect(SafetensorsFile.open(path.join(out, r.files[0])).metadata.format).toBe('pt');
    const qcFile = JSON.parse(fs.readFileSync(path.join(out, 'quantize_config.json'), 'utf8'));
    expect(qcFile).toMatchObject({ bits: 4, group_size: 128, desc_act: true, sym: true, damp_percent: 0.01, true_sequential: false, checkpoint_format: 'gptq', dynamic: rules });
    expect(JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8')).quantization_config).toEqual(qcFile);

    const a = Checkpoint.open(src);
    const b = Checkpoint.open(out);
    const qc = readQuantizeConfig(b)!;
    let checked = 0;
    for (const name of a.names()) {
      const shape = a.info(name).shape;
      const prefix = name.replace(/\.weight$/, '');
      if (!isLinearWeight(name, shape)) {
        expect(b.info(name).dtype).toBe('BF16');
        continue;
      }
      if (/kv_b_proj/.test(prefix)) {
        expect(isQuantized(b, prefix)).toBe(false);
        expect(b.info(name).dtype).toBe('BF16');
        continue;
      }
      expect(isQuantized(b, prefix)).toBe(true);
      const c = configFor(qc, prefix);
      expect(c.bits).toBe(/down_proj/.test(prefix) ? 8 : 4);
      const q = loadQTensor(b, prefix, qc);
      const deq = dequantize(q).data() as Float32Array;
      const w = a.tensor(name).toFloat32Array();
      // Weight-space error of a unit-variance Gaussian matrix on the min-max grid: about
      // step/sqrt(12) per weight with step ≈ 2·max/15 (4-bit) -> ~0.12 relative for
      // groups of 128 (max ≈ 2.7σ); GPTQ trades weight error for output error, so allow 0.25;
      // 8-bit steps are 17x smaller: 0.02.
      expect(relFrobenius(deq, w)).toBeLessThan(c.bits === 8 ? 0.02 : 0.25);
      checked++;
    }
    expect(checked).toBe(r.quantized.length);
    a.close();
    b.close();
    fs.rmSync(out, { recursive: true });
  });

  it('bad input: bits, group size, rules, already-quantized input, same folder, abort', async () => {
    const out = tmp();
    await expect(quantizeModel({ input: src, output: out, bits: 5 as 4, groupSize: 128 })).rejects.toMatchObject({ code: 'KVANT_FORMAT' });
    await expect(quantizeModel({ input: src, output: out, bits: 4, groupSize: 0 })).rejects.toMatchObject({ code: 'KVANT_FORMAT' });
    await expect(quantizeModel({ input: src, output: out, bits: 4, groupSize: 128, rules: { '+:(': {} } })).rejects.toMatchObject({ code: 'KVANT_FORMAT' });
    await expect(quantizeModel({ input: src, output: src, bits: 4, groupSize: 128 })).rejects.toMatchObject({ code: 'KVANT_IO' });
    await expect(quantizeModel({ input: path.join(out, 'nope'), output: out, bits: 4, groupSize: 128 })).rejects.toMatchObject({ code: 'KVANT_IO' });
    const ctl = new AbortController();
    ctl.abort();
    await expect(quantizeModel({ input: src, output: out, bits: 4, groupSize: 128, signal: ctl.signal })).rejects.toMatchObject({ code: 'KVANT_ABORTED' });
    const q = tmp();
    await quantizeModel({ input: src, output: q, bits: 4, groupSize: 128, method: 'rtn' });
    await expect(quantizeModel({ input: q, output: out, bits: 4, groupSize: 128 })).rejects.toMatchObject({ code: 'KVANT_FORMAT' });
    fs.rmSync(q, { recursive: true });
    fs.rmSync(out, { recursive: true });
  });

  it('a caller-supplied calibration source replaces the synthetic one', async () => {
    const out = tmp();
    const asked: string[] = [];
    const r = await quantizeModel({
      input: src, output: out, bits: 4, groupSize: 64, rules: { '-:.*experts': {} },
      calibrate: (req) => {
        asked.push(req.name);
        return req.name.includes('o_proj') ? null : Tensor.random([req.tokens, req.K], 'f32', { seed: 3, dist: 'normal' });
      },
    });
    expect(asked.length).toBe(r.quantized.length);
    for (const t of r.quantized) expect(t.method).toBe(t.name.includes('o_proj') ? 'rtn' : 'gptq');
    fs.rmSync(out, { recursive: true });
  });

  it('kvant quantize prints a per-tensor table; bad arguments exit non-zero with the error code', () => {
    const out = tmp();
    const ok = spawnSync(process.execPath, ['bin/kvant.js', 'quantize', '--model', src, '--out', out, '--bits', '3', '--group-size', '64', '--calib-tokens', '64'], { cwd: root, encoding: 'utf8' });
    expect(ok.status).toBe(0);
    expect(ok.stdout).toMatch(/model\.layers\.0\.mlp\.down_proj\s+256\s+512\s+3\s+64/);
    expect(ok.stdout).toMatch(/tensors quantized/);
    expect(ok.stderr).toMatch(/quantize/);
    const bad = spawnSync(process.execPath, ['bin/kvant.js', 'quantize', '--model', src, '--out', out, '--bits', '5'], { cwd: root, encoding: 'utf8' });
    expect(bad.status).toBe(1);
    expect(bad.stderr).toMatch(/KVANT_FORMAT/);
    fs.rmSync(out, { recursive: true });
  });
});
