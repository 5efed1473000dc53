// The CUDA addon's API (device tensors, streams, the budgeted allocator, copies, every wrapped
// kernel) against the CPU kernels. Without a GPU (here, CI) it runs on the test-only emulated
// addon kvant_cuda_emu.node, built by scripts/build-cuda-emu.mjs: the same N-API layer over a
// host-emulated device, with the kernels under the SIMT emulation. With KVANT_TEST_CUDA=1 on a
// machine with a GPU the same suite runs on build-cmake/Release/kvant_cuda.node instead.
//
// Error bounds (u = 2^-24, the f32 unit roundoff; u16 = 2^-11, f16's) are derived per op below;
// each GPU result is compared with the CPU kernel (scalar and AVX2 agree within the CPU's own
// tests) within the sum of both sides' bounds, and with an f64 evaluation within its own bound.
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Tensor, backendInfo, cuda, cudaInfo, dequantize, embedding, flashAttention, opsFor, qlinear, quantizeRtn, resolveBackend } from '../lib';
import { argmax, rmsNorm, ropeInPlace, routeTopK, siluGate, softmaxInPlace } from '../lib/ops/small';
import { mlaDecode } from '../lib/ops/attention';
import { cudaNative } from '../lib/cuda/native';
import type { QTensor } from '../lib/quant/format';
import { REAL_CUDA, useCudaAddon } from './helpers/cuda-addon';

const root = path.join(__dirname, '..');
const U = 2 ** -24;
const U16 = 2 ** -11;
const REAL = REAL_CUDA;

const addon = useCudaAddon();

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? `uncoded: ${(e as Error).message}`;
  }
  return 'no error';
}

// Seeded uniform values (xorshift), rounded to f32.
function rand(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  let s = (seed * 2654435761) >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = lo + ((hi - lo) * s) / 2 ** 32;
  }
  return out;
}

// |got - want| <= tol(i) everywhere (NaN fails); reports the worst element.
function expectClose(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol: (i: number) => number): void {
  expect(got.length, `${what}: length`).toBe(want.length);
  let worst = -1;
  let worstRatio = 0;
  for (let i = 0; i < got.length; i++) {
    const d = Math.abs(got[i] - want[i]);
    const t = tol(i);
    if (!(d <= t)) {
      worst = i;
      break;
    }
    if (t > 0 && d / t > worstRatio) worstRatio = d / t;
  }
  expect(worst, worst >= 0 ? `${what}: element ${worst}: got ${got[worst]}, want ${want[worst]}, tol ${tol(worst)}` : '').toBe(-1);
}

const f32Tensor = (a: Float32Array, shape: number[]) => Tensor.from(a, { shape });
const up = (t: Tensor) => cuda.DeviceTensor.fromHost(t);

describe('CUDA addon: loading and backend selection', () => {
  it('cudaInfo test-loads the named addon in a child process; backendInfo says whether it is emulated', () => {
    const info = cudaInfo();
    expect(info.available, info.reason).toBe(true);
    expect(info.binary).toBe(path.resolve(addon()));
    expect(info.emulated).toBe(!REAL);
    if (!REAL) expect(info.reason).toContain('emulated');
    expect(backendInfo().cuda.emulated).toBe(!REAL);
    expect(resolveBackend('auto')).toBe('cuda');
    expect(resolveBackend('cuda')).toBe('cuda');
    expect(opsFor('cpu').backend).toBe('cpu');
    expect(opsFor('auto').backend).toBe('cuda');
    const p = cuda.deviceProperties();
    expect(p.emulated).toBe(!REAL);
    expect(p.sm).toBeGreaterThanOrEqual(80);
    expect(p.maxThreadsPerBlock).toBe(1024);
  });

  it('a missing or broken addon falls back to the CPU with a readable reason, and cuda ops say KVANT_BACKEND', () => {
    const dir = path.join(root, 'build-native-test', 'cuda-emu');
    fs.mkdirSync(dir, { recursive: true });
    const broken = path.join(dir, 'broken.node');
    fs.writeFileSync(broken, 'not an ELF file');
    const script = `const k = require('./dist'); const i = k.cudaInfo(); let c = null;
      try { k.cuda.DeviceTensor.empty([4]); } catch (e) { c = e.code; }
      console.log(JSON.stringify({ available: i.available, reason: i.reason, auto: k.resolveBackend('auto'), c, ops: k.opsFor('auto').backend }));`;
    for (const [env, want] of [
      [broken, 'failed to load in a test process'],
      [path.join(root, 'no-such-addon.node'), 'does not exist'],
    ] as const) {
      const r = spawnSync(process.execPath, ['-e', script], { cwd: root, encoding: 'utf8', env: { ...process.env, KVANT_CUDA_ADDON: env } });
      expect(r.status, r.stderr).toBe(0);
      const o = JSON.parse(r.stdout);
      expect(o.available).toBe(false);
      expect(o.reason).toContain(want);
      expect(o.auto).toBe('cpu');
      expect(o.ops).toBe('cpu');
      expect(o.c).toBe('KVANT_BACKEND');
    }
  });
});

