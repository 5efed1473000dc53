/**
 * A Hugging Face checkpoint folder: config.json, safetensors weights (one file, or shards with
 * model.safetensors.index.json), optional quantize_config.json. Tensors are found by name
 * across shards and handed out as views of the memory-mapped files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { KvantError } from '../errors';
import { Tensor } from '../tensor';
import { SafetensorsFile } from './safetensors';

export class Checkpoint {
  readonly dir: string;
  readonly config: Record<string, unknown>;
  readonly quantizeConfig: Record<string, unknown> | null;
  private readonly files = new Map<string, SafetensorsFile>();
  private readonly where = new Map<string, string>();

  private constructor(dir: string, config: Record<string, unknown>, quantizeConfig: Record<string, unknown> | null) {
    this.dir = dir;
    this.config = config;
    this.quantizeConfig = quantizeConfig;
  }

  static open(dir: string, onProgress?: (done: number, total: number, file: string) => void): Checkpoint {
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new KvantError('KVANT_IO', `Not a checkpoint folder: ${dir}`);
    const readJson = (p: string, required: boolean): Record<string, unknown> | null => {
      if (!fs.existsSync(p)) {
        if (required) throw new KvantError('KVANT_IO', `Missing ${path.basename(p)} in ${dir}`);
        return null;
      }
      try {
        const v = JSON.parse(fs.readFileSync(p, 'utf8'));
        if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error('not a JSON object');
        return v as Record<string, unknown>;
      } catch (e) {
        throw new KvantError('KVANT_FORMAT', `${p}: ${(e as Error).message}`);
      }
    };
    const config = readJson(path.join(dir, 'config.json'), true)!;
    const quant = readJson(path.join(dir, 'quantize_config.json'), false) ?? ((config.quantization_config as Record<string, unknown> | undefined) ?? null);
    const ck = new Checkpoint(dir, config, quant);
    const index = readJson(path.join(dir, 'model.safetensors.index.json'), false);
    let shardNames: string[];
    if (index) {
      const wm = index.weight_map;
      if (typeof wm !== 'object' || wm === null) throw new KvantError('KVANT_FORMAT', `${dir}/model.safetensors.index.json: missing weight_map`);
      shardNames = [...new Set(Object.values(wm as Record<string, unknown>).map(String))].sort();
      for (const f of shardNames)
        if (f.includes('/') || f.includes('\\') || f.startsWith('.')) throw new KvantError('KVANT_FORMAT', `${dir}: shard name ${JSON.stringify(f)} escapes the folder`);
    } else {
      shardNames = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors')).sort();
      if (shardNames.length === 0) throw new KvantError('KVANT_IO', `No .safetensors files in ${dir}`);
    }
    shardNames.forEach((f, i) => {
      const file = SafetensorsFile.open(path.join(dir, f));
      ck.files.set(f, file);
      for (const name of file.names()) {
        if (ck.where.has(name)) throw new KvantError('KVANT_FORMAT', `${dir}: tensor "${name}" appears in both ${ck.where.get(name)} and ${f}`);
        ck.where.set(name, f);
      }
      onProgress?.(i + 1, shardNames.length, f);
    });
    if (index) {
      for (const [name, f] of Object.entries(index.weight_map as Record<string, string>))
        if (ck.where.get(name) !== f) throw new KvantError('KVANT_FORMAT', `${dir}: the index puts "${name}" in ${f} but that shard does not hold it`);
    }
    return ck;
  }

  names(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  /** A tensor by name (a view of its mapped shard). Missing names are KVANT_FORMAT naming the tensor. */
  tensor(name: string): Tensor {
    const f = this.where.get(name);
    if (!f) throw new KvantError('KVANT_FORMAT', `${this.dir}: missing tensor "${name}"`);
    return this.files.get(f)!.tensor(name);
  }

  /** The file dtype string and shape of a tensor, without viewing it. */
  info(name: string): { dtype: string; shape: number[] } {
    const f = this.where.get(name);
    if (!f) throw new KvantError('KVANT_FORMAT', `${this.dir}: missing tensor "${name}"`);
    const e = this.files.get(f)!.entry(name);
    return { dtype: e.dtype, shape: e.shape };
  }

  close(): void {
    for (const f of this.files.values()) f.close();
  }
}
