#!/usr/bin/env node
// A kernel microbenchmark with kvant's public API: decode-shaped GEMV (one activation row) over a
// DeepSeek-V2-Lite o_proj-sized matrix, dense bf16 vs GPTQ-format 4-bit, reported as time and
// effective bandwidth (weight bytes read per call / time). For the full suite with the machine's
// measured ceilings, use `npx kvant bench`.
//
//   node examples/microbench.mjs [--k 2048] [--n 2048] [--iters 50]
import { parseArgs } from 'node:util';
import { Tensor, linear, qlinear, quantizeRtn } from 'kvant';

const { values } = parseArgs({ options: { k: { type: 'string', default: '2048' }, n: { type: 'string', default: '2048' }, iters: { type: 'string', default: '50' } } });
const K = Number(values.k);
const N = Number(values.n);
const iters = Number(values.iters);

// Several distinct weight copies cycled, so the last-level cache cannot serve repeats (a model's
// layers do not fit in it either).
const copies = 8;
const x = Tensor.random([1, K], 'f32', { seed: 1, dist: 'normal' });
const dense = Array.from({ length: copies }, (_, i) => Tensor.random([N, K], 'f32', { seed: 10 + i, dist: 'normal', std: 0.02 }).to('bf16'));
const quant = dense.map((w) => quantizeRtn(w, { bits: 4, groupSize: 128 }));

function time(fn) {
  for (let i = 0; i < copies; i++) fn(i); // warm-up
  const t = [];
  for (let r = 0; r < iters; r++) {
    const t0 = process.hrtime.bigint();
    fn(r % copies);
    t.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  t.sort((a, b) => a - b);
  return t[t.length >> 1];
}

const qBytes = (q) => q.qweight.byteLength + q.qzeros.byteLength + q.scales.byteLength;
const rows = [
  ['dense bf16 GEMV', time((i) => linear(x, dense[i])), dense[0].byteLength],
  ['GPTQ 4-bit g128 GEMV', time((i) => qlinear(x, quant[i])), qBytes(quant[0])],
];
console.log(`GEMV ${N} x ${K} (M = 1), median of ${iters}:`);
for (const [name, ms, bytes] of rows) console.log(`  ${name.padEnd(22)} ${ms.toFixed(3).padStart(8)} ms  ${(bytes / ms / 1e6).toFixed(1).padStart(7)} GB/s  (${(bytes / 2 ** 20).toFixed(2)} MiB of weights)`);
console.log(`  speed-up of 4-bit over bf16: ${(rows[0][1] / rows[1][1]).toFixed(2)}x`);
