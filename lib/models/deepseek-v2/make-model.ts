/**
 * Writes a random DeepSeek-V2 checkpoint in the real file layout: config.json, safetensors
 * (sharded with an index when large), tokenizer.json and tokenizer_config.json. Weights are
 * seeded: the same arguments give the same files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KvantError } from '../../errors';
import { LazyTensor, writeShardedSafetensors } from '../../io/safetensors';
import { Tensor } from '../../tensor';
import { makeByteLevelBpe } from '../../text/bpe';
import { CHAT_TEMPLATE, TOKENIZER_CORPUS } from '../../text/corpus';
import { parseConfig } from './config';
import { PresetName, initStd, presetConfig } from './presets';
import { expectedTensors } from './tensors';

export interface MakeModelOptions {
  preset: PresetName;
  out: string;
  layers?: number;
  seed?: number;
  dtype?: 'f32' | 'bf16';
  /** Merged over the preset's config.json (e.g. {"q_lora_rank": null}). */
  configOverride?: Record<string, unknown>;
  maxShardBytes?: number;
  onProgress?: (done: number, total: number, what: string) => void;
}

export const BOS_TOKEN = '<｜begin▁of▁sentence｜>';
export const EOS_TOKEN = '<｜end▁of▁sentence｜>';

export function makeModel(o: MakeModelOptions): { config: Record<string, unknown>; bytes: number } {
  if (o.preset !== 'tiny' && o.preset !== 'lite') throw new KvantError('KVANT_RANGE', `Expected --preset tiny or lite but received ${JSON.stringify(o.preset)}`);
  if (o.layers !== undefined && (!Number.isInteger(o.layers) || o.layers < 1)) throw new KvantError('KVANT_RANGE', `Expected --layers >= 1 but received ${o.layers}`);
  const dtype = o.dtype ?? 'bf16';
  if (dtype !== 'f32' && dtype !== 'bf16') throw new KvantError('KVANT_RANGE', `Expected --dtype f32 or bf16 but received ${JSON.stringify(dtype)}`);
  const seed = o.seed ?? 0;
  const raw: Record<string, unknown> = { ...presetConfig(o.preset, o.layers), ...(o.configOverride ?? {}), torch_dtype: dtype === 'f32' ? 'float32' : 'bfloat16' };
  const cfg = parseConfig(raw); // refuse to write an inconsistent model
  fs.mkdirSync(o.out, { recursive: true });
  const specs = expectedTensors(cfg);
  let made = 0;
  const lazy: LazyTensor[] = specs.map((t, i) => ({
    name: t.name,
    dtype,
    shape: t.shape,
    make: () => {
      const std = initStd(t.role, t.shape);
      // Norm weights around 1 (as trained models have), everything else centred on 0.
      const x = Tensor.random(t.shape, dtype, { seed: seed * 1_000_003 + i, dist: 'normal', mean: t.role === 'norm' ? 1 : 0, std, native: true });
      o.onProgress?.(++made, specs.length, t.name);
      return x;
    },
  }));
  const r = writeShardedSafetensors(o.out, lazy, o.maxShardBytes ?? 2 * 2 ** 30);
  fs.writeFileSync(path.join(o.out, 'config.json'), JSON.stringify(raw, null, 2) + '\n');
  const { tokenizer, specialIds } = makeByteLevelBpe({ vocabSize: cfg.vocabSize, corpus: TOKENIZER_CORPUS, specialTokens: [BOS_TOKEN, EOS_TOKEN] });
  fs.writeFileSync(path.join(o.out, 'tokenizer.json'), JSON.stringify(tokenizer));
  fs.writeFileSync(
    path.join(o.out, 'tokenizer_config.json'),
    JSON.stringify({ add_bos_token: true, add_eos_token: false, bos_token: BOS_TOKEN, eos_token: EOS_TOKEN, chat_template: CHAT_TEMPLATE, model_max_length: cfg.maxPositionEmbeddings, tokenizer_class: 'LlamaTokenizerFast' }, null, 2) + '\n',
  );
  // The config's special ids follow the tokenizer (the last two ids of the vocabulary).
  raw.bos_token_id = specialIds[BOS_TOKEN];
  raw.eos_token_id = specialIds[EOS_TOKEN];
  fs.writeFileSync(path.join(o.out, 'config.json'), JSON.stringify(raw, null, 2) + '\n');
  return { config: raw, bytes: r.totalSize };
}
