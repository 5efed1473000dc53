// Lock-step A/B of qlinear GEMV (M = 1, g128) between addon builds: one child process per build,
// alternating rounds, medians. Needs dist/ (npx tsc -p tsconfig.build.json).
// usage: node docs-notes/gemvq-ab.js THREADS COPIES ROUNDS CALLS "K,N,bits,act[,copies];..." A.node B.node ...
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
  let ws = [], x, y, act;
  process.on('message', (m) => {
    if (m.op === 'setup') {
      setThreads(m.threads);
      ws.forEach((w) => { w.qweight.dispose(); w.qzeros.dispose(); w.scales.dispose(); });
      ws = Array.from({ length: m.copies }, (_, i) => randomQTensor(m.K, m.N, m.bits, 128, 10 * i + 1));
      x = Tensor.random([1, m.K], 'f32', { seed: 7, dist: 'normal' }); y = Tensor.zeros([1, m.N], 'f32', { native: true }); act = m.act;
      for (let i = 0; i < 2 * m.copies; i++) qlinear(x, ws[i % ws.length], { out: y, activations: act });
      process.send({ bytes: ws[0].qweight.byteLength + ws[0].qzeros.byteLength + ws[0].scales.byteLength });
    } else if (m.op === 'run') {
      const t = []; const c0 = process.cpuUsage();
      for (let i = 0; i < m.calls; i++) { const t0 = performance.now(); qlinear(x, ws[i % ws.length], { out: y, activations: act }); t.push(performance.now() - t0); }
      const cu = process.cpuUsage(c0); t.sort((a, b) => a - b);
      process.send({ ms: t[t.length >> 1], cpu: (cu.user + cu.system) / 1e3 / m.calls, y: Array.from(y.toArray ? y.toArray().slice(0, 4) : []) });
    } else process.exit(0);
  });
} else {
  const [threads, copies, rounds, calls, spec, ...addons] = process.argv.slice(2);
  const kids = addons.map((a) => fork(__filename, ['child', a]));
  const ask = (k, m) => new Promise((r) => { k.once('message', r); k.send(m); });
  const med = (a) => { const s = [...a].sort((x, y) => x - y); return s[s.length >> 1]; };
  (async () => {
    console.log(`threads ${threads} copies ${copies}: ` + addons.map((a, i) => `${'ABCDEF'[i]}=${a}`).join(' '));
    for (const c of spec.split(';')) {
      const [K, N, bits, act, cp] = c.split(',');
      let bytes = 0;
      for (const k of kids) bytes = (await ask(k, { op: 'setup', threads: +threads, copies: +(cp || copies), K: +K, N: +N, bits: +bits, act })).bytes;
      const ms = kids.map(() => []), cpu = kids.map(() => []);
      for (let r = 0; r < +rounds; r++)
        for (let i = 0; i < kids.length; i++) { const j = (i + r) % kids.length; const x = await ask(kids[j], { op: 'run', calls: +calls }); ms[j].push(x.ms); cpu[j].push(x.cpu); }
      console.log(`${bits}b ${act} ${K}x${N} | ` + ms.map((m, i) => `${'ABCDEF'[i]} ${med(m).toFixed(4)} ms ${(bytes / med(m) / 1e6).toFixed(1)} GB/s`).join(' | ') + ' | ratio B/A ' + (med(ms[1] || ms[0]) / med(ms[0])).toFixed(3));
    }
    for (const k of kids) k.send({ op: 'exit' });
  })();
}
