/** `kvant make-model`: a random DeepSeek-V2 checkpoint in the real layout. */
import { parseArgs } from 'node:util';
import { KvantError } from '../errors';
import { makeModel } from '../models/deepseek-v2/make-model';
import { PresetName } from '../models/deepseek-v2/presets';
import { progressBar } from './progress';

export function makeModelCommand(argv: string[]): number {
  const { values } = parseArgs({
    args: argv,
    options: {
      preset: { type: 'string', default: 'tiny' },
      layers: { type: 'string' },
      seed: { type: 'string' },
      dtype: { type: 'string' },
      'config-override': { type: 'string' },
      out: { type: 'string' },
    },
  });
  if (!values.out) throw new KvantError('KVANT_IO', 'Expected --out DIR');
  let override: Record<string, unknown> | undefined;
  if (values['config-override']) {
    try {
      override = JSON.parse(values['config-override']);
    } catch (e) {
      throw new KvantError('KVANT_FORMAT', `--config-override is not valid JSON: ${(e as Error).message}`);
    }
  }
  const bar = progressBar('make-model');
  const t0 = Date.now();
  const r = makeModel({
    preset: values.preset as PresetName,
    out: values.out,
    layers: values.layers !== undefined ? Number(values.layers) : undefined,
    seed: values.seed !== undefined ? Number(values.seed) : undefined,
    dtype: values.dtype as 'f32' | 'bf16' | undefined,
    configOverride: override,
    onProgress: (d, n, what) => bar.update(d, n, what),
  });
  bar.done();
  process.stderr.write(`wrote ${values.out}: ${(r.bytes / 2 ** 20).toFixed(1)} MiB of weights in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  return 0;
}