describe('CUDA addon: device memory', () => {
  it('copies round trip for every dtype, at odd sizes and offsets, host <-> device and device <-> device', () => {
    const stream = new cuda.Stream();
    const ints = (n: number, seed: number) => Uint8Array.from(rand(n, seed, 0, 256), (v) => Math.floor(v));
    const hosts: Tensor[] = [
      Tensor.random([1037], 'f32', { seed: 1 }),
      Tensor.random([333], 'f32', { seed: 2 }).to('f16'),
      Tensor.random([1], 'f32', { seed: 3 }).to('bf16'),
      Tensor.from(new Int8Array(ints(4099, 4).buffer)),
      Tensor.from(new Uint8Array(0)),
      Tensor.from(new Int32Array(ints(77 * 4, 5).buffer)),
    ];
    for (const host of hosts) {
      const d = cuda.DeviceTensor.fromHost(host, { stream });
      const e = cuda.DeviceTensor.empty(host.shape, host.dtype).copyFrom(d, { stream });
      const back = e.toHost({ stream });
      expect(back.dtype).toBe(host.dtype);
      expect(Buffer.from(back.byteView()).equals(Buffer.from(host.byteView())), `${host.dtype} [${host.shape}]`).toBe(true);
      d.free();
      e.free();
    }
    // A view at an offset: slice rows 3..7 of a [10, 6] tensor, write it, read the whole back.
    const base = rand(60, 5);
    const d = up(f32Tensor(base, [10, 6]));
    const patch = rand(24, 6);
    d.slice(3, 7).copyFromHost(f32Tensor(patch, [4, 6]), { stream });
    const all = d.toArray({ stream }) as Float32Array;
    const want = Float32Array.from(base);
    want.set(patch, 18);
    expect(Array.from(all)).toEqual(Array.from(want));
    expect(Array.from(cuda.DeviceTensor.zeros([5], 'i32').toArray())).toEqual([0, 0, 0, 0, 0]);
    stream.synchronize();
    stream.destroy();
    expect(stream.destroyed).toBe(true);
    expect(code(() => d.toHost({ stream }))).toBe('KVANT_RANGE'); // destroyed stream
    d.free();
    cuda.synchronize();
  });

  it('use after free is KVANT_RANGE for the tensor and every view of its buffer; a second free is a no-op', () => {
    const d = up(f32Tensor(rand(16, 1), [4, 4]));
    const view = d.slice(1, 3);
    d.free();
    expect(d.freed && view.freed).toBe(true);
    expect(code(() => d.toHost())).toBe('KVANT_RANGE');
    expect(code(() => cuda.softmaxInPlace(view))).toBe('KVANT_RANGE');
    expect(code(() => cuda.rmsNorm(view, up(f32Tensor(rand(4, 2), [4])), 1e-6))).toBe('KVANT_RANGE');
    // The raw binding re-checks (a caller bypassing lib/cuda): freed buffer -> KVANT_RANGE.
    const n = cudaNative();
    expect(code(() => n.softmax(d.buffer, 0, 64, 4, 4, undefined))).toBe('KVANT_RANGE');
    expect(() => d.free()).not.toThrow();
    // Symbol.dispose (`using`) frees too.
    const sym = (Symbol as { dispose?: symbol }).dispose ?? Symbol.for('nodejs.dispose');
    const e = up(f32Tensor(rand(4, 3), [4]));
    (e as unknown as Record<symbol, () => void>)[sym]();
    expect(e.freed).toBe(true);
  });

  it('the budget caps allocations with KVANT_OOM naming the bytes needed and available; stats account every byte', () => {
    const before = cuda.memoryStats();
    const a = cuda.DeviceTensor.empty([1000], 'f32');
    const mid = cuda.memoryStats();
    expect(mid.allocated - before.allocated).toBe(4000);
    expect(mid.allocations - before.allocations).toBe(1);
    try {
      cuda.setMemoryBudget(mid.allocated + 10_000);
      let err: { code?: string; message?: string } = {};
      try {
        cuda.DeviceTensor.empty([2501], 'f32'); // 10004 bytes: 4 over the budget
      } catch (e) {
        err = e as typeof err;
      }
      expect(err.code).toBe('KVANT_OOM');
      expect(err.message).toContain('needed 10004 bytes but only 10000');
      const b = cuda.DeviceTensor.empty([2500], 'f32'); // exactly fits
      expect(cuda.memoryStats().allocated).toBe(mid.allocated + 10_000);
      expect(code(() => cuda.DeviceTensor.empty([1], 'u8'))).toBe('KVANT_OOM');
      b.free();
      expect(code(() => cuda.setMemoryBudget(mid.allocated - 1))).toBe('KVANT_OOM'); // below what is allocated
    } finally {
      cuda.setMemoryBudget(before.budget);
      a.free();
    }
    expect(cuda.memoryStats().allocated).toBe(before.allocated);
  });

  it('an op whose scratch exceeds the budget fails with KVANT_OOM and leaves no allocation behind', () => {
    const K = 384; // 3 slabs of 128 kernel rows: the GEMV needs scratch
    const N = 64;
    const q = quantizeRtn(Tensor.random([N, K], 'f32', { seed: 3 }), { bits: 4, groupSize: 64 });
    const w = cuda.uploadQTensor(q);
    const x = up(Tensor.random([2, K], 'f32', { seed: 4 }));
    const y = cuda.DeviceTensor.empty([2, N], 'f32');
    const before = cuda.memoryStats();
    try {
      cuda.setMemoryBudget(before.allocated + 100);
      expect(code(() => cuda.qlinear(x, w, { out: y }))).toBe('KVANT_OOM');
      expect(cuda.memoryStats().allocated).toBe(before.allocated);
    } finally {
      cuda.setMemoryBudget(before.budget);
    }
    cuda.qlinear(x, w, { out: y });
    for (const t of [x, y]) t.free();
    cuda.freeQTensor(w);
  });

  it('streams order work; destroyed streams and wrong argument kinds are typed errors', () => {
    const s = new cuda.Stream();
    const x = up(f32Tensor(rand(3 * 50, 8), [3, 50]));
    cuda.softmaxInPlace(x, { stream: s });
    const r = cuda.argmax(x, { stream: s });
    const back = r.toArray({ stream: s });
    const cpu = argmax(f32Tensor(rand(3 * 50, 8), [3, 50]));
    expect(Array.from(back)).toEqual(Array.from(cpu));
    s.destroy();
    expect(code(() => cuda.softmaxInPlace(x, { stream: s }))).toBe('KVANT_RANGE');
    expect(code(() => s.destroy())).toBe('no error'); // second destroy: no-op
    expect(code(() => cuda.softmaxInPlace(x, { stream: {} as cuda.Stream }))).toBe('KVANT_DTYPE');
    expect(code(() => cuda.softmaxInPlace(f32Tensor(rand(4, 1), [4]) as unknown as cuda.DeviceTensor))).toBe('KVANT_DTYPE');
    const n = cudaNative();
    expect(code(() => n.upload(x.buffer, 0, 600, new Float32Array(149), undefined))).toBe('KVANT_SHAPE');
    expect(code(() => n.upload(x.buffer, 4, 600, new Float32Array(150), undefined))).toBe('KVANT_SHAPE'); // past the buffer's end
    expect(code(() => n.softmax(x.buffer, 2, 4, 1, 1, undefined))).toBe('KVANT_RANGE'); // misaligned
    expect(code(() => n.memset(x.buffer, 0, 4, 256, undefined))).toBe('KVANT_RANGE');
    for (const bad of [-1, 0.5, NaN, 1e30]) expect(code(() => new n.DeviceBuffer(bad)), String(bad)).toBe('KVANT_RANGE');
    r.free();
    x.free();
  });
});

