/**
 * Fixtures for the DeepSeek-V2 model tests: tiny random checkpoints (made once per config
 * variant and cached for the test file), an f64 weight getter over a checkpoint for the
 * reference forward, and the per-position error ‖Δlogits‖ / ‖reference logits‖.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Checkpoint } from '../../lib/io/checkpoint';
import { Tensor } from '../../lib/tensor';
import { writeSafetensors } from '../../lib/io/safetensors';
import { parseConfig } from '../../lib/models/deepseek-v2/config';
import { makeModel } from '../../lib/models/deepseek-v2/make-model';
import { expectedTensors } from '../../lib/models/deepseek-v2/tensors';
import { isQuantized, loadQTensor, readQuantizeConfig } from '../../lib/quant/checkpoint';
import { QuantBits } from '../../lib/quant/format';
import { dequantize, quantizeRtn } from '../../lib/quant/quantize';
import { RefWeight, WeightGetter } from './reference-forward';

const made = new Map<string, string>();

/** A tiny-preset checkpoint folder for (dtype, override, seed), made once per process. */
export function tinyModel(dtype: 'f32' | 'bf16', configOverride: Record<string, unknown> = {}, seed = 1, layers?: number): string {
  const key = JSON.stringify([dtype, configOverride, seed, layers]);
  let dir = made.get(key);
  if (!dir) {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-model-'));
    makeModel({ preset: 'tiny', out: dir, seed, dtype, configOverride, layers });
    made.set(key, dir);
  }
  return dir;
}

/** Reads every weight of a checkpoint as f64 (exact for f32/f16/bf16 files). */
export function f64Weights(dir: string): WeightGetter {
  const ck = Checkpoint.open(dir);
  const cache = new Map<string, RefWeight>();
  return (name: string) => {
    let w = cache.get(name);
    if (!w) {
      const t = ck.tensor(name);
      w = { shape: [...t.shape], data: Float64Array.from(t.toFloat32Array()) };
      cache.set(name, w);
    }
    return w;
  };
}

/** ‖got − ref‖₂ / ‖ref‖₂ of one row. */
export function relErr(got: ArrayLike<number>, ref: ArrayLike<number>): number {
  if (got.length !== ref.length) throw new Error(`length ${got.length} vs ${ref.length}`);
  let d = 0;
  let r = 0;
  for (let i = 0; i < ref.length; i++) {
    if (!Number.isFinite(got[i])) return Infinity;
    d += (got[i] - ref[i]) ** 2;
    r += ref[i] ** 2;
  }
  return Math.sqrt(d / r);
}

/** Deterministic pseudo-random token ids in 0..vocab-1. */
export function randomTokens(n: number, vocab: number, seed: number): number[] {
  let s = seed >>> 0 || 1;
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s % vocab;
  });
}


/**
 * A test-only latent "cache" that keeps every row exactly (f32, as the forward computed it) and
 * runs the absorbed attention in f64: the forward functions' cache IO with no storage rounding,
 * so their results can be held to the f32 bound against the plain reference.
 */
export class ExactLatentStore {
  private readonly rows: Float32Array[][]; // [layer][token] -> row
  constructor(layers: number, private readonly width: number, private readonly latent: number) {
    this.rows = Array.from({ length: layers }, () => []);
  }
  append(layer: number, rows: Tensor): void {
    const d = rows.data() as Float32Array;
    for (let t = 0; t < rows.shape[0]; t++) this.rows[layer].push(d.slice(t * this.width, (t + 1) * this.width));
  }
  all(layer: number): Tensor {
    const out = Tensor.zeros([this.rows[layer].length, this.width], 'f32');
    const d = out.data() as Float32Array;
    this.rows[layer].forEach((r, t) => d.set(r, t * this.width));
    return out;
  }
  /** q [1, H, L+R] -> out [1, H, L] over every stored row (one sequence). */
  attend(layer: number, q: Tensor, scale: number): Tensor {
    const [B, H, W] = q.shape;
    if (B !== 1 || W !== this.width) throw new Error('ExactLatentStore holds one sequence');
    const L = this.latent;
    const qd = q.data() as Float32Array;
    const out = Tensor.zeros([1, H, L], 'f32');
    const od = out.data() as Float32Array;
    const rows = this.rows[layer];
    for (let h = 0; h < H; h++) {
      const s = rows.map((r) => {
        let a = 0;
        for (let i = 0; i < W; i++) a += qd[h * W + i] * r[i];
        return a * scale;
      });
      const m = Math.max(...s);
      const p = s.map((v) => Math.exp(v - m));
      const z = p.reduce((a, b) => a + b, 0);
      for (let i = 0; i < L; i++) {
        let o = 0;
        rows.forEach((r, t) => (o += (p[t] / z) * r[i]));
        od[h * L + i] = o;
      }
    }
    return out;
  }
}

