import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { KvantError, Tensor, backendInfo } from '../lib';
import { Checkpoint } from '../lib/io/checkpoint';
import { writeSafetensors } from '../lib/io/safetensors';
import { QTensor, QuantBits, QuantFormat, encodeQuantFormat } from '../lib/quant/format';
import { configFor, dynamicRuleFor, isQuantized, loadQTensor, parseQuantizeConfig, readQuantizeConfig } from '../lib/quant/checkpoint';
import { dequantize, makeSequential, nativeQuantFormat, quantizeRtn, restoreOrder } from '../lib/quant/quantize';
import { packAxis, rtnRef, unpackAxis } from './helpers/quant-ref';
import { errorCode as code, isaLevels } from './helpers/checks';

const levels = isaLevels();


function message(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as Error).message;
  }
  return '';
}

/** Weights with a spread of magnitudes per row (some groups all positive) and exact zeros. */
function weights(N: number, K: number, seed: number): Tensor {
  const w = Tensor.random([N, K], 'f32', { seed, dist: 'normal', std: 0.05 });
  const d = w.data() as Float32Array;
  for (let n = 0; n < N; n++) {
    const s = 1 + (n % 7);
    for (let k = 0; k < K; k++) d[n * K + k] *= s;
    if (n % 5 === 1) for (let k = 0; k < Math.min(K, 40); k++) d[n * K + k] = Math.abs(d[n * K + k]);
    if (n % 9 === 2) for (let k = 0; k < Math.min(K, 32); k++) d[n * K + k] = 0;
  }
  return w;
}

// Awkward shapes: K not a multiple of the group (partial last group), N not a multiple of 8
// where the width allows it (8 bits: N % 4; 2 bits needs N % 16, 3 bits N % 32).
const SHAPES: Record<QuantBits, Array<[number, number]>> = {
  2: [[48, 176], [16, 96]],
  3: [[64, 160], [32, 96]],
  4: [[40, 168], [24, 72]],
  8: [[36, 164], [12, 100]],
};

describe('format contract', () => {
  it('the native QuantFormat struct and encodeQuantFormat agree byte for byte', () => {
    for (const f of [
      { bits: 4, groupSize: 128, sym: true, checkpointFormat: 'gptq', K: 10944, N: 2048 },
      { bits: 3, groupSize: -1, sym: false, checkpointFormat: 'gptq_v2', K: 2 ** 40 + 96, N: 3 * 2 ** 33 },
      { bits: 2, groupSize: 64, sym: false, checkpointFormat: 'gptq', K: 64, N: 16 },
    ] as QuantFormat[]) {
      const { layout, bytes } = nativeQuantFormat(f);
      expect(layout).toEqual({ size: 32, offsets: { bits: 0, groupSize: 4, sym: 8, zeroFormat: 12, K: 16, N: 24 } });
      expect(Buffer.from(bytes).equals(Buffer.from(encodeQuantFormat(f)))).toBe(true);
    }
  });

  it('reference packing matches the SPEC 3-bit cross-word layout (v10 split 2+1 bits, v21 split 1+2 bits)', () => {
    const v = Array.from({ length: 32 }, (_, j) => (j * 5 + 3) & 7);
    const w = packAxis(v, 3);
    expect(w[0] & 0x3fffffff).toBe(v.slice(0, 10).reduce((a, x, j) => a + x * 2 ** (3 * j), 0));
    expect(((w[0] >>> 30) | ((w[1] & 1) << 2)) >>> 0).toBe(v[10]);
    expect(((w[1] >>> 31) | ((w[2] & 3) << 1)) >>> 0).toBe(v[21]);
    for (let j = 11; j <= 20; j++) expect((w[1] >>> (3 * (j - 11) + 1)) & 7).toBe(v[j]);
    for (let j = 22; j <= 31; j++) expect((w[2] >>> (3 * (j - 22) + 2)) & 7).toBe(v[j]);
    expect(unpackAxis(w, 3, 32)).toEqual(v);
  });
});

