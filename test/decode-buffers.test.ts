// The decode step's allocation-free paths: MlpSet (experts checked once, only the routed ones
// passed to the kernel), routeTopK and MlaKVCache.decode writing into caller buffers. Each must
// give the same bits as the allocating/array form and reject bad input with typed errors.
import { describe, expect, it } from 'vitest';
import { Tensor } from '../lib';
import { MlaKVCache } from '../lib/kv/mla-cache';
import { bindLinear, linear } from '../lib/ops/linear';
import { MlpSet, bindQlinear, moeMlp, qlinear } from '../lib/ops/qlinear';
import { routeTopK } from '../lib/ops/small';
import { errorCode as code } from './helpers/checks';
import { makeQuant } from './helpers/gptq-pack';

const bytesOf = (t: Tensor) => Buffer.from((t.data() as Float32Array).buffer.slice(0));
const same = (a: Tensor, b: Tensor) => expect(Buffer.compare(Buffer.from(a.toFloat32Array().buffer), Buffer.from(b.toFloat32Array().buffer))).toBe(0);

describe('MlpSet', () => {
  const H = 96;
  const I = 48;
  // Five MLPs: 4-bit and 2-bit quantized (g32, 3 groups) and one dense f32 "shared" expert.
  const mk = (K: number, N: number, bits: 2 | 4, s: number) => makeQuant({ K, N, bits, groupSize: 32, sym: false, v2: true, seed: s }).w;
  const dense = (N: number, K: number, s: number) => Tensor.random([N, K], 'f32', { seed: s, std: 0.1, dist: 'normal' });
  const mlps = [
    { gate: dense(I, H, 1), up: dense(I, H, 2), down: dense(H, I, 3) },
    ...[4, 2, 4, 2].map((b, e) => ({ gate: mk(H, I, b as 2 | 4, 10 * e + 1), up: mk(H, I, b as 2 | 4, 10 * e + 2), down: mk(I, H, b as 2 | 4, 10 * e + 3) })),
  ];
  const set = new MlpSet(mlps, H);

  it('gives the bits of the array form over exactly the routed MLPs', () => {
    const M = 3;
    const x = Tensor.random([M, H], 'f32', { seed: 9, dist: 'normal' });
    // Rows use members {0, 4, 2}, {0, 2}, {0, 3, 4}: the array form gets [m0, m2, m3, m4] with the
    // indices remapped in ascending member order, which is what the set passes to the kernel.
    const mlp = Int32Array.of(0, 4, 2, 0, 2, 0, 3, 4);
    const row = Int32Array.of(0, 0, 0, 1, 1, 2, 2, 2);
    const weight = Float32Array.of(1, 0.3, 0.7, 1, 0.5, 1, 0.25, 0.75);
    const viaSet = moeMlp(x, set, { mlp, row, weight }, Tensor.from(new Float32Array(M * H).fill(NaN), { shape: [M, H] }));
    const used = [0, 2, 3, 4];
    const local = Int32Array.from(mlp, (e) => used.indexOf(e));
    const viaArray = moeMlp(x, used.map((e) => mlps[e]), { mlp: local, row, weight });
    same(viaSet, viaArray);
    // And a second call with other routes reuses the set (no state leaks between calls).
    // Member 2 was used by the first call too, so a stale per-call index would drop it.
    const again = moeMlp(x, set, { mlp: Int32Array.of(2, 1, 2), row: Int32Array.of(0, 1, 2), weight: Float32Array.of(1, 2, 3) });
    same(again, moeMlp(x, [mlps[1], mlps[2]], { mlp: Int32Array.of(1, 0, 1), row: Int32Array.of(0, 1, 2), weight: Float32Array.of(1, 2, 3) }));
    expect(bytesOf(viaSet).length).toBe(M * H * 4);
  });

  it('with no pairs writes zeros, as the array form does', () => {
    const x = Tensor.random([2, H], 'f32', { seed: 3, dist: 'normal' });
    const none = { mlp: new Int32Array(0), row: new Int32Array(0), weight: new Float32Array(0) };
    const y = moeMlp(x, set, none, Tensor.from(new Float32Array(2 * H).fill(NaN), { shape: [2, H] }));
    expect(Array.from(y.data() as Float32Array).every((v) => v === 0)).toBe(true);
    same(y, moeMlp(x, mlps, none));
  });

  it('rejects bad input with typed errors', () => {
    const x = Tensor.random([2, H], 'f32', { seed: 1, dist: 'normal' });
    const routes = { mlp: Int32Array.of(1), row: Int32Array.of(1), weight: Float32Array.of(1) };
    expect(code(() => new MlpSet([], H))).toBe('KVANT_SHAPE');
    expect(code(() => new MlpSet(mlps, 0))).toBe('KVANT_SHAPE');
    expect(code(() => new MlpSet(mlps, H + 1))).toBe('KVANT_SHAPE'); // widths checked once, at construction
    expect(code(() => new MlpSet([{ ...mlps[1], up: Tensor.zeros([I, H], 'i8') }], H))).toBe('KVANT_DTYPE');
    expect(code(() => moeMlp(x, set, { ...routes, mlp: Int32Array.of(5) }))).toBe('KVANT_RANGE');
    expect(code(() => moeMlp(x, set, { ...routes, mlp: Int32Array.of(-1) }))).toBe('KVANT_RANGE');
    expect(code(() => moeMlp(x, set, { ...routes, row: Int32Array.of(2) }))).toBe('KVANT_RANGE');
    expect(code(() => moeMlp(Tensor.random([2, H + 8], 'f32', { seed: 1 }), set, routes))).toBe('KVANT_SHAPE');
    expect(code(() => moeMlp(x, set, routes, x))).toBe('KVANT_RANGE'); // out aliases x
    // out over a routed member's weight (member 0's dense gate, f32 [I, H]) is rejected, not written.
    const g = mlps[0].gate as Tensor;
    if (g.storage.kind !== 'js') throw new Error('expected a JS-heap tensor');
    const overGate = Tensor.fromBuffer(g.storage.bytes.buffer as ArrayBuffer, 'f32', [2, H], g.storage.bytes.byteOffset);
    expect(code(() => moeMlp(x, set, { mlp: Int32Array.of(0), row: Int32Array.of(0), weight: Float32Array.of(1) }, overGate))).toBe('KVANT_RANGE');
    // A weight disposed after the set was built is rejected by the kernel call, not read.
    const own = { gate: mk(H, I, 4, 71), up: mk(H, I, 4, 72), down: mk(I, H, 4, 73) };
    const q = own.gate.qweight;
    const nq = { ...own, gate: { ...own.gate, qweight: Tensor.zeros(q.shape, 'i32', { native: true }) } };
    const s2 = new MlpSet([nq], H);
    nq.gate.qweight.dispose();
    expect(code(() => moeMlp(x, s2, { mlp: Int32Array.of(0), row: Int32Array.of(0), weight: Float32Array.of(1) }))).toBe('KVANT_RANGE');
    // Likewise a JS-heap weight whose ArrayBuffer was detached (transferred) after the set was built;
    // a set member no route names is never resolved, so the other members still run.
    const scales = Tensor.from(new Uint16Array(own.down.scales.numel).fill(0x3c00), { dtype: 'f16', shape: own.down.scales.shape });
    const s3 = new MlpSet([mlps[1], { ...own, down: { ...own.down, scales } }], H);
    if (scales.storage.kind !== 'js') throw new Error('expected a JS-heap tensor');
    const buffer = scales.storage.bytes.buffer as ArrayBuffer;
    structuredClone(buffer, { transfer: [buffer] });
    expect(code(() => moeMlp(x, s3, { mlp: Int32Array.of(1), row: Int32Array.of(0), weight: Float32Array.of(1) }))).toBe('KVANT_RANGE');
    same(moeMlp(x, s3, { mlp: Int32Array.of(0), row: Int32Array.of(1), weight: Float32Array.of(1) }), moeMlp(x, [mlps[1]], { mlp: Int32Array.of(0), row: Int32Array.of(1), weight: Float32Array.of(1) }));
  });
});

