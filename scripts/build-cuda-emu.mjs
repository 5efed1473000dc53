#!/usr/bin/env node
// Builds the test-only emulated CUDA addon, build-native-test/cuda-emu/kvant_cuda_emu.node, with
// g++ alone (no nvcc, no GPU): the same N-API layer as kvant_cuda.node (csrc/cuda/cuda_binding.cc)
// over the host-emulated device runtime (csrc/cuda/runtime_emu.cc), with every family's .cu
// compiled as C++ so its kernels run under the SIMT emulation (csrc/cuda/simt). Objects are
// cached by content hash (sources, headers, flags), like scripts/sanitized-build.mjs does for
// the native tests. Never shipped: lib/backend.ts accepts it only when KVANT_CUDA_ADDON names it.
// Usage: node scripts/build-cuda-emu.mjs   (prints the addon's path on stdout)
import { buildSanitized, hashHeaders } from './sanitized-build.mjs';
import { createRequire } from 'node:module';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
const out = path.join(root, 'build-native-test', 'cuda-emu');
const addon = path.join(out, 'kvant_cuda_emu.node');
const require = createRequire(import.meta.url);
const napiInclude = require('node-addon-api').include_dir.replace(/"/g, '');
const nodeInclude = [path.join(path.dirname(process.execPath), '..', 'include', 'node'), '/usr/include/node'].find((d) =>
  fs.existsSync(path.join(d, 'node_api.h')),
);

// -O2: the emulation runs kernels thread by thread, so test time is compile-optimization bound.
// -fno-strict-aliasing: kernels read packed words through uint4 as CUDA code does.
const FLAGS = ['-std=c++17', '-O2', '-fPIC', '-pthread', '-fvisibility=hidden', '-fno-strict-aliasing', '-Wall', '-Wextra',
  '-Wno-unused-parameter', '-Wno-missing-field-initializers', '-Wno-unknown-pragmas', '-DKVANT_CUDA_EMULATED', '-DNAPI_VERSION=8',
  '-DNAPI_CPP_EXCEPTIONS', '-DNODE_ADDON_API_DISABLE_DEPRECATED', `-I${nodeInclude}`, `-I${napiInclude}`, '-Icsrc/include', '-Icsrc/cuda'];

const cuda = (f) => `csrc/cuda/${f}`;
// Every family's .cu except the CUDA runtime (runtime_emu.cc replaces it).
const families = fs.readdirSync(path.join(root, 'csrc/cuda')).filter((f) => f.endsWith('.cu') && f !== 'runtime_cuda.cu').sort().map(cuda);
const sources = [cuda('cuda_binding.cc'), cuda('runtime_emu.cc'), cuda('simt/simt.cc'), ...families];
const flagsFor = (f) => (f.endsWith('.cu') ? [...FLAGS, '-x', 'c++'] : FLAGS);
const headers = hashHeaders(root, ['csrc/include/kvant', 'csrc/cuda', 'csrc/cuda/simt']);

export async function buildCudaEmu() {
  if (!nodeInclude) throw new Error('build-cuda-emu: node_api.h not found (looked next to the node binary and in /usr/include/node)');
  fs.mkdirSync(out, { recursive: true });
  await buildSanitized({
    root, out, sources, flagsFor, exe: addon, sortObjects: true,
    headerHashFor: () => headers,
    objectName: (f, h) => `${f.replace(/[/.]/g, '_')}-${h}.o`,
    linkFlags: ['-shared', '-pthread', '-static-libstdc++', '-static-libgcc'],
  });
  return addon;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const t0 = Date.now();
  buildCudaEmu().then(
    (p) => {
      console.error(`kvant_cuda_emu.node built in ${((Date.now() - t0) / 1000).toFixed(1)}s`);
      console.log(p);
    },
    (e) => {
      console.error(e.message);
      process.exit(1);
    },
  );
}
