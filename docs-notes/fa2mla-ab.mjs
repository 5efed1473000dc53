// A/B of the attention cases (FlashAttention prefill, paged / MLA decode): a before addon vs this checkout's, one process
// (supersedes the attnspeed branch's driver, which covered the decode cases only).
// Each case's cache is built once per addon (native memory is tagged by the addon that made it):
// the binding object's functions are swapped wholesale to the addon in use (the TS layer is the
// branch's, identical on both sides for the decode path). Rounds alternate
// before/after; each round runs `iters` decode calls (cycling the layers); medians of per-call
// wall time and process CPU time.
// Usage: KVANT_BEFORE=/path/to/main/build/Release/kvant.node node docs-notes/fa2mla-ab.mjs 'flash_attn|mla_decode' 5
// (run from this branch's checkout after npx tsc -p tsconfig.build.json and the node-gyp build).
import { createRequire } from 'node:module';
const require = createRequire(import.meta.url);
const root = process.env.KVANT_DIST ?? new URL('../dist', import.meta.url).pathname;
const { native } = require(`${root}/native.js`);
const { attentionCases } = require(`${root}/bench/attention-cases.js`);
const { measureMachine } = require(`${root}/bench/harness.js`);
const oldMod = { exports: {} };
process.dlopen(oldMod, process.env.KVANT_BEFORE ?? '/tmp/attn/oldwt/build/Release/kvant.node');
const b = native();
const newProps = { ...b };
const use = (k) => Object.assign(b, k === 'before' ? oldMod.exports : newProps);
const filter = new RegExp(process.argv[2] ?? 'decode');
const rounds = Number(process.argv[3] ?? 5);
const machine = await measureMachine(false);
console.log(`read ceiling ${machine.read_gbps.toFixed(1)} GB/s, FMA ${machine.fma_gflops.toFixed(0)} GFLOP/s, load ${machine.load_avg ?? ''}`);
const med = (a) => { const s = [...a].sort((x, y) => x - y); return s[s.length >> 1]; };
const rows = [];
for (const c of attentionCases(machine, false).filter((c) => filter.test(c.name))) {
  // One cache per addon (native memory is tagged by the addon that made it).
  const iters = c.warmup ?? 3;
  const runs = {};
  const teardowns = {};
  for (const k of ['before', 'after']) {
    use(k);
    const cc = attentionCases(machine, false).find((x) => x.name === c.name);
    runs[k] = cc.setup();
    teardowns[k] = () => { use(k); cc.teardown?.(); };
    for (let i = 0; i < iters; i++) runs[k]();
  }
  const t = { before: [], after: [] }, cpu = { before: [], after: [] };
  for (let r = 0; r < rounds; r++)
    for (const k of ['before', 'after']) {
      use(k);
      for (let i = 0; i < iters; i++) {
        const c0 = process.cpuUsage(), w0 = process.hrtime.bigint();
        runs[k]();
        const w = Number(process.hrtime.bigint() - w0) / 1e6, cu = process.cpuUsage(c0);
        t[k].push(w), cpu[k].push((cu.user + cu.system) / 1e3);
      }
    }
  teardowns.before();
  teardowns.after();
  use('after');
  const row = { name: c.name, before: med(t.before), after: med(t.after), cpuBefore: med(cpu.before), cpuAfter: med(cpu.after) };
  const bw = (ms) => c.bytes ? `${(c.bytes / ms / 1e6).toFixed(1)} GB/s ${(100 * c.bytes / ms / 1e6 / machine.read_gbps).toFixed(0)}%` : '';
  const fl = (ms) => `${(c.flops / ms / 1e6).toFixed(1)} GF/s ${(100 * c.flops / ms / 1e6 / machine.fma_gflops).toFixed(0)}%`;
  console.log(`${c.name.padEnd(38)} before ${row.before.toFixed(2)} ms (${c.kernel !== 'decode_attn' ? fl(row.before) : bw(row.before)}) after ${row.after.toFixed(2)} ms (${c.kernel !== 'decode_attn' ? fl(row.after) : bw(row.after)})  wall x${(row.before / row.after).toFixed(2)}  cpu ${row.cpuBefore.toFixed(2)} -> ${row.cpuAfter.toFixed(2)} ms x${(row.cpuBefore / row.cpuAfter).toFixed(2)}`);
  rows.push(row);
}
