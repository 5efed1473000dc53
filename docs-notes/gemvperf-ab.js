// A/B driver: one child process per addon build, driven in lock step; medians per case.
// usage: node ab.js ROUNDS CALLS 'regex' A.node B.node [...]
// Cases come from dist/bench/gemm-cases.js with llc_bytes = 32 MiB (this machine); the ceiling probe is the best read variant over 256 MiB.
const { fork } = require('node:child_process');
const Module = require('node:module');
const root = process.env.ROOT || require('node:path').join(__dirname, '..');
if (process.argv[2] === 'child') {
  const addon = process.argv[3];
  const orig = Module._load;
  Module._load = function (req, ...rest) {
    if (req === 'node-gyp-build') return () => require(addon);
    return orig.call(this, req, ...rest);
  };
  const { gemmCases } = require(root + '/dist/bench/gemm-cases');
  const { native } = require(root + '/dist/native');
  const machine = { llc_bytes: 32 << 20 };
  const cases = gemmCases(machine, false);
  let body = null, cur = null;
  process.on('message', async (m) => {
    if (m.op === 'setup') { cur = cases.find((c) => c.name === m.name); body = cur.setup(); for (let i = 0; i < (cur.warmup ?? 1); i++) body(); process.send({ ok: 1 }); }
    else if (m.op === 'run') {
      const t = []; const c0 = process.cpuUsage();
      for (let i = 0; i < m.calls; i++) { const t0 = performance.now(); body(); t.push(performance.now() - t0); }
      const cu = process.cpuUsage(c0);
      t.sort((a, b) => a - b);
      process.send({ ms: t[t.length >> 1], cpu: (cu.user + cu.system) / 1e3 / m.calls });
    } else if (m.op === 'teardown') { cur.teardown?.(); process.send({ ok: 1 }); }
    else if (m.op === 'probe') {
      if (!native().probeReadVariants) return process.send({ gbps: null });
      const v = await native().probeReadVariants(256 << 20, 5);
      process.send({ gbps: Math.max(...v.map((r) => r.bytes / r.seconds / 1e9)) });
    } else if (m.op === 'list') process.send({ names: cases.map((c) => c.name) });
    else if (m.op === 'exit') process.exit(0);
  });
} else {
  const [rounds, calls, re, ...addons] = process.argv.slice(2);
  const kids = addons.map((a) => fork(__filename, ['child', a]));
  const ask = (k, m) => new Promise((r) => { k.once('message', r); k.send(m); });
  const med = (a) => { const s = [...a].sort((x, y) => x - y); return s[s.length >> 1]; };
  (async () => {
    const names = (await ask(kids[0], { op: 'list' })).names.filter((n) => new RegExp(re).test(n));
    const probe = async () => Math.max(...(await Promise.all(kids.map(async (k) => (await ask(k, { op: 'probe' })).gbps))).filter((x) => x));
    const p0 = await probe();
    console.log(`read ceiling (best variant, 256 MiB) at start: ${p0.toFixed(1)} GB/s`);
    console.log(['case', ...addons.map((a, i) => `${'ABCDEF'[i]} ms`), ...addons.map((a, i) => `${'ABCDEF'[i]} cpu-ms`)].join(' | '));
    for (const n of names) {
      for (const k of kids) await ask(k, { op: 'setup', name: n });
      const ms = kids.map(() => []), cpu = kids.map(() => []);
      for (let r = 0; r < +rounds; r++)
        for (let i = 0; i < kids.length; i++) { const j = (i + r) % kids.length; const x = await ask(kids[j], { op: 'run', calls: +calls }); ms[j].push(x.ms); cpu[j].push(x.cpu); }
      for (const k of kids) await ask(k, { op: 'teardown' });
      console.log([n, ...ms.map((m) => med(m).toFixed(3)), ...cpu.map((m) => med(m).toFixed(3))].join(' | '));
    }
    const p1 = await probe();
    console.log(`read ceiling at end: ${p1.toFixed(1)} GB/s`);
    for (const k of kids) k.send({ op: 'exit' });
  })();
}
