/**
 * The npm tarball works on a clean machine: build the prebuilt binary, `npm pack`, install the
 * tarball offline into an empty project with no compiler on PATH (g++, cc, make, python3 and
 * nvcc unreachable), then import it from CommonJS and ESM, run a kernel and `npx kvant demo`.
 * Runs in a temporary copy of the repository so it never touches this checkout's build/.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

const root = path.join(__dirname, '..');

function sh(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env) {
  const r = spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout: 600_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** A PATH holding only node, npm, npx and sh: nothing that can compile. */
function compilerFreePath(dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  // npm's own CLI script, found from the npm on this PATH (npm's package exports hide it from require.resolve).
  const npmCli = fs.realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim());
  fs.symlinkSync(process.execPath, path.join(dir, 'node'));
  fs.symlinkSync('/bin/sh', path.join(dir, 'sh'));
  fs.writeFileSync(path.join(dir, 'npm'), `#!/bin/sh\nexec "${process.execPath}" "${npmCli}" "$@"\n`, { mode: 0o755 });
  fs.writeFileSync(path.join(dir, 'npx'), `#!/bin/sh\nexec "${process.execPath}" "${path.join(path.dirname(npmCli), 'npx-cli.js')}" "$@"\n`, { mode: 0o755 });
  return dir;
}

describe('npm package', () => {
  it('installs from its tarball offline with no compiler, and runs from CJS, ESM and the CLI', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-pack-'));
    const src = path.join(tmp, 'src');
    fs.mkdirSync(src);
    // Copy the tracked sources (what a clean clone has) and reuse node_modules.
    const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: root, encoding: 'utf8' }).split('\0').filter(Boolean);
    for (const f of files) {
      if (!fs.existsSync(path.join(root, f))) continue;
      fs.mkdirSync(path.dirname(path.join(src, f)), { recursive: true });
      fs.copyFileSync(path.join(root, f), path.join(src, f));
    }
    fs.symlinkSync(path.join(root, 'node_modules'), path.join(src, 'node_modules'));
    sh('npm', ['run', 'prebuild'], src);
    sh('npm', ['pack', '--pack-destination', tmp, '--silent'], src);
    const tgz = fs.readdirSync(tmp).find((f) => f.endsWith('.tgz'))!;
    expect(tgz).toMatch(/^kvant-.*\.tgz$/);
    const listing = sh('tar', ['tzf', path.join(tmp, tgz)], tmp);
    expect(listing).toMatch(/package\/prebuilds\/linux-x64\/kvant\.glibc\.node/);
    expect(listing).toMatch(/package\/dist\/index\.js/);
    expect(listing).toMatch(/package\/esm\/index\.mjs/);
    expect(listing).not.toMatch(/package\/build\//);
    expect(fs.statSync(path.join(tmp, tgz)).size).toBeLessThan(20 * 2 ** 20);

    const app = path.join(tmp, 'app');
    fs.mkdirSync(app);
    fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
    const bin = compilerFreePath(path.join(tmp, 'bin'));
    const env = { HOME: process.env.HOME ?? '/root', PATH: bin, npm_config_cache: process.env.npm_config_cache ?? path.join(process.env.HOME ?? '/root', '.npm') };
    for (const tool of ['g++', 'cc', 'make', 'python3', 'nvcc']) {
      expect(spawnSync('sh', ['-c', `command -v ${tool}`], { env }).status).not.toBe(0);
    }
    // The registry metadata of kvant's own dependencies must be in the local cache for an offline
    // install (npm ci, which reads resolved URLs from the lockfile, never caches it): warm it once
    // with an ordinary online install of those dependencies into a scratch project.
    const warm = path.join(tmp, 'warm');
    fs.mkdirSync(warm);
    fs.writeFileSync(path.join(warm, 'package.json'), JSON.stringify({ name: 'warm', version: '1.0.0', private: true }));
    const deps = Object.entries(JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).dependencies as Record<string, string>);
    sh('npm', ['install', '--no-save', '--ignore-scripts', '--no-audit', '--no-fund', ...deps.map(([n, v]) => `${n}@${v}`)], warm, { ...process.env, ...{ npm_config_cache: env.npm_config_cache } });
    sh(path.join(bin, 'npm'), ['install', '--offline', '--no-audit', '--no-fund', path.join(tmp, tgz)], app, env);
    expect(fs.existsSync(path.join(app, 'node_modules', 'kvant', 'build'))).toBe(false); // nothing was compiled

    const cjs = sh(path.join(bin, 'node'), ['-e', `const k = require('kvant'); const t = k.Tensor.from(new Float32Array([1.5, -2, 65504])).to('f16');
      console.log(JSON.stringify({ bits: Array.from(t.data()), isa: k.backendInfo().isa }))`], app, env);
    expect(JSON.parse(cjs).bits).toEqual([0x3e00, 0xc000, 0x7bff]);
    const esm = sh(path.join(bin, 'node'), ['--input-type=module', '-e', `import { Tensor, KvantError } from 'kvant';
      try { Tensor.zeros([-1]); } catch (e) { console.log(e instanceof KvantError, e.code); }`], app, env);
    expect(esm.trim()).toBe('true KVANT_SHAPE');
    const demo = sh(path.join(bin, 'npx'), ['--offline', 'kvant', 'demo'], app, env);
    expect(demo).toContain('kvant demo');
    // The prebuild compiles the whole addon from scratch (every kernel file at -O3): minutes on two
    // cores, so this guard against a hang is generous.
  }, 900_000);
});
