/**
 * Benchmarks of the fused dequant GEMV/GEMM (qlinear, moeMlp) and of the dense GEMV/GEMM
 * (linear) on DeepSeek-V2-Lite shapes (K × N). GEMV rows cycle through distinct weight copies
 * totalling at least 8x the last-level cache ({@link judgedCopies}: the size the read ceiling
 * is measured over), as a model's layers do, so they measure DRAM.
 * Bytes counted for a quantized GEMV: packed qweight + scales + qzeros (what must be read).
 */
import { linear } from '../ops/linear';
import { moeMlp, qlinear, type MlpWeights, type QActivations } from '../ops/qlinear';
import type { QTensor, QuantBits } from '../quant/format';
import { groupCount, qweightRows, qzerosCols } from '../quant/format';
import { Tensor } from '../tensor';
import { BenchCase, Machine, judgedCopies } from './harness';

/** V2-Lite projection shapes [K, N] (issue #4 item 5). */
export const V2_LITE_SHAPES: readonly [string, number, number][] = [
  ['q_proj', 2048, 3072],
  ['kv_a', 2048, 576],
  ['kv_b', 512, 4096],
  ['o_proj', 2048, 2048],
  ['expert gate/up', 2048, 1408],
  ['expert down', 1408, 2048],
  ['dense up', 2048, 10944],
  ['dense down', 10944, 2048],
  ['lm_head', 2048, 102400],
];

/** A random quantized matrix in native memory (random codes, zeros and small f16 scales). */
export function randomQTensor(K: number, N: number, bits: QuantBits, groupSize: number, seed: number): QTensor {
  const format = { bits, groupSize, sym: false, checkpointFormat: 'gptq' as const, K, N };
  const ng = groupCount(format);
  const int = { dist: 'uniform' as const, low: -(2 ** 31), high: 2 ** 31 - 1, native: true };
  return {
    format,
    qweight: Tensor.random([qweightRows(format), N], 'i32', { ...int, seed }),
    qzeros: Tensor.random([ng, qzerosCols(format)], 'i32', { ...int, seed: seed + 1 }),
    scales: Tensor.random([ng, N], 'f16', { seed: seed + 2, low: -0.01, high: 0.01, native: true }),
    gIdx: null,
    perm: null,
  };
}

function qBytes(w: QTensor): number {
  return w.qweight.byteLength + w.qzeros.byteLength + w.scales.byteLength;
}

function disposeQ(w: QTensor): void {
  w.qweight.dispose();
  w.qzeros.dispose();
  w.scales.dispose();
}

function qCase(name: string, K: number, N: number, M: number, bits: QuantBits, group: number, machine: Machine, quick: boolean, act: QActivations = 'f32'): BenchCase {
  const probe = { bits, groupSize: group, K, N };
  const perCopy = qweightRows(probe) * N * 4 + groupCount(probe) * (qzerosCols(probe) * 4 + N * 2);
  const copies = M <= 8 ? judgedCopies(perCopy, machine, quick) : 1;
  let ws: QTensor[] = [];
  let x: Tensor | undefined;
  let y: Tensor | undefined;
  return {
    name: `${M <= 8 ? 'qgemv' : 'qgemm'} ${bits}b g${group} m${M} ${K}x${N} x-${act} (${name})`,
    kernel: M <= 8 ? 'qgemv' : 'qgemm',
    fields: { dtype: `x-${act}`, bits, group, m: M, k: K, n: N },
    bytes: M <= 8 ? perCopy : undefined,
    ceiling: 'read',
    flops: 2 * M * N * K,
    warmup: copies,
    setup() {
      ws = Array.from({ length: copies }, (_, i) => randomQTensor(K, N, bits, group, 10 * i + 1));
      x = Tensor.random([M, K], 'f32', { seed: 7, dist: 'normal' });
      y = Tensor.zeros([M, N], 'f32', { native: true });
      let i = 0;
      return () => {
        qlinear(x as Tensor, ws[i], { out: y, activations: act });
        i = (i + 1) % copies;
      };
    },
    teardown() {
      ws.forEach(disposeQ);
      ws = [];
      y?.dispose();
    },
  };
}

function denseCase(name: string, K: number, N: number, M: number, dtype: 'f32' | 'bf16', machine: Machine, quick: boolean): BenchCase {
  const perCopy = N * K * (dtype === 'f32' ? 4 : 2);
  const copies = M <= 8 ? judgedCopies(perCopy, machine, quick) : 1;
  let ws: Tensor[] = [];
  let x: Tensor | undefined;
  let y: Tensor | undefined;
  return {
    name: `${M <= 8 ? 'gemv' : 'gemm'} ${dtype} m${M} ${K}x${N} (${name})`,
    kernel: M <= 8 ? 'gemv' : 'gemm',
    fields: { dtype, m: M, k: K, n: N },
    bytes: M <= 8 ? perCopy : undefined,
    ceiling: 'read',
    flops: 2 * M * N * K,
    warmup: copies,
    setup() {
      ws = Array.from({ length: copies }, (_, i) => Tensor.random([N, K], dtype, { seed: i + 1, native: true }));
      x = Tensor.random([M, K], 'f32', { seed: 7, dist: 'normal' });
      y = Tensor.zeros([M, N], 'f32', { native: true });
      let i = 0;
      return () => {
        linear(x as Tensor, ws[i], { out: y });
        i = (i + 1) % copies;
      };
    },
    teardown() {
      ws.forEach((w) => w.dispose());
      ws = [];
      y?.dispose();
    },
  };
}

