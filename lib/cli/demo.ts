/**
 * `kvant demo [--model DIR]`: the main job in one command. Makes a tiny random DeepSeek-V2
 * checkpoint in a temporary folder (or takes the user's), quantizes it with GPTQ 4-bit, loads
 * it, generates, and reports load time, prefill and decode tokens/s, memory (weights vs KV
 * cache), continuous batching, and how far the quantized model's logits are from the float
 * model's (KL divergence and top-1 agreement). Results on stdout, progress on stderr.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { backendInfo } from '../backend';
import { KvantError } from '../errors';
import { loadModel, Model } from '../model';
import { makeModel } from '../models/deepseek-v2/make-model';
import { quantizeModel } from '../quant/quantize-model';
import { TOKENIZER_CORPUS } from '../text/corpus';
import { throughput } from './generate';
import { cliLoadOptions, parseKvCache } from './model-args';
import { progressBar } from './progress';

/** Agreement of two models' next-token distributions over the same positions. */
export interface LogitAgreement {
  /** Mean over positions of KL(P_float || P_quant), in nats. */
  meanKl: number;
  maxKl: number;
  /** Fraction of positions whose argmax agrees. */
  top1: number;
  positions: number;
}

function logSoftmax(x: Float32Array): Float64Array {
  let m = -Infinity;
  for (const v of x) if (v > m) m = v;
  let z = 0;
  for (const v of x) z += Math.exp(v - m);
  const lz = m + Math.log(z);
  return Float64Array.from(x, (v) => v - lz);
}

function argmax(x: ArrayLike<number>): number {
  let b = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[b]) b = i;
  return b;
}

/** KL(P||Q) per position (f64), and top-1 agreement, for reference logits P and test logits Q. */
export function compareLogits(ref: readonly Float32Array[], test: readonly Float32Array[]): LogitAgreement {
  if (ref.length !== test.length || ref.length === 0) throw new KvantError('KVANT_SHAPE', `Expected equal, non-zero numbers of logit rows but received ${ref.length} and ${test.length}`);
  let sum = 0;
  let max = 0;
  let agree = 0;
  ref.forEach((r, i) => {
    const lp = logSoftmax(r);
    const lq = logSoftmax(test[i]);
    let kl = 0;
    for (let v = 0; v < lp.length; v++) kl += Math.exp(lp[v]) * (lp[v] - lq[v]);
    kl = Math.max(0, kl); // rounding can leave -1e-17 for identical rows
    sum += kl;
    max = Math.max(max, kl);
    if (argmax(r) === argmax(test[i])) agree++;
  });
  return { meanKl: sum / ref.length, maxKl: max, top1: agree / ref.length, positions: ref.length };
}

/** Bytes of a folder's safetensors files. */
function folderBytes(dir: string): number {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.safetensors'))
    .reduce((a, f) => a + fs.statSync(path.join(dir, f)).size, 0);
}

const mib = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;
const rate = (v: number | null) => (v === null ? 'n/a' : `${v.toFixed(1)} tok/s`);

