/**
 * The raw surface of the CUDA addon (kvant_cuda.node, or the test-only kvant_cuda_emu.node)
 * and its in-process loading. The addon is loaded here only after {@link cudaInfo} test-loaded
 * it in a child process and a device answered, so a broken CUDA install cannot crash the host.
 *
 * Tensors cross as (DeviceBufferHandle, byteOffset, byteLength) triples; `stream` is a
 * StreamHandle or undefined (the default stream). Every function throws a coded Error.
 */
import { cudaInfo } from '../backend';
import { KvantError } from '../errors';

/** Device memory from the addon's budgeted allocator. */
export interface DeviceBufferHandle {
  readonly byteLength: number;
  readonly freed: boolean;
  /** Frees now; false when it was already freed. */
  free(): boolean;
}

/** An in-order device work queue. */
export interface StreamHandle {
  readonly destroyed: boolean;
  synchronize(): void;
  destroy(): boolean;
}

/** What the device reports about itself. */
export interface DeviceProperties {
  name: string;
  /** Compute capability as major * 10 + minor (80 = sm_80). */
  sm: number;
  multiprocessors: number;
  totalMemory: number;
  maxThreadsPerBlock: number;
  /** Dynamic shared memory per block without the opt-in, bytes. */
  smemPerBlock: number;
  /** Dynamic shared memory per block with the opt-in, bytes. */
  smemPerBlockOptIn: number;
  /** True for the test-only host emulation. */
  emulated: boolean;
}

/** The allocator's accounting. */
export interface DeviceMemoryStats {
  /** Bytes the allocator may hand out (default: the device's memory). */
  budget: number;
  /** Bytes in live allocations (as requested). */
  allocated: number;
  /** Highest `allocated` since the addon loaded. */
  peak: number;
  /** Live allocations. */
  allocations: number;
  deviceTotal: number;
}

type Dev = DeviceBufferHandle;
type S = StreamHandle | undefined;
type Q = [Uint8Array, Dev, number, number, Dev, number, number, Dev, number, number, Dev | null, number, number];