describe('round-to-nearest', () => {
  for (const bits of [2, 3, 4, 8] as QuantBits[])
    for (const G of [32, 64, 128, -1])
      for (const sym of [true, false])
        it(`${bits}-bit group ${G} ${sym ? 'sym' : 'asym'}: packed tensors equal the reference bit for bit, v1 and v2`, () => {
          const [N, K] = SHAPES[bits][G === 32 ? 1 : 0];
          const w = weights(N, K, bits * 100 + (G & 0xff) + (sym ? 1 : 0));
          for (const v2 of [false, true]) {
            const q = quantizeRtn(w, { bits, groupSize: G, sym, checkpointFormat: v2 ? 'gptq_v2' : 'gptq' });
            const ref = rtnRef(w.data() as Float32Array, N, K, bits, G, sym, v2);
            expect(Buffer.from(q.qweight.byteView()).equals(Buffer.from(ref.qweight.buffer))).toBe(true);
            expect(Buffer.from(q.qzeros.byteView()).equals(Buffer.from(ref.qzeros.buffer))).toBe(true);
            expect(Buffer.from(q.scales.byteView()).equals(Buffer.from(ref.scales.buffer))).toBe(true);
            if (bits === 4 && sym) expect(new Set(q.qzeros.data() as Int32Array)).toEqual(new Set([v2 ? 0x88888888 | 0 : 0x77777777]));
            // (code - zero) * scale is a product of an integer below 2^8 and an f16 value: exact
            // in f32, so dequantization must equal the f64 reference exactly, at every ISA level.
            for (const isa of levels) {
              const out = Tensor.zeros([N, K], 'f32');
              (out.data() as Float32Array).fill(NaN);
              dequantize(q, 'f32', { isa, out });
              const d = out.data() as Float32Array;
              let mism = 0;
              for (let i = 0; i < N * K; i++) if (d[i] !== ref.deq[i]) mism++;
              expect(mism).toBe(0);
            }
          }
        });

  it('every in-range weight lands within half a step of its grid; clamped ones at the grid edge', () => {
    const [N, K] = [40, 168];
    const w = weights(N, K, 7);
    const q = quantizeRtn(w, { bits: 4, groupSize: 64, sym: false });
    const deq = dequantize(q).data() as Float32Array;
    const scales = q.scales.toFloat32Array();
    const wd = w.data() as Float32Array;
    for (let n = 0; n < N; n++)
      for (let k = 0; k < K; k++) {
        const s = scales[Math.floor(k / 64) * N + n];
        // asym grid covers [min, max] of the group up to one step of zero-point rounding
        expect(Math.abs(deq[n * K + k] - wd[n * K + k])).toBeLessThanOrEqual(s * 1.0000001 + 1e-12);
      }
  });

  it('f16 and bf16 dequantization are the f32 values rounded, identical at every ISA level', () => {
    const w = weights(40, 168, 3);
    const q4 = quantizeRtn(w, { bits: 4, groupSize: 32, sym: false });
    const f32 = dequantize(q4, 'f32');
    for (const dt of ['f16', 'bf16'] as const) {
      const want = f32.to(dt).data() as Uint16Array;
      for (const isa of levels) {
        const out = Tensor.zeros([40, 168], dt);
        (out.data() as Uint16Array).fill(0x7fff);
        dequantize(q4, dt, { isa, out });
        expect(Buffer.from(out.byteView()).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength))).toBe(true);
      }
    }
  });

  it('accepts f16 and bf16 weights (quantizes their f32 values)', () => {
    const w = weights(24, 96, 11).to('bf16');
    const a = quantizeRtn(w, { bits: 4, groupSize: 32 });
    const b = quantizeRtn(w.to('f32'), { bits: 4, groupSize: 32 });
    expect(Buffer.from(a.qweight.byteView()).equals(Buffer.from(b.qweight.byteView()))).toBe(true);
  });

  it('bad input: NaN/Inf (index named), unpackable K or N, bits, group size, dtype, shape', () => {
    const w = weights(24, 96, 5);
    (w.data() as Float32Array)[3 * 96 + 17] = NaN;
    expect(code(() => quantizeRtn(w, { bits: 4, groupSize: 32, name: 'layer.q_proj' }))).toBe('KVANT_RANGE');
    expect(message(() => quantizeRtn(w, { bits: 4, groupSize: 32, name: 'layer.q_proj' }))).toMatch(/layer\.q_proj.*w\[3, 17\]/);
    (w.data() as Float32Array)[3 * 96 + 17] = Infinity;
    expect(code(() => quantizeRtn(w, { bits: 4, groupSize: 32 }))).toBe('KVANT_RANGE');
    expect(code(() => quantizeRtn(Tensor.zeros([24, 100]), { bits: 3, groupSize: 32 }))).toBe('KVANT_SHAPE'); // 3-bit K % 32
    expect(code(() => quantizeRtn(Tensor.zeros([24, 98]), { bits: 4, groupSize: 32 }))).toBe('KVANT_SHAPE'); // K*4 % 32
    expect(code(() => quantizeRtn(Tensor.zeros([20, 96]), { bits: 4, groupSize: 32 }))).toBe('KVANT_SHAPE'); // N*4 % 32
    expect(code(() => quantizeRtn(Tensor.zeros([24, 96]), { bits: 5 as QuantBits, groupSize: 32 }))).toBe('KVANT_FORMAT');
    expect(code(() => quantizeRtn(Tensor.zeros([24, 96]), { bits: 4, groupSize: 0 }))).toBe('KVANT_FORMAT');
    expect(code(() => quantizeRtn(Tensor.zeros([24, 96], 'i32'), { bits: 4, groupSize: 32 }))).toBe('KVANT_DTYPE');
    expect(code(() => quantizeRtn(Tensor.zeros([24, 96, 1]), { bits: 4, groupSize: 32 }))).toBe('KVANT_SHAPE');
    expect(code(() => quantizeRtn(Tensor.from(new Float32Array(1e5)).reshape([1e3, 100]).slice(0, 8), { bits: 4, groupSize: -2 }))).toBe('KVANT_FORMAT');
    // 1e6 * 15 range per step overflows f16's 65504
    expect(code(() => quantizeRtn(Tensor.from(new Float32Array(8 * 8).fill(2e6)).reshape([8, 8]), { bits: 4, groupSize: 8 }))).toBe('KVANT_RANGE');
  });
});

