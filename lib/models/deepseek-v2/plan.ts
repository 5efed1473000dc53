/**
 * Memory plan: weight bytes at a bit width, KV-cache bytes per token for a cache type, and
 * whether weights + cache for a context fit this machine. Pure arithmetic over the tensor
 * inventory, so it runs before anything is loaded (`kvant plan`).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import { DeepSeekV2Config } from './config';
import { expectedTensors } from './tensors';

import { KV_BYTES_PER_VALUE, KvCacheType } from '../../kv/format';

export type { KvCacheType } from '../../kv/format';
export { KV_BYTES_PER_VALUE } from '../../kv/format';

export interface PlanOptions {
  /** Bits of quantized linear layers; 16 = unquantized (bf16). */
  bits?: 2 | 3 | 4 | 8 | 16;
  groupSize?: number;
  /** Quantize lm_head too (default true when bits < 16). */
  quantizeLmHead?: boolean;
  context?: number;
  kvCache?: KvCacheType;
  /** Element size of the per-head W_UK/W_UV matrices dequantized at load (2 = bf16, 4 = f32). */
  absorbedBytes?: 2 | 4;
}

export interface Plan {
  weights_bytes: number;
  /** Of which: the dequantized kv_b_proj per-head matrices kept for the absorbed decode. */
  absorbed_bytes: number;
  kv_bytes_per_token: number;
  kv_bytes: number;
  total_bytes: number;
  available_bytes: number;
  fits: boolean;
}

/** Packed bytes of one [N, K] linear at `bits` with groups of `g` input channels (AutoGPTQ layout). */
export function quantizedLinearBytes(n: number, k: number, bits: number, g: number): number {
  const groups = g > 0 ? Math.ceil(k / g) : 1;
  return (k * n * bits) / 8 /* qweight */ + groups * n * 2 /* scales f16 */ + (groups * n * bits) / 8 /* qzeros */ + k * 4; /* g_idx */
}

/** Memory the OS says is available (MemAvailable, capped by a cgroup memory limit). */
export function availableMemory(): number {
  let avail = os.freemem();
  try {
    const m = /MemAvailable:\s+(\d+) kB/.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
    if (m) avail = Number(m[1]) * 1024;
  } catch {
    // not Linux
  }
  try {
    const lim = fs.readFileSync('/sys/fs/cgroup/memory.max', 'utf8').trim();
    const cur = Number(fs.readFileSync('/sys/fs/cgroup/memory.current', 'utf8').trim());
    if (lim !== 'max') avail = Math.min(avail, Number(lim) - cur);
  } catch {
    // no cgroup v2 limit
  }
  return avail;
}

export function plan(cfg: DeepSeekV2Config, o: PlanOptions = {}): Plan {
  const bits = o.bits ?? 16;
  const g = o.groupSize ?? 128;
  const quantLm = o.quantizeLmHead ?? bits < 16;
  let weights = 0;
  for (const t of expectedTensors(cfg)) {
    const [a, b] = t.shape;
    const quantized = bits < 16 && (t.role === 'linear' || (t.role === 'lm_head' && quantLm));
    weights += quantized ? quantizedLinearBytes(a, b!, bits, g) : a * (b ?? 1) * 2;
  }
  const absorbed = cfg.numLayers * cfg.numHeads * (cfg.qkNopeHeadDim + cfg.vHeadDim) * cfg.kvLoraRank * (o.absorbedBytes ?? 2);
  const kvType = o.kvCache ?? 'bf16';
  // Per token and layer: the latent (any cache type) + the rotary key (always bf16).
  const kvPerToken = cfg.numLayers * (cfg.kvLoraRank * KV_BYTES_PER_VALUE[kvType] + cfg.qkRopeHeadDim * 2);
  const context = o.context ?? 4096;
  const kv = kvPerToken * context;
  const total = weights + absorbed + kv;
  const available = availableMemory();
  return {
    weights_bytes: weights + absorbed,
    absorbed_bytes: absorbed,
    kv_bytes_per_token: kvPerToken,
    kv_bytes: kv,
    total_bytes: total,
    available_bytes: available,
    fits: total <= available,
  };
}
