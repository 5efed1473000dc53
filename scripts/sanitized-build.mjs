// The build step shared by scripts/native-test.mjs and scripts/simt-test.mjs: compile a list of
// C++ sources under the sanitizers, two at a time, into content-addressed objects (a cached
// object is reused until its source, flags or the header hash change), then link them.
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

/** sha1 over every header (.h / .cuh) in `dirs`, in name order. */
export function hashHeaders(root, dirs) {
  const h = createHash('sha1');
  for (const dir of dirs)
    for (const f of fs.readdirSync(path.join(root, dir)).filter((f) => /\.(h|cuh)$/.test(f)).sort()) h.update(fs.readFileSync(path.join(root, dir, f)));
  return h.digest('hex');
}

/**
 * Builds `exe` from `sources`. `flagsFor(f)` gives a file's compile flags, `headerHashFor(f)` the
 * header hash its object depends on, `objectName(f, hash)` the cached object's file name.
 */
export async function buildSanitized({ root, out, sources, flagsFor, headerHashFor, objectName, linkFlags, exe, sortObjects = false }) {
  const objectFor = (f) => {
    const h = createHash('sha1').update(headerHashFor(f)).update(fs.readFileSync(path.join(root, f))).update(flagsFor(f).join(' ')).digest('hex').slice(0, 16);
    return path.join(out, objectName(f, h));
  };
  const compile = (f) =>
    new Promise((resolve, reject) => {
      const obj = objectFor(f);
      if (fs.existsSync(obj)) return resolve(obj);
      // Per-process temporary names and atomic renames: two builds of the same tree may run at
      // once (vitest runs the CUDA test files in parallel), and neither may see a partial file.
      const tmp = `${obj}.${process.pid}.tmp`;
      const p = spawn('g++', [...flagsFor(f), '-c', f, '-o', tmp], { cwd: root, stdio: 'inherit' });
      p.on('exit', (code) => {
        if (code !== 0) return reject(new Error(`compiling ${f} failed`));
        fs.renameSync(tmp, obj);
        resolve(obj);
      });
    });
  const queue = [...sources];
  const objects = [];
  const jobs = Math.max(1, Math.min(2, os.cpus().length));
  await Promise.all(Array.from({ length: jobs }, async () => {
    while (queue.length) objects.push(await compile(queue.shift()));
  }));
  if (sortObjects) objects.sort();
  const tmpExe = `${exe}.${process.pid}.tmp`;
  const link = spawnSync('g++', [...linkFlags, ...objects, '-o', tmpExe], { cwd: root, stdio: 'inherit' });
  if (link.status !== 0) throw new Error('link failed');
  fs.renameSync(tmpExe, exe);
}
