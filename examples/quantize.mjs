#!/usr/bin/env node
// Quantize a float DeepSeek-V2 checkpoint with GPTQ and compare it with the float model.
//
//   node examples/quantize.mjs --model IN --out OUT [--bits 4] [--group-size 128] [--method gptq|rtn] [--act-order]
//
// Writes an AutoGPTQ-layout folder (quantize_config.json, safetensors), then loads both models and
// reports how far the quantized model's next-token distribution is from the float one's
// (KL divergence and top-1 agreement over a short token sequence): the measurable proxies for
// "accuracy kept", since task accuracy needs real weights and data sets.
import { parseArgs } from 'node:util';
import { loadModel, quantizeModel } from 'kvant';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    out: { type: 'string' },
    bits: { type: 'string', default: '4' },
    'group-size': { type: 'string', default: '128' },
    method: { type: 'string', default: 'gptq' },
    'act-order': { type: 'boolean', default: false },
    tokens: { type: 'string', default: '16' },
  },
});
if (!values.model || !values.out) {
  console.error('usage: node examples/quantize.mjs --model IN --out OUT [--bits 4] [--group-size 128] [--method gptq|rtn] [--act-order]');
  process.exit(2);
}

const t0 = performance.now();
const report = await quantizeModel({
  input: values.model,
  output: values.out,
  bits: Number(values.bits),
  groupSize: Number(values['group-size']),
  method: values.method,
  actOrder: values['act-order'],
  onProgress: (p) => process.stderr.write(`\r  quantizing ${p.done}/${p.total} ${p.tensor.padEnd(60).slice(0, 60)}`),
});
process.stderr.write('\n');
console.log(`quantized in ${((performance.now() - t0) / 1000).toFixed(1)} s: ${JSON.stringify(report.summary ?? {})}`);

const float = await loadModel(values.model);
const quant = await loadModel(values.out);
const n = Number(values.tokens);
const ids = Array.from({ length: n }, (_, i) => (i * 7919 + 13) % float.config.vocabSize);
const [a, b] = await Promise.all([float.logits(ids), quant.logits(ids)]);
let kl = 0;
let agree = 0;
for (let t = 0; t < n; t++) {
  const p = logSoftmax(a[t]);
  const q = logSoftmax(b[t]);
  let s = 0;
  for (let i = 0; i < p.length; i++) s += Math.exp(p[i]) * (p[i] - q[i]);
  kl += s / n;
  if (argmax(a[t]) === argmax(b[t])) agree++;
}
console.log(`vs float over ${n} positions: mean KL ${kl.toExponential(3)} nats, top-1 agreement ${((100 * agree) / n).toFixed(1)}%`);
await Promise.all([float.close(), quant.close()]);

function logSoftmax(x) {
  let m = -Infinity;
  for (const v of x) m = Math.max(m, v);
  let z = 0;
  for (const v of x) z += Math.exp(v - m);
  const lz = m + Math.log(z);
  return Float64Array.from(x, (v) => v - lz);
}
function argmax(x) {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}
