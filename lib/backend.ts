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

let cudaStatus: CudaStatus | undefined;

function cudaCandidates(): string[] {
  const list = [path.join(packageRoot, 'build-cmake', 'Release', 'kvant_cuda.node')];
  try {
    list.push(path.join(path.dirname(require.resolve('kvant-cuda-linux-x64/package.json')), 'kvant_cuda.node'));
  } catch {
    // optional package not installed
  }
  return list;
}

/**
 * Finds the CUDA addon and test-loads it in a child process first: a broken CUDA install
 * (driver mismatch, missing libraries) must not take the service down. Cached per process.
 */
export function cudaInfo(): CudaStatus {
  if (cudaStatus) return cudaStatus;
  const binary = cudaCandidates().find((p) => fs.existsSync(p)) ?? null;
  if (!binary) {
    cudaStatus = {
      available: false,
      binary: null,
      devices: 0,
      reason: 'the CUDA addon is not installed (build it with `npm run build:cuda`, or install kvant-cuda-linux-x64)',
    };
    return cudaStatus;
  }
  const script = `const b = require(${JSON.stringify(binary)}); process.stdout.write(JSON.stringify(b.deviceQuery()));`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20000 });
  let devices = 0;
  let reason: string;
  if (r.status !== 0) {
    reason = `the CUDA addon failed to load in a test process: ${(r.stderr || r.error?.message || `exit ${r.status}`).trim().split('\n').slice(-1)[0]}`;
  } else {
    try {
      const q = JSON.parse(r.stdout) as { count: number; error?: string };
      devices = q.count;
      reason = devices > 0 ? `${devices} CUDA device(s) visible` : `no CUDA device visible${q.error ? ` (${q.error})` : ''}`;
    } catch {
      reason = 'the CUDA addon answered the device query with unreadable output';
    }
  }
  cudaStatus = { available: devices > 0, binary, devices, reason };
  return cudaStatus;
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
