/**
 * `kvant bench --model` (end-to-end model rows) and `kvant bench --claims` (the DESIGN.md §8
 * claims tables). Tables on stdout, progress on stderr, everything in the --json file too.
 */
import * as fs from 'node:fs';
import { KvantError } from '../errors';
import { Machine, formatMachine } from '../bench/harness';
import { ModelBenchReport, formatModelBench, runModelBench } from '../bench/model-cases';
import { ClaimsReport, formatClaims, runClaims } from '../bench/claims';
import { PresetName } from '../models/deepseek-v2/presets';

/** The bench flags this file handles (parsed by the bench command in main.ts). */
export interface ModelBenchFlags {
  model?: boolean;
  claims?: boolean;
  preset?: string;
  layers?: string;
  reps?: string;
  pp?: string;
  tg?: string;
  filter?: string;
  json?: string;
  quick?: boolean;
}

function posInt(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 1) throw new KvantError('KVANT_RANGE', `Expected --${name} to be a positive integer but received ${JSON.stringify(v)}`);
  return n;
}

/** Runs the model rows and/or the claims tables after the machine ceilings were measured. */
export async function benchModelCommand(v: ModelBenchFlags, measure: () => Promise<Machine>): Promise<number> {
  const err = (s: string) => process.stderr.write(s + '\n');
  const quick = v.quick ?? false;
  if (v.preset !== undefined && v.preset !== 'tiny' && v.preset !== 'lite') throw new KvantError('KVANT_RANGE', `Expected --preset tiny or lite but received ${JSON.stringify(v.preset)}`);
  const layers = posInt(v.layers, 'layers');
  const reps = posInt(v.reps, 'reps');
  const pp = posInt(v.pp, 'pp');
  const tg = posInt(v.tg, 'tg');
  const filter = v.filter ? new RegExp(v.filter) : undefined;
  err('measuring machine ceilings…');
  const machine = await measure();
  const out: { machine: Machine; model?: ModelBenchReport; claims?: ClaimsReport } = { machine };
  console.log(formatMachine(machine));
  if (v.model) {
    out.model = runModelBench(machine, quick, { preset: v.preset as PresetName | undefined, layers, reps, pp, tg, filter, log: err });
    console.log('\nend-to-end (DeepSeek-V2):');
    console.log(formatModelBench(out.model));
  }
  if (v.claims) {
    out.claims = await runClaims({ quick, log: err });
    console.log('');
    console.log(formatClaims(out.claims));
  }
  if (v.json) {
    fs.writeFileSync(v.json, JSON.stringify(out, null, 2) + '\n');
    err(`wrote ${v.json}`);
  }
  return 0;
}