/** An act-order QTensor: random permutation, g_idx[perm[j]] = j / G (as GPTQ writes it). */
function actOrder(N: number, K: number, bits: QuantBits, G: number, seed: number): { q: QTensor; dense: Float32Array } {
  const w = weights(N, K, seed);
  const base = quantizeRtn(w, { bits, groupSize: G, sym: false });
  // Shuffle the input channels of the quantized matrix: permuted qweight rows, g_idx follows.
  const perm = Array.from({ length: K }, (_, i) => i);
  let s = seed;
  for (let i = K - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) & 0x7fffffff;
    const j = s % (i + 1);
    [perm[i], perm[j]] = [perm[j], perm[i]];
  }
  const seq = { ...base, perm: Int32Array.from(perm) };
  const q = restoreOrder(seq); // act-order layout: channel perm[j] belongs to group j / G
  return { q, dense: dequantize(seq).data() as Float32Array };
}

describe('act-order repack', () => {
  for (const bits of [2, 3, 4, 8] as QuantBits[])
    it(`${bits}-bit: makeSequential is lossless, sequential groups + perm, and restoreOrder inverts it bit for bit`, () => {
      const [N, K] = SHAPES[bits][0];
      const { q, dense } = actOrder(N, K, bits, 64, bits + 17);
      const g = q.gIdx!.data() as Int32Array;
      expect([...g].some((v, k) => v !== Math.floor(k / 64))).toBe(true); // really non-monotonic
      const s = makeSequential(q);
      expect(s.perm).not.toBeNull();
      expect([...(s.gIdx!.data() as Int32Array)]).toEqual(Array.from({ length: K }, (_, k) => Math.floor(k / 64)));
      for (let j = 0; j < K; j++) expect(g[s.perm![j]]).toBe(Math.floor(j / 64));
      for (const isa of levels) {
        expect(Buffer.from(dequantize(q, 'f32', { isa }).byteView()).equals(Buffer.from(dense.buffer, dense.byteOffset, dense.byteLength))).toBe(true);
        expect(Buffer.from(dequantize(s, 'f32', { isa }).byteView()).equals(Buffer.from(dense.buffer, dense.byteOffset, dense.byteLength))).toBe(true);
      }
      const back = restoreOrder(s);
      expect(Buffer.from(back.qweight.byteView()).equals(Buffer.from(q.qweight.byteView()))).toBe(true);
      expect(Buffer.from(back.gIdx!.byteView()).equals(Buffer.from(q.gIdx!.byteView()))).toBe(true);
    });

  it('bad input: g_idx out of range, groups of the wrong size, shapes that disagree, perm not a permutation', () => {
    const { q } = actOrder(24, 128, 4, 32, 3);
    const gi = Tensor.from(new Int32Array(q.gIdx!.data() as Int32Array));
    (gi.data() as Int32Array)[5] = 4;
    expect(code(() => makeSequential({ ...q, gIdx: gi }))).toBe('KVANT_RANGE');
    expect(code(() => dequantize({ ...q, gIdx: gi }))).toBe('KVANT_RANGE');
    (gi.data() as Int32Array)[5] = -1;
    expect(code(() => dequantize({ ...q, gIdx: gi }))).toBe('KVANT_RANGE');
    const lop = Tensor.from(new Int32Array(128).fill(0));
    expect(code(() => makeSequential({ ...q, gIdx: lop }))).toBe('KVANT_FORMAT');
    expect(code(() => dequantize({ ...q, scales: Tensor.zeros([3, 24], 'f16') }))).toBe('KVANT_SHAPE');
    expect(code(() => dequantize({ ...q, qzeros: Tensor.zeros([4, 4], 'i32') }))).toBe('KVANT_SHAPE');
    expect(code(() => dequantize({ ...q, qweight: Tensor.zeros([15, 24], 'i32') }))).toBe('KVANT_SHAPE');
    expect(code(() => dequantize({ ...q, gIdx: Tensor.zeros([127], 'i32') }))).toBe('KVANT_SHAPE');
    expect(code(() => dequantize({ ...q, scales: Tensor.zeros([4, 24], 'f32') }))).toBe('KVANT_DTYPE');
    const s = makeSequential(q);
    const p = Int32Array.from(s.perm!);
    p[3] = p[4];
    expect(code(() => dequantize({ ...s, perm: p }))).toBe('KVANT_RANGE');
    expect(code(() => restoreOrder({ ...s, perm: p }))).toBe('KVANT_RANGE');
    expect(code(() => dequantize(s, 'i32' as never))).toBe('KVANT_DTYPE');
  });
});

