// A/B of the decode step's time outside native calls: one checkpoint loaded through two builds
// (each a checkout with its own dist/ and build/Release/kvant.node), in one process, stepping
// alternately in rounds of 20 decode steps; medians over 10 rounds.
//   node docs-notes/decode-js-ab.js ROOT_A ROOT_B MODEL_DIR [WARM_STEPS]
// WARM_STEPS (default 10) untimed steps first: V8 optimizes the step's JS over a few hundred.
const [rootA, rootB, dir, warmArg] = process.argv.slice(2);
const warm = Number(warmArg ?? 10);
const mk = (root) => {
  const fwd = require(root + '/dist/models/deepseek-v2/forward');
  const { DeepSeekV2Model } = require(root + '/dist/models/deepseek-v2/model');
  const { native } = require(root + '/dist/native');
  const m = DeepSeekV2Model.load(dir, { kvCache: 'f16' });
  const s = m.cache.open(warm + 400);
  m.prefill(s, [1]);
  for (let i = 0; i < warm; i++) m.decode([s], [(i * 13) % 1000 + 5]);
  const b = native();
  const st = { nat: 0, inStep: 0 };
  for (const k of Object.keys(b)) {
    const f = b[k];
    if (typeof f !== 'function' || /^[A-Z]/.test(k)) continue; // classes stay as they are
    b[k] = function (...a) { const t = performance.now(); try { return f.apply(this, a); } finally { st.nat += performance.now() - t; } };
  }
  const ds = fwd.decodeStep;
  fwd.decodeStep = function (...a) { const t = performance.now(); try { return ds.apply(this, a); } finally { st.inStep += performance.now() - t; } };
  return { m, s, st };
};
const A = mk(rootA), B = mk(rootB);
const res = { A: [], B: [] };
for (let rep = 0; rep < 10; rep++)
  for (const [name, x] of [['A', A], ['B', B]]) {
    x.st.nat = 0;
    x.st.inStep = 0;
    const N = 20;
    const t0 = performance.now();
    for (let i = 0; i < N; i++) x.m.decode([x.s], [(rep * 131 + i * 7) % 1000 + 5]);
    const wall = (performance.now() - t0) / N;
    res[name].push({ wall, js: (x.st.inStep - x.st.nat) / N, pct: (100 * (wall - x.st.nat / N)) / wall });
  }
for (const k of ['A', 'B']) {
  const r = res[k];
  const med = (f) => r.map(f).sort((a, b) => a - b)[r.length >> 1];
  console.log(k, 'step ms', med((x) => x.wall).toFixed(2), 'JS in decodeStep ms', med((x) => x.js).toFixed(3), 'outside native %', med((x) => x.pct).toFixed(2));
}
