/**
 * Loads the CPU addon (kvant.node) once per process/worker and describes its raw surface.
 * Loading tries, in order: a prebuild in prebuilds/ or the node-gyp build (node-gyp-build),
 * then the cmake-js build; every failure is collected into one actionable message.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { KvantError } from './errors';

/** Storage handed to native calls: a byte view of JS memory, or native memory. */
export type RawStorage = Uint8Array | NativeMemoryHandle;

export interface NativeMemoryHandle {
  readonly byteLength: number;
  readonly disposed: boolean;
  readonly kind: 'alloc' | 'mmap';
  view(byteOffset: number, byteLength: number): ArrayBuffer;
  dispose(): void;
}

export interface CancelTokenHandle {
  cancel(): void;
  readonly cancelled: boolean;
}

/** A native MLP set (lib/ops/qlinear.ts MlpSet): the members' weights checked once and referenced. */
export interface MoeExpertSetHandle {
  readonly size: number;
}

export interface CpuInfo {
  isa: 'scalar' | 'avx2' | 'avx512';
  bestIsa: 'scalar' | 'avx2' | 'avx512';
  isaReason: string;
  features: Record<string, boolean>;
  threads: number;
  defaultThreads: number;
  threadsReason: string;
  physicalCores: number;
  affinityCpus: number;
  cgroupLimit: number;
}

export interface ProbeResult {
  seconds: number;
  bytes: number;
  flops: number;
  check: number;
}

/** Statistics returned by the native GPTQ solve (csrc/cpu/gptq.h GptqStats). */
export interface NativeGptqStats {
  dampPercent: number;
  retries: number;
  deadColumns: number;
  loss: number;
  errNum: number;
  errDen: number;
  secondsFactor: number;
  secondsQuant: number;
  secondsUpdate: number;
  secondsError: number;
  flopsFactor: number;
  flopsUpdate: number;
}

