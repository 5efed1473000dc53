// Where a decode step's time outside native calls goes: the JS gap before each native binding
// call, attributed to that call (by its position in the step), averaged over 200 steady-state
// steps, plus the tail after the step's last call. Every binding function is wrapped in a timer
// (the wrapper's own ~0.2 us per call counts as JS).
//   node docs-notes/decode-gaps.js ROOT MODEL_DIR [WARM_STEPS=600] [f32|int8] [--sorted]
// ROOT: a checkout with dist/ and build/Release/kvant.node. Run under `nice -n -15`.
const [root, dir, warmArg, actArg, sortArg] = process.argv.slice(2);
const warm = Number(warmArg ?? 600);
const { DeepSeekV2Model } = require(root + '/dist/models/deepseek-v2/model');
const { native } = require(root + '/dist/native');
const m = DeepSeekV2Model.load(dir, { kvCache: 'f16', activations: actArg ?? 'f32' });
const s = m.cache.open(warm + 400);
m.prefill(s, [1]);
for (let i = 0; i < warm; i++) m.decode([s], [(i * 13) % 1000 + 5]);
const b = native();
let last = 0, on = false, idx = 0, nat = 0;
const gaps = new Map();
for (const k of Object.keys(b)) {
  const f = b[k];
  if (typeof f !== 'function' || /^[A-Z]/.test(k)) continue; // classes stay as they are
  b[k] = function (...a) {
    const t = performance.now();
    if (on) {
      const key = `${String(idx).padStart(3)} ${k}`;
      gaps.set(key, (gaps.get(key) ?? 0) + (t - last));
      idx++;
    }
    try {
      return f.apply(this, a);
    } finally {
      last = performance.now();
      nat += last - t;
    }
  };
}
const N = 200;
let tail = 0, tot = 0;
for (let i = 0; i < N; i++) {
  idx = 0;
  on = true;
  const t0 = performance.now();
  last = t0;
  m.decode([s], [(i * 7) % 1000 + 5]);
  const t1 = performance.now();
  tail += t1 - last;
  tot += t1 - t0;
  on = false;
}
let js = tail;
for (const v of gaps.values()) js += v;
console.log(`step ${(tot / N).toFixed(2)} ms, native ${(nat / N).toFixed(2)} ms, JS ${(js / N).toFixed(3)} ms, tail after the last call ${((tail / N) * 1000).toFixed(1)} us, ${idx} native calls per step`);
const rows = [...gaps].sort(sortArg === '--sorted' ? (x, y) => y[1] - x[1] : (x, y) => (x[0] < y[0] ? -1 : 1));
for (const [k, v] of rows) console.log(`${((v / N) * 1000).toFixed(1).padStart(7)} us before ${k}`);
