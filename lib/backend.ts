/**
 * Backend selection and the readable account of it: which CPU ISA level runs and why,
 * how many threads, and whether the CUDA addon is usable (and if not, why not).
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KvantError, callNative, expected } from './errors';
import { native, packageRoot } from './native';

export type BackendName = 'auto' | 'cpu' | 'cuda';

export interface CudaStatus {
  /** True when kvant_cuda.node loaded in a child process and reported at least one device. */
  available: boolean;
  /** Path of the CUDA addon that was tried, if any was found. */
  binary: string | null;
  devices: number;
  /**
   * True when the addon is the test-only host-emulated build (kvant_cuda_emu.node). It is
   * accepted only when the environment variable KVANT_CUDA_ADDON names it; the reason then
   * says "emulated".
   */
  emulated: boolean;
  /** The device the addon reported (device 0), when one answered. */
  device: { name: string; sm: number; totalMemory: number } | null;
  reason: string;
}

export interface BackendInfo {
  /** The backend `backend: 'auto'` resolves to. */
  backend: 'cpu' | 'cuda';
  isa: 'scalar' | 'avx2' | 'avx512';
  bestIsa: 'scalar' | 'avx2' | 'avx512';
  isaReason: string;
  cpuFeatures: Record<string, boolean>;
  threads: number;
  threadsReason: string;
  cuda: CudaStatus;
}

/** The test-only environment variable that names a CUDA addon to use instead of the installed one. */
export const CUDA_ADDON_ENV = 'KVANT_CUDA_ADDON';

// One probe per (addon path, named by the environment or not), per process.
const cudaStatusCache = new Map<string, CudaStatus>();

function cudaCandidates(): string[] {
  const list = [path.join(packageRoot, 'build-cmake', 'Release', 'kvant_cuda.node')];
  try {
    list.push(path.join(path.dirname(require.resolve('kvant-cuda-linux-x64/package.json')), 'kvant_cuda.node'));
  } catch {
    // optional package not installed
  }
  return list;
}

interface DeviceQuery {
  count: number;
  emulated?: boolean;
  error?: string;
  name?: string;
  sm?: number;
  totalMemory?: number;
}

function probe(binary: string, named: boolean): CudaStatus {
  const none = { available: false, binary, devices: 0, emulated: false, device: null };
  // The test load runs in a child process: a broken CUDA install (driver mismatch, missing
  // libraries, a crash in the driver) must not take this process down.
  const script = `const b = require(${JSON.stringify(binary)}); process.stdout.write(JSON.stringify(b.deviceQuery()));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20000 });
  if (r.status !== 0) {
    const why = (r.stderr || r.error?.message || `exit ${r.status}${r.signal ? ` (${r.signal})` : ''}`).trim().split('\n').filter(Boolean).slice(-1)[0];
    return { ...none, reason: `the CUDA addon failed to load in a test process: ${why}` };
  }
  let q: DeviceQuery;
  try {
    q = JSON.parse(r.stdout) as DeviceQuery;
    if (typeof q.count !== 'number') throw new Error('no count');
  } catch {
    return { ...none, reason: 'the CUDA addon answered the device query with unreadable output' };
  }
  const emulated = q.emulated === true;
  if (emulated && !named)
    return { ...none, emulated, reason: `${binary} is the test-only emulated CUDA addon; it is used only when ${CUDA_ADDON_ENV} names it` };
  const devices = q.count;
  const device = devices > 0 && typeof q.name === 'string' ? { name: q.name, sm: q.sm ?? 0, totalMemory: q.totalMemory ?? 0 } : null;
  let reason: string;
  if (devices === 0 || (q.error && !device)) reason = `no CUDA device visible${q.error ? ` (${q.error})` : ''}`;
  else if (emulated) reason = `emulated CUDA device (test-only, ${CUDA_ADDON_ENV}=${binary}): ${device?.name ?? 'host emulation'}, no GPU is used`;
  else reason = `${devices} CUDA device(s) visible; using ${device?.name ?? 'device 0'} (sm_${device?.sm ?? '?'})`;
  return { available: devices > 0 && device !== null, binary, devices, emulated, device, reason };
}

/**
 * Finds the CUDA addon and test-loads it in a child process first: a broken CUDA install
 * (driver mismatch, missing libraries) must not take the service down. Cached per process
 * (per addon path). With KVANT_CUDA_ADDON set (tests), that file is the only candidate, and it
 * may be the emulated addon.
 */
export function cudaInfo(): CudaStatus {
  const named = process.env[CUDA_ADDON_ENV];
  const binary = named ? path.resolve(named) : (cudaCandidates().find((p) => fs.existsSync(p)) ?? null);
  const key = `${named ? 'env' : 'installed'}:${binary}`;
  const cached = cudaStatusCache.get(key);
  if (cached) return cached;
  let status: CudaStatus;
  if (!binary) {
    status = {
      available: false,
      binary: null,
      devices: 0,
      emulated: false,
      device: null,
      reason: 'the CUDA addon is not installed (build it with `npm run build:cuda`, or install kvant-cuda-linux-x64)',
    };
  } else if (!fs.existsSync(binary)) {
    status = { available: false, binary, devices: 0, emulated: false, device: null, reason: `${CUDA_ADDON_ENV} names ${binary}, which does not exist` };
  } else {
    status = probe(binary, Boolean(named));
  }
  cudaStatusCache.set(key, status);
  return status;
}

/** What kvant runs on here, and why. */
export function backendInfo(): BackendInfo {
  const c = callNative(() => native().cpuInfo());
  const cuda = cudaInfo();
  return {
    backend: cuda.available ? 'cuda' : 'cpu',
    isa: c.isa,
    bestIsa: c.bestIsa,
    isaReason: c.isaReason,
    cpuFeatures: c.features,
    threads: c.threads,
    threadsReason: c.threads === c.defaultThreads ? c.threadsReason : `set by setThreads(${c.threads})`,
    cuda,
  };
}

/** Resolves a backend request; 'cuda' without a usable device throws KVANT_BACKEND. */
export function resolveBackend(requested: BackendName = 'auto'): 'cpu' | 'cuda' {
  if (requested !== 'auto' && requested !== 'cpu' && requested !== 'cuda')
    throw expected('KVANT_BACKEND', "'auto', 'cpu' or 'cuda'", 'backend', requested);
  if (requested === 'cpu') return 'cpu';
  const cuda = cudaInfo();
  if (requested === 'cuda' && !cuda.available) throw new KvantError('KVANT_BACKEND', `backend 'cuda' is not available: ${cuda.reason}`);
  return cuda.available ? 'cuda' : 'cpu';
}

/** Sets the size of kvant's native thread pool (1..1024). Results do not depend on it. */
export function setThreads(n: number): void {
  if (!Number.isInteger(n) || n < 1 || n > 1024) throw expected('KVANT_RANGE', 'an integer in 1..1024', 'threads', n);
  callNative(() => native().setThreads(n));
}

/** The current size of the native thread pool. */
export function getThreads(): number {
  return callNative(() => native().cpuInfo().threads);
}