/** The raw addon, as csrc/napi registers it. Arguments are validated again natively. */
export interface NativeBinding {
  NativeMemory: new (mode: 'alloc' | 'map', arg: number | string) => NativeMemoryHandle;
  CancelToken: new () => CancelTokenHandle;
  /** A fixed set of MLPs checked once (MlpSet): H, then 3 projections per MLP in moeMlp's encoding. */
  MoeExpertSet: new (H: number, ...projections: (RawStorage | Uint8Array | number | null)[]) => MoeExpertSetHandle;
  cpuInfo(): CpuInfo;
  setThreads(n: number): void;
  /** V8's total of external memory reported through AdjustExternalMemory. */
  externalMemory(): number;
  /** Data address of (storage, byteOffset, byteLength) modulo 64. */
  addressMod64(s: RawStorage, off: number, bytes: number): number;
  fillRandom(s: RawStorage, off: number, bytes: number, dtype: number, seed: number, dist: number, a: number, b: number): void;
  convert(
    src: RawStorage, srcOff: number, srcBytes: number, srcDtype: number,
    dst: RawStorage, dstOff: number, dstBytes: number, dstDtype: number,
    count: number, isa?: number,
  ): void;
  convertAsync(
    src: RawStorage, srcOff: number, srcBytes: number, srcDtype: number,
    dst: RawStorage, dstOff: number, dstBytes: number, dstDtype: number,
    count: number, isa: number | undefined, cancel: CancelTokenHandle | undefined,
  ): Promise<void>;
  rmsNorm(x: RawStorage, xo: number, xb: number, w: RawStorage, wo: number, wb: number, wDtype: number,
    y: RawStorage, yo: number, yb: number, rows: number, n: number, eps: number, isa?: number): void;
  addRmsNorm(x: RawStorage, xo: number, xb: number, d: RawStorage, dOff: number, db: number, w: RawStorage, wo: number, wb: number, wDtype: number,
    y: RawStorage, yo: number, yb: number, rows: number, n: number, eps: number, isa?: number): void;
  rope(x: RawStorage, xo: number, xb: number, rows: number, heads: number, stride: number, offset: number, pairs: number,
    pos: RawStorage, po: number, pb: number, invFreq: RawStorage, fo: number, fb: number, amp: number): void;
  siluGate(g: RawStorage, go: number, gb: number, u: RawStorage, uo: number, ub: number, inStride: number,
    y: RawStorage, yo: number, yb: number, rows: number, n: number, isa?: number): void;
  softmax(x: RawStorage, xo: number, xb: number, rows: number, n: number, isa?: number): void;
  routeTopK(l: RawStorage, lo: number, lb: number, rows: number, experts: number, k: number, nGroup: number, topkGroup: number,
    groupLimited: boolean, normTopk: boolean, scaling: number, idx: RawStorage, io: number, ib: number, w: RawStorage, wo: number, wb: number): void;
  embedding(t: RawStorage, to: number, tb: number, dtype: number, vocab: number, dim: number,
    ids: RawStorage, io: number, ib: number, out: RawStorage, oo: number, ob: number): void;
  argmax(x: RawStorage, xo: number, xb: number, rows: number, n: number, out: RawStorage, oo: number, ob: number): void;
  axpy(a: number, x: RawStorage, xo: number, xb: number, y: RawStorage, yo: number, yb: number, isa?: number): void;
  gemm(x: RawStorage, xo: number, xb: number, M: number, K: number, w: RawStorage, wo: number, wb: number, wDtype: number, N: number,
    bias: RawStorage | null, bo: number, bb: number, y: RawStorage, yo: number, yb: number, isa?: number): void;
  /** Per-head dense linears in one call (csrc/napi/gemm_binding.cc); strides in elements. */
  gemmHeads(x: RawStorage, xo: number, xb: number, M: number, H: number, ldxM: number, ldxH: number, K: number,
    w: RawStorage, wo: number, wb: number, wDtype: number, ldwH: number, N: number,
    y: RawStorage, yo: number, yb: number, ldyM: number, ldyH: number, isa?: number): void;
  flashAttention(q: RawStorage, qo: number, qb: number, k: RawStorage, ko: number, kb: number, v: RawStorage, vo: number, vb: number,
    out: RawStorage, oo: number, ob: number, lse: RawStorage, lo: number, lb: number,
    B: number, Sq: number, Sk: number, Hq: number, Hkv: number, Dqk: number, Dv: number, scale: number, causal: boolean,
    cuQ: RawStorage | null, cqo: number, cqb: number, cuK: RawStorage | null, cko: number, ckb: number, isa?: number, naive?: boolean): void;
  mlaDecode(q: RawStorage, qo: number, qb: number, out: RawStorage, oo: number, ob: number, lse: RawStorage, lo: number, lb: number,
    B: number, H: number, L: number, R: number, scale: number, pool: RawStorage, po: number, pb: number,
    numPages: number, pageSize: number, maxPages: number, pageTable: RawStorage, pto: number, ptb: number,
    seqLens: RawStorage, slo: number, slb: number, isa?: number): void;
  flashScratchBytes(reset?: boolean): number;
  gptqBenchPrepare(N: number, K: number, B: number): void;
  gptqBenchRun(kind: 0 | 1): void;
  gptqBenchRelease(): void;
  kvEncode(type: number, hadamard: boolean, x: RawStorage, xo: number, xb: number, n: number, dst: RawStorage, dso: number, dsb: number, isa?: number): void;
  kvDecode(type: number, src: RawStorage, so: number, sb: number, n: number, y: RawStorage, yo: number, yb: number, isa?: number): void;
  kvWrite(pool: RawStorage, po: number, pb: number, numPages: number, pageSize: number, pageBytes: number, layerOffset: number, rowBytes: number,
    segs: RawStorage, sgo: number, sgb: number, nSegs: number, rows: RawStorage, ro: number, rb: number, width: number, T: number,
    slots: RawStorage, slo: number, slb: number, isa?: number): void;
  kvRead(pool: RawStorage, po: number, pb: number, numPages: number, pageSize: number, pageBytes: number, layerOffset: number, rowBytes: number,
    segs: RawStorage, sgo: number, sgb: number, nSegs: number, out: RawStorage, oo: number, ob: number, width: number, T: number,
    slots: RawStorage, slo: number, slb: number, isa?: number): void;
  pagedDecode(q: RawStorage, qo: number, qb: number, out: RawStorage, oo: number, ob: number, lse: RawStorage, lo: number, lb: number,
    B: number, Hq: number, Hkv: number, scale: number,
    pool: RawStorage, po: number, pb: number, numPages: number, pageSize: number, pageBytes: number, layerOffset: number, rowBytes: number,
    pageTable: RawStorage, pto: number, ptb: number, maxPages: number, seqLens: RawStorage, slo: number, slb: number,
    layout: RawStorage, lyo: number, lyb: number, isa?: number): void;
  gptqHessianAdd(H: RawStorage, ho: number, hb: number, K: number, x: RawStorage, xo: number, xb: number, tokens: number,
    n: number, b: number, isa?: number): void;
  gptqQuantize(fmt: Uint8Array, w: RawStorage, wo: number, wb: number, H: RawStorage, ho: number, hb: number,
    dampPercent: number, blockSize: number, actOrder: boolean, staticGroups: boolean, errorStats: boolean,
    qw: RawStorage, qwo: number, qwb: number, qz: RawStorage, qzo: number, qzb: number, sc: RawStorage, sco: number, scb: number,
    gIdx: RawStorage, gio: number, gib: number, isa?: number): NativeGptqStats;
  gptqQuantizeAsync(fmt: Uint8Array, w: RawStorage, wo: number, wb: number, H: RawStorage, ho: number, hb: number,
    dampPercent: number, blockSize: number, actOrder: boolean, staticGroups: boolean, errorStats: boolean,
    qw: RawStorage, qwo: number, qwb: number, qz: RawStorage, qzo: number, qzb: number, sc: RawStorage, sco: number, scb: number,
    gIdx: RawStorage, gio: number, gib: number, isa: number | undefined, cancel: CancelTokenHandle | undefined): Promise<NativeGptqStats>;
  quantFormatLayout(): { size: number; offsets: { bits: number; groupSize: number; sym: number; zeroFormat: number; K: number; N: number } };
  quantEncodeFormat(bits: number, groupSize: number, sym: boolean, zeroFormat: number, K: number, N: number): Uint8Array;
  quantRtn(fmt: Uint8Array, w: RawStorage, wo: number, wb: number, qw: RawStorage, qwo: number, qwb: number,
    qz: RawStorage, qzo: number, qzb: number, sc: RawStorage, sco: number, scb: number): void;
  quantDequant(fmt: Uint8Array, qw: RawStorage, qwo: number, qwb: number, qz: RawStorage, qzo: number, qzb: number,
    sc: RawStorage, sco: number, scb: number, gIdx: RawStorage | null, gio: number, gib: number, perm: RawStorage | null, po: number, pb: number,
    out: RawStorage, oo: number, ob: number, outDtype: number, isa?: number): void;
  quantMakeSequential(fmt: Uint8Array, qw: RawStorage, qwo: number, qwb: number, gIdx: RawStorage, gio: number, gib: number,
    perm: RawStorage, po: number, pb: number, out: RawStorage, oo: number, ob: number, forward: boolean): void;
  /** Fused dequant GEMV/GEMM (csrc/napi/gemm_q_binding.cc): x [M, K] f32/f16/bf16, a QMatrix, y f32 [M, N]. */
  qgemm(x: RawStorage, xo: number, xb: number, xDtype: number, M: number,
    format: Uint8Array, qw: RawStorage, qwo: number, qwb: number, qz: RawStorage, qzo: number, qzb: number,
    sc: RawStorage, sco: number, scb: number, perm: RawStorage | null, po: number, pb: number,
    bias: RawStorage | null, bo: number, bb: number, y: RawStorage, yo: number, yb: number, isa?: number, activations?: number, yDtype?: number): void;
  /** Grouped MoE MLP; `projections` is E*3 groups of 17 values (see gemm_q_binding.cc). */
  moeMlp(x: RawStorage, xo: number, xb: number, M: number, H: number, E: number,
    mlp: RawStorage, mo: number, mb: number, row: RawStorage, ro: number, rb: number, weight: RawStorage, wo: number, wb: number,
    out: RawStorage, oo: number, ob: number, isa: number | undefined, activations: number, ...projections: (RawStorage | Uint8Array | number | null)[]): void;
  /** moeMlp over a MoeExpertSet: routes.mlp names set members. */
  moeMlpSet(x: RawStorage, xo: number, xb: number, M: number, set: MoeExpertSetHandle,
    mlp: RawStorage, mo: number, mb: number, row: RawStorage, ro: number, rb: number, weight: RawStorage, wo: number, wb: number,
    out: RawStorage, oo: number, ob: number, isa: number | undefined, activations: number): void;
  probeReadBandwidth(bytes: number, reps: number): Promise<ProbeResult>;
  /** Every streaming-read variant over one buffer (best rep of each), csrc/cpu/probe.h. */
  probeReadVariants(bytes: number, reps: number): Promise<(ProbeResult & { name: string })[]>;
  probeCopyBandwidth(bytes: number, reps: number): Promise<ProbeResult>;
  probeFmaPeak(allThreads: boolean, seconds: number): Promise<ProbeResult>;
}

