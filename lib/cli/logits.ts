/**
 * `kvant logits`: logits at every position of a token sequence, for comparing kvant with
 * another implementation. --json prints {"logits": [[...], ...]} (one row per position, each
 * value the shortest decimal that reads back as the same f32); without it, a top-5 summary.
 */
import { parseArgs } from 'node:util';
import { KvantError } from '../errors';
import { topKIndices } from '../generate/sampler';
import { loadModel } from '../model';
import { cliLoadOptions, quietEpipe, f32ToJson, parseActivations, parseKvCache, parseTokenList } from './model-args';

export async function logitsCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      tokens: { type: 'string' },
      mode: { type: 'string' },
      'kv-cache': { type: 'string' },
      activations: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  if (!values.model) throw new KvantError('KVANT_IO', 'Expected --model DIR (a checkpoint folder with config.json)');
  if (values.tokens === undefined) throw new KvantError('KVANT_RANGE', 'Expected --tokens 1,2,3');
  const tokens = parseTokenList(values.tokens);
  const mode = values.mode ?? 'prefill';
  if (mode !== 'prefill' && mode !== 'decode') throw new KvantError('KVANT_RANGE', `Expected --mode prefill or decode but received ${JSON.stringify(mode)}`);
  const kvCache = parseKvCache(values['kv-cache']);
  const activations = parseActivations(values.activations);
  quietEpipe();
  const model = await loadModel(values.model, { ...cliLoadOptions('loading'), kvCache, activations });
  try {
    const rows = await model.logits(tokens, { mode });
    if (values.json) {
      // Written piecewise: a lite-sized vocabulary makes a row ~1 MB of text.
      process.stdout.write('{"logits":[');
      rows.forEach((r, i) => {
        const parts = new Array<string>(r.length);
        for (let j = 0; j < r.length; j++) parts[j] = f32ToJson(r[j]);
        process.stdout.write((i ? ',' : '') + '[' + parts.join(',') + ']');
      });
      process.stdout.write(']}\n');
    } else {
      rows.forEach((r, i) => {
        const top = Array.from(topKIndices(r, 5), (t) => `${t}:${r[t].toFixed(3)}`).join('  ');
        process.stdout.write(`pos ${i} (token ${tokens[i]}): ${top}\n`);
      });
    }
  } finally {
    await model.close();
  }
  return 0;
}