/** The raw binding (csrc/cuda/cuda_binding.cc). */
export interface CudaNative {
  readonly emulated: boolean;
  DeviceBuffer: new (byteLength: number) => DeviceBufferHandle;
  Stream: new () => StreamHandle;
  deviceQuery(): { count: number; emulated: boolean; error?: string; name?: string; sm?: number; totalMemory?: number };
  properties(): DeviceProperties;
  memoryStats(): DeviceMemoryStats;
  setMemoryBudget(bytes: number): void;
  synchronize(): void;
  upload(dst: Dev, off: number, bytes: number, src: ArrayBufferView, stream: S): void;
  download(src: Dev, off: number, bytes: number, dst: ArrayBufferView, stream: S): void;
  copyDevice(dst: Dev, doff: number, dbytes: number, src: Dev, soff: number, sbytes: number, stream: S): void;
  memset(dst: Dev, off: number, bytes: number, value: number, stream: S): void;
  roundTripCopy(src: Uint8Array, dst: Uint8Array): void;
  rmsNorm(x: Dev, xo: number, xb: number, w: Dev, wo: number, wb: number, wDtype: number, y: Dev, yo: number, yb: number, rows: number, n: number, eps: number, stream: S): void;
  rope(x: Dev, xo: number, xb: number, rows: number, heads: number, stride: number, offset: number, pairs: number, pos: Dev, po: number, pb: number,
    inv: Dev, io: number, ib: number, amp: number, stream: S): void;
  siluGate(g: Dev, go: number, gb: number, u: Dev, uo: number, ub: number, inStride: number, y: Dev, yo: number, yb: number, rows: number, n: number, stream: S): void;
  softmax(x: Dev, xo: number, xb: number, rows: number, n: number, stream: S): void;
  argmax(x: Dev, xo: number, xb: number, rows: number, n: number, out: Dev, oo: number, ob: number, stream: S): void;
  embedding(t: Dev, to: number, tb: number, dtype: number, vocab: number, dim: number, ids: Dev, io: number, ib: number, out: Dev, oo: number, ob: number, stream: S): void;
  routeTopK(l: Dev, lo: number, lb: number, rows: number, E: number, k: number, nGroup: number, topkGroup: number, groupLimited: boolean, normTopk: boolean,
    scaling: number, idx: Dev, io: number, ib: number, w: Dev, wo: number, wb: number, stream: S): void;
  dequantize(...args: [...Q, Dev, number, number, number, S]): void;
  quantizeRtn(fmt: Uint8Array, w: Dev, wo: number, wb: number, qw: Dev, qwo: number, qwb: number, qz: Dev, qzo: number, qzb: number, sc: Dev, sco: number, scb: number, stream: S): void;
  qgemv(...args: [Dev, number, number, number, ...Q, Dev, number, number, S]): void;
  qgemm(...args: [Dev, number, number, number, ...Q, Dev, number, number, S]): void;
  flashAttention(q: Dev, qo: number, qb: number, k: Dev, ko: number, kb: number, v: Dev, vo: number, vb: number, dtype: number, out: Dev, oo: number, ob: number,
    lse: Dev | null, lo: number, lb: number, B: number, Sq: number, Sk: number, Hq: number, Hkv: number, Dqk: number, Dv: number, scale: number, causal: boolean,
    keysPerSplit: number, stream: S): void;
  mlaDecode(q: Dev, qo: number, qb: number, out: Dev, oo: number, ob: number, lse: Dev | null, lo: number, lb: number, B: number, H: number, L: number, R: number,
    scale: number, pool: Dev, po: number, pb: number, pageSize: number, maxPages: number, pt: Dev, pto: number, ptb: number, sl: Dev, slo: number, slb: number,
    keysPerSplit: number, stream: S): void;
  denseLinear(x: Dev, xo: number, xb: number, w: Dev, wo: number, wb: number, wDtype: number, y: Dev, yo: number, yb: number, M: number, H: number, N: number,
    K: number, xRow: number, xHead: number, wHead: number, wRow: number, yRow: number, yHead: number, stream: S): void;
  copyRows(src: Dev, so: number, sb: number, sRow: number, idx: Dev | null, io: number, ib: number, dst: Dev, d0: number, db: number, dRow: number, rows: number,
    n: number, stream: S): void;
  accumulateRows(y: Dev, yo: number, yb: number, rows: number, n: number, src: Dev, so: number, sb: number, idx: Dev | null, io: number, ib: number,
    w: Dev | null, wo: number, wb: number, J: number, stream: S): void;
  mlaAppend(...args: [...MlaPagesArgs, Dev, number, number, number, Dev, number, number, S]): void;
  mlaPagedDecode(...args: [Dev, number, number, Dev, number, number, Dev | null, number, number, number, number, number, ...MlaPagesArgs, Dev, number, number,
    number, Dev, number, number, number, S]): void;
  sampleTokens(logits: Dev, lo: number, lb: number, B: number, V: number, rows: Uint8Array, histOffsets: Int32Array | null, histIds: Int32Array | null,
    tokens: Dev, to: number, tb: number, stream: S): void;
  /** Standard K/V layout: quantize k, v f32 [T, kvHeads, headDim] into their slots (K, then V). */
  kvHeadsAppend(...args: [...KvHeadPagesArgs, Dev, number, number, Dev, number, number, number, Dev, number, number, S]): void;
  /** Standard K/V layout: decode the rows at slots into k, v f32 [T, kvHeads, headDim]. */
  kvHeadsGather(...args: [...KvHeadPagesArgs, Dev, number, number, Dev, number, number, number, Dev, number, number, S]): void;
  /** Standard K/V layout: batched paged decode (q, out, lse | null, B, Hq, scale, pages, pageTable, maxPages, seqLens, keysPerSplit, stream). */
  kvHeadsPagedDecode(...args: [Dev, number, number, Dev, number, number, Dev | null, number, number, number, number, number, ...KvHeadPagesArgs, Dev, number,
    number, number, Dev, number, number, number, S]): void;
  /** The bench's f16 tensor-core peak (csrc/cuda/probe.cuh): out f32 [blocks·warps·4·256], every element iters·16·a·b. */
  tensorCorePeak(out: Dev, oo: number, ob: number, blocks: number, warps: number, iters: number, a: number, b: number, stream: S): void;
}

/** (pool.., pageSize, pageBytes, layerOffset, rowBytes, type code, L, R, hadamard) of one layer's MLA pages. */
export type MlaPagesArgs = [Dev, number, number, number, number, number, number, number, number, number, boolean];

/** (pool.., pageSize, pageBytes, layerOffset, type code, kvHeads, headDim, hadamard) of one layer of standard K/V pages. */
export type KvHeadPagesArgs = [Dev, number, number, number, number, number, number, number, number, boolean];

let loaded: { binary: string; addon: CudaNative } | undefined;

/**
 * The CUDA addon, loaded in this process (once) after the child-process test load succeeded.
 * Throws KVANT_BACKEND with {@link cudaInfo}'s reason when no device is usable.
 */
export function cudaNative(): CudaNative {
  const info = cudaInfo();
  if (!info.available || !info.binary) throw new KvantError('KVANT_BACKEND', `backend 'cuda' is not available: ${info.reason}`);
  if (loaded && loaded.binary === info.binary) return loaded.addon;
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const addon = require(info.binary) as CudaNative;
    loaded = { binary: info.binary, addon };
    return addon;
  } catch (e) {
    throw new KvantError('KVANT_BACKEND', `the CUDA addon ${info.binary} passed its test load but failed to load here: ${(e as Error).message}`);
  }
}