describe('CUDA addon: small ops vs the CPU kernels', () => {
  it('rmsNorm (f32, f16, bf16 weights; in place)', () => {
    const rows = 3;
    const n = 777;
    const xs = rand(rows * n, 11, -3, 3);
    for (const wt of ['f32', 'f16', 'bf16'] as const) {
      const w = f32Tensor(rand(n, 12, 0.5, 1.5), [n]).to(wt);
      const cpu = rmsNorm(f32Tensor(xs, [rows, n]), w, 1e-6).data() as Float32Array;
      const dx = up(f32Tensor(xs, [rows, n]));
      const gpu = cuda.rmsNorm(dx, up(w), 1e-6, { out: dx }).toArray() as Float32Array; // y = x
      // f64 reference. Bound per side: Σx² over n terms in f32 has relative error <= n·u, which
      // enters y through 1/sqrt as n·u/2; rsqrt/division and the two products add <= 4u.
      const wf = w.toFloat32Array();
      for (let r = 0; r < rows; r++) {
        let ss = 0;
        for (let i = 0; i < n; i++) ss += xs[r * n + i] ** 2;
        const inv = 1 / Math.sqrt(ss / n + 1e-6);
        const want = Array.from({ length: n }, (_, i) => xs[r * n + i] * inv * wf[i]);
        const tol = (i: number) => (n / 2 + 4) * U * Math.abs(want[i]) + 1e-30;
        expectClose(`rmsNorm ${wt} vs f64`, gpu.subarray(r * n, (r + 1) * n), want, tol);
        expectClose(`rmsNorm ${wt} vs CPU`, gpu.subarray(r * n, (r + 1) * n), cpu.subarray(r * n, (r + 1) * n), (i) => 2 * tol(i));
      }
    }
  });

  it('softmax (including a -inf row), siluGate (fused gate|up and separate), argmax (NaN and ties) and embedding', () => {
    const rows = 4;
    const n = 1001;
    const xs = rand(rows * n, 21, -8, 8);
    xs.fill(-Infinity, 2 * n, 3 * n); // nothing to attend: zeros
    const cpu = softmaxInPlace(f32Tensor(Float32Array.from(xs), [rows, n])).data() as Float32Array;
    const gpu = cuda.softmaxInPlace(up(f32Tensor(xs, [rows, n]))).toArray() as Float32Array;
    // p_i = e_i / Σe: each exp within a few ulp (4u), the sum of n terms within n·u relative.
    const tol = (i: number) => (n + 8) * U * Math.abs(cpu[i]) + 1e-30;
    expectClose('softmax vs CPU', gpu, cpu, (i) => 2 * tol(i));
    expect(Array.from(gpu.subarray(2 * n, 3 * n)).every((v) => v === 0)).toBe(true);

    const gu = rand(5 * 2 * 300, 22, -6, 6);
    const cpuG = siluGate(f32Tensor(gu, [5, 600])).data() as Float32Array;
    const gpuG = cuda.siluGate(up(f32Tensor(gu, [5, 600]))).toArray() as Float32Array;
    // silu(g)·u = g / (1 + exp(-g)) · u: exp within 4u, one add, one division, one product: 8u relative per side.
    expectClose('siluGate vs CPU', gpuG, cpuG, (i) => 16 * U * Math.abs(cpuG[i]) + 1e-30);
    const g2 = rand(7 * 33, 23, -6, 6);
    const u2 = rand(7 * 33, 24);
    const cpu2 = siluGate(f32Tensor(g2, [7, 33]), f32Tensor(u2, [7, 33])).data() as Float32Array;
    const gpu2 = cuda.siluGate(up(f32Tensor(g2, [7, 33])), up(f32Tensor(u2, [7, 33]))).toArray() as Float32Array;
    expectClose('siluGate (two tensors) vs CPU', gpu2, cpu2, (i) => 16 * U * Math.abs(cpu2[i]) + 1e-30);

    const am = rand(6 * 517, 25);
    am[3] = NaN; // NaN never wins
    am[517 + 100] = 5;
    am[517 + 400] = 5; // tie: the lower index
    am.fill(-Infinity, 2 * 517, 3 * 517); // all -inf: index 0 like the CPU
    expect(Array.from(cuda.argmax(up(f32Tensor(am, [6, 517]))).toArray())).toEqual(Array.from(argmax(f32Tensor(am, [6, 517]))));

    for (const dt of ['f32', 'f16', 'bf16'] as const) {
      const table = f32Tensor(rand(50 * 130, 26), [50, 130]).to(dt);
      const ids = Int32Array.from([0, 49, 7, 7, 23]);
      const want = embedding(table, ids).data() as Float32Array;
      expect(Array.from(cuda.embedding(up(table), ids).toArray()), dt).toEqual(Array.from(want)); // exact: a widening copy
      let err: { code?: string; message?: string } = {};
      try {
        cuda.embedding(up(table), Int32Array.from([3, 50, -1]));
      } catch (e) {
        err = e as typeof err;
      }
      expect(err.code).toBe('KVANT_RANGE');
      expect(err.message).toContain('ids[1] = 50');
    }
  });

  it('rotary (offset, positions up to 1e5) and MoE routing (greedy and group-limited, bit for bit)', () => {
    const [rows, heads, stride, offset, pairs] = [3, 5, 40, 8, 16];
    const xs = rand(rows * heads * stride, 31);
    const positions = Int32Array.from([0, 77, 99_999]);
    const invFreq = Float32Array.from({ length: pairs }, (_, i) => 10000 ** (-i / pairs));
    const cpu = ropeInPlace(f32Tensor(Float32Array.from(xs), [rows, heads, stride]), { positions, invFreq, offset }).data() as Float32Array;
    const gpu = cuda.ropeInPlace(up(f32Tensor(xs, [rows, heads, stride])), { positions, invFreq, offset }).toArray() as Float32Array;
    // Both sides form the angle and take cos/sin in f64, so cs and sn agree to one rounding (u);
    // a·cs − b·sn costs two products and a difference: <= 4u·(|a| + |b|) per side.
    expectClose('rope vs CPU', gpu, cpu, (i) => {
      const j = i - (i % 2);
      return 8 * U * (Math.abs(xs[j]) + Math.abs(xs[j + 1])) + 1e-30;
    });
    // Dimensions outside [offset, offset + 2·pairs) are untouched.
    for (let i = 0; i < xs.length; i++) {
      const d = i % stride;
      if (d < offset || d >= offset + 2 * pairs) expect(gpu[i]).toBe(xs[i]);
    }

    const E = 64;
    const logits = rand(9 * E, 32, -4, 4);
    for (const o of [
      { k: 6, method: 'greedy' as const, normTopkProb: true },
      { k: 6, method: 'group_limited_greedy' as const, nGroup: 8, topkGroup: 3, routedScalingFactor: 16 },
      { k: 1, method: 'greedy' as const, routedScalingFactor: 2.5 },
    ]) {
      const c = routeTopK(f32Tensor(logits, [9, E]), o);
      const g = cuda.routeTopK(up(f32Tensor(logits, [9, E])), o);
      expect(Array.from(g.idx.toArray())).toEqual(Array.from(c.idx.data()));
      expect(Array.from(g.weights.toArray())).toEqual(Array.from(c.weights.data()));
    }
  });

  it('bad dtypes, shapes and values end in the documented codes', () => {
    const x = up(f32Tensor(rand(12, 1), [3, 4]));
    const w = up(f32Tensor(rand(4, 2), [4]));
    expect(code(() => cuda.rmsNorm(x, up(f32Tensor(rand(5, 2), [5])), 1e-6))).toBe('KVANT_SHAPE');
    expect(code(() => cuda.rmsNorm(up(f32Tensor(rand(12, 1), [3, 4]).to('f16')), w, 1e-6))).toBe('KVANT_DTYPE');
    expect(code(() => cuda.rmsNorm(x, w, -1))).toBe('KVANT_RANGE');
    expect(code(() => cuda.rmsNorm(x, w, 1e-6, { out: cuda.DeviceTensor.empty([3, 5]) }))).toBe('KVANT_SHAPE');
    expect(code(() => cuda.siluGate(up(f32Tensor(rand(9, 1), [3, 3]))))).toBe('KVANT_SHAPE');
    expect(code(() => cuda.ropeInPlace(up(f32Tensor(rand(24, 1), [2, 3, 4])), { positions: new Int32Array(2), invFreq: new Float32Array(3), offset: 0 }))).toBe('KVANT_SHAPE');
    expect(code(() => cuda.embedding(up(f32Tensor(rand(12, 1), [3, 4])), new Int32Array(2), { out: cuda.DeviceTensor.empty([2, 4], 'i32') }))).toBe('KVANT_DTYPE');
    expect(code(() => cuda.embedding(up(Tensor.from(new Int32Array(12), { shape: [3, 4] })), new Int32Array(2)))).toBe('KVANT_DTYPE');
    expect(code(() => cuda.routeTopK(up(f32Tensor(rand(2 * 2000, 1), [2, 2000])), { k: 2, method: 'greedy' }))).toBe('KVANT_SHAPE'); // > 1024 experts
    expect(code(() => cuda.routeTopK(x, { k: 5, method: 'greedy' }))).toBe('KVANT_RANGE');
    const n = cudaNative();
    // The binding's own checks, bypassing lib/cuda: lengths, aliasing, dtype codes, launch limits.
    expect(code(() => n.rmsNorm(x.buffer, 0, 48, w.buffer, 0, 16, 0, x.buffer, 0, 44, 3, 4, 1e-6, undefined))).toBe('KVANT_SHAPE');
    expect(code(() => n.rmsNorm(x.buffer, 0, 48, w.buffer, 0, 16, 9, x.buffer, 0, 48, 3, 4, 1e-6, undefined))).toBe('KVANT_DTYPE');
    expect(code(() => n.rmsNorm(x.buffer, 0, 48, x.buffer, 0, 16, 0, x.buffer, 0, 48, 3, 4, 1e-6, undefined))).toBe('KVANT_RANGE'); // y overlaps w
    expect(code(() => n.softmax(x.buffer, 0, 0, 0, 0, undefined))).toBe('KVANT_SHAPE'); // n = 0
  });
});

