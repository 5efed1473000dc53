/**
 * `kvant demo`, spawned as the built CLI (needs dist/), and the logit-agreement measure it
 * reports.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { compareLogits } from '../lib/cli/demo';
import { MODEL_UNDER_TEST } from './helpers/model-under-test';

const root = path.join(__dirname, '..');

describe('compareLogits', () => {
  it('KL divergence and top-1 agreement match a direct f64 computation', () => {
    const p = [Float32Array.from([2, 0, -1]), Float32Array.from([0, 1, 0.5])];
    const q = [Float32Array.from([1, 0.5, -1]), Float32Array.from([0, 0.5, 1])];
    const a = compareLogits(p, q);
    const kl = (x: Float32Array, y: Float32Array) => {
      const zx = Array.from(x).reduce((s, v) => s + Math.exp(v), 0);
      const zy = Array.from(y).reduce((s, v) => s + Math.exp(v), 0);
      return Array.from(x).reduce((s, v, i) => s + (Math.exp(v) / zx) * (v - Math.log(zx) - (y[i] - Math.log(zy))), 0);
    };
    const k0 = kl(p[0], q[0]);
    const k1 = kl(p[1], q[1]);
    // Both are f64 sums of 3 terms of size ~1: agreement to 1e-12 is rounding only.
    expect(Math.abs(a.meanKl - (k0 + k1) / 2)).toBeLessThan(1e-12);
    expect(Math.abs(a.maxKl - Math.max(k0, k1))).toBeLessThan(1e-12);
    expect(a.top1).toBe(0.5); // argmax agrees at position 0 only
    const same = compareLogits(p, p);
    expect(same.meanKl).toBe(0);
    expect(same.top1).toBe(1);
    expect(() => compareLogits(p, q.slice(1))).toThrow(expect.objectContaining({ code: 'KVANT_SHAPE' }));
  });
});

describe('kvant demo', () => {
  it('makes, quantizes, loads and generates, reporting speed, memory and logit agreement', () => {
    const env = { ...process.env };
    if (MODEL_UNDER_TEST) env.KVANT_TEST_MODEL_IMPL = `${MODEL_UNDER_TEST.module}#${MODEL_UNDER_TEST.export}`;
    else delete env.KVANT_TEST_MODEL_IMPL;
    const r = spawnSync(process.execPath, [path.join(root, 'bin', 'kvant.js'), 'demo', '--max-tokens', '12'], { encoding: 'utf8', env, timeout: 120_000 });
    expect(r.status, r.stderr).toBe(0);
    const out = r.stdout;
    expect(out).toMatch(/loaded in \d+\.\d+ s/);
    expect(out).toMatch(/generated 12 tokens from a \d+-token prompt/);
    expect(out).toMatch(/prefill: \d+\.\d tok\/s\s+decode: \d+\.\d tok\/s/);
    expect(out).toMatch(/memory: weights \d+\.\d+ MiB, KV cache \d+\.\d+ MiB/);
    expect(out).toMatch(/batching: 8 concurrent requests, 128 tokens in \d+ shared decode steps \(largest batch 8\)/);
    // Batch invariance, end to end: the 8 requests give the same tokens batched and one at a time.
    expect(out).toMatch(/mean request latency \d+\.\d+ s batched vs \d+\.\d+ s one at a time .*tokens identical either way/);
    const m = /GPTQ 4-bit vs float over (\d+) positions: mean KL (\S+) nats \(max (\S+)\), top-1 agreement (\S+)%/.exec(out);
    expect(m, out).not.toBeNull();
    // A quantized model is not the float model: some divergence, finite.
    expect(Number(m![2])).toBeGreaterThan(0);
    expect(Number.isFinite(Number(m![3]))).toBe(true);
    expect(out).toMatch(/RTN 4-bit \(same groups\) vs float: mean KL \S+ nats/);
    expect(out).toMatch(/checkpoint on disk: \d+\.\d+ MiB GPTQ 4-bit vs \d+\.\d+ MiB float/);
    // Progress went to stderr, never to stdout.
    expect(out).not.toMatch(/\[#+\.*\]/);
    expect(r.stderr).toMatch(/make-model/);
  });
});
