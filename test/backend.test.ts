import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { backendInfo, getThreads, resolveBackend, setThreads } from '../lib';

const root = path.join(__dirname, '..');
const ORDER = ['scalar', 'avx2', 'avx512'];

function infoWith(env: Record<string, string>) {
  const r = spawnSync(process.execPath, ['-e', "console.log(JSON.stringify(require('./dist').backendInfo()))"], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, KVANT_ISA: '', KVANT_THREADS: '', ...env },
  });
  expect(r.status).toBe(0);
  return JSON.parse(r.stdout) as ReturnType<typeof backendInfo>;
}

describe('backendInfo', () => {
  it('says which ISA level runs and why, the threads, and the CUDA status', () => {
    const info = backendInfo();
    expect(ORDER).toContain(info.isa);
    expect(ORDER.indexOf(info.isa)).toBeLessThanOrEqual(ORDER.indexOf(info.bestIsa));
    expect(info.isaReason.length).toBeGreaterThan(10);
    expect(info.threads).toBeGreaterThanOrEqual(1);
    expect(info.threadsReason.length).toBeGreaterThan(5);
    expect(typeof info.cuda.available).toBe('boolean');
    expect(info.cuda.reason.length).toBeGreaterThan(5);
    expect(info.backend).toBe(info.cuda.available ? 'cuda' : 'cpu');
  });

  it('KVANT_ISA forces every lower level this machine supports, and says so', () => {
    const best = backendInfo().bestIsa;
    for (const level of ORDER.slice(0, ORDER.indexOf(best) + 1)) {
      const info = infoWith({ KVANT_ISA: level });
      expect(info.isa).toBe(level);
      expect(info.isaReason).toContain('KVANT_ISA');
    }
    expect(infoWith({ KVANT_ISA: 'sse9' }).isaReason).toContain('unknown KVANT_ISA');
  });

  it('KVANT_THREADS and setThreads set the pool size', () => {
    const info = infoWith({ KVANT_THREADS: '3' });
    expect(info.threads).toBe(3);
    expect(info.threadsReason).toContain('KVANT_THREADS');
    const before = getThreads();
    setThreads(1);
    expect(getThreads()).toBe(1);
    expect(backendInfo().threadsReason).toContain('setThreads');
    setThreads(before);
  });

  it("'auto' falls back to the CPU with a reason; 'cuda' without a device is KVANT_BACKEND", () => {
    const info = backendInfo();
    if (info.cuda.available) return; // a GPU machine: covered by the CUDA suite
    expect(resolveBackend('auto')).toBe('cpu');
    expect(resolveBackend('cpu')).toBe('cpu');
    expect(() => resolveBackend('cuda')).toThrow(expect.objectContaining({ code: 'KVANT_BACKEND' }));
    expect(() => resolveBackend('tpu' as 'cpu')).toThrow(expect.objectContaining({ code: 'KVANT_BACKEND' }));
  });
});