// A host QTensor with a random act-order permutation attached (kernel row j holds channel perm[j]).
function withPerm(q: QTensor, seed: number): QTensor {
  const K = q.format.K;
  const perm = Int32Array.from({ length: K }, (_, i) => i);
  const r = rand(K, seed, 0, 1);
  for (let i = K - 1; i > 0; i--) {
    const j = Math.floor(r[i] * (i + 1));
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  return { ...q, perm };
}

describe('CUDA addon: group quantization and the fused dequant GEMV/GEMM vs the CPU kernels', () => {
  it('RTN quantize packs the same bytes as the CPU; dequantize gives the same bits (f32 and f16, 2/3/4/8 bits)', () => {
    for (const [bits, groupSize, sym, N, K] of [[4, 64, false, 40, 200], [3, 32, true, 64, 96], [2, -1, false, 48, 80], [8, 32, false, 12, 100]] as const) {
      const W = Tensor.random([N, K], 'f32', { seed: bits * 7 + N });
      const fmt = { bits, groupSize, sym, checkpointFormat: 'gptq' as const };
      const cpuQ = quantizeRtn(W, fmt);
      const dq = cuda.quantizeRtn(up(W), fmt);
      for (const f of ['qweight', 'qzeros', 'scales'] as const)
        expect(Buffer.from(dq[f].toHost().byteView()).equals(Buffer.from(cpuQ[f].byteView())), `${bits}-bit ${f}`).toBe(true);
      const q = withPerm(cpuQ, bits);
      const d = cuda.uploadQTensor(q);
      for (const dt of ['f32', 'f16'] as const) {
        const want = dequantize(q, dt);
        expect(Buffer.from(cuda.dequantize(d, dt).toHost().byteView()).equals(Buffer.from(want.byteView())), `${bits}-bit dequant ${dt}`).toBe(true);
      }
      cuda.freeQTensor(d);
      cuda.freeQTensor(dq);
    }
    expect(code(() => cuda.quantizeRtn(up(Tensor.random([8, 64], 'f32', { seed: 1 })), { bits: 4, groupSize: 16, sym: true, checkpointFormat: 'gptq' }))).toBe('KVANT_FORMAT');
    const bad = Tensor.random([8, 64], 'f32', { seed: 1 });
    (bad.data() as Float32Array)[70] = NaN;
    expect(code(() => cuda.quantizeRtn(up(bad), { bits: 4, groupSize: 32, sym: true, checkpointFormat: 'gptq' }))).toBe('KVANT_RANGE');
  });

  it('qlinear: GEMV (M = 1..8) and tensor-core GEMM (M = 20) vs the CPU and f64, act-order, v1/v2 zeros, 3/4-bit', () => {
    for (const [bits, groupSize, K, N, v2] of [[4, 64, 328, 72, false], [3, 32, 288, 64, true]] as const) {
      const W = Tensor.random([N, K], 'f32', { seed: K });
      const q = withPerm(quantizeRtn(W, { bits, groupSize, sym: false, checkpointFormat: v2 ? 'gptq_v2' : 'gptq' }), K + 1);
      const d = cuda.uploadQTensor(q);
      const Wd = dequantize(q, 'f32').data() as Float32Array; // exact: (code − zero)·scale fits f32
      const wmax = Wd.reduce((p, c) => Math.max(p, Math.abs(c)), 0);
      for (const M of [1, 3, 8, 20]) {
        const xs = rand(M * K, M + bits, -2, 2);
        const x = f32Tensor(xs, [M, K]);
        const cpu = qlinear(x, q).data() as Float32Array;
        const gpu = cuda.qlinear(up(x), d).toArray() as Float32Array;
        const gemm = M > 8;
        for (let m = 0; m < M; m++)
          for (let n = 0; n < N; n++) {
            let s = 0;
            let a = 0;
            for (let k = 0; k < K; k++) {
              s += xs[m * K + k] * Wd[n * K + k];
              a += Math.abs(xs[m * K + k] * Wd[n * K + k]);
            }
            const i = m * N + n;
            // f32 dot products of K terms (any order): <= K·u·Σ|x·w| per side. The GEMM rounds x and w
            // to f16 first: another 2·u16 relative per product (plus u16², negligible).
            // f16's subnormals (|x| < 2^-14) round with an absolute error up to 2^-25 instead: that adds
            // K·2^-25·max|w| at most.
            const side = K * U * a;
            const tolG = gemm ? side + 2.01 * U16 * a + K * 2 ** -25 * wmax : side;
            expect(Math.abs(gpu[i] - s), `M=${M} ${bits}-bit [${m}, ${n}] vs f64`).toBeLessThanOrEqual(tolG);
            expect(Math.abs(gpu[i] - cpu[i]), `M=${M} ${bits}-bit [${m}, ${n}] vs CPU`).toBeLessThanOrEqual(tolG + side);
          }
      }
      // Batch invariance of the GEMM: rows 0..1 of an M = 20 call equal an M = 2 call of the same rows, bit for bit.
      const x20 = rand(20 * K, 99);
      const a = cuda.qlinear(up(f32Tensor(x20, [20, K])), d).toArray().subarray(0, 2 * N);
      const b = cuda.qlinear(up(f32Tensor(x20.slice(0, 2 * K), [2, K])), d, { kernel: 'gemm' }).toArray();
      expect(Array.from(a)).toEqual(Array.from(b));
      cuda.freeQTensor(d);
    }
  });

  it('bad quantized inputs: shapes, dtypes, a non-permutation, GEMV rows', () => {
    const q = quantizeRtn(Tensor.random([16, 64], 'f32', { seed: 2 }), { bits: 4, groupSize: 32 });
    const d = cuda.uploadQTensor(q);
    const x = up(Tensor.random([2, 64], 'f32', { seed: 3 }));
    expect(code(() => cuda.qlinear(up(Tensor.random([2, 63], 'f32', { seed: 3 })), d))).toBe('KVANT_SHAPE');
    expect(code(() => cuda.qlinear(up(Tensor.random([2, 64], 'f32', { seed: 3 }).to('f16')), d))).toBe('KVANT_DTYPE');
    expect(code(() => cuda.qlinear(x, { ...d, scales: d.qzeros }))).toBe('KVANT_DTYPE');
    expect(code(() => cuda.qlinear(x, { ...d, format: { ...d.format, bits: 5 as 4 } }))).toBe('KVANT_FORMAT');
    expect(code(() => cuda.uploadQTensor({ ...q, gIdx: Tensor.from(new Int32Array(64)) }))).toBe('KVANT_FORMAT'); // not sequential
    const notPerm = cuda.DeviceTensor.fromHost(new Int32Array(64).fill(3));
    expect(code(() => cuda.qlinear(x, { ...d, perm: notPerm }))).toBe('KVANT_RANGE');
    expect(code(() => cuda.qlinear(up(Tensor.random([9, 64], 'f32', { seed: 3 })), d, { kernel: 'gemv' }))).toBe('KVANT_SHAPE');
    expect(code(() => cuda.dequantize(d, 'bf16' as 'f16'))).toBe('KVANT_DTYPE');
    // A permutation checked once is re-checked after the buffer is overwritten.
    const p = cuda.DeviceTensor.fromHost(Int32Array.from({ length: 64 }, (_, i) => 63 - i));
    expect(code(() => cuda.qlinear(x, { ...d, perm: p }))).toBe('no error');
    p.copyFromHost(Tensor.from(new Int32Array(64)));
    expect(code(() => cuda.qlinear(x, { ...d, perm: p }))).toBe('KVANT_RANGE');
  });
});

describe('CUDA addon: attention vs the CPU kernels', () => {
  // Bound for attention rows (per side) in f64: a score s = scale·q·k over D terms is off by
  // δ <= D·u·scale·Σ|q||k|; softmax weights then move by a factor within exp(±2δ) and by the
  // (S + 4)·u of the exp, running sum and rescales; out = Σ p·v is off by <= max|v|·(2δ + (S + 4)u)
  // plus its own (S + 1)·u·Σp|v| <= (S + 1)·u·max|v|. LSE = m + ln l is off by <= δ + (S + 4)·u + u·|lse|.
  function attnRef(q: Float32Array, k: Float32Array, v: Float32Array, dims: { B: number; Sq: number; Sk: number; Hq: number; Hkv: number; Dqk: number; Dv: number; causal: boolean; scale: number }) {
    const { B, Sq, Sk, Hq, Hkv, Dqk, Dv, causal, scale } = dims;
    const out = new Float64Array(B * Sq * Hq * Dv);
    const tolO = new Float64Array(out.length);
    const lse = new Float64Array(B * Hq * Sq);
    const tolL = new Float64Array(lse.length);
    for (let b = 0; b < B; b++)
      for (let i = 0; i < Sq; i++)
        for (let h = 0; h < Hq; h++) {
          const g = Math.floor(h / (Hq / Hkv));
          const s: number[] = [];
          let delta = 0;
          let vmax = 0;
          for (let j = 0; j < Sk; j++) {
            if (causal && j > i + Sk - Sq) continue;
            let dot = 0;
            let a = 0;
            for (let d = 0; d < Dqk; d++) {
              const p = q[((b * Sq + i) * Hq + h) * Dqk + d] * k[((b * Sk + j) * Hkv + g) * Dqk + d];
              dot += p;
              a += Math.abs(p);
            }
            s.push(dot * scale);
            delta = Math.max(delta, Dqk * U * scale * a);
            for (let d = 0; d < Dv; d++) vmax = Math.max(vmax, Math.abs(v[((b * Sk + j) * Hkv + g) * Dv + d]));
          }
          const m = s.length ? Math.max(...s) : -Infinity;
          const e = s.map((x) => Math.exp(x - m));
          const l = e.reduce((p, c) => p + c, 0);
          const keys = Array.from({ length: Sk }, (_, j) => j).filter((j) => !(causal && j > i + Sk - Sq));
          for (let d = 0; d < Dv; d++) {
            let o = 0;
            keys.forEach((j, t) => (o += (e[t] / l) * v[((b * Sk + j) * Hkv + g) * Dv + d]));
            const idx = ((b * Sq + i) * Hq + h) * Dv + d;
            out[idx] = s.length ? o : 0;
            tolO[idx] = vmax * (2 * delta + (2 * Sk + 5) * U) + 1e-30;
          }
          const li = (b * Hq + h) * Sq + i;
          lse[li] = s.length ? m + Math.log(l) : Infinity;
          tolL[li] = s.length ? delta + (Sk + 4) * U + U * Math.abs(lse[li]) : 0;
        }
    return { out, tolO, lse, tolL };
  }

  it('FlashAttention-2 forward: GQA, lower-right causal, f32 and bf16, (64, 64) and (192, 128), split-KV decode', () => {
    const cases = [
      { B: 2, Sq: 5, Sk: 37, Hq: 4, Hkv: 2, Dqk: 64, Dv: 64, causal: true, dtype: 'f32' as const, kps: 0 },
      { B: 1, Sq: 3, Sk: 19, Hq: 2, Hkv: 1, Dqk: 192, Dv: 128, causal: false, dtype: 'bf16' as const, kps: 0 },
      { B: 1, Sq: 1, Sk: 70, Hq: 6, Hkv: 2, Dqk: 64, Dv: 64, causal: true, dtype: 'f16' as const, kps: 32 }, // decode, 3 splits
    ];
    for (const c of cases) {
      const scale = c.Dqk ** -0.5;
      const mk = (n: number, seed: number) => Tensor.from(rand(n, seed)).to(c.dtype);
      const q = mk(c.B * c.Sq * c.Hq * c.Dqk, 41).reshape([c.B, c.Sq, c.Hq, c.Dqk]);
      const k = mk(c.B * c.Sk * c.Hkv * c.Dqk, 42).reshape([c.B, c.Sk, c.Hkv, c.Dqk]);
      const v = mk(c.B * c.Sk * c.Hkv * c.Dv, 43).reshape([c.B, c.Sk, c.Hkv, c.Dv]);
      const ref = attnRef(q.toFloat32Array(), k.toFloat32Array(), v.toFloat32Array(), { ...c, scale });
      const cpu = flashAttention(q, k, v, { causal: c.causal, scale });
      const gpu = cuda.flashAttention(up(q), up(k), up(v), { causal: c.causal, scale, keysPerSplit: c.kps });
      const go = gpu.out.toArray() as Float32Array;
      const gl = gpu.lse!.toArray() as Float32Array;
      const what = `flash ${c.Dqk}/${c.Dv} ${c.dtype}${c.kps ? ' split' : ''}`;
      expectClose(`${what} out vs f64`, go, ref.out, (i) => ref.tolO[i]);
      expectClose(`${what} out vs CPU`, go, cpu.out.data() as Float32Array, (i) => 2 * ref.tolO[i]);
      expectClose(`${what} lse vs f64`, gl, ref.lse, (i) => ref.tolL[i]); // every row sees a key here
      expectClose(`${what} lse vs CPU`, gl, cpu.lse.data() as Float32Array, (i) => 2 * ref.tolL[i]);
    }
  });

  it('MLA decode over a paged bf16 latent cache (an empty sequence, partial pages, splits) vs the CPU; bad pages and lengths', () => {
    const [L, R, H, pageSize, maxPages] = [64, 32, 5, 16, 4];
    const D = L + R;
    const seqLens = Int32Array.from([45, 0, 17]);
    const B = seqLens.length;
    const numPages = 9;
    const pool = Tensor.from(rand(numPages * pageSize * D, 51)).to('bf16').reshape([numPages, pageSize, D]);
    const pageTable = Int32Array.from([8, 2, 5, 0, 0, 0, 0, 0, 1, 7, 0, 0]);
    const q = f32Tensor(rand(B * H * D, 52), [B, H, D]);
    const scale = D ** -0.5;
    const cpu = mlaDecode(q, { pool, pageSize, pageTable, maxPages, seqLens }, { L, R, scale });
    const gpu = cuda.mlaDecode(up(q), { pool: up(pool), pageSize, pageTable, maxPages, seqLens }, { L, R, scale, keysPerSplit: 32 });
    const go = gpu.out.toArray() as Float32Array;
    const co = cpu.out.data() as Float32Array;
    const gl = gpu.lse.toArray() as Float32Array;
    const cl = cpu.lse.data() as Float32Array;
    // The f64 reference: MLA decode is attention of one query per head over one shared KV head
    // whose keys are the cache rows [c | k_pe] (Dqk = L + R) and whose values are c (Dv = L).
    const poolF = pool.toFloat32Array();
    const qf = q.data() as Float32Array;
    for (let b = 0; b < B; b++) {
      const S = seqLens[b];
      const kk = new Float32Array(S * D);
      const vv = new Float32Array(S * L);
      for (let t = 0; t < S; t++) {
        const row = (pageTable[b * maxPages + Math.floor(t / pageSize)] * pageSize + (t % pageSize)) * D;
        kk.set(poolF.subarray(row, row + D), t * D);
        vv.set(poolF.subarray(row, row + L), t * L);
      }
      const ref = attnRef(qf.subarray(b * H * D, (b + 1) * H * D), kk, vv, { B: 1, Sq: 1, Sk: S, Hq: H, Hkv: 1, Dqk: D, Dv: L, causal: false, scale });
      const o = (a: Float32Array) => a.subarray(b * H * L, (b + 1) * H * L);
      expectClose(`mla out [${b}] vs f64`, o(go), ref.out, (i) => ref.tolO[i]);
      expectClose(`mla out [${b}] vs CPU`, o(go), o(co), (i) => 2 * ref.tolO[i]);
      const l = (a: Float32Array) => a.subarray(b * H, (b + 1) * H);
      if (S === 0) {
        expect(Array.from(l(gl)).every((x) => x === Infinity) && Array.from(l(cl)).every((x) => x === Infinity), 'empty sequence: lse = +inf').toBe(true);
        expect(Array.from(o(go)).every((x) => x === 0), 'empty sequence: out = 0').toBe(true);
        continue;
      }
      expectClose(`mla lse [${b}] vs f64`, l(gl), ref.lse, (i) => ref.tolL[i]);
      expectClose(`mla lse [${b}] vs CPU`, l(gl), l(cl), (i) => 2 * ref.tolL[i]);
    }
    const dpool = up(pool);
    expect(code(() => cuda.mlaDecode(up(q), { pool: dpool, pageSize, pageTable: Int32Array.from([8, 2, 9, 0, 0, 0, 0, 0, 1, 7, 0, 0]), maxPages, seqLens }, { L, R, scale }))).toBe('KVANT_RANGE');
    expect(code(() => cuda.mlaDecode(up(q), { pool: dpool, pageSize, pageTable, maxPages, seqLens: Int32Array.from([65, 0, 1]) }, { L, R, scale }))).toBe('KVANT_RANGE');
    expect(code(() => cuda.mlaDecode(up(q), { pool: dpool, pageSize, pageTable, maxPages, seqLens }, { L: 96, R: 0, scale }))).toBe('KVANT_SHAPE');
    expect(code(() => cuda.mlaDecode(up(q), { pool: up(pool.to('f32')), pageSize, pageTable, maxPages, seqLens }, { L, R, scale }))).toBe('KVANT_DTYPE');
  });

  it('attention bad inputs: dtypes, head dims not instantiated, launches beyond the grid limits (KVANT_RANGE)', () => {
    const t = (shape: number[], dt: 'f32' | 'f16' = 'f32') => up(Tensor.from(rand(shape.reduce((a, b) => a * b, 1), 1)).to(dt).reshape(shape));
    const q = t([1, 2, 2, 64]);
    const k = t([1, 3, 1, 64]);
    expect(code(() => cuda.flashAttention(q, k, t([1, 3, 1, 64], 'f16')))).toBe('KVANT_DTYPE');
    expect(code(() => cuda.flashAttention(t([1, 2, 2, 32]), t([1, 3, 1, 32]), t([1, 3, 1, 32])))).toBe('KVANT_SHAPE'); // (32, 32) not instantiated
    expect(code(() => cuda.flashAttention(q, k, t([1, 4, 1, 64])))).toBe('KVANT_SHAPE');
    expect(code(() => cuda.flashAttention(q, k, k, { keysPerSplit: 48 }))).toBe('KVANT_SHAPE');
    // B·Hkv blocks in grid.y: more than 65535 is beyond the device's grid limits.
    const e = cuda.DeviceTensor.empty([1, 0, 65536, 64]);
    expect(code(() => cuda.flashAttention(e, cuda.DeviceTensor.empty([1, 0, 65536, 64]), cuda.DeviceTensor.empty([1, 0, 65536, 64])))).toBe('KVANT_RANGE');
  });
});

describe('CUDA addon: the op-level API on a backend (opsFor)', () => {
  it("opsFor('cuda') and opsFor('cpu') agree on host tensors", () => {
    const x = f32Tensor(rand(2 * 96, 61), [2, 96]);
    const w = f32Tensor(rand(96, 62, 0.5, 1.5), [96]);
    const a = opsFor('cuda').rmsNorm(x, w, 1e-5).data() as Float32Array;
    const b = opsFor('cpu').rmsNorm(x, w, 1e-5).data() as Float32Array;
    expectClose('opsFor rmsNorm', a, b, (i) => 2 * (96 / 2 + 4) * U * Math.abs(b[i]));
    const q = quantizeRtn(Tensor.random([32, 64], 'f32', { seed: 63 }), { bits: 4, groupSize: 32 });
    const xs = f32Tensor(rand(64, 64), [1, 64]);
    const ya = opsFor('cuda').qlinear(xs, q).data() as Float32Array;
    const yb = opsFor('cpu').qlinear(xs, q).data() as Float32Array;
    const Wd = dequantize(q).data() as Float32Array;
    expectClose('opsFor qlinear', ya, yb, (n) => {
      let s = 0;
      for (let k = 0; k < 64; k++) s += Math.abs(xs.data()[k] as number) * Math.abs(Wd[n * 64 + k]);
      return 2 * 64 * U * s;
    });
    expect(Array.from(opsFor('cuda').argmax(x))).toEqual(Array.from(opsFor('cpu').argmax(x)));
    expect(cuda.memoryStats().allocated).toBeGreaterThanOrEqual(0);
  });
});
