/**
 * `kvant bench --backend cuda`: the device's ceilings (device-to-device copy bandwidth and the
 * f16 tensor-core rate of csrc/cuda/probe.cuh) and device rows with the CPU rows' names, kernel
 * names and fields (qgemv / qgemm on the V2-Lite shapes, flash_attn prefill, mla_decode, decode_attn), judged
 * against those ceilings. Every timed run ends with a device synchronize, so a row is the time of
 * the kernel(s) completing, not of the launch being queued.
 *
 * On the test-only emulated device (KVANT_CUDA_ADDON naming kvant_cuda_emu.node) the same path
 * runs on tiny shapes; its numbers are host emulation timings and mean nothing
 * ({@link EMULATION_WARNING} is printed above and below the table).
 */
import * as os from 'node:os';
import { cudaInfo } from '../backend';
import { KvantError, callNative } from '../errors';
import { DeviceTensor, deviceProperties, synchronize } from '../cuda/device';
import { DevicePagedKVCache } from '../cuda/kv-cache';
import { DeviceMlaCache } from '../cuda/rows';
import { KV_CACHE_TYPES, type KvCacheType } from '../kv/format';
import { cudaNative } from '../cuda/native';
import { flashAttention, freeQTensor, mlaDecode, qlinear, uploadQTensor, type DeviceQTensor } from '../cuda/ops';
import type { QuantBits } from '../quant/format';
import { Tensor } from '../tensor';
import { V2_LITE_SHAPES, randomQTensor } from './gemm-cases';
import { BenchCase, Machine } from './harness';

/** Device L2 assumed for working sets (no property reports it; 50 MiB on H100): cycled sets are 8x this. */
const DEVICE_CACHE_BYTES = 64 << 20;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Median seconds of `reps` runs of `f`, each closed by a device synchronize (after one warm-up). */
function timeSynced(f: () => void, reps: number): number {
  f();
  synchronize();
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    const t0 = performance.now();
    f();
    synchronize();
    t.push((performance.now() - t0) / 1e3);
  }
  return median(t);
}

/**
 * Throws KVANT_BACKEND with {@link cudaInfo}'s reason when no CUDA device is usable; returns
 * whether the usable device is the test-only emulation.
 */
export function requireCudaDevice(): { emulated: boolean } {
  const info = cudaInfo();
  if (!info.available) throw new KvantError('KVANT_BACKEND', `bench --backend cuda needs a CUDA device: ${info.reason}`);
  return { emulated: info.emulated ?? false };
}

/** Measures the device's ceilings; the result is a {@link Machine} whose `device` is set. */
export async function measureDevice(quick: boolean): Promise<Machine> {
  requireCudaDevice();
  const props = deviceProperties();
  const emu = props.emulated;
  const nat = cudaNative();
  // Copy: two buffers of 1 GiB (at most 1/8 of the device; emulated: 4 MiB), bytes read + written.
  const copyBytes = emu ? 4 << 20 : Math.min(1 << 30, Math.floor(props.totalMemory / 8 / 256) * 256);
  const a = DeviceTensor.zeros([copyBytes], 'u8');
  const b = DeviceTensor.zeros([copyBytes], 'u8');
  let copySec: number;
  try {
    copySec = timeSynced(() => b.copyFrom(a), quick ? 3 : 10);
  } finally {
    a.free();
    b.free();
  }
  // Tensor cores: 8 warps per block, 4 blocks per SM, `iters` rounds of 4 mma_sync per warp.
  const warps = emu ? 2 : 8;
  const blocks = emu ? 2 : 4 * props.multiprocessors;
  const iters = emu ? 4 : quick ? 2048 : 8192;
  const out = DeviceTensor.empty([blocks * warps * 4 * 256], 'f32');
  let tcSec: number;
  try {
    tcSec = timeSynced(() => callNative(() => nat.tensorCorePeak(...out.rawArgs(), blocks, warps, iters, 1, 1 / 64, undefined)), quick ? 3 : 7);
    // The peak kernel's result proves the work was done: iters·16·1·(1/64) in every element.
    const got = out.toArray() as Float32Array;
    const want = iters * 0.25;
    for (let i = 0; i < got.length; i += 997)
      if (got[i] !== want) throw new KvantError('KVANT_BACKEND', `tensor-core probe returned ${got[i]} at ${i}, expected ${want}`);
  } finally {
    out.free();
  }
  const tensorFlops = blocks * warps * 4 * iters * 2 * 16 * 16 * 16;
  const copyGbps = (2 * copyBytes) / copySec / 1e9;
  const tensorGflops = tensorFlops / tcSec / 1e9;
  return {
    read_gbps: copyGbps,
    copy_gbps: copyGbps,
    fma_gflops: tensorGflops,
    fma_gflops_1t: tensorGflops,
    threads: props.multiprocessors,
    isa: `sm_${props.sm}`,
    llc_bytes: DEVICE_CACHE_BYTES,
    cpu: os.cpus()[0]?.model ?? 'unknown',
    probe_bytes: copyBytes,
    load_avg: os.loadavg()[0],
    device: {
      name: props.name,
      sm: props.sm,
      multiprocessors: props.multiprocessors,
      total_memory: props.totalMemory,
      copy_gbps: copyGbps,
      copy_bytes: copyBytes,
      tensor_gflops: tensorGflops,
      emulated: emu,
    },
  };
}