/**
 * A GPTQ copy of a float checkpoint: every linear layer (role 'linear' / 'lm_head') for which
 * `quantize(name)` holds is RTN-quantized into the AutoGPTQ tensor set (prefix.qweight, .qzeros,
 * .scales, .g_idx); the rest is copied as is (a mixed checkpoint), plus quantize_config.json.
 */
export function gptqCopy(src: string, o: { bits: QuantBits; groupSize: number; quantize?: (name: string) => boolean; config?: Record<string, unknown> }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-gptq-'));
  for (const f of fs.readdirSync(src)) if (!f.endsWith('.safetensors') && !f.endsWith('.index.json')) fs.copyFileSync(path.join(src, f), path.join(dir, f));
  const ck = Checkpoint.open(src);
  const cfg = parseConfig(ck.config);
  const out: [string, Tensor][] = [];
  for (const s of expectedTensors(cfg)) {
    const t = ck.tensor(s.name);
    if ((s.role === 'linear' || s.role === 'lm_head') && (o.quantize?.(s.name) ?? true)) {
      const q = quantizeRtn(t, { bits: o.bits, groupSize: o.groupSize, name: s.name });
      const p = s.name.replace(/\.weight$/, '');
      out.push([`${p}.qweight`, q.qweight], [`${p}.qzeros`, q.qzeros], [`${p}.scales`, q.scales], [`${p}.g_idx`, q.gIdx!]);
    } else {
      out.push([s.name, t]);
    }
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), out);
  ck.close();
  fs.writeFileSync(
    path.join(dir, 'quantize_config.json'),
    JSON.stringify({ bits: o.bits, group_size: o.groupSize, desc_act: false, sym: true, damp_percent: 0.01, static_groups: false, checkpoint_format: 'gptq', quant_method: 'gptq', ...(o.config ?? {}) }),
  );
  return dir;
}

/** f64 weights of a (possibly GPTQ) checkpoint: quantized linears dequantized by the library. */
export function f64WeightsDequantized(dir: string): WeightGetter {
  const ck = Checkpoint.open(dir);
  const qc = readQuantizeConfig(ck);
  const plain = f64Weights(dir);
  const cache = new Map<string, RefWeight>();
  return (name: string) => {
    const p = name.replace(/\.weight$/, '');
    if (!qc || !isQuantized(ck, p)) return plain(name);
    let w = cache.get(name);
    if (!w) {
      const d = dequantize(loadQTensor(ck, p, qc), 'f32');
      w = { shape: [...d.shape], data: Float64Array.from(d.data() as Float32Array) };
      cache.set(name, w);
    }
    return w;
  };
}

/** A copy of a checkpoint with every tensor passed through `edit` (undefined drops it). */
export function rewriteCopy(src: string, edit: (name: string, t: Tensor) => Tensor | undefined): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kvant-rw-'));
  for (const f of fs.readdirSync(src)) if (!f.endsWith('.safetensors') && !f.endsWith('.index.json')) fs.copyFileSync(path.join(src, f), path.join(dir, f));
  const ck = Checkpoint.open(src);
  const out: [string, Tensor][] = [];
  for (const n of ck.names().sort()) {
    const t = edit(n, ck.tensor(n));
    if (t) out.push([n, t]);
  }
  writeSafetensors(path.join(dir, 'model.safetensors'), out);
  ck.close();
  return dir;
}
