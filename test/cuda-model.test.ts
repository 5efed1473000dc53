// The DeepSeek-V2 decode loop on the CUDA backend (lib/models/deepseek-v2/device-*.ts) against
// the CPU backend. Without a GPU (here, CI) it runs on the test-only emulated addon
// kvant_cuda_emu.node (scripts/build-cuda-emu.mjs: the real N-API layer over a host-emulated
// device, every kernel under the SIMT emulation); with KVANT_TEST_CUDA=1 on a machine with a GPU
// the same tests run on build-cmake/Release/kvant_cuda.node.
//
// Model: the tiny preset with kv_lora_rank 64 (latent + rope = 64 + 32, Dk 96 / Dv 64: one of the
// device paged-decode instantiations; the stock tiny latent 128 + 32 is not instantiated) and
// 2 layers (a dense layer then an MoE layer with a shared expert), so the emulation stays fast.
//
// Bound, per position: ‖Δlogits‖₂ / ‖CPU logits‖₂ <= 5e-5. Both backends compute the same f32
// network, in other summation orders (the device: one warp per output with a butterfly, the
// GEMV's slabs, the paged decode's splits, and prefill in the absorbed form instead of the
// explicit one, a reassociation of the same products). An f32 dot product of length K <= 512
// carries ~sqrt(K)·2^-24 <= 1.4e-6 relative rounding error (random-walk estimate; the worst
// case K·2^-24 is never approached by independent roundings), and a logit of this 2-layer model
// sits behind ~15 dependent stages (norms, q_a/q_b/kv_a, absorption, attention, o_proj, router +
// experts, lm_head), whose errors add (each stage amplifies by ~1 with these normalized random
// weights): <= 2.1e-5 per backend, 4.2e-5 for their difference, rounded up to 5e-5.
// (test/model-forward.test.ts holds the CPU forward to the looser 1e-4 of an f64 forward for 3
// layers.) Mutations tried: dropping kv_a_layernorm moves the logits by ~1e-1; scaling every
// routed-expert weight by 1.001 in the device combine kernel by ~1.1e-4 — both fail.
// GPTQ weights dequantize to f16 scale × small integer, exact in f32 on both sides, so the same
// bound holds. Caches: both backends store the same bytes for the same rows (the device append
// equals the CPU's byte for byte, test/simt/kv_cache_test.cc) and decode them to the same
// values, so the cache type adds nothing as long as the rows round to the same codes; a row
// within ~1e-6 of a rounding boundary of a q4/q8 code would flip it (a deterministic failure for
// that seed, not a flaky one). A semantic slip (rotary, scale, routing, a missing norm) moves
// the logits by 1e-2 or more.
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cuda, loadModel, resolveBackend } from '../lib';
import { DeepSeekV2Model } from '../lib/models/deepseek-v2/model';
import { DeviceDeepSeekV2Model } from '../lib/models/deepseek-v2/device-model';
import type { KvCacheType } from '../lib/kv/format';
import { deviceWeightBytes, freeWeights, uploadWeights } from '../lib/models/deepseek-v2/device-forward';
import { forwardConsts } from '../lib/models/deepseek-v2/forward';
import { loadWeights } from '../lib/models/deepseek-v2/weights';
import { Sampler, SamplingOptions } from '../lib/generate/sampler';
import { gptqCopy, randomTokens, relErr, tinyModel } from './helpers/model-fixtures';
import { REAL_CUDA, useCudaAddon } from './helpers/cuda-addon';

const root = path.join(__dirname, '..');
const REAL = REAL_CUDA;
const BOUND = 5e-5;
const OVERRIDE = { kv_lora_rank: 64 };
const LAYERS = 2;

const addon = useCudaAddon();

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return (e as { code?: string }).code ?? `uncoded: ${(e as Error).message}`;
  }
  return 'no error';
}

const floatModel = (dtype: 'f32' | 'bf16') => tinyModel(dtype, OVERRIDE, 3, LAYERS);
let gptqDir: string | undefined;
const gptqModel = () => (gptqDir ??= gptqCopy(floatModel('f32'), { bits: 4, groupSize: 32 }));

