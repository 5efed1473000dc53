// generate() on backend 'cuda' samples on the device: the scheduler's decode step calls the
// engine's decodeSample (the device model's forward then cuda.sampleTokens; only B token ids
// leave the device) whenever no request of the step asks for logprobs, and the host Sampler
// records each token so its generator and penalty history stay in step. The tokens must be the
// ones the host sampler picks from the same device logits: the logprobs path (host logits, host
// sampling) is the reference, for greedy and seeded temperature / top-k / top-p / repetition
// penalty, one request at a time and batched. Same tiny model as test/cuda-model.test.ts.
import { describe, expect, it } from 'vitest';
import { loadModel } from '../lib';
import type { Model } from '../lib/model';
import { Sampler, type SamplingOptions } from '../lib/generate/sampler';
import { randomTokens, tinyModel } from './helpers/model-fixtures';
import { useCudaAddon } from './helpers/cuda-addon';

useCudaAddon();

const sampledSteps = (m: Model) => (m as unknown as { scheduler: { stats: { sampledSteps: number } } }).scheduler.stats.sampledSteps;

describe('Sampler.state / record: the hand-off to a sampler elsewhere', () => {
  it('record() of the token sample() picked leaves a second sampler in the same state (generator position, history)', () => {
    const V = 300;
    const logits = (step: number) => Float32Array.from({ length: V }, (_, i) => Math.sin(i * 12.9898 + step * 78.233) * 4);
    for (const o of [{ temperature: 0.8, topK: 20, seed: 5 }, { temperature: 1.1, topP: 0.9, seed: 9, repetitionPenalty: 1.3 }, { repetitionPenalty: 1.5 }, {}] as SamplingOptions[]) {
      const prompt = [3, 17, 250];
      const own = new Sampler(o, o.repetitionPenalty ? prompt : []);
      const handed = new Sampler(o, o.repetitionPenalty ? prompt : []);
      for (let step = 0; step < 12; step++) {
        const st = handed.state();
        // The counter is the 1-based draw the next sample uses: one per non-greedy step so far.
        expect(st.counter).toBe((o.temperature ?? 0) > 0 ? step + 1 : 1);
        // The penalty history: prompt and output so far, only when a penalty applies.
        if (o.repetitionPenalty) for (const t of prompt) expect(st.history).toContain(t);
        else expect(st.history).toEqual([]);
        handed.record(own.sample(logits(step)));
        expect(handed.state(), JSON.stringify(o)).toEqual(own.state());
      }
      // After the hand-off the recorded sampler draws what the sampling one draws.
      expect(handed.sample(logits(99))).toBe(own.sample(logits(99)));
    }
  });
});

describe("generate() on backend 'cuda' samples on the device", () => {
  it('tokens equal the host sampler over the same device logits (greedy, temperature, top-k, top-p, repetition penalty; single and batched)', async () => {
    const dir = tinyModel('f32', { kv_lora_rank: 64 }, 3, 2);
    const dev = await loadModel(dir, { backend: 'cuda' });
    try {
      const settings: SamplingOptions[] = [
        { repetitionPenalty: 2.0 }, // greedy with a penalty
        { temperature: 0.8, topP: 0.7, seed: 11 }, // top-p over the whole vocabulary
        { temperature: 1.0, topK: 40, topP: 0.9, repetitionPenalty: 1.4, seed: 5 }, // top-k, then top-p within, and a penalty
      ];
      const prompts = [randomTokens(3, 512, 61), randomTokens(4, 512, 62)];
      const base = { maxTokens: 4, ignoreEos: true };
      for (const s of settings) {
        const before = sampledSteps(dev);
        // Batched: both prompts at once with the same settings on the device path.
        const got = await Promise.all(prompts.map((p) => dev.generate(p, { ...base, ...s })));
        const steps = sampledSteps(dev) - before;
        // 4 tokens: the first comes from the prefill's logits (host), the other 3 from decode steps.
        expect(steps, JSON.stringify(s)).toBeGreaterThanOrEqual(3);
        const mid = sampledSteps(dev);
        const want = await Promise.all(prompts.map((p) => dev.generate(p, { ...base, ...s, logprobs: true })));
        expect(sampledSteps(dev)).toBe(mid); // logprobs need host logits: the host path
        for (let i = 0; i < prompts.length; i++) {
          expect(got[i].tokens, JSON.stringify(s)).toEqual(want[i].tokens);
          expect(got[i].logprobs).toBeUndefined();
          expect(want[i].logprobs?.length).toBe(4);
        }
      }
      // A top-k beyond the device sampler's limit (1024 candidates) stays on the host.
      const before = sampledSteps(dev);
      const wide = await dev.generate(prompts[0], { maxTokens: 3, ignoreEos: true, temperature: 1, topK: 2000, seed: 1 });
      expect(sampledSteps(dev)).toBe(before);
      expect(wide.tokens.length).toBe(3);
    } finally {
      await dev.close();
    }
  }, 180_000);
});
