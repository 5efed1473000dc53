/**
 * Linear layers: y[M, N] = x[M, K] · W[N, K]ᵀ (+ bias) with dense f32/f16/bf16 weights.
 * x may be f32, f16 or bf16 (converted to f32 once); y is f32. Rows are batch-invariant and
 * thread-count invariant (see csrc/cpu/gemm.h).
 */
import { dtypeCode } from '../dtype';
import { KvantError, callNative, expected } from '../errors';
import { RawStorage, native } from '../native';
import { Tensor, checkTensor } from '../tensor';
import { IsaLevel, raw } from './small';

const ISA = { scalar: 0, avx2: 1, avx512: 2 } as const;

export interface LinearOptions {
  bias?: Tensor;
  out?: Tensor;
  isa?: IsaLevel;
}

export function linear(x: Tensor, w: Tensor, opts: LinearOptions = {}): Tensor {
  checkTensor(x, 'x');
  checkTensor(w, 'w');
  if (w.ndim !== 2) throw expected('KVANT_SHAPE', 'a 2-D weight [N, K]', 'w.shape', w.shape);
  if (!['f32', 'f16', 'bf16'].includes(w.dtype)) throw expected('KVANT_DTYPE', 'f32, f16 or bf16 weights', 'w.dtype', w.dtype);
  const [N, K] = w.shape;
  if (x.ndim === 0 || x.shape[x.ndim - 1] !== K)
    throw new KvantError('KVANT_SHAPE', `Expected x's last dimension to be K = ${K} (w is [${N}, ${K}]) but x is [${x.shape.join(', ')}]`);
  let xf = x;
  if (x.dtype === 'f16' || x.dtype === 'bf16') xf = x.to('f32');
  else if (x.dtype !== 'f32') throw expected('KVANT_DTYPE', 'f32, f16 or bf16 activations', 'x.dtype', x.dtype);
  const M = K === 0 ? 0 : x.numel / K;
  const y = opts.out ?? Tensor.zeros([...x.shape.slice(0, -1), N], 'f32');
  checkTensor(y, 'out');
  if (y.dtype !== 'f32' || y.numel !== M * N) throw new KvantError('KVANT_SHAPE', `Expected out to be f32 with ${M * N} elements but it is ${y.dtype} with ${y.numel}`);
  let b: [RawStorage | null, number, number] = [null, 0, 0];
  if (opts.bias) {
    checkTensor(opts.bias, 'bias');
    if (opts.bias.dtype !== 'f32' || opts.bias.numel !== N) throw new KvantError('KVANT_SHAPE', `Expected bias to be f32 with ${N} elements`);
    b = raw(opts.bias);
  }
  if (opts.isa !== undefined && !(opts.isa in ISA)) throw expected('KVANT_BACKEND', "'scalar', 'avx2' or 'avx512'", 'isa', opts.isa);
  const isa = opts.isa === undefined ? undefined : ISA[opts.isa];
  callNative(() => native().gemm(...raw(xf), M, K, ...raw(w), dtypeCode(w.dtype), N, b[0], b[1], b[2], ...raw(y), isa));
  return y;
}
