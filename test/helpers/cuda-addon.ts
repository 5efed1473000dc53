/**
 * The CUDA addon the CUDA test files run against: the real kvant_cuda.node with
 * KVANT_TEST_CUDA=1 (a machine with a GPU), else the test-only emulated addon, built (or reused
 * from its cache) by scripts/build-cuda-emu.mjs. Registers the beforeAll/afterAll that point
 * KVANT_CUDA_ADDON at it and restore the variable afterwards.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { afterAll, beforeAll } from 'vitest';

export const REAL_CUDA = process.env.KVANT_TEST_CUDA === '1';
const root = path.join(__dirname, '..', '..');

/** Sets up the addon for the calling test file; returns a getter of its path (valid in tests). */
export function useCudaAddon(): () => string {
  let addonPath = '';
  const savedEnv = process.env.KVANT_CUDA_ADDON;
  beforeAll(() => {
    if (REAL_CUDA) {
      addonPath = path.join(root, 'build-cmake', 'Release', 'kvant_cuda.node');
    } else {
      const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'build-cuda-emu.mjs')], { cwd: root, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`building the emulated CUDA addon failed:\n${r.stderr}`);
      addonPath = r.stdout.trim().split('\n').pop()!;
    }
    process.env.KVANT_CUDA_ADDON = addonPath;
  }, 600_000);
  afterAll(() => {
    if (savedEnv === undefined) delete process.env.KVANT_CUDA_ADDON;
    else process.env.KVANT_CUDA_ADDON = savedEnv;
  });
  return () => addonPath;
}