/** A timed body that ends with a device synchronize. */
function synced(f: () => void): () => void {
  return () => {
    f();
    synchronize();
  };
}

function qCase(name: string, K: number, N: number, M: number, bits: QuantBits, group: number, copies: number): BenchCase {
  let ws: DeviceQTensor[] = [];
  let x: DeviceTensor | undefined;
  let y: DeviceTensor | undefined;
  let perCopy = 0;
  const gemv = M <= 8;
  return {
    name: `${gemv ? 'qgemv' : 'qgemm'} ${bits}b g${group} m${M} ${K}x${N} x-f32 (${name})`,
    kernel: gemv ? 'qgemv' : 'qgemm',
    fields: { dtype: 'x-f32', bits, group, m: M, k: K, n: N },
    // Read after teardown (the harness builds the row last): remembered in setup.
    get bytes() {
      return gemv && perCopy > 0 ? perCopy : undefined;
    },
    ceiling: 'read',
    flops: 2 * M * N * K,
    warmup: copies,
    setup() {
      ws = Array.from({ length: copies }, (_, i) => {
        const h = randomQTensor(K, N, bits, group, 10 * i + 1);
        try {
          return uploadQTensor(h);
        } finally {
          h.qweight.dispose();
          h.qzeros.dispose();
          h.scales.dispose();
        }
      });
      perCopy = ws[0].qweight.byteLength + ws[0].qzeros.byteLength + ws[0].scales.byteLength;
      x = DeviceTensor.fromHost(Tensor.random([M, K], 'f32', { seed: 7, dist: 'normal' }));
      y = DeviceTensor.empty([M, N], 'f32');
      let i = 0;
      return synced(() => {
        qlinear(x as DeviceTensor, ws[i], { out: y, kernel: gemv ? 'gemv' : 'gemm' });
        i = (i + 1) % copies;
      });
    },
    teardown() {
      ws.forEach(freeQTensor);
      ws = [];
      x?.free();
      y?.free();
    },
  };
}

function flashCase(S: number, H: number, Dqk: number, Dv: number, dtype: 'f32' | 'f16' | 'bf16'): BenchCase {
  let q: DeviceTensor[] = [];
  const frac = (S + 1) / (2 * S); // causal with Sq = Sk: S(S+1)/2 of the S^2 pairs
  return {
    name: `flash_attn causal S=${S} H=${H} ${Dqk}/${Dv}${dtype === 'f32' ? '' : ` ${dtype}`}`,
    kernel: 'flash_attn',
    fields: { sq: S, sk: S, heads: H, d_qk: Dqk, d_v: Dv, dtype },
    flops: 2 * S * S * H * (Dqk + Dv) * frac,
    tokens: S,
    setup() {
      const up = (shape: number[], seed: number) => {
        const t = Tensor.random(shape, 'f32', { seed, dist: 'normal' });
        return DeviceTensor.fromHost(dtype === 'f32' ? t : t.to(dtype));
      };
      q = [up([1, S, H, Dqk], 1), up([1, S, H, Dqk], 2), up([1, S, H, Dv], 3)];
      return synced(() => {
        const r = flashAttention(q[0], q[1], q[2], { causal: true });
        r.out.free();
        r.lse?.free();
      });
    },
    teardown() {
      q.forEach((t) => t.free());
      q = [];
    },
  };
}