/**
 * Logits of both backends for `prompt` prefilled in one call (all positions), then `extra`
 * tokens decoded one by one: per-position relative errors.
 */
function compare(dir: string, kvCache: KvCacheType, prompt: number[], extra: number[]): { prefill: number[]; decode: number[] } {
  const cpu = DeepSeekV2Model.load(dir, { kvCache });
  const dev = DeviceDeepSeekV2Model.load(dir, { kvCache });
  try {
    const a = cpu.cache.open(prompt.length + extra.length);
    const b = dev.cache.open(prompt.length + extra.length);
    const V = cpu.vocabSize;
    const lc = cpu.prefill(a, prompt, { allLogits: true });
    const ld = dev.prefill(b, prompt, { allLogits: true });
    const prefill = prompt.map((_, i) => relErr(ld.subarray(i * V, (i + 1) * V), lc.subarray(i * V, (i + 1) * V)));
    const decode = extra.map((t) => relErr(dev.decode([b], [t])[0], cpu.decode([a], [t])[0]));
    return { prefill, decode };
  } finally {
    cpu.dispose();
    dev.dispose();
  }
}

describe('DeepSeek-V2 on the CUDA backend vs the CPU backend', () => {
  const cases: [string, () => string, KvCacheType][] = [
    ['f32 weights, bf16 cache', () => floatModel('f32'), 'bf16'],
    ['bf16 weights, q8 cache', () => floatModel('bf16'), 'q8'],
    ['GPTQ 4-bit g32 weights, q4 cache', gptqModel, 'q4'],
    ['f32 weights, f16 cache', () => floatModel('f32'), 'f16'],
    ['bf16 weights, q6 cache', () => floatModel('bf16'), 'q6'],
  ];
  for (const [name, dir, kv] of cases)
    it(`${name}: prefill and decode logits at every position within ${BOUND}`, () => {
      const r = compare(dir(), kv, randomTokens(6, 512, 11), randomTokens(3, 512, 12));
      console.log(`${name}: prefill rel err ${r.prefill.map((e) => e.toExponential(1)).join(' ')}; decode ${r.decode.map((e) => e.toExponential(1)).join(' ')}`);
      for (const e of [...r.prefill, ...r.decode]) expect(e).toBeLessThanOrEqual(BOUND);
    }, 120_000);

  it('a prompt prefilled in chunks gives the logits of one call (the cache is read back either way)', () => {
    const dev = DeviceDeepSeekV2Model.load(floatModel('f32'), {});
    try {
      const p = randomTokens(7, 512, 21);
      const a = dev.cache.open(7);
      const b = dev.cache.open(7);
      const whole = dev.prefill(a, p);
      const chunked = dev.prefill(b, p, { chunkSize: 3 });
      expect(relErr(chunked, whole)).toBeLessThanOrEqual(BOUND);
    } finally {
      dev.dispose();
    }
  }, 120_000);

  it('a decode batch of several sequences equals each sequence run alone, bit for bit', () => {
    const events: { done: number; total: number; what: string }[] = [];
    const dev = DeviceDeepSeekV2Model.load(floatModel('bf16'), { kvCache: 'q8', onProgress: (p) => events.push(p) });
    try {
      // Progress as on the CPU (files mapped, layers checked), then one event per uploaded layer; the last one completes.
      expect(events.filter((e) => e.what.startsWith('uploaded')).length).toBe(LAYERS + 2);
      expect(events[events.length - 1].done).toBe(events[events.length - 1].total);
      const prompts = [randomTokens(3, 512, 31), randomTokens(5, 512, 32), randomTokens(2, 512, 33)];
      const next = [7, 300, 41];
      const batched = prompts.map((p) => {
        const s = dev.cache.open(8);
        dev.prefill(s, p);
        return s;
      });
      const together = dev.decode(batched, next);
      prompts.forEach((p, i) => {
        const s = dev.cache.open(8);
        dev.prefill(s, p);
        const alone = dev.decode([s], [next[i]])[0];
        expect(Array.from(together[i])).toEqual(Array.from(alone));
        dev.cache.close(s);
      });
      batched.forEach((s) => dev.cache.close(s));
    } finally {
      dev.dispose();
    }
  }, 120_000);

  it('loadModel({ backend: "cuda" }): greedy tokens of two concurrent (batched) generations and a stream equal the CPU backend', async () => {
    const dir = floatModel('f32');
    const cpu = await loadModel(dir, { backend: 'cpu' });
    const dev = await loadModel(dir, { backend: 'cuda' });
    try {
      expect(dev.backend).toBe('cuda');
      expect(cpu.backend).toBe('cpu');
      const greedy = { maxTokens: 5, ignoreEos: true };
      const prompts = [randomTokens(4, 512, 41), randomTokens(6, 512, 42)];
      const want = await Promise.all(prompts.map((p) => cpu.generate(p, greedy)));
      // Both at once on the device: the scheduler batches their decode steps.
      const got = await Promise.all(prompts.map((p) => dev.generate(p, greedy)));
      for (let i = 0; i < prompts.length; i++) expect(got[i].tokens).toEqual(want[i].tokens);
      const streamed: number[] = [];
      for await (const c of dev.stream(prompts[0], greedy)) streamed.push(c.token);
      expect(streamed).toEqual(want[0].tokens);
      const mem = await dev.memory();
      expect(mem.weightsBytes).toBeGreaterThan(0);
    } finally {
      await cpu.close();
      await dev.close();
    }
  }, 180_000);
});

