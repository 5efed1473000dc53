/** `kvant quantize`: a float checkpoint folder -> a GPTQ folder (progress on stderr, error table on stdout). */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { KvantError } from '../errors';
import { QuantBits } from '../quant/format';
import { QuantizeReport, quantizeModel } from '../quant/quantize-model';
import { progressBar } from './progress';

function intArg(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n)) throw new KvantError('KVANT_RANGE', `Expected an integer for --${name} but received ${JSON.stringify(v)}`);
  return n;
}

/** The per-tensor table printed at the end. */
export function formatQuantizeReport(r: QuantizeReport): string {
  const rows = [['tensor', 'N', 'K', 'bits', 'group', 'act-order', 'tokens', 'method', 'rel. error', 'seconds']];
  for (const t of r.quantized)
    rows.push([t.name, String(t.N), String(t.K), String(t.bits), String(t.groupSize), t.actOrder ? 'yes' : 'no', String(t.tokens),
      t.method + (t.fallbackReason ? ` (${t.fallbackReason})` : ''), Number.isNaN(t.relError) ? '-' : t.relError.toExponential(3), t.seconds.toFixed(2)]);
  const w = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const lines = rows.map((r) => r.map((c, i) => (i === 0 ? c.padEnd(w[i]) : c.padStart(w[i]))).join('  '));
  lines.splice(1, 0, w.map((n) => '-'.repeat(n)).join('  '));
  const fin = r.quantized.filter((t) => !Number.isNaN(t.relError));
  const mean = fin.length ? fin.reduce((a, t) => a + t.relError, 0) / fin.length : NaN;
  lines.push('');
  lines.push(`${r.quantized.length} tensors quantized (${r.quantized.filter((t) => t.method === 'rtn').length} by RTN), ${r.kept.length} kept in bf16; mean rel. error ${Number.isNaN(mean) ? '-' : mean.toExponential(3)}`);
  lines.push(`${(r.bytesIn / 2 ** 20).toFixed(1)} MiB -> ${(r.bytesOut / 2 ** 20).toFixed(1)} MiB in ${r.seconds.toFixed(1)} s: ${r.output}`);
  return lines.join('\n');
}

export async function quantizeCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      out: { type: 'string' },
      bits: { type: 'string', default: '4' },
      'group-size': { type: 'string', default: '128' },
      'act-order': { type: 'boolean' },
      asym: { type: 'boolean' },
      method: { type: 'string', default: 'gptq' },
      rules: { type: 'string' },
      'calib-tokens': { type: 'string' },
      calib: { type: 'string' },
      'calib-seq-len': { type: 'string' },
      'calib-text': { type: 'string' },
      'no-true-sequential': { type: 'boolean' },
      seed: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  if (!values.model) throw new KvantError('KVANT_IO', 'Expected --model DIR (a float checkpoint folder)');
  if (!values.out) throw new KvantError('KVANT_IO', 'Expected --out DIR');
  let rules: Record<string, object> | undefined;
  if (values.rules) {
    const text = values.rules.trimStart().startsWith('{') ? values.rules : (() => {
      try {
        return fs.readFileSync(values.rules!, 'utf8');
      } catch (e) {
        throw new KvantError('KVANT_IO', `Cannot read --rules ${values.rules}: ${(e as Error).message}`);
      }
    })();
    try {
      rules = JSON.parse(text);
    } catch (e) {
      throw new KvantError('KVANT_FORMAT', `--rules is not valid JSON: ${(e as Error).message}`);
    }
  }
  if (values.calib !== undefined && values.calib !== 'model' && values.calib !== 'synthetic')
    throw new KvantError('KVANT_FORMAT', `Expected --calib model or synthetic but received ${JSON.stringify(values.calib)}`);
  let calibText: string | undefined;
  if (values['calib-text'] !== undefined) {
    try {
      calibText = fs.readFileSync(values['calib-text'], 'utf8');
    } catch (e) {
      throw new KvantError('KVANT_IO', `Cannot read --calib-text ${values['calib-text']}: ${(e as Error).message}`);
    }
  }
  const ctl = new AbortController();
  const onSig = () => ctl.abort();
  process.once('SIGINT', onSig);
  const bar = progressBar('quantize');
  try {
    const r = await quantizeModel({
      input: values.model,
      output: values.out,
      bits: intArg(values.bits, 'bits') as QuantBits,
      groupSize: intArg(values['group-size'], 'group-size')!,
      actOrder: values['act-order'] ?? false,
      sym: !(values.asym ?? false),
      method: values.method as 'gptq' | 'rtn',
      rules,
      calibTokens: intArg(values['calib-tokens'], 'calib-tokens'),
      calib: values.calib as 'model' | 'synthetic' | undefined,
      calibSeqLen: intArg(values['calib-seq-len'], 'calib-seq-len'),
      calibText,
      trueSequential: !(values['no-true-sequential'] ?? false),
      seed: intArg(values.seed, 'seed'),
      signal: ctl.signal,
      onProgress: (p) => bar.update(p.done, p.total, p.tensor),
    });
    bar.done();
    console.log(values.json ? JSON.stringify(r, null, 2) : formatQuantizeReport(r));
    return 0;
  } finally {
    process.removeListener('SIGINT', onSig);
  }
}