/** Absorbed MLA decode over a paged bf16 latent cache: B sequences of T tokens, H heads, (L + R)-wide rows. */
function mlaCase(B: number, H: number, L: number, R: number, T: number): BenchCase {
  const pageSize = 64;
  const maxPages = Math.ceil(T / pageSize);
  let pool: DeviceTensor | undefined;
  let q: DeviceTensor | undefined;
  let pt: DeviceTensor | undefined;
  let sl: DeviceTensor | undefined;
  return {
    name: `mla_decode flat-bf16 sk=${T} ${H}x(${L}+${R})${B > 1 ? ` b${B}` : ''} (mlaDecode kernel)`,
    kernel: 'mla_decode',
    fields: { sq: 1, sk: T, heads: H, d_qk: L + R, d_v: L, kv_cache: 'bf16', m: B },
    bytes: B * T * (L + R) * 2, // every latent row read once per step
    ceiling: 'read',
    flops: 2 * B * H * T * (L + R + L),
    tokens: B,
    setup() {
      pool = DeviceTensor.fromHost(Tensor.random([B * maxPages, pageSize, L + R], 'f32', { seed: 4, dist: 'normal' }).to('bf16'));
      q = DeviceTensor.fromHost(Tensor.random([B, H, L + R], 'f32', { seed: 5, dist: 'normal' }));
      pt = DeviceTensor.fromHost(Int32Array.from({ length: B * maxPages }, (_, i) => i));
      sl = DeviceTensor.fromHost(new Int32Array(B).fill(T));
      const cache = { pool, pageSize, pageTable: pt, maxPages, seqLens: sl };
      return synced(() => {
        const r = mlaDecode(q as DeviceTensor, cache, { L, R, scale: (L + R) ** -0.5 });
        r.out.free();
        r.lse.free();
      });
    },
    teardown() {
      for (const t of [pool, q, pt, sl]) t?.free();
    },
  };
}

/**
 * The decode loop's MLA attention (DeviceMlaCache.attend: the paged decode over the latent cache
 * in its stored type), the CPU's `mla_decode` row: one query row of H heads over T cached rows,
 * cycling through `layers` layers of the cache.
 */
function mlaCacheCase(type: KvCacheType, T: number, H: number, L: number, R: number, quick: boolean, emulated: boolean): BenchCase {
  const probe = { rowBytes: 0 };
  let cache: DeviceMlaCache | undefined;
  let q: DeviceTensor | undefined;
  let seq = 0;
  let layers = 1;
  const scale = 0.1147214; // DeepSeek-V2(-Lite) softmax scale with the YaRN correction (SPEC §1.7), as the CPU row
  const c: BenchCase = {
    name: `mla_decode ${type} sk=${T} ${H}x(${L}+${R})`,
    kernel: 'mla_decode',
    fields: { sq: 1, sk: T, heads: H, d_qk: L + R, d_v: L, kv_cache: type },
    get bytes() {
      return probe.rowBytes * T;
    },
    ceiling: 'read',
    flops: 2 * H * (L + R + L) * T,
    get warmup() {
      return layers;
    },
    setup() {
      const one = new DeviceMlaCache({ layers: 1, latentDim: L, ropeDim: R, type, budgetBytes: 1 << 20 });
      probe.rowBytes = one.rowBytes;
      one.dispose();
      layers = deviceCopies(probe.rowBytes * T, quick, emulated);
      const pages = Math.ceil(T / 64);
      cache = new DeviceMlaCache({ layers, latentDim: L, ropeDim: R, type, pageSize: 64, budgetBytes: (pages + 1) * 64 * probe.rowBytes * layers });
      seq = cache.open(T);
      const chunk = Math.min(T, 256);
      const rows = DeviceTensor.fromHost(Tensor.random([chunk, L + R], 'f32', { seed: 8, dist: 'normal' }));
      try {
        for (let l = 0; l < layers; l++) for (let t = 0; t < T; t += chunk) cache.append(seq, l, t + chunk <= T ? rows : rows.slice(0, T - t));
      } finally {
        rows.free();
      }
      q = DeviceTensor.fromHost(Tensor.random([1, H, L + R], 'f32', { seed: 9, dist: 'normal' }));
      const lens = Int32Array.of(T);
      let l = 0;
      return synced(() => {
        (cache as DeviceMlaCache).attend(l, [seq], lens, q as DeviceTensor, scale).free();
        l = (l + 1) % layers;
      });
    },
    teardown() {
      cache?.dispose();
      q?.free();
      cache = undefined;
    },
  };
  return c;
}