describe('backend selection and device memory', () => {
  it('a device memory budget too small for the model: KVANT_OOM naming the bytes (checked before any upload), nothing left allocated', async () => {
    const before = cuda.memoryStats();
    cuda.setMemoryBudget(before.allocated + 100_000);
    try {
      let err: unknown;
      try {
        DeviceDeepSeekV2Model.load(floatModel('f32'), {});
      } catch (e) {
        err = e;
      }
      expect((err as { code?: string }).code).toBe('KVANT_OOM');
      expect((err as Error).message).toMatch(/needs \d+ bytes \(weights \d+ \+ KV cache \d+\) but \d+ bytes are available/);
      expect(cuda.memoryStats().allocated).toBe(before.allocated);
    } finally {
      cuda.setMemoryBudget(before.budget);
    }
  });

  it('an upload failing part-way (the allocator refusing mid-upload) frees everything it uploaded', () => {
    const host = loadWeights(floatModel('f32'));
    try {
      const need = deviceWeightBytes(host);
      const before = cuda.memoryStats();
      // Half the weights fit: the first tensors upload, then an allocation fails with KVANT_OOM.
      cuda.setMemoryBudget(before.allocated + Math.floor(need / 2));
      try {
        let err: unknown;
        try {
          uploadWeights(host, forwardConsts(host.config));
        } catch (e) {
          err = e;
        }
        expect((err as { code?: string }).code).toBe('KVANT_OOM');
        expect(cuda.memoryStats().peak).toBeGreaterThan(before.allocated); // something was uploaded first
        expect(cuda.memoryStats().allocated).toBe(before.allocated);
      } finally {
        cuda.setMemoryBudget(before.budget);
      }
      // With room, the same upload takes exactly the bytes deviceWeightBytes promised.
      const w = uploadWeights(host, forwardConsts(host.config));
      expect(cuda.memoryStats().allocated - before.allocated).toBe(need);
      expect(w.bytes).toBe(need);
      freeWeights(w);
      expect(cuda.memoryStats().allocated).toBe(before.allocated);
    } finally {
      host.checkpoint.close();
    }
  });

  it('the device KV cache budget: admission says never, opening beyond it is KVANT_OOM, closing frees the pages', async () => {
    const probe = DeviceDeepSeekV2Model.load(floatModel('f32'), { kvBudgetBytes: 1 << 20, pageSize: 16 });
    const pageBytes = probe.cache.pageBytes;
    probe.dispose();
    const dev = DeviceDeepSeekV2Model.load(floatModel('f32'), { kvBudgetBytes: 2 * pageBytes, pageSize: 16 });
    try {
      const ps = dev.cache.pageSize;
      expect(dev.cache.numPages).toBe(2);
      expect(dev.cache.admission(3 * ps).verdict).toBe('never');
      expect(await codeOf(() => dev.cache.open(3 * ps))).toBe('KVANT_OOM');
      const a = dev.cache.open(2 * ps);
      expect(dev.cache.admission(1).verdict).toBe('wait');
      expect(dev.cache.usedBytes()).toBe(2 * pageBytes);
      dev.cache.close(a);
      expect(dev.cache.admission(2 * ps).verdict).toBe('ok');
      // A sequence that grows past the pool fails its append with KVANT_OOM and is rolled back.
      const b = dev.cache.open(1);
      dev.prefill(b, randomTokens(ps, 512, 61));
      const c = dev.cache.open(1);
      expect(await codeOf(() => dev.prefill(c, randomTokens(ps + 1, 512, 62)))).toBe('KVANT_OOM');
      expect(dev.cache.length(c)).toBe(0);
    } finally {
      dev.dispose();
    }
  }, 120_000);

  it("backend 'cuda' without a usable device: KVANT_BACKEND with the reason", async () => {
    const saved = process.env.KVANT_CUDA_ADDON;
    process.env.KVANT_CUDA_ADDON = path.join(root, 'no-such-dir', 'kvant_cuda.node');
    try {
      let err: unknown;
      await loadModel(floatModel('f32'), { backend: 'cuda' }).catch((e) => (err = e));
      expect((err as { code?: string }).code).toBe('KVANT_BACKEND');
      expect((err as Error).message).toMatch(/not available: .*does not exist/);
      expect(await codeOf(() => DeviceDeepSeekV2Model.load(floatModel('f32'), {}))).toBe('KVANT_BACKEND');
    } finally {
      process.env.KVANT_CUDA_ADDON = saved;
    }
  });

  it.skipIf(REAL)("backend 'auto' picks the CPU here (no GPU; the emulated addon is never chosen on its own)", async () => {
    const saved = process.env.KVANT_CUDA_ADDON;
    delete process.env.KVANT_CUDA_ADDON;
    try {
      expect(resolveBackend('auto')).toBe('cpu');
      const m = await loadModel(floatModel('f32'), { backend: 'auto' });
      expect(m.backend).toBe('cpu');
      await m.close();
    } finally {
      process.env.KVANT_CUDA_ADDON = saved;
    }
  }, 60_000);
});

