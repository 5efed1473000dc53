/**
 * Attention and KV cache benchmarks: FlashAttention-2 prefill vs the naive materialized
 * attention, standard-cache paged decode and MLA absorbed decode per cache type (caches of
 * several layers cycled so the working set exceeds 4x the LLC), and the cache quantizer.
 * Decode rows carry rel_error: the relative L2 error of the attention output vs an f64
 * computation over the unquantized keys/values (which have outlier channels).
 */
import * as fs from 'node:fs';
import { KV_CACHE_TYPES, KvCacheType } from '../kv/format';
import { kvQuantize } from '../kv/codec';
import { MlaKVCache } from '../kv/mla-cache';
import { PagedKVCache } from '../kv/paged-cache';
import { attendF64 } from '../kv/quality';
import { flashAttention } from '../ops/attention';
import { Tensor } from '../tensor';
import { BenchCase, Machine } from './harness';
import { copiesFor } from './suites';

/** Normal rows with outlier channels (x8 on a few channels per 128), as real keys and latents have. */
function rows(T: number, width: number, seed: number): Tensor {
  const t = Tensor.random([T, width], 'f32', { seed, dist: 'normal' });
  const d = t.data() as Float32Array;
  for (let r = 0; r < T; r++) for (let c = 3; c < width; c += 61) d[r * width + c] *= 8;
  return t;
}

function relErr(got: Float32Array, want: Float64Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < want.length; i++) {
    num += (got[i] - want[i]) ** 2;
    den += want[i] ** 2;
  }
  return Math.sqrt(num / den);
}

/** f64 attention of H query rows over T keys: q [H, Dk], k rows stride ldk, v rows stride ldv. */
function refAttend(q: Float32Array, H: number, Dk: number, k: Float32Array, ldk: number, v: Float32Array, ldv: number, Dv: number, T: number, scale: number): Float64Array {
  const out = new Float64Array(H * Dv);
  attendF64(q, H, Dk, k, ldk, v, ldv, Dv, T, scale, out, 0, Dv);
  return out;
}

function prefillCase(naive: boolean, S: number, H: number, Dqk: number, Dv: number): BenchCase {
  let q: Tensor, k: Tensor, v: Tensor;
  const frac = (S + 1) / (2 * S); // causal with Sq = Sk: S(S+1)/2 of the S^2 pairs
  return {
    name: `${naive ? 'naive_attn' : 'flash_attn'} causal S=${S} H=${H} ${Dqk}/${Dv}`,
    kernel: naive ? 'naive_attn' : 'flash_attn',
    fields: { sq: S, sk: S, heads: H, d_qk: Dqk, d_v: Dv, dtype: 'f32' },
    flops: 2 * S * S * H * (Dqk + Dv) * frac,
    tokens: S,
    setup() {
      q = Tensor.random([1, S, H, Dqk], 'f32', { seed: 1, dist: 'normal' });
      k = Tensor.random([1, S, H, Dqk], 'f32', { seed: 2, dist: 'normal' });
      v = Tensor.random([1, S, H, Dv], 'f32', { seed: 3, dist: 'normal' });
      return () => {
        flashAttention(q, k, v, { causal: true, naive });
      };
    },
  };
}

const CHUNK = 512;

/**
 * The last-level cache one core sees: sysfs's L3 of cpu0 when it is smaller than the
 * harness's figure (getconf reports the whole package's L3 on some VMs, 256 MiB here, while
 * a core's L3 slice is 32 MiB), so working sets are 4x the cache that can serve them.
 */
function coreLlc(machine: Machine): Pick<Machine, 'llc_bytes'> {
  try {
    const m = /^(\d+)K$/.exec(fs.readFileSync('/sys/devices/system/cpu/cpu0/cache/index3/size', 'utf8').trim());
    if (m) return { llc_bytes: Math.min(machine.llc_bytes, Number(m[1]) * 1024) };
  } catch {
    // no sysfs: keep the harness's value
  }
  return machine;
}