/**
 * The CPU's `decode_attn` row on the device: standard (non-MLA) paged decode attention,
 * DevicePagedKVCache.decode, one query row of H heads (one per kv head, as the CPU row) over T
 * cached rows of K and V in the stored type; bytes = the K and V rows read. Layers are cycled
 * like the other bandwidth rows so a run does not hit the rows the previous one left in L2.
 */
function decodeAttnCase(type: KvCacheType, T: number, H: number, D: number, quick: boolean, emulated: boolean): BenchCase {
  const probe = { rowBytes: 0 };
  let cache: DevicePagedKVCache | undefined;
  let q: DeviceTensor | undefined;
  let seq = 0;
  let layers = 1;
  const c: BenchCase = {
    name: `decode_attn ${type} sk=${T} ${H}x${D}`,
    kernel: 'decode_attn',
    fields: { sq: 1, sk: T, heads: H, d_qk: D, d_v: D, kv_cache: type },
    get bytes() {
      return probe.rowBytes * T;
    },
    ceiling: 'read',
    flops: 4 * H * D * T,
    get warmup() {
      return layers;
    },
    setup() {
      const one = new DevicePagedKVCache({ layers: 1, kvHeads: H, headDim: D, type, budgetBytes: 64 << 20 });
      probe.rowBytes = one.rowBytes;
      one.dispose();
      layers = deviceCopies(probe.rowBytes * T, quick, emulated);
      const pages = Math.ceil(T / 64);
      cache = new DevicePagedKVCache({ layers, kvHeads: H, headDim: D, type, pageSize: 64, budgetBytes: (pages + 1) * 64 * probe.rowBytes * layers });
      seq = cache.open(T);
      const chunk = Math.min(T, 256);
      const k = DeviceTensor.fromHost(Tensor.random([chunk, H, D], 'f32', { seed: 5, dist: 'normal' }));
      const v = DeviceTensor.fromHost(Tensor.random([chunk, H, D], 'f32', { seed: 6, dist: 'normal' }));
      try {
        for (let l = 0; l < layers; l++)
          for (let t = 0; t < T; t += chunk) (cache as DevicePagedKVCache).append(seq, l, t + chunk <= T ? k : k.slice(0, T - t), t + chunk <= T ? v : v.slice(0, T - t));
      } finally {
        k.free();
        v.free();
      }
      q = DeviceTensor.fromHost(Tensor.random([1, H, D], 'f32', { seed: 7, dist: 'normal' }));
      let l = 0;
      return synced(() => {
        const r = (cache as DevicePagedKVCache).decode(l, [seq], q as DeviceTensor);
        r.out.free();
        r.lse.free();
        l = (l + 1) % layers;
      });
    },
    teardown() {
      cache?.dispose();
      q?.free();
      cache = undefined;
    },
  };
  return c;
}

/**
 * The CPU's `kv_quant` row on the device: quantizing n values (rows of L + R) into the cache's
 * pages (DeviceMlaCache.append, the decode loop's cache write). Bytes: f32 in + the stored rows.
 */
function kvQuantCase(type: KvCacheType, n: number, L: number, R: number): BenchCase {
  const T = Math.floor(n / (L + R));
  let cache: DeviceMlaCache | undefined;
  let rows: DeviceTensor | undefined;
  let rowBytes = 0;
  return {
    name: `kv_quant ${type} n=${T * (L + R)}`,
    kernel: 'kv_quant',
    fields: { n: T * (L + R), kv_cache: type },
    get bytes() {
      return 4 * T * (L + R) + T * rowBytes;
    },
    ceiling: 'copy',
    setup() {
      cache = new DeviceMlaCache({ layers: 1, latentDim: L, ropeDim: R, type, pageSize: 64, budgetBytes: 2 * T * (2 * L + 2 * R + 64) + (1 << 20) });
      rowBytes = cache.rowBytes;
      rows = DeviceTensor.fromHost(Tensor.random([T, L + R], 'f32', { seed: 11, dist: 'normal' }));
      const seq = cache.open(T);
      return synced(() => {
        const cc = cache as DeviceMlaCache;
        cc.truncate(seq, 0);
        cc.append(seq, 0, rows as DeviceTensor);
      });
    },
    teardown() {
      cache?.dispose();
      rows?.free();
      cache = undefined;
    },
  };
}