export async function demoCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      'kv-cache': { type: 'string' },
      'max-tokens': { type: 'string' },
      keep: { type: 'boolean' },
    },
  });
  const kvCache = parseKvCache(values['kv-cache']);
  const maxTokens = Number(values['max-tokens'] ?? 32);
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new KvantError('KVANT_RANGE', `Expected --max-tokens to be an integer >= 1 but received ${JSON.stringify(values['max-tokens'])}`);
  const out = (s = '') => process.stdout.write(s + '\n');
  const log = (s: string) => process.stderr.write(s + '\n');
  const info = backendInfo();
  const tStart = performance.now();
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-demo-'));
  const open: Model[] = [];
  try {
    out(`kvant demo — DeepSeek-V2 on the ${info.backend.toUpperCase()} (ISA ${info.isa}, ${info.threads} threads)`);
    // 1. The float checkpoint: the user's, or a tiny random one.
    let floatDir: string;
    if (values.model) {
      floatDir = values.model;
      if (!fs.existsSync(path.join(floatDir, 'config.json'))) throw new KvantError('KVANT_IO', `Expected a checkpoint folder with config.json for --model but ${path.join(floatDir, 'config.json')} does not exist`);
      out(`checkpoint: ${floatDir}`);
    } else {
      floatDir = path.join(tmp, 'float');
      const bar = progressBar('make-model');
      const t0 = performance.now();
      makeModel({ preset: 'tiny', out: floatDir, seed: 1, dtype: 'bf16', onProgress: (d, t, w) => bar.update(d, t, w) });
      bar.done();
      out(`made a tiny random DeepSeek-V2 checkpoint (bf16) in ${((performance.now() - t0) / 1000).toFixed(2)} s: ${floatDir}`);
      out('  (random weights: the text is gibberish, the numbers are real)');
    }
    const alreadyQuantized = fs.existsSync(path.join(floatDir, 'quantize_config.json'));
    // 2. GPTQ 4-bit.
    let runDir = floatDir;
    let compareWith: string | null = null;
    let gptqDir: string | undefined;
    if (alreadyQuantized) {
      out('the checkpoint is already GPTQ-quantized: no float model to compare with');
    } else {
      runDir = path.join(tmp, 'gptq4');
      gptqDir = runDir;
      const bar = progressBar('quantize');
      const t0 = performance.now();
      const rep = await quantizeModel({ input: floatDir, output: runDir, bits: 4, groupSize: 128, method: 'gptq', onProgress: (p) => bar.update(p.done, p.total, p.tensor) });
      bar.done();
      out(`quantized with GPTQ 4-bit, group size 128, in ${((performance.now() - t0) / 1000).toFixed(2)} s`);
      const q = rep.quantized;
      const gptq = q.filter((t) => t.method === 'gptq' && Number.isFinite(t.relError));
      if (q.length > 0) {
        const mean = gptq.reduce((a, t) => a + t.relError, 0) / Math.max(1, gptq.length);
        out(`  ${q.length} linear layers quantized (${gptq.length} by GPTQ, ${q.length - gptq.length} fell back to round-to-nearest); mean relative layer output error ${mean.toExponential(2)}`);
      }
      compareWith = floatDir;
    }
    // 3. Load.
    const t0 = performance.now();
    const model = await loadModel(runDir, { ...cliLoadOptions('loading'), kvCache, maxWaitMs: 5 });
    open.push(model);
    const loadS = (performance.now() - t0) / 1000;
    const cfg = model.config;
    out(`loaded in ${loadS.toFixed(2)} s (worker thread; ${(model.loadMs / 1000).toFixed(2)} s mapping weights): ${cfg.numLayers} layers, hidden ${cfg.hiddenSize}, ${cfg.nRoutedExperts} routed experts, vocab ${model.vocabSize}`);
    // 4. Generate (streamed), sampling memory while the sequence holds its KV pages.
    const tok = model.tokenizer;
    const promptText = TOKENIZER_CORPUS.slice(0, 400);
    const prompt = tok ? tok.encode(promptText) : Array.from({ length: 64 }, (_, i) => (i * 37 + 1) % model.vocabSize);
    const stream = model.stream(prompt, { maxTokens, ignoreEos: true });
    let mem: { weightsBytes: number; cacheBytes: number } | undefined;
    let text = '';
    for await (const c of stream) {
      text += c.text ?? '';
      if (!mem && c.token >= 0) mem = await model.memory();
    }
    const r = await stream.result;
    const t = throughput(r);
    out(`generated ${r.usage.completionTokens} tokens from a ${r.usage.promptTokens}-token prompt (greedy):`);
    out(`  ${JSON.stringify(tok ? text.slice(0, 160) : r.tokens.slice(0, 24))}`);
    out(`prefill: ${rate(t.prefill)}   decode: ${rate(t.decode)}`);
    mem ??= await model.memory();
    out(`memory: weights ${mib(mem.weightsBytes)}, KV cache ${mib(mem.cacheBytes)} in use for one sequence (${model.kvBytesPerToken} bytes/token${kvCache ? `, ${kvCache}` : ''})`);
    // 5. Continuous batching: 8 concurrent requests share decode steps. The same 8 requests
    // one at a time (maxBatchSize 1) give the latency the scheduler saves under load.
    const requests = Array.from({ length: 8 }, (_, i) => ({ prompt: prompt.slice(0, 16 + i), o: { maxTokens: 16, ignoreEos: true, temperature: 0.8, seed: i } }));
    const runAll = async (m: Model) => {
      const t0 = performance.now();
      const lat: number[] = [];
      const rs = await Promise.all(requests.map((r) => m.generate(r.prompt, r.o).then((x) => (lat.push(performance.now() - t0), x))));
      return { rs, wall: (performance.now() - t0) / 1000, meanLatency: lat.reduce((a, b) => a + b, 0) / lat.length / 1000 };
    };
    const steps0 = model.stats.steps;
    const batched = await runAll(model);
    const st = model.stats;
    const toks = batched.rs.reduce((a, b) => a + b.usage.completionTokens, 0);
    out(`batching: 8 concurrent requests, ${toks} tokens in ${st.steps - steps0} shared decode steps (largest batch ${st.maxBatch}), ${(toks / batched.wall).toFixed(1)} tok/s overall`);
    const one = await loadModel(runDir, { ...cliLoadOptions('loading'), kvCache, maxBatchSize: 1 });
    open.push(one);
    const serial = await runAll(one);
    const same = serial.rs.every((r, i) => r.tokens.join() === batched.rs[i].tokens.join());
    out(`  mean request latency ${batched.meanLatency.toFixed(2)} s batched vs ${serial.meanLatency.toFixed(2)} s one at a time (${(toks / serial.wall).toFixed(1)} tok/s); tokens ${same ? 'identical' : 'DIFFERENT'} either way`);
    out(`decode time outside the model (thread hop, scheduling, sampling): ${(100 * st.overhead).toFixed(1)}% of ${(st.decodeMs + st.acceptMs).toFixed(0)} ms`);
    // 6. Quantization error: next-token distributions of the float and quantized models.
    if (compareWith) {
      const seq = prompt.slice(0, Math.min(prompt.length, 48));
      const q = await model.logits(seq);
      const fm = await loadModel(compareWith, { ...cliLoadOptions('loading float'), kvCache });
      open.push(fm);
      const f = await fm.logits(seq);
      const a = compareLogits(f, q);
      out(`GPTQ 4-bit vs float over ${a.positions} positions: mean KL ${a.meanKl.toExponential(3)} nats (max ${a.maxKl.toExponential(3)}), top-1 agreement ${(100 * a.top1).toFixed(1)}%`);
      const qBytes = folderBytes(gptqDir!);
      const fBytes = folderBytes(compareWith);
      out(`checkpoint on disk: ${mib(qBytes)} GPTQ 4-bit vs ${mib(fBytes)} float (${((100 * qBytes) / fBytes).toFixed(1)}%; embeddings, router and lm_head stay 16-bit)`);
      if (!values.model) {
        // Context for the number above: plain round-to-nearest at the same bits and groups.
        // GPTQ is calibrated layer by layer on the model's own activations; on random weights
        // (nearly uncorrelated activations) its margin over RTN is small, so the demo shows both.
        const rtnDir = path.join(tmp, 'rtn4');
        await quantizeModel({ input: floatDir, output: rtnDir, bits: 4, groupSize: 128, method: 'rtn' });
        const rm = await loadModel(rtnDir, { ...cliLoadOptions('loading rtn'), kvCache });
        open.push(rm);
        const b = compareLogits(f, await rm.logits(seq));
        out(`RTN 4-bit (same groups) vs float: mean KL ${b.meanKl.toExponential(3)} nats (max ${b.maxKl.toExponential(3)}), top-1 agreement ${(100 * b.top1).toFixed(1)}%`);
      }
    }
    out(`done in ${((performance.now() - tStart) / 1000).toFixed(1)} s`);
    return 0;
  } finally {
    for (const m of open) await m.close();
    if (values.keep) log(`kept ${tmp}`);
    else fs.rmSync(tmp, { recursive: true, force: true });
  }
}
