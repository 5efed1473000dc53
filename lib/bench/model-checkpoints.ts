/**
 * Checkpoints the end-to-end benchmarks run on, made once into a cache folder
 * ($KVANT_BENCH_DIR, default /tmp/kvant-bench-model) and reused by later runs. A folder counts
 * as made only once its `.complete` marker exists, so an interrupted run is redone.
 *
 * - `floatCheckpoint(preset, layers)`: `kvant make-model` output (bf16), or $KVANT_LITE_SOURCE
 *   (a lite checkpoint made earlier) when it has exactly that many layers. Making the lite preset
 *   is slow on a loaded machine (random numbers for ~1.1 G parameters per MoE layer), so a
 *   lite checkpoint with more layers is grown from a smaller one already in the cache: the
 *   extra MoE layers repeat the last layer's (random) tensors under their own names, in their
 *   own bytes on disk. Speed and memory traffic are those of a real model of that depth; only
 *   the values repeat, which random weights make meaningless anyway.
 * - `rtnCheckpoint(src, bits, group, lmHead)`: a GPTQ-format (AutoGPTQ tensor set) copy where
 *   every linear layer — and lm_head when asked — is RTN-quantized. For speed RTN and GPTQ
 *   checkpoints are identical in layout and bytes; GPTQ's calibration only changes the values.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Checkpoint } from '../io/checkpoint';
import { LazyTensor, writeShardedSafetensors } from '../io/safetensors';
import { parseConfig } from '../models/deepseek-v2/config';
import { makeModel } from '../models/deepseek-v2/make-model';
import { PresetName } from '../models/deepseek-v2/presets';
import { expectedTensors } from '../models/deepseek-v2/tensors';
import { QuantBits } from '../quant/format';
import { quantizeRtn } from '../quant/quantize';
import { Tensor } from '../tensor';

/** The cache folder of benchmark checkpoints. */
export function benchDir(): string {
  return process.env.KVANT_BENCH_DIR || path.join(os.tmpdir(), 'kvant-bench-model');
}

const MARK = '.complete';
const done = (dir: string) => fs.existsSync(path.join(dir, MARK));
const SHARD = 2 * 2 ** 30;

function copySideFiles(src: string, dst: string, skipConfig: boolean): void {
  for (const f of fs.readdirSync(src)) {
    if (f.endsWith('.safetensors') || f.endsWith('.index.json') || f === MARK || (skipConfig && f === 'config.json')) continue;
    const p = path.join(src, f);
    if (fs.statSync(p).isFile()) fs.copyFileSync(p, path.join(dst, f));
  }
}

/** Lite checkpoints in the cache with fewer than `layers` layers (at least 2: a dense and an MoE layer). */
function smallerLite(layers: number): string | null {
  for (let l = layers - 1; l >= 2; l--) {
    const d = path.join(benchDir(), `lite-${l}-bf16`);
    if (done(d)) return d;
  }
  const extra = process.env.KVANT_LITE_SOURCE;
  if (extra && fs.existsSync(path.join(extra, 'config.json'))) {
    const cfg = JSON.parse(fs.readFileSync(path.join(extra, 'config.json'), 'utf8')) as Record<string, unknown>;
    if (cfg.hidden_size === 2048 && cfg.n_routed_experts === 64 && (cfg.num_hidden_layers as number) >= 2 && (cfg.num_hidden_layers as number) < layers) return extra;
  }
  return null;
}

/** Writes a `layers`-layer copy of lite checkpoint `src`, its extra layers repeating the last one's tensors. */
function growLite(src: string, dst: string, layers: number, log: (s: string) => void): void {
  const ck = Checkpoint.open(src);
  try {
    const raw = ck.config as Record<string, unknown>;
    const have = raw.num_hidden_layers as number;
    const cfg = parseConfig({ ...raw, num_hidden_layers: layers });
    fs.rmSync(dst, { recursive: true, force: true });
    fs.mkdirSync(dst, { recursive: true });
    copySideFiles(src, dst, true);
    const last = have - 1;
    const lazy: LazyTensor[] = expectedTensors(cfg).map((s) => {
      const from = s.layer !== null && s.layer > last ? s.name.replace(`model.layers.${s.layer}.`, `model.layers.${last}.`) : s.name;
      const info = ck.info(from);
      return { name: s.name, dtype: ck.tensor(from).dtype, shape: info.shape, make: () => copyOf(ck.tensor(from)) };
    });
    log(`growing ${src} (${have} layers) to ${layers} layers in ${dst}…`);
    writeShardedSafetensors(dst, lazy, SHARD);
    fs.writeFileSync(path.join(dst, 'config.json'), JSON.stringify({ ...raw, num_hidden_layers: layers }, null, 2) + '\n');
    fs.writeFileSync(path.join(dst, MARK), `grown from ${src}\n`);
  } finally {
    ck.close();
  }
}