function decodeCase(type: KvCacheType, T: number, machine: Machine, quick: boolean): BenchCase {
  const Hkv = 32;
  const D = 128;
  let cache: PagedKVCache | undefined;
  let seq = 0;
  const probe = new PagedKVCache({ layers: 1, kvHeads: Hkv, headDim: D, type });
  const layerBytes = probe.bytesPerToken * T;
  probe.dispose();
  const layers = copiesFor(layerBytes, coreLlc(machine), quick);
  const c: BenchCase = {
    name: `decode_attn ${type} sk=${T} 32x128`,
    kernel: 'decode_attn',
    fields: { sq: 1, sk: T, heads: Hkv, d_qk: D, d_v: D, kv_cache: type },
    bytes: layerBytes,
    ceiling: 'read',
    flops: 4 * Hkv * D * T,
    warmup: layers,
    setup() {
      cache = new PagedKVCache({ layers, kvHeads: Hkv, headDim: D, type, pageSize: 64 });
      seq = cache.open(T);
      const k = rows(CHUNK, Hkv * D, 5).reshape([CHUNK, Hkv, D]);
      const v = rows(CHUNK, Hkv * D, 6).reshape([CHUNK, Hkv, D]);
      for (let l = 0; l < layers; l++) for (let t = 0; t < T; t += CHUNK) cache.append(seq, l, k, v);
      const q = Tensor.random([1, Hkv, D], 'f32', { seed: 7, dist: 'normal' });
      // Error vs f64 on the first chunk (the rows repeat, so the softmax over T is the same
      // distribution; measured on one chunk to keep setup short).
      const small = new PagedKVCache({ layers: 1, kvHeads: Hkv, headDim: D, type });
      const s = small.open(CHUNK);
      small.append(s, 0, k, v);
      const got = small.decode(0, [s], q).out.toFloat32Array();
      const want = new Float64Array(Hkv * D);
      const kd = k.data() as Float32Array;
      const vd = v.data() as Float32Array;
      const qd = q.data() as Float32Array;
      for (let h = 0; h < Hkv; h++)
        want.set(refAttend(qd.subarray(h * D, (h + 1) * D), 1, D, kd.subarray(h * D), Hkv * D, vd.subarray(h * D), Hkv * D, D, CHUNK, D ** -0.5), h * D);
      small.dispose();
      (c.fields as { rel_error?: number }).rel_error = relErr(got, want);
      let l = 0;
      return () => {
        (cache as PagedKVCache).decode(l, [seq], q);
        l = (l + 1) % layers;
      };
    },
    teardown() {
      cache?.dispose();
      cache = undefined;
    },
  };
  return c;
}

function mlaCase(type: KvCacheType, T: number, machine: Machine, quick: boolean): BenchCase {
  const H = 16;
  const L = 512;
  const R = 64;
  let cache: MlaKVCache | undefined;
  let seq = 0;
  const probe = new MlaKVCache({ layers: 1, latentDim: L, ropeDim: R, type });
  const layerBytes = probe.bytesPerToken * T;
  probe.dispose();
  const layers = copiesFor(layerBytes, coreLlc(machine), quick);
  const scale = 0.1147214; // DeepSeek-V2(-Lite) softmax scale with the YaRN correction (SPEC §1.7)
  const c: BenchCase = {
    name: `mla_decode ${type} sk=${T} 16x(512+64)`,
    kernel: 'mla_decode',
    fields: { sq: 1, sk: T, heads: H, d_qk: L + R, d_v: L, kv_cache: type },
    bytes: layerBytes,
    ceiling: 'read',
    flops: 2 * H * (L + R + L) * T,
    warmup: layers,
    setup() {
      cache = new MlaKVCache({ layers, latentDim: L, ropeDim: R, type, pageSize: 64 });
      seq = cache.open(T);
      const r = rows(CHUNK, L + R, 8);
      for (let l = 0; l < layers; l++) for (let t = 0; t < T; t += CHUNK) cache.append(seq, l, r);
      const q = Tensor.random([1, H, L + R], 'f32', { seed: 9, dist: 'normal' });
      const small = new MlaKVCache({ layers: 1, latentDim: L, ropeDim: R, type });
      const s = small.open(CHUNK);
      small.append(s, 0, r);
      const got = small.decode(0, [s], q, scale).out.toFloat32Array();
      const rd = r.data() as Float32Array;
      const want = refAttend(q.data() as Float32Array, H, L + R, rd, L + R, rd, L + R, L, CHUNK, scale);
      small.dispose();
      (c.fields as { rel_error?: number }).rel_error = relErr(got, want);
      let l = 0;
      return () => {
        (cache as MlaKVCache).decode(l, [seq], q, scale);
        l = (l + 1) % layers;
      };
    },
    teardown() {
      cache?.dispose();
      cache = undefined;
    },
  };
  return c;
}

function quantCase(type: KvCacheType, n: number): BenchCase {
  let x: Tensor;
  const out = n * (type === 'q8' ? 34 / 32 : type === 'q6' ? 26 / 32 : type === 'q4' ? 18 / 32 : 2);
  return {
    name: `kv_quant ${type} n=${n}`,
    kernel: 'kv_quant',
    fields: { n, kv_cache: type },
    bytes: 4 * n + out,
    ceiling: 'copy',
    setup() {
      x = rows(n / 576, 576, 11);
      return () => {
        kvQuantize(x, type);
      };
    },
  };
}

export function attentionCases(machine: Machine, quick: boolean): BenchCase[] {
  const S = quick ? 256 : 2048;
  const lens = quick ? [1024] : [4096, 32768];
  return [
    prefillCase(false, S, 16, 128, 128),
    prefillCase(true, S, 16, 128, 128),
    prefillCase(false, S, 16, 192, 128),
    prefillCase(true, S, 16, 192, 128),
    ...lens.flatMap((T) => KV_CACHE_TYPES.map((t) => decodeCase(t, T, machine, quick))),
    ...lens.flatMap((T) => KV_CACHE_TYPES.map((t) => mlaCase(t, T, machine, quick))),
    ...KV_CACHE_TYPES.map((t) => quantCase(t, quick ? 576 * 1024 : 576 * 16384)),
  ];
}
