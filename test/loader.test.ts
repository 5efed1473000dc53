import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.join(__dirname, '..');

describe('native loader', () => {
  it('when no binary loads, one actionable message lists platform, arch, libc, CPU features and fixes', () => {
    // A copy of the compiled package with no prebuilds/, build/ or build-cmake/.
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-nobin-'));
    fs.cpSync(path.join(root, 'dist'), path.join(dir, 'dist'), { recursive: true });
    fs.copyFileSync(path.join(root, 'package.json'), path.join(dir, 'package.json'));
    fs.symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
    const r = spawnSync(process.execPath, ['-e', `try { require('./dist').backendInfo(); } catch (e) { console.log(JSON.stringify({ name: e.name, code: e.code, message: e.message })); }`], {
      cwd: dir,
      encoding: 'utf8',
    });
    const e = JSON.parse(r.stdout);
    expect(e.name).toBe('KvantError');
    expect(e.code).toBe('KVANT_BACKEND');
    for (const part of ['Platform: linux', 'arch: x64', 'libc: glibc', 'CPU features found:', 'avx2', 'Tried:', 'node-gyp-build', 'cmake-js',
      'npm rebuild kvant --build-from-source']) {
      expect(e.message).toContain(part);
    }
  });
});
