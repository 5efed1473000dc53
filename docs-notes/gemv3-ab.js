// Interleaved GEMV comparison (M = 1, g128) of several cases and addon builds in lock step, with
// the read ceiling measured in the same rounds. One child process per build; every child builds
// all weight sets up front (>= MIB MiB of distinct copies per (K, N, bits), shared by the f32 and
// int8 cases of that set), then each round runs every case on every child (child order rotated
// per round) and one read probe (best of the streaming-read variants over the same working-set
// size) in child 0. Prints medians over the rounds: ms per call, GB/s of packed weights +
// scales + zeros, % of the median read ceiling, and CPU ms per call. Needs dist/
// (npx tsc -p tsconfig.build.json).
// usage: nice -n -15 node docs-notes/gemv3-ab.js THREADS ROUNDS MIB "K,N,bits,act;..." A.node [B.node ...]
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
  const { randomQTensor } = require(root + '/dist/bench/gemm-cases');
  const { qlinear } = require(root + '/dist/ops/qlinear');
  const { Tensor } = require(root + '/dist/tensor');
  const { setThreads } = require(root + '/dist/backend');
  const { native: nativeOf } = require(root + '/dist/native');
  const sets = new Map();
  let cases = [];
  process.on('message', async (m) => {
    if (m.op === 'setup') {
      setThreads(m.threads);
      cases = m.cases.map((c) => {
        const key = `${c.K},${c.N},${c.bits}`;
        if (!sets.has(key)) {
          const w0 = randomQTensor(c.K, c.N, c.bits, 128, 1);
          const bytes = w0.qweight.byteLength + w0.qzeros.byteLength + w0.scales.byteLength;
          const copies = Math.max(2, Math.ceil((m.mib << 20) / bytes));
          const ws = [w0, ...Array.from({ length: copies - 1 }, (_, i) => randomQTensor(c.K, c.N, c.bits, 128, 10 * i + 11))];
          sets.set(key, { ws, bytes });
        }
        const s = sets.get(key);
        const x = Tensor.random([1, c.K], 'f32', { seed: 7, dist: 'normal' });
        const y = Tensor.zeros([1, c.N], 'f32', { native: true });
        for (let i = 0; i < 2 * s.ws.length; i++) qlinear(x, s.ws[i % s.ws.length], { out: y, activations: c.act });
        return { ...c, ...s, x, y };
      });
      process.send({ bytes: cases.map((c) => c.bytes), copies: cases.map((c) => c.ws.length) });
    } else if (m.op === 'run') {
      const c = cases[m.i];
      const t = [];
      const c0 = process.cpuUsage();
      for (let i = 0; i < c.ws.length; i++) {
        const t0 = performance.now();
        qlinear(c.x, c.ws[i], { out: c.y, activations: c.act });
        t.push(performance.now() - t0);
      }
      const cu = process.cpuUsage(c0);
      t.sort((a, b) => a - b);
      process.send({ ms: t[t.length >> 1], cpu: (cu.user + cu.system) / 1e3 / c.ws.length });
    } else if (m.op === 'probe') {
      const v = await nativeOf().probeReadVariants(m.mib << 20, 1);
      process.send({ gbs: Math.max(...v.map((r) => r.bytes / r.seconds / 1e9)) });
    } else process.exit(0);
  });
} else {
  const [threads, rounds, mib, spec, ...addons] = process.argv.slice(2);
  const cases = spec.split(';').map((s) => {
    const [K, N, bits, act] = s.split(',');
    return { K: +K, N: +N, bits: +bits, act };
  });
  const kids = addons.map((a) => fork(__filename, ['child', a]));
  const ask = (k, m) => new Promise((r) => { k.once('message', r); k.send(m); });
  const med = (a) => { const s = [...a].sort((x, y) => x - y); return s[s.length >> 1]; };
  (async () => {
    console.log(`threads ${threads}, ${rounds} rounds, >= ${mib} MiB per weight set: ` + addons.map((a, i) => `${'ABCDEF'[i]}=${a}`).join(' '));
    let info;
    for (const k of kids) info = await ask(k, { op: 'setup', threads: +threads, mib: +mib, cases });
    const ms = cases.map(() => kids.map(() => [])), cpu = cases.map(() => kids.map(() => []));
    const ceil = [];
    for (let r = 0; r < +rounds; r++) {
      const p = await ask(kids[0], { op: 'probe', mib: +mib });
      ceil.push(p.gbs);
      for (let ci = 0; ci < cases.length; ci++)
        for (let i = 0; i < kids.length; i++) {
          const j = (i + r + ci) % kids.length;
          const x = await ask(kids[j], { op: 'run', i: ci });
          ms[ci][j].push(x.ms);
          cpu[ci][j].push(x.cpu);
        }
    }
    const rc = med(ceil);
    console.log(`read ceiling (best variant, median of rounds) ${rc.toFixed(1)} GB/s (range ${Math.min(...ceil).toFixed(1)}..${Math.max(...ceil).toFixed(1)})`);
    for (let ci = 0; ci < cases.length; ci++) {
      const c = cases[ci], b = info.bytes[ci];
      const cols = kids.map((_, i) => {
        const t = med(ms[ci][i]), gbs = b / t / 1e6;
        return `${'ABCDEF'[i]} ${t.toFixed(4)} ms ${gbs.toFixed(1)} GB/s ${((100 * gbs) / rc).toFixed(0)}% cpu ${med(cpu[ci][i]).toFixed(4)}`;
      });
      const ratio = kids.length > 1 ? ` | B/A ${(med(ms[ci][1]) / med(ms[ci][0])).toFixed(3)}` : '';
      console.log(`${c.bits}b ${c.act} ${c.K}x${c.N} (${info.copies[ci]} copies) | ${cols.join(' | ')}${ratio}`);
    }
    for (const k of kids) k.send({ op: 'exit' });
  })();
}