/** One V2-Lite MoE layer at decode: 6 routed experts (I = 1408) + the fused shared expert (I = 2816), 4-bit g128. */
function moeCase(machine: Machine, quick: boolean, act: QActivations): BenchCase {
  const H = 2048;
  const perLayer = (6 * 3 * 1408 + 3 * 2816) * H * (4.156 / 8); // bytes at 4 bits + g128 scales/zeros
  const copies = judgedCopies(perLayer, machine, quick);
  let layers: MlpWeights[][] = [];
  let x: Tensor | undefined;
  let y: Tensor | undefined;
  let bytes = 0;
  return {
    name: `moe decode V2-Lite layer (6 routed + shared, 4b g128, m1) x-${act}`,
    kernel: 'qgemv',
    fields: { dtype: `x-${act}`, bits: 4, group: 128, m: 1, k: H, n: H },
    get bytes() {
      return bytes;
    },
    ceiling: 'read',
    flops: 2 * (6 * 3 * 1408 + 3 * 2816) * H,
    warmup: copies,
    setup() {
      let seed = 1;
      const mlp = (I: number): MlpWeights => ({
        gate: randomQTensor(H, I, 4, 128, (seed += 3)),
        up: randomQTensor(H, I, 4, 128, (seed += 3)),
        down: randomQTensor(I, H, 4, 128, (seed += 3)),
      });
      layers = Array.from({ length: copies }, () => [...Array.from({ length: 6 }, () => mlp(1408)), mlp(2816)]);
      bytes = layers[0].reduce((s, m) => s + qBytes(m.gate as QTensor) + qBytes(m.up as QTensor) + qBytes(m.down as QTensor), 0);
      x = Tensor.random([1, H], 'f32', { seed: 7, dist: 'normal' });
      y = Tensor.zeros([1, H], 'f32', { native: true });
      const routes = { mlp: Int32Array.of(0, 1, 2, 3, 4, 5, 6), row: new Int32Array(7), weight: Float32Array.of(0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 1) };
      let i = 0;
      return () => {
        moeMlp(x as Tensor, layers[i], routes, y, { activations: act });
        i = (i + 1) % copies;
      };
    },
    teardown() {
      for (const l of layers) for (const m of l) for (const p of [m.gate, m.up, m.down]) disposeQ(p as QTensor);
      layers = [];
      y?.dispose();
    },
  };
}

export function gemmCases(machine: Machine, quick: boolean): BenchCase[] {
  const cases: BenchCase[] = [];
  const shapes = quick ? V2_LITE_SHAPES.filter(([n]) => n === 'q_proj' || n === 'expert gate/up') : V2_LITE_SHAPES;
  // Decode: every V2-Lite shape at 4 bits g128 with int8 activations (the fast GEMV path).
  for (const [name, K, N] of shapes) cases.push(qCase(name, K, N, 1, 4, 128, machine, quick, 'int8'));
  // Two judged shapes in detail: f32 activations, the other widths, M = 4, dense f32/bf16.
  for (const [name, K, N] of shapes.filter(([n]) => n === 'q_proj' || n === 'dense down')) {
    cases.push(qCase(name, K, N, 1, 4, 128, machine, quick, 'f32'));
    cases.push(qCase(name, K, N, 1, 2, 128, machine, quick, 'int8'));
    cases.push(qCase(name, K, N, 1, 2, 128, machine, quick, 'f32'));
    cases.push(qCase(name, K, N, 1, 3, 128, machine, quick, 'f32'));
    cases.push(qCase(name, K, N, 1, 3, 128, machine, quick, 'int8'));
    cases.push(qCase(name, K, N, 1, 8, 128, machine, quick, 'f32'));
    cases.push(qCase(name, K, N, 1, 8, 128, machine, quick, 'int8'));
    cases.push(qCase(name, K, N, 4, 4, 128, machine, quick, 'int8'));
    cases.push(denseCase(name, K, N, 1, 'f32', machine, quick));
    cases.push(denseCase(name, K, N, 1, 'bf16', machine, quick));
  }
  // 3 bits on the widest decode shape too (the 3-bit int8 GEMV against its f32 form).
  if (!quick) for (const act of ['int8', 'f32'] as const) cases.push(qCase('dense up', 2048, 10944, 1, 3, 128, machine, quick, act));
  cases.push(moeCase(machine, quick, 'int8'));
  cases.push(moeCase(machine, quick, 'f32'));
  // Prefill: M = 512 (compute-bound; judged against the FMA peak).
  const M = quick ? 64 : 512;
  for (const act of ['f32', 'int8'] as const) cases.push(qCase('dense up', 2048, 10944, M, 4, 128, machine, quick, act));
  cases.push(qCase('q_proj', 2048, 3072, M, 4, 128, machine, quick, 'f32'));
  // The other prefill shapes the panel GEMM must not lose on: K = 10944 (a partial last group)
  // and the int8 byte-dot-product panel at 2 and 3 bits.
  cases.push(qCase('dense down', 10944, 2048, M, 4, 128, machine, quick, 'f32'));
  cases.push(qCase('q_proj', 2048, 3072, M, 2, 128, machine, quick, 'int8'));
  cases.push(qCase('q_proj', 2048, 3072, M, 3, 128, machine, quick, 'int8'));
  cases.push(denseCase('q_proj', 2048, 3072, M, 'bf16', machine, quick));
  return cases;
}