describe('quantize config', () => {
  it('dynamic rules: first match wins, matched from the start like re.match, "-:" keeps float, overrides merge', () => {
    const qc = parseQuantizeConfig({ bits: 4, group_size: 128, desc_act: false, dynamic: { '-:.*kv_b_proj': {}, '+:model\\.layers\\.0\\.': { bits: 8, group_size: 64 }, 'mlp': { bits: 2 } } });
    expect(dynamicRuleFor(qc.dynamic, 'model.layers.0.self_attn.kv_b_proj')).toBe('skip');
    expect(configFor(qc, 'model.layers.0.mlp.down_proj')).toMatchObject({ bits: 8, groupSize: 64, descAct: false });
    expect(configFor(qc, 'model.layers.1.mlp.down_proj').bits).toBe(4); // 'mlp' is not at the start
    expect(configFor(qc, 'mlp.x').bits).toBe(2);
    expect(configFor(qc, 'model.layers.1.self_attn.o_proj').bits).toBe(4);
    expect(code(() => configFor(parseQuantizeConfig({ bits: 4, dynamic: { 'x': { bits: 7 } } }), 'x'))).toBe('KVANT_FORMAT');
    expect(code(() => parseQuantizeConfig({ bits: 4, dynamic: { '+:(': {} } }))).toBe('KVANT_FORMAT');
  });
});