describe('device forward ops: bad input ends in the documented codes', () => {
  it('denseLinear, copyRows, accumulateRows', async () => {
    const x = cuda.DeviceTensor.fromHost(new Float32Array(12), { shape: [3, 4] });
    const w = cuda.DeviceTensor.fromHost(new Float32Array(20), { shape: [5, 4] });
    const wBad = cuda.DeviceTensor.fromHost(new Int32Array(20), { shape: [5, 4] });
    const y = cuda.DeviceTensor.empty([3, 5]);
    const idx = cuda.DeviceTensor.fromHost(Int32Array.from([0, 7, 1]));
    try {
      expect(await codeOf(() => cuda.denseLinear(y, w))).toBe('KVANT_SHAPE'); // K 5 vs 4
      expect(await codeOf(() => cuda.denseLinear(x, wBad))).toBe('KVANT_DTYPE');
      expect(await codeOf(() => cuda.denseLinear(x, w, { out: cuda.DeviceTensor.empty([2, 5]) }))).toBe('KVANT_SHAPE');
      expect(await codeOf(() => cuda.denseLinearHeads(x, w, y, { M: 3, H: 2, N: 5, K: 4, xRow: 4, xHead: 4, wHead: 20, wRow: 4, yRow: 5, yHead: 5 }))).toBe('KVANT_SHAPE');
      expect(await codeOf(() => cuda.copyRows(x, y, { rows: 3, n: 4, srcRow: 4, dstRow: 5, idx }))).toBe('KVANT_RANGE'); // row 7 of 3
      expect(await codeOf(() => cuda.copyRows(x, y, { rows: 3, n: 6, srcRow: 4, dstRow: 5 }))).toBe('KVANT_SHAPE');
      expect(await codeOf(() => cuda.copyRows(x, x, { rows: 1, n: 2, srcRow: 4, dstRow: 4 }))).toBe('KVANT_RANGE'); // overlap
      expect(await codeOf(() => cuda.accumulateRows(y, x))).toBe('KVANT_SHAPE');
      expect(await codeOf(() => cuda.accumulateRows(y, y))).toBe('KVANT_RANGE'); // y overlaps src
      expect(await codeOf(() => cuda.accumulateRows(y, y, { J: 2 }))).toBe('KVANT_SHAPE'); // J > 1 needs idx
      expect(await codeOf(() => cuda.accumulateRows(x, w, { idx, J: 1 }))).toBe('KVANT_RANGE'); // idx 7 >= 5 rows
    } finally {
      for (const t of [x, w, wBad, y, idx]) t.free();
    }
  });

  it('DeviceMlaCache and the device model: wrong shapes, non-finite rows, lengths beyond the stored rows, bad tokens', async () => {
    const c = new cuda.DeviceMlaCache({ layers: 2, latentDim: 64, ropeDim: 32, type: 'q4', pageSize: 16, budgetBytes: 1 << 16 });
    try {
      const s = c.open(4);
      expect(await codeOf(() => c.append(s, 0, cuda.DeviceTensor.zeros([2, 95])))).toBe('KVANT_SHAPE');
      const bad = new Float32Array(2 * 96).fill(0.5);
      bad[100] = NaN;
      expect(await codeOf(() => c.append(s, 0, cuda.DeviceTensor.fromHost(bad, { shape: [2, 96] })))).toBe('KVANT_RANGE');
      expect(await codeOf(() => c.append(s, 2, cuda.DeviceTensor.zeros([1, 96])))).toBe('KVANT_RANGE'); // layer 2 of 2
      c.append(s, 0, cuda.DeviceTensor.zeros([1, 96]));
      const q = cuda.DeviceTensor.zeros([1, 4, 96]);
      expect(await codeOf(() => c.attend(0, [s], Int32Array.of(2), q, 1))).toBe('KVANT_RANGE'); // 2 > 1 stored
      expect(await codeOf(() => c.attend(0, [s], Int32Array.of(1), cuda.DeviceTensor.zeros([1, 4, 95]), 1))).toBe('KVANT_SHAPE');
      expect(c.attend(0, [s], Int32Array.of(1), q, 1).shape).toEqual([1, 4, 64]);
      expect(await codeOf(() => new cuda.DeviceMlaCache({ layers: 1, latentDim: 60, ropeDim: 32, type: 'q8', budgetBytes: 1 << 16 }))).toBe('KVANT_SHAPE');
      expect(await codeOf(() => new cuda.DeviceMlaCache({ layers: 1, latentDim: 64, ropeDim: 32, budgetBytes: 10 }))).toBe('KVANT_OOM');
    } finally {
      c.dispose();
    }
    const dev = DeviceDeepSeekV2Model.load(floatModel('f32'), { pageSize: 16, kvBudgetBytes: 1 << 18 });
    try {
      const s = dev.cache.open(2);
      expect(await codeOf(() => dev.prefill(s, [512]))).toBe('KVANT_RANGE');
      expect(await codeOf(() => dev.prefill(s, []))).toBe('KVANT_SHAPE');
      expect(await codeOf(() => dev.decode([s, s], [1, 2]))).toBe('KVANT_RANGE');
      expect(await codeOf(() => dev.decode([s], [1, 2]))).toBe('KVANT_SHAPE');
      expect(await codeOf(() => dev.decode([999], [1]))).toBe('KVANT_RANGE');
      expect(dev.cache.length(s)).toBe(0);
    } finally {
      dev.dispose();
    }
    expect(await codeOf(() => DeviceDeepSeekV2Model.load(floatModel('f32'), { kvCache: 'q5' as never }))).toBe('KVANT_RANGE');
    expect(await codeOf(() => DeviceDeepSeekV2Model.load(floatModel('f32'), { activations: 'int8' }))).toBe('KVANT_BACKEND');
  }, 60_000);
});