/** The package root (one level above dist/ or lib/). */
export const packageRoot: string = path.join(__dirname, '..');

let binding: NativeBinding | undefined;

function cpuFlags(): string {
  try {
    const line = fs.readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('flags'));
    if (!line) return 'unknown';
    const have = new Set(line.split(':')[1].trim().split(/\s+/));
    return ['avx2', 'fma', 'f16c', 'avx512f', 'avx512bw', 'avx512vl', 'avx512dq'].map((f) => `${f}${have.has(f) ? '+' : '-'}`).join(' ');
  } catch {
    return 'unknown';
  }
}

function libc(): string {
  if (process.platform !== 'linux') return 'n/a';
  const report = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  return report?.glibcVersionRuntime ? `glibc ${report.glibcVersionRuntime}` : 'musl or unknown';
}

function load(): NativeBinding {
  const failures: string[] = [];
  try {
    // eslint-disable-next-line @typescript-eslint/no-var-requires
    const nodeGypBuild = require('node-gyp-build') as (dir: string) => NativeBinding;
    return nodeGypBuild(packageRoot);
  } catch (e) {
    failures.push(`prebuilds/ and build/ (node-gyp-build): ${(e as Error).message.split('\n')[0]}`);
  }
  const cmakeBuild = path.join(packageRoot, 'build-cmake', 'Release', 'kvant.node');
  try {
    return require(cmakeBuild) as NativeBinding;
  } catch (e) {
    failures.push(`${path.relative(packageRoot, cmakeBuild)} (cmake-js): ${(e as Error).message.split('\n')[0]}`);
  }
  throw new KvantError(
    'KVANT_BACKEND',
    [
      'Could not load the kvant native addon (kvant.node).',
      `Platform: ${process.platform}, arch: ${process.arch}, libc: ${libc()}, Node ${process.version} (N-API ${process.versions.napi}), CPU: ${os.cpus()[0]?.model ?? 'unknown'}`,
      `CPU features found: ${cpuFlags()} (required: none; AVX2+FMA+F16C and AVX-512 are used when present)`,
      'Tried:',
      ...failures.map((f) => `  - ${f}`),
      'Possible fixes:',
      '  - Reinstall so the prebuilt binary for your platform is picked up: npm install kvant',
      '  - Build from source (needs python3, make and a C++17 compiler): npm rebuild kvant --build-from-source',
      '  - Or with cmake-js: npx cmake-js build --out build-cmake (inside node_modules/kvant)',
    ].join('\n'),
  );
}

/** The loaded addon (loaded on first use). */
export function native(): NativeBinding {
  if (!binding) binding = load();
  return binding;
}