describe('checkpoint reading', () => {
  function folder(qc: object | null, tensors: Array<[string, Tensor]>, inConfig = false): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-quant-'));
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify(inConfig ? { model_type: 'x', quantization_config: qc } : { model_type: 'x' }));
    if (qc && !inConfig) fs.writeFileSync(path.join(dir, 'quantize_config.json'), JSON.stringify(qc));
    writeSafetensors(path.join(dir, 'model.safetensors'), tensors);
    return dir;
  }
  const tensorsOf = (p: string, q: QTensor): Array<[string, Tensor]> => [
    [`${p}.qweight`, q.qweight],
    [`${p}.qzeros`, q.qzeros],
    [`${p}.scales`, q.scales],
    [`${p}.g_idx`, q.gIdx!],
  ];

  it('reads v1 and v2 folders back (views of the mapping), act-order made sequential on load', () => {
    const { q, dense } = actOrder(40, 168, 4, 64, 9);
    for (const [fmt, inConfig] of [['gptq', false], ['gptq_v2', true]] as const) {
      const qq = fmt === 'gptq' ? q : (() => {
        // v2 = v1 + 1 per nibble (valid: no stored nibble is 0xF after re-deriving from v1 below)
        const w = weights(40, 168, 9);
        const r = quantizeRtn(w, { bits: 4, groupSize: 64, sym: true, checkpointFormat: 'gptq_v2' });
        return r;
      })();
      const dir = folder({ bits: 4, group_size: 64, desc_act: true, sym: fmt === 'gptq_v2', damp_percent: 0.01, checkpoint_format: fmt, quant_method: 'gptq' },
        [...tensorsOf('model.layers.0.mlp.down_proj', qq), ['model.norm.weight', Tensor.zeros([40], 'bf16')]], inConfig);
      const ck = Checkpoint.open(dir);
      const qc = readQuantizeConfig(ck)!;
      expect(qc.checkpointFormat).toBe(fmt);
      expect(isQuantized(ck, 'model.layers.0.mlp.down_proj')).toBe(true);
      expect(isQuantized(ck, 'model.norm')).toBe(false);
      const t = loadQTensor(ck, 'model.layers.0.mlp.down_proj', qc);
      const want = fmt === 'gptq' ? dense : (dequantize(qq).data() as Float32Array);
      expect(Buffer.from(dequantize(t).byteView()).equals(Buffer.from(want.buffer, want.byteOffset, want.byteLength))).toBe(true);
      if (fmt === 'gptq') {
        expect(t.perm).not.toBeNull();
        const raw = loadQTensor(ck, 'model.layers.0.mlp.down_proj', qc, { sequential: false });
        expect(raw.qweight.storage.kind).toBe('native'); // a view of the mapped shard
        expect(raw.perm).toBeNull();
      }
      ck.close();
      fs.rmSync(dir, { recursive: true });
    }
  });

  it('marlin, awq and malformed configs are KVANT_FORMAT; float checkpoints give null', () => {
    const q = quantizeRtn(weights(24, 96, 1), { bits: 4, groupSize: 32 });
    const cases: Array<[object, string]> = [
      [{ bits: 4, group_size: 128, checkpoint_format: 'marlin' }, 'KVANT_FORMAT'],
      [{ bits: 4, group_size: 128, is_marlin_format: true }, 'KVANT_FORMAT'],
      [{ bits: 4, group_size: 128, quant_method: 'awq' }, 'KVANT_FORMAT'],
      [{ bits: 5, group_size: 128 }, 'KVANT_FORMAT'],
      [{ bits: 4, group_size: 0 }, 'KVANT_FORMAT'],
      [{ bits: 4, group_size: 128, damp_percent: 2 }, 'KVANT_FORMAT'],
    ];
    for (const [qc, c] of cases) {
      const dir = folder(qc, tensorsOf('l', q));
      const ck = Checkpoint.open(dir);
      expect(code(() => readQuantizeConfig(ck))).toBe(c);
      ck.close();
      fs.rmSync(dir, { recursive: true });
    }
    const dir = folder(null, [['w', Tensor.zeros([4], 'bf16')]]);
    const ck = Checkpoint.open(dir);
    expect(readQuantizeConfig(ck)).toBeNull();
    ck.close();
    fs.rmSync(dir, { recursive: true });
    // quant_config.json with AWQ-style synonyms is read too
    const d2 = folder(null, tensorsOf('l', q));
    fs.writeFileSync(path.join(d2, 'quant_config.json'), JSON.stringify({ w_bit: 4, q_group_size: 32, quant_method: 'gptq' }));
    const ck2 = Checkpoint.open(d2);
    expect(readQuantizeConfig(ck2)).toMatchObject({ bits: 4, groupSize: 32, sym: true });
    ck2.close();
    fs.rmSync(d2, { recursive: true });
  });

  it('bad tensors: shapes that disagree with the config, g_idx out of range, wrong dtype, truncated file', () => {
    const q = quantizeRtn(weights(24, 96, 1), { bits: 4, groupSize: 32 });
    const qc = { bits: 4, group_size: 32, desc_act: false, sym: true };
    const variants: Array<[Array<[string, Tensor]>, string]> = [
      [[...tensorsOf('l', q).filter(([n]) => !n.endsWith('scales')), ['l.scales', Tensor.zeros([2, 24], 'f16')]], 'KVANT_SHAPE'],
      [[...tensorsOf('l', q).filter(([n]) => !n.endsWith('qzeros')), ['l.qzeros', Tensor.zeros([3, 2], 'i32')]], 'KVANT_SHAPE'],
      [[...tensorsOf('l', q).filter(([n]) => !n.endsWith('g_idx')), ['l.g_idx', Tensor.from(new Int32Array(96).fill(3))]], 'KVANT_RANGE'],
      [[...tensorsOf('l', q).filter(([n]) => !n.endsWith('g_idx')), ['l.g_idx', Tensor.zeros([95], 'i32')]], 'KVANT_SHAPE'],
      [[...tensorsOf('l', q).filter(([n]) => !n.endsWith('scales')), ['l.scales', Tensor.zeros([3, 24], 'f32')]], 'KVANT_DTYPE'],
      [tensorsOf('l', q).filter(([n]) => !n.endsWith('qzeros')), 'KVANT_FORMAT'],
    ];
    for (const [ts, c] of variants) {
      const dir = folder(qc, ts);
      const ck = Checkpoint.open(dir);
      expect(code(() => loadQTensor(ck, 'l', readQuantizeConfig(ck)!))).toBe(c);
      ck.close();
      fs.rmSync(dir, { recursive: true });
    }
    const dir = folder(qc, tensorsOf('l', q));
    const f = path.join(dir, 'model.safetensors');
    fs.truncateSync(f, fs.statSync(f).size - 10);
    expect(code(() => Checkpoint.open(dir))).toBe('KVANT_FORMAT');
    fs.rmSync(dir, { recursive: true });
  });
});
