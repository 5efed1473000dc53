/** `kvant plan`: memory for weights and cache, and whether it fits this machine. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { KvantError } from '../errors';
import { parseConfig } from '../models/deepseek-v2/config';
import { KV_BYTES_PER_VALUE, KvCacheType, plan } from '../models/deepseek-v2/plan';

const gib = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

export function planCommand(argv: string[]): number {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      bits: { type: 'string' },
      'group-size': { type: 'string' },
      context: { type: 'string' },
      'kv-cache': { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  if (!values.model) throw new KvantError('KVANT_IO', 'Expected --model DIR (a checkpoint folder with config.json)');
  const cfgPath = path.join(values.model, 'config.json');
  let raw: unknown;
  try {
    raw = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
  } catch (e) {
    throw new KvantError((e as NodeJS.ErrnoException).code ? 'KVANT_IO' : 'KVANT_FORMAT', `Cannot read ${cfgPath}: ${(e as Error).message}`);
  }
  const cfg = parseConfig(raw);
  // Default bit width: the checkpoint's own quantization, else 16-bit.
  const q = (raw as { quantization_config?: { bits?: number; group_size?: number } }).quantization_config;
  const bits = Number(values.bits ?? q?.bits ?? 16);
  if (![2, 3, 4, 8, 16].includes(bits)) throw new KvantError('KVANT_RANGE', `Expected --bits 2, 3, 4, 8 or 16 but received ${values.bits}`);
  const groupSize = Number(values['group-size'] ?? q?.group_size ?? 128);
  const context = Number(values.context ?? 4096);
  if (!Number.isInteger(context) || context < 1) throw new KvantError('KVANT_RANGE', `Expected --context to be a positive integer but received ${values.context}`);
  const kv = (values['kv-cache'] ?? 'bf16') as KvCacheType;
  if (!(kv in KV_BYTES_PER_VALUE)) throw new KvantError('KVANT_RANGE', `Expected --kv-cache f16, bf16, q8, q6 or q4 but received ${values['kv-cache']}`);
  const p = plan(cfg, { bits: bits as 2 | 3 | 4 | 8 | 16, groupSize, context, kvCache: kv });
  if (values.json) {
    const { weights_bytes, kv_bytes_per_token, kv_bytes, total_bytes, available_bytes, fits } = p;
    console.log(JSON.stringify({ weights_bytes, kv_bytes_per_token, kv_bytes, total_bytes, available_bytes, fits }));
    return 0;
  }
  console.log(`weights (${bits === 16 ? 'bf16' : `${bits}-bit g${groupSize}`}): ${gib(p.weights_bytes)} (incl. ${gib(p.absorbed_bytes)} of per-head W_UK/W_UV)`);
  console.log(`KV cache (${kv}): ${p.kv_bytes_per_token} B/token x ${context} tokens = ${gib(p.kv_bytes)}`);
  console.log(`total: ${gib(p.total_bytes)}; available: ${gib(p.available_bytes)} -> ${p.fits ? 'fits' : 'does NOT fit'}`);
  return 0;
}
