/**
 * The two sides of the GPTQ format agree: matrices packed by the quantizer (lib/quant, its own
 * packer) run through the fused dequant GEMM (lib/ops/qlinear, which reads the checkpoint
 * layout directly) and give the same products as dequantize-then-dense-GEMM, for every bit
 * width, act-order included.
 */
import { describe, expect, it } from 'vitest';
import { Hessian, Tensor, dequantize, linear, makeSequential, qlinear, quantizeGptq, quantizeRtn } from '../lib';
import type { QuantBits } from '../lib/quant/format';

function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

describe('quantizer output through qlinear', () => {
  // K = 352: 2 full groups of 128 and a partial one; N = 96 fills whole qzeros words at every width.
  const K = 352;
  const N = 96;
  const w = Tensor.random([N, K], 'f32', { seed: 5, dist: 'normal', std: 0.05 });
  const x = Tensor.random([5, K], 'f32', { seed: 6, dist: 'normal' });

  for (const bits of [2, 3, 4, 8] as QuantBits[]) {
    it(`${bits}-bit RTN g128: qlinear == linear(dequantize)`, () => {
      const q = quantizeRtn(w, { bits, groupSize: bits === 3 ? 32 : 128, sym: bits !== 2 });
      const y = qlinear(x, q).data() as Float32Array;
      const ref = linear(x, dequantize(q, 'f32')).data() as Float32Array;
      // Both are f32 sums of K = 352 products of the same dequantized values in different orders
      // (qlinear factors the scale out per group): rounding only, ~sqrt(K)·2^-24 relative.
      expect(relErr(y, ref)).toBeLessThan(1e-5);
    });
  }

  it('GPTQ act-order (non-monotonic g_idx) made sequential: qlinear == linear(dequantize)', () => {
    const h = new Hessian(K);
    h.add(Tensor.random([256, K], 'f32', { seed: 7, dist: 'normal' }));
    const { q } = quantizeGptq(w, h, { bits: 4, groupSize: 32, actOrder: true });
    const seq = makeSequential(q);
    expect(seq.perm).not.toBeNull();
    const y = qlinear(x, seq).data() as Float32Array;
    const ref = linear(x, dequantize(q, 'f32')).data() as Float32Array;
    expect(relErr(y, ref)).toBeLessThan(1e-5);
  });
});
