/**
 * `backend: 'auto' | 'cpu' | 'cuda'` at the op level, for host tensors: {@link opsFor} returns the
 * same ops as lib/ops (host Tensors in, host Tensors out) running on the chosen backend. On
 * 'cuda' each call uploads its inputs, runs the kernel and downloads the result, so it suits
 * tests and one-off calls; a decode loop should keep its tensors on the device and use the
 * device-tensor ops (kvant.cuda.*) directly.
 */
import { BackendName, resolveBackend } from '../backend';
import { expected } from '../errors';
import * as cpuAttn from '../ops/attention';
import * as cpuQ from '../ops/qlinear';
import * as cpuSmall from '../ops/small';
import { dequantize as cpuDequantize } from '../quant/quantize';
import type { QTensor } from '../quant/format';
import { Tensor, checkTensor } from '../tensor';
import { DeviceTensor } from './device';
import * as dev from './ops';

/** The op-level API on one backend (host tensors in and out). */
export interface HostOps {
  /** What the request resolved to. */
  readonly backend: 'cpu' | 'cuda';
  rmsNorm(x: Tensor, w: Tensor, eps: number): Tensor;
  ropeInPlace(x: Tensor, o: cpuSmall.RopeOptions): Tensor;
  siluGate(gateUp: Tensor, up?: Tensor): Tensor;
  softmaxInPlace(x: Tensor): Tensor;
  argmax(x: Tensor): Int32Array;
  embedding(table: Tensor, ids: Int32Array): Tensor;
  routeTopK(logits: Tensor, o: cpuSmall.RouteOptions): { idx: Tensor; weights: Tensor };
  /** y = x · dequant(w)ᵀ, f32 [..., N]. On 'cuda': x f32 (f16/bf16 widened on the host first); GEMV up to 8 rows, tensor-core GEMM beyond. */
  qlinear(x: Tensor, w: QTensor): Tensor;
  dequantize(w: QTensor, dtype?: 'f32' | 'f16'): Tensor;
  flashAttention(q: Tensor, k: Tensor, v: Tensor, opts?: { causal?: boolean; scale?: number }): { out: Tensor; lse: Tensor };
  mlaDecode(q: Tensor, cache: cpuAttn.PagedLatentView, o: { L: number; R: number; scale: number }): { out: Tensor; lse: Tensor };
}

const cpuOps: HostOps = {
  backend: 'cpu',
  rmsNorm: (x, w, eps) => cpuSmall.rmsNorm(x, w, eps),
  ropeInPlace: (x, o) => cpuSmall.ropeInPlace(x, o),
  siluGate: (g, u) => cpuSmall.siluGate(g, u),
  softmaxInPlace: (x) => cpuSmall.softmaxInPlace(x),
  argmax: (x) => cpuSmall.argmax(x),
  embedding: (t, ids) => cpuSmall.embedding(t, ids),
  routeTopK: (l, o) => cpuSmall.routeTopK(l, o),
  qlinear: (x, w) => cpuQ.qlinear(x, w),
  dequantize: (w, dtype = 'f32') => cpuDequantize(w, dtype),
  flashAttention: (q, k, v, opts = {}) => cpuAttn.flashAttention(q, k, v, opts),
  mlaDecode: (q, c, o) => cpuAttn.mlaDecode(q, c, o),
};

// Uploads host tensors, runs fn, downloads what it returns, frees every device tensor it made.
function onDevice<T>(fn: (up: (t: Tensor) => DeviceTensor, keep: (d: DeviceTensor) => DeviceTensor) => T): T {
  const made: DeviceTensor[] = [];
  const up = (t: Tensor) => {
    checkTensor(t, 'tensor');
    const d = DeviceTensor.fromHost(t);
    made.push(d);
    return d;
  };
  const keep = (d: DeviceTensor) => (made.push(d), d);
  try {
    return fn(up, keep);
  } finally {
    for (const d of made) d.free();
  }
}

const cudaOps: HostOps = {
  backend: 'cuda',
  rmsNorm: (x, w, eps) => onDevice((up, keep) => keep(dev.rmsNorm(up(x), up(w), eps)).toHost()),
  ropeInPlace: (x, o) =>
    onDevice((up) => {
      const d = up(x);
      dev.ropeInPlace(d, { positions: o.positions, invFreq: o.invFreq, offset: o.offset, amplitude: o.amplitude });
      d.copyToHost(x);
      return x;
    }),
  siluGate: (g, u) => onDevice((up, keep) => keep(dev.siluGate(up(g), u === undefined ? undefined : up(u))).toHost()),
  softmaxInPlace: (x) =>
    onDevice((up) => {
      dev.softmaxInPlace(up(x)).copyToHost(x);
      return x;
    }),
  argmax: (x) => onDevice((up, keep) => keep(dev.argmax(up(x))).toHost().data() as Int32Array),
  embedding: (t, ids) => onDevice((up, keep) => keep(dev.embedding(up(t), ids)).toHost()),
  routeTopK: (l, o) =>
    onDevice((up, keep) => {
      const r = dev.routeTopK(up(l), o);
      return { idx: keep(r.idx).toHost(), weights: keep(r.weights).toHost() };
    }),
  qlinear: (x, w) =>
    onDevice((up, keep) => {
      const wd = dev.uploadQTensor(w);
      try {
        return keep(dev.qlinear(up(x.dtype === 'f32' ? x : x.to('f32')), wd)).toHost();
      } finally {
        dev.freeQTensor(wd);
      }
    }),
  dequantize: (w, dtype = 'f32') =>
    onDevice((_up, keep) => {
      const wd = dev.uploadQTensor(w);
      try {
        return keep(dev.dequantize(wd, dtype)).toHost();
      } finally {
        dev.freeQTensor(wd);
      }
    }),
  flashAttention: (q, k, v, opts = {}) =>
    onDevice((up, keep) => {
      const r = dev.flashAttention(up(q), up(k), up(v), opts);
      return { out: keep(r.out).toHost(), lse: keep(r.lse as DeviceTensor).toHost() };
    }),
  mlaDecode: (q, c, o) =>
    onDevice((up, keep) => {
      const r = dev.mlaDecode(up(q), { pool: up(c.pool), pageSize: c.pageSize, pageTable: c.pageTable, maxPages: c.maxPages, seqLens: c.seqLens }, o);
      return { out: keep(r.out).toHost(), lse: keep(r.lse).toHost() };
    }),
};

/**
 * The op-level API on a backend: 'cpu', 'cuda' (KVANT_BACKEND with the reason when no device is
 * usable), or 'auto' (CUDA when the addon passed its child-process test load and a device
 * answered, else the CPU; `backendInfo().cuda.reason` says why).
 */
export function opsFor(backend: BackendName = 'auto'): HostOps {
  const b = resolveBackend(backend);
  if (b === 'cpu') return cpuOps;
  if (b === 'cuda') return cudaOps;
  throw expected('KVANT_BACKEND', "'auto', 'cpu' or 'cuda'", 'backend', backend);
}