/** A bf16 float checkpoint of `preset` with `layers` layers, made once (see the module comment). */
export function floatCheckpoint(preset: PresetName, layers: number, log: (s: string) => void = () => undefined): string {
  const dir = path.join(benchDir(), `${preset}-${layers}-bf16`);
  if (done(dir)) return dir;
  const given = process.env.KVANT_LITE_SOURCE;
  if (preset === 'lite' && given && fs.existsSync(path.join(given, 'config.json'))) {
    const cfg = JSON.parse(fs.readFileSync(path.join(given, 'config.json'), 'utf8')) as Record<string, unknown>;
    if (cfg.hidden_size === 2048 && cfg.n_routed_experts === 64 && cfg.num_hidden_layers === layers) return given; // used in place, read only
  }
  const src = preset === 'lite' ? smallerLite(layers) : null;
  if (src) {
    growLite(src, dir, layers, log);
    return dir;
  }
  log(`making ${preset} with ${layers} layers in ${dir} (slow for lite)…`);
  fs.rmSync(dir, { recursive: true, force: true });
  makeModel({ preset, out: dir, layers, dtype: 'bf16', seed: 1 });
  fs.writeFileSync(path.join(dir, MARK), 'kvant make-model\n');
  return dir;
}

/**
 * A GPTQ-format copy of float checkpoint `src` with every linear (and lm_head when `lmHead`)
 * RTN-quantized at `bits`/`group`, made once next to it.
 */
export function rtnCheckpoint(src: string, bits: QuantBits, group: number, lmHead: boolean, log: (s: string) => void = () => undefined): string {
  const dir = `${src.replace(/-bf16$/, '')}-rtn${bits}g${group}${lmHead ? '' : '-lmbf16'}`;
  if (done(dir)) return dir;
  log(`RTN-quantizing ${src} to ${bits}-bit g${group}${lmHead ? ' (lm_head too)' : ''} in ${dir}…`);
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const ck = Checkpoint.open(src);
  try {
    const cfg = parseConfig(ck.config);
    copySideFiles(src, dir, false);
    const lazy: LazyTensor[] = [];
    for (const s of expectedTensors(cfg)) {
      if (s.role === 'linear' || (s.role === 'lm_head' && lmHead)) {
        const p = s.name.replace(/\.weight$/, '');
        // One quantization per tensor, shared by its four outputs. The writer orders a shard's
        // tensors by element size, so the i32 parts (disposed by the writer once written) come
        // well before the f16 scales: only the scales stay alive in between.
        let q: ReturnType<typeof quantizeRtn> | null = null;
        const get = () => (q ??= quantizeRtn(ck.tensor(s.name), { bits, groupSize: group, name: s.name }));
        const [N, K] = s.shape as [number, number];
        const groups = Math.ceil(K / group);
        lazy.push(
          { name: `${p}.qweight`, dtype: 'i32', shape: [(K * bits) / 32, N], make: () => get().qweight },
          { name: `${p}.qzeros`, dtype: 'i32', shape: [groups, (N * bits) / 32], make: () => get().qzeros },
          { name: `${p}.g_idx`, dtype: 'i32', shape: [K], make: () => get().gIdx! },
          { name: `${p}.scales`, dtype: 'f16', shape: [groups, N], make: () => { const t = get().scales; q = null; return t; } },
        );
      } else {
        const info = ck.info(s.name);
        lazy.push({ name: s.name, dtype: ck.tensor(s.name).dtype, shape: info.shape, make: () => copyOf(ck.tensor(s.name)) });
      }
    }
    writeShardedSafetensors(dir, lazy, SHARD);
    fs.writeFileSync(
      path.join(dir, 'quantize_config.json'),
      JSON.stringify({ bits, group_size: group, desc_act: false, sym: true, damp_percent: 0.01, static_groups: false, lm_head: lmHead, checkpoint_format: 'gptq', quant_method: 'gptq', quantizer: 'kvant bench (RTN)' }, null, 2) + '\n',
    );
    fs.writeFileSync(path.join(dir, MARK), `RTN ${bits}-bit g${group} of ${src}\n`);
  } finally {
    ck.close();
  }
  return dir;
}

/** The writer disposes what make() returns: hand it a native copy, never a view of the mapping. */
function copyOf(t: Tensor): Tensor {
  const c = Tensor.zeros(t.shape, t.dtype, { native: true });
  c.byteView().set(t.byteView());
  return c;
}