describe('routeTopK into buffers', () => {
  it('writes the bits of the allocating form and checks the buffers', () => {
    const logits = Tensor.random([3, 16], 'f32', { seed: 4, dist: 'normal' });
    const o = { k: 4, method: 'group_limited_greedy' as const, nGroup: 4, topkGroup: 2, normTopkProb: true, routedScalingFactor: 1.5 };
    const ref = routeTopK(logits, o);
    const idx = Tensor.from(new Int32Array(12).fill(-7), { dtype: 'i32', shape: [3, 4] });
    const weights = Tensor.from(new Float32Array(12).fill(NaN), { shape: [3, 4] });
    const got = routeTopK(logits, o, { idx, weights });
    expect(got.idx).toBe(idx);
    expect(Array.from(idx.data() as Int32Array)).toEqual(Array.from(ref.idx.data() as Int32Array));
    same(weights, ref.weights);
    expect(code(() => routeTopK(logits, o, { idx: Tensor.zeros([3, 4], 'f32'), weights }))).toBe('KVANT_SHAPE');
    expect(code(() => routeTopK(logits, o, { idx, weights: Tensor.zeros([3, 3], 'f32') }))).toBe('KVANT_SHAPE');
  });
});

describe('MlaKVCache.decode into buffers', () => {
  it('writes the bits of the allocating form and checks the buffers', () => {
    const L = 64;
    const R = 16;
    const H = 3;
    const cache = new MlaKVCache({ layers: 1, latentDim: L, ropeDim: R, type: 'q8', pageSize: 16 });
    const seqs = [cache.open(40), cache.open(40)];
    seqs.forEach((s, i) => cache.append(s, 0, Tensor.random([21 + 7 * i, L + R], 'f32', { seed: 3 + i, dist: 'normal' })));
    const q = Tensor.random([2, H, L + R], 'f32', { seed: 8, dist: 'normal' });
    const ref = cache.decode(0, seqs, q, 0.1);
    const out = Tensor.from(new Float32Array(2 * H * L).fill(NaN), { shape: [2, H, L] });
    const lse = Tensor.from(new Float32Array(2 * H).fill(NaN), { shape: [2, H] });
    const got = cache.decode(0, seqs, q, 0.1, { out, lse });
    expect(got.out).toBe(out);
    same(out, ref.out);
    same(lse, ref.lse);
    expect(code(() => cache.decode(0, seqs, q, 0.1, { out: Tensor.zeros([2, H, L - 1]), lse }))).toBe('KVANT_SHAPE');
    expect(code(() => cache.decode(0, seqs, q, 0.1, { out, lse: Tensor.zeros([2, H], 'f16') }))).toBe('KVANT_SHAPE');
    cache.dispose();
  });
});