/** Distinct weight copies a bandwidth-bound device row cycles through (8x the assumed L2; quick or emulated: 1..2). */
function deviceCopies(bytes: number, quick: boolean, emulated: boolean): number {
  if (emulated) return 1;
  if (quick) return 2;
  return Math.max(2, Math.ceil((8 * DEVICE_CACHE_BYTES) / bytes));
}

/** The device rows. `machine` must come from {@link measureDevice}. */
export function cudaCases(machine: Machine, quick: boolean): BenchCase[] {
  const emulated = machine.device?.emulated ?? false;
  const cases: BenchCase[] = [];
  const qBytes = (K: number, N: number, bits: number) => (K * N * bits) / 8 + (K / 128) * N * 2.5;
  if (emulated) {
    // Tiny shapes: the emulation runs every device thread as a host fiber; CI only proves the path.
    cases.push(qCase('tiny', 256, 96, 1, 4, 128, 1));
    cases.push(qCase('tiny', 256, 96, 1, 2, 128, 1));
    cases.push(qCase('tiny', 128, 64, 16, 4, 128, 1));
    cases.push(flashCase(40, 2, 64, 64, 'f32'));
    cases.push(mlaCase(1, 2, 64, 32, 70));
    for (const t of ['bf16', 'q4'] as const) cases.push(mlaCacheCase(t, 70, 2, 64, 32, quick, true));
    for (const t of ['bf16', 'q4'] as const) cases.push(kvQuantCase(t, 96 * 9, 64, 32));
    for (const t of ['f16', 'q8'] as const) cases.push(decodeAttnCase(t, 70, 2, 64, quick, true));
    return cases;
  }
  const shapes = quick ? V2_LITE_SHAPES.filter(([n]) => n === 'q_proj' || n === 'expert gate/up') : V2_LITE_SHAPES;
  for (const [name, K, N] of shapes) cases.push(qCase(name, K, N, 1, 4, 128, deviceCopies(qBytes(K, N, 4), quick, false)));
  for (const [name, K, N] of shapes.filter(([n]) => n === 'q_proj' || n === 'dense down')) {
    for (const bits of [2, 3, 8] as const) cases.push(qCase(name, K, N, 1, bits, 128, deviceCopies(qBytes(K, N, bits), quick, false)));
    cases.push(qCase(name, K, N, 4, 4, 128, deviceCopies(qBytes(K, N, 4), quick, false)));
  }
  const M = quick ? 64 : 512;
  cases.push(qCase('dense up', 2048, 10944, M, 4, 128, 1));
  cases.push(qCase('q_proj', 2048, 3072, M, 4, 128, 1));
  const S = quick ? 256 : 2048;
  cases.push(flashCase(S, 16, 192, 128, 'f16'));
  cases.push(flashCase(S, 16, 192, 128, 'bf16'));
  cases.push(flashCase(S, 16, 128, 128, 'f16'));
  for (const T of quick ? [1024] : [1024, 8192]) cases.push(mlaCase(1, 16, 512, 64, T));
  if (!quick) cases.push(mlaCase(8, 16, 512, 64, 4096));
  for (const T of quick ? [1024] : [4096, 32768]) for (const t of KV_CACHE_TYPES) cases.push(mlaCacheCase(t, T, 16, 512, 64, quick, false));
  for (const T of quick ? [4096] : [4096, 32768]) for (const t of KV_CACHE_TYPES) cases.push(decodeAttnCase(t, T, 32, 128, quick, false));
  for (const t of KV_CACHE_TYPES) cases.push(kvQuantCase(t, quick ? 576 * 1024 : 576 * 16384, 512, 64));
  return cases;
}