describe('sampling on the device', () => {
  // Seeded logits with ties and a spread like a model's (a few large values).
  function logitsRows(B: number, V: number, seed: number): Float32Array {
    let s = seed >>> 0 || 1;
    const out = new Float32Array(B * V);
    for (let i = 0; i < out.length; i++) {
      s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
      out[i] = Math.round(((s / 2 ** 32) * 2 - 1) * 6 * 16) / 16; // multiples of 1/16: ties happen
    }
    return out;
  }
  const settings: SamplingOptions[] = [
    { temperature: 0 },
    { temperature: 0.8, seed: 3 },
    { temperature: 1, topK: 5, seed: 4 },
    { temperature: 0.7, topP: 0.9, seed: 5 },
    { temperature: 1.2, topK: 40, topP: 0.8, repetitionPenalty: 1.3, seed: 6 },
  ];

  it('cuda.sampleTokens picks the CPU Sampler\'s tokens step by step (counter, penalty history)', () => {
    const V = 300;
    const B = settings.length;
    const prompt = [1, 2, 3, 250];
    const host = settings.map((o) => new Sampler(o, prompt));
    const hist = settings.map(() => [...prompt]);
    const draws = settings.map(() => 0);
    for (let step = 0; step < 4; step++) {
      const l = logitsRows(B, V, 100 + step);
      const want = settings.map((_, b) => host[b].sample(l.subarray(b * V, (b + 1) * V)));
      const d = cuda.DeviceTensor.fromHost(l, { shape: [B, V] });
      try {
        const got = cuda.sampleTokens(d, settings.map((o, b) => ({ ...o, counter: draws[b] + 1, history: hist[b] })));
        expect(Array.from(got)).toEqual(want);
      } finally {
        d.free();
      }
      settings.forEach((o, b) => {
        if ((o.temperature ?? 0) > 0) draws[b]++;
        hist[b].push(want[b]);
      });
    }
  });

  it('bad input: an all-NaN row is KVANT_RANGE, a wrong row count KVANT_SHAPE, host logits KVANT_DTYPE', async () => {
    const l = logitsRows(2, 64, 9);
    l.fill(NaN, 64);
    const d = cuda.DeviceTensor.fromHost(l, { shape: [2, 64] });
    try {
      expect(await codeOf(() => cuda.sampleTokens(d, [{}, {}]))).toBe('KVANT_RANGE');
      expect(await codeOf(() => cuda.sampleTokens(d, [{}]))).toBe('KVANT_SHAPE');
      expect(await codeOf(() => cuda.sampleTokens(d, [{ temperature: -1 }, {}]))).toBe('KVANT_RANGE');
    } finally {
      d.free();
    }
    expect(await codeOf(() => cuda.sampleTokens(l as never, [{}, {}]))).toBe('KVANT_DTYPE');
  });

  it('DeviceDeepSeekV2Model.decodeSample returns the tokens the CPU Sampler picks from decode()\'s logits', () => {
    const dev = DeviceDeepSeekV2Model.load(floatModel('f32'), {});
    try {
      const prompt = randomTokens(4, 512, 51);
      const opts: SamplingOptions = { temperature: 0.9, topK: 20, seed: 7 };
      const a = dev.cache.open(8);
      const b = dev.cache.open(8);
      dev.prefill(a, prompt);
      dev.prefill(b, prompt);
      const sampler = new Sampler(opts, prompt);
      let ta = 11;
      let tb = 11;
      const hist = [...prompt];
      for (let step = 0; step < 3; step++) {
        const want = sampler.sample(dev.decode([a], [ta])[0]);
        const got = dev.decodeSample([b], [tb], [{ ...opts, counter: step + 1, history: hist }])[0];
        expect(got).toBe(want);
        hist.push(want);
        ta = want;
        tb = got;
      }
    } finally {
      dev.dispose();
    }
  }, 120_000);
});
