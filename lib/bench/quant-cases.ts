/**
 * Group-quantization benchmarks.
 *
 * Quality: bits {2,3,4,8} x group {64,128} x {RTN, GPTQ, GPTQ + act-order} on one layer whose
 * calibration activations are correlated with a few large outlier channels
 * (lib/quant/calibration.ts). The relative output error ‖(W − Ŵ)X‖/‖WX‖ over the calibration
 * tokens is measured once in setup (with the dense GEMM) and shown in the row name and the
 * rel_error field; the timed body is the quantization itself.
 *
 * Speed: DeepSeek-V2-Lite's dense down_proj (N = 2048, K = 10944; --quick: K = 2048) with its
 * Hessian given — the f64 factorization (reversed Cholesky + triangular inverse, 2/3·K³ FLOPs;
 * % fma is against the f32 FMA peak, and f64 peaks at half of it) and the lazy block updates
 * of a whole pass (Σ 2·N·B·(K − i2) FLOPs) separately; Hessian accumulation; dequantization.
 */
import { native } from '../native';
import { linear } from '../ops/linear';
import { syntheticActivations } from '../quant/calibration';
import { QTensor, QuantBits } from '../quant/format';
import { Hessian, dequantize, quantizeGptq, quantizeRtn } from '../quant/quantize';
import { Tensor } from '../tensor';
import { BenchCase, Machine } from './harness';

type Method = 'rtn' | 'gptq' | 'gptq+act';

interface Layer {
  w: Tensor;
  x: Tensor;
  h: Hessian;
  y: Float32Array;
}

function relOutputError(layer: Layer, q: QTensor): number {
  const yq = linear(layer.x, dequantize(q)).data() as Float32Array;
  let num = 0;
  let den = 0;
  for (let i = 0; i < yq.length; i++) {
    num += (yq[i] - layer.y[i]) ** 2;
    den += layer.y[i] ** 2;
  }
  return Math.sqrt(num / den);
}

function qualityCases(quick: boolean): BenchCase[] {
  const N = quick ? 256 : 512;
  const K = quick ? 512 : 1024;
  const T = quick ? 512 : 2048;
  let layer: Layer | null = null;
  const get = (): Layer => {
    if (!layer) {
      const w = Tensor.random([N, K], 'f32', { seed: 11, dist: 'normal', std: 1 / Math.sqrt(K) });
      const x = syntheticActivations(T, K, { seed: 5 });
      const h = new Hessian(K);
      h.add(x, T / 128); // 128-token sequences
      layer = { w, x, h, y: linear(x, w).data() as Float32Array };
    }
    return layer;
  };
  const cases: BenchCase[] = [];
  for (const bits of [2, 3, 4, 8] as QuantBits[])
    for (const group of [64, 128])
      for (const method of ['rtn', 'gptq', 'gptq+act'] as Method[]) {
        const run = (l: Layer) =>
          method === 'rtn' ? quantizeRtn(l.w, { bits, groupSize: group }) : quantizeGptq(l.w, l.h, { bits, groupSize: group, actOrder: method === 'gptq+act', errorStats: false }).q;
        const c: BenchCase = {
          name: `quant ${method} ${bits}b g${group} ${N}x${K}`,
          kernel: method === 'rtn' ? 'quant_rtn' : 'gptq',
          fields: { bits, group, n: N, k: K, m: T },
          setup() {
            const l = get();
            const err = relOutputError(l, run(l));
            c.fields!.rel_error = err;
            c.name = `quant ${method} ${bits}b g${group} ${N}x${K}: rel err ${err.toExponential(3)}`;
            return () => void run(l);
          },
        };
        cases.push(c);
      }
  const last = cases[cases.length - 1];
  last.teardown = () => {
    layer?.h.dispose();
    layer = null;
  };
  return cases;
}

function speedCases(quick: boolean): BenchCase[] {
  const N = 2048;
  const K = quick ? 2048 : 10944;
  const B = 128;
  let updateFlops = 0;
  for (let i1 = 0; i1 < K; i1 += B) {
    const i2 = Math.min(K, i1 + B);
    updateFlops += 2 * N * (i2 - i1) * (K - i2);
  }
  const T = quick ? 128 : 256;
  let x: Tensor | null = null;
  let h: Hessian | null = null;
  let q: QTensor | null = null;
  let out: Tensor | null = null;
  return [
    {
      name: `gptq factor f64 (Cholesky + inverse) K=${K}`,
      kernel: 'gptq_factor',
      fields: { k: K, dtype: 'f64' },
      flops: (2 / 3) * K ** 3,
      // One timed run, no warm-up: at K = 10944 a run is minutes on a loaded 2-core machine.
      // It overwrites its matrix in place, so setup prepares and the update case reuses it.
      warmup: 0,
      runs: 1,
      setup() {
        native().gptqBenchPrepare(N, K, B);
        return () => native().gptqBenchRun(0);
      },
    },
    {
      name: `gptq block updates B=${B} ${N}x${K}`,
      kernel: 'gptq_update',
      fields: { n: N, k: K, dtype: 'f32' },
      flops: updateFlops,
      warmup: quick ? 1 : 0,
      runs: quick ? 3 : 2,
      setup() {
        return () => native().gptqBenchRun(1);
      },
      teardown() {
        native().gptqBenchRelease();
      },
    },
    {
      name: `gptq hessian add T=${T} K=${K}`,
      kernel: 'gptq_hessian',
      fields: { m: T, k: K, dtype: 'f32' },
      flops: T * K * K, // the lower half of 2·T·K², mirrored
      setup() {
        x = syntheticActivations(T, K, { seed: 3 });
        h = new Hessian(K);
        return () => h!.add(x!);
      },
      teardown() {
        h?.dispose();
        h = x = null;
      },
    },
    {
      name: `dequant 4b g128 ${N}x${K} -> bf16`,
      kernel: 'dequant',
      fields: { bits: 4, group: 128, n: N, k: K, dtype: 'bf16' },
      bytes: (N * K) / 2 + N * K * 2,
      ceiling: 'copy',
      setup() {
        q = quantizeRtn(Tensor.random([N, K], 'f32', { seed: 1, native: true }), { bits: 4, groupSize: 128 });
        out = Tensor.zeros([N, K], 'bf16', { native: true });
        return () => void dequantize(q!, 'bf16', { out: out! });
      },
      teardown() {
        out?.dispose();
        q = out = null;
      },
    },
  ];
}

/** Quality table and GPTQ / dequant speed. */
export function quantCases(machine: Machine, quick: boolean): BenchCase[] {
  void machine;
  return [...qualityCases(quick), ...speedCases(quick)];
}
