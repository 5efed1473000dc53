// Lock-step A/B of the prefill qlinear GEMM (M > 8, g128) between addon builds: one child
// process per build, alternating rounds, medians. Needs dist/ (npx tsc -p tsconfig.build.json).
// usage: node docs-notes/qgemmm-ab.js THREADS ROUNDS CALLS "M,K,N,bits,act;..." A.node B.node ...
// Prints per case the median wall ms of each build, GFLOP/s (2·M·N·K), the ratio to build A and
// the median CPU ms per call (all threads; on a loaded machine the steadier of the two); every
// round also measures the FMA peak (probeFmaPeak), and % is GFLOP/s over its median.
const { fork } = require('node:child_process');
const Module = require('node:module');
const root = process.env.ROOT || require('node:path').join(__dirname, '..');
if (process.argv[2] === 'child') {
  const addon = process.argv[3];
  const orig = Module._load;
  Module._load = function (req, ...rest) { if (req === 'node-gyp-build') return () => require(addon); return orig.call(this, req, ...rest); };
  const { randomQTensor } = require(root + '/dist/bench/gemm-cases');
  const { qlinear } = require(root + '/dist/ops/qlinear');
  const { Tensor } = require(root + '/dist/tensor');
  const { setThreads } = require(root + '/dist/backend');
  let w, x, y, act;
  process.on('message', (m) => {
    if (m.op === 'setup') {
      setThreads(m.threads);
      if (w) { w.qweight.dispose(); w.qzeros.dispose(); w.scales.dispose(); }
      w = randomQTensor(m.K, m.N, m.bits, 128, 1);
      x = Tensor.random([m.M, m.K], 'f32', { seed: 7, dist: 'normal' }); y = Tensor.zeros([m.M, m.N], 'f32', { native: true }); act = m.act;
      qlinear(x, w, { out: y, activations: act });
      process.send({});
    } else if (m.op === 'run') {
      const t = []; const c0 = process.cpuUsage();
      for (let i = 0; i < m.calls; i++) { const t0 = performance.now(); qlinear(x, w, { out: y, activations: act }); t.push(performance.now() - t0); }
      const cu = process.cpuUsage(c0); t.sort((a, b) => a - b);
      const v = y.data();
      let h = 0; for (let i = 0; i < v.length; i += 97) h = (h * 31 + Math.round(v[i] * 1e6)) | 0;
      process.send({ ms: t[t.length >> 1], cpu: (cu.user + cu.system) / 1e3 / m.calls, hash: h });
    } else if (m.op === 'probe') {
      // The FMA peak of this moment (csrc/cpu/probe.h), on as many threads as the kernel uses.
      require(root + '/dist/native').native().probeFmaPeak(m.threads > 1, 0.3).then((r) => process.send({ gf: r.flops / r.seconds / 1e9 }));
    } else process.exit(0);
  });
} else {
  const [threads, rounds, calls, spec, ...addons] = process.argv.slice(2);
  const kids = addons.map((a) => fork(__filename, ['child', a]));
  const ask = (k, m) => new Promise((r) => { k.once('message', r); k.send(m); });
  const med = (a) => { const s = [...a].sort((x, y) => x - y); return s[s.length >> 1]; };
  (async () => {
    console.log(`threads ${threads}: ` + addons.map((a, i) => `${'ABCDEF'[i]}=${a}`).join(' '));
    for (const c of spec.split(';')) {
      const [M, K, N, bits, act] = c.split(',');
      for (const k of kids) await ask(k, { op: 'setup', threads: +threads, M: +M, K: +K, N: +N, bits: +bits, act });
      const peak = [];
      const ms = kids.map(() => []), cpu = kids.map(() => []), hashes = kids.map(() => new Set());
      for (let r = 0; r < +rounds; r++) {
        peak.push((await ask(kids[0], { op: 'probe', threads: +threads })).gf);
        for (let i = 0; i < kids.length; i++) { const j = (i + r) % kids.length; const x = await ask(kids[j], { op: 'run', calls: +calls }); ms[j].push(x.ms); cpu[j].push(x.cpu); hashes[j].add(x.hash); }
      }
      const fl = 2 * M * N * K;
      const same = kids.every((_, i) => [...hashes[i]].join() === [...hashes[0]].join()) ? 'same y' : 'DIFFERENT y';
      console.log(`m${M} ${bits}b ${act} ${K}x${N} | ` + ms.map((m, i) => `${'ABCDEF'[i]} ${med(m).toFixed(2)} ms ${(fl / med(m) / 1e6).toFixed(1)} GF/s ${(fl / med(m) / 1e4 / med(peak)).toFixed(0)}% (${(med(m) / med(ms[0])).toFixed(3)}) cpu ${med(cpu[i]).toFixed(1)} ms`).join(' | ') + ` | FMA peak ${med(peak).toFixed(0)} GF/s | ` + same);
    }
    for (const k of kids) k.send({ op: 'exit' });
  })();
}