describe('bound linear calls (the decode step repeats them on its fixed buffers)', () => {
  const K = 96;
  const N = 40;
  const x = Tensor.random([2, K], 'f32', { seed: 21, dist: 'normal' });

  it('write the bits of qlinear and linear, on every repeat and after x changes', () => {
    for (const activations of ['f32', 'int8'] as const) {
      const w = makeQuant({ K, N, bits: 4, groupSize: 32, sym: false, v2: true, seed: 22 }).w;
      const out = Tensor.zeros([2, N], 'f32');
      const call = bindQlinear(x, w, out, activations);
      call();
      same(out, qlinear(x, w, { activations }));
      (x.data() as Float32Array).set(Tensor.random([2, K], 'f32', { seed: 23 }).toFloat32Array());
      call();
      same(out, qlinear(x, w, { activations }));
    }
    const d = Tensor.random([N, K], 'bf16', { seed: 24, std: 0.1, dist: 'normal' });
    const out = Tensor.zeros([2, N], 'f32');
    const call = bindLinear(x, d, out);
    call();
    same(out, linear(x, d));
  });

  it('check their arguments once, with the errors of the unbound calls', () => {
    const w = makeQuant({ K, N, bits: 4, groupSize: 32, sym: false, v2: true, seed: 25 }).w;
    expect(code(() => bindQlinear(Tensor.zeros([2, K + 1], 'f32'), w, Tensor.zeros([2, N], 'f32')))).toBe('KVANT_SHAPE');
    expect(code(() => bindQlinear(x, w, Tensor.zeros([2, N + 1], 'f32')))).toBe('KVANT_SHAPE');
    expect(code(() => bindLinear(x, Tensor.zeros([N, K + 1], 'f32'), Tensor.zeros([2, N], 'f32')))).toBe('KVANT_SHAPE');
    expect(code(() => bindLinear(x.to('f16'), Tensor.zeros([N, K], 'f32'), Tensor.zeros([2, N], 'f32')))).toBe('KVANT_DTYPE');
  });

  it('reject, never read, a weight disposed or detached after binding', () => {
    const own = makeQuant({ K, N, bits: 4, groupSize: 32, sym: false, v2: true, seed: 26 }).w;
    const nq = { ...own, qweight: Tensor.zeros(own.qweight.shape, 'i32', { native: true }) };
    const call = bindQlinear(x, nq, Tensor.zeros([2, N], 'f32'));
    call();
    nq.qweight.dispose();
    expect(code(call)).toBe('KVANT_RANGE');
    const d = Tensor.random([N, K], 'f32', { seed: 27 });
    const dense = bindLinear(x, d, Tensor.zeros([2, N], 'f32'));
    if (d.storage.kind !== 'js') throw new Error('expected a JS-heap tensor');
    const buffer = d.storage.bytes.buffer as ArrayBuffer;
    structuredClone(buffer, { transfer: [buffer] });
    expect(code(dense)).toBe('KVANT_RANGE');
  });
});
