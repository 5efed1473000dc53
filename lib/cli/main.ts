/**
 * The `kvant` command line. Logs and progress go to stderr; stdout carries only results
 * (and, with --json, only JSON).
 */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { backendInfo } from '../backend';
import { KvantError } from '../errors';
import { allCases } from '../bench/suites';
import { EMULATION_WARNING, formatMachine, formatTable, measureMachine, runBenchmarks } from '../bench/harness';
import { cudaCases, measureDevice, requireCudaDevice } from '../bench/cuda-cases';
import { planCommand } from './plan';
import { makeModelCommand } from './make-model';
import { generateCommand } from './generate';
import { logitsCommand } from './logits';
import { demoCommand } from './demo';
import { quantizeCommand } from './quantize';
import { benchModelCommand } from './bench-model';

/** Flags of `bench --model` / `bench --claims` (lib/cli/bench-model.ts). */
const MODEL_BENCH_OPTIONS = {
  model: { type: 'boolean' }, claims: { type: 'boolean' }, preset: { type: 'string' }, layers: { type: 'string' },
  reps: { type: 'string' }, pp: { type: 'string' }, tg: { type: 'string' },
} as const;

const HELP = `kvant — quantized LLM inference for Node.js

Usage: kvant <command> [options]

Commands:
  demo [--model DIR] [--kv-cache TYPE] [--max-tokens N]
                            make a tiny DeepSeek-V2 (or take DIR), quantize it with GPTQ 4-bit, generate,
                            and report speed, memory and the quantized model's distance from the float one
  info [--json]             backend, ISA level, threads and CUDA status
  plan --model DIR [--bits B] [--group-size G] [--context N] [--kv-cache TYPE] [--json]
                            memory for weights and KV cache, and whether it fits here
  bench [--json FILE] [--filter REGEX] [--quick] [--backend cpu|cuda]
                            measure machine ceilings, then run the kernel benchmarks
                            (--backend cuda: the device's copy bandwidth and f16 tensor-core rate, then device rows)
  bench --model [--preset lite|tiny] [--layers N] [--pp N] [--tg N] [--reps N] [--filter RE] [--quick] [--json FILE]
                            end-to-end DeepSeek-V2 rows: pp/tg tokens/s, bandwidth, components, memory
  bench --claims [--quick] [--json FILE]
                            the quality/size/cache/scheduler tables that settle DESIGN.md §8's claims
  generate --model DIR (--prompt TEXT [--chat] | --tokens 1,2,3) [--max-tokens N] [--temperature T]
           [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S] [--stop STR]... [--ignore-eos]
           [--kv-cache f16|bf16|q8|q6|q4] [--activations f32|int8] [--json]
                            generate text (streamed to stdout) or, with --json, one JSON result
  logits --model DIR --tokens 1,2,3 [--mode prefill|decode] [--kv-cache TYPE] [--activations f32|int8] [--json]
                            logits at every position ({"logits": [[...], ...]} with --json)
  make-model --preset tiny|lite [--layers N] [--seed S] [--dtype f32|bf16] [--config-override JSON] --out DIR
                            write a random DeepSeek-V2 checkpoint in the real file layout
  quantize --model IN --out OUT --bits B --group-size G [--act-order] [--asym] [--method gptq|rtn]
           [--rules FILE|JSON] [--calib-tokens N] [--seed S] [--json]   (per channel: --group-size=-1)
                            GPTQ/RTN group quantization into an AutoGPTQ-compatible folder
           [--calib model|synthetic] [--calib-seq-len L] [--calib-text FILE] [--no-true-sequential]
                            calibration: model (default for DeepSeek-V2) = layer-by-layer GPTQ on the
                            model's own activations for --calib-tokens ids (seeded random, or FILE's text
                            through tokenizer.json); synthetic = correlated Gaussian per Linear
  help                      this text
`;

const err = (s: string) => process.stderr.write(s + '\n');

async function bench(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { json: { type: 'string' }, filter: { type: 'string' }, quick: { type: 'boolean' }, backend: { type: 'string' }, ...MODEL_BENCH_OPTIONS },
  });
  if ((values.model || values.claims) && values.backend !== undefined && values.backend !== 'cpu')
    throw new KvantError('KVANT_BACKEND', `bench --model / --claims run on the CPU only (received --backend ${values.backend})`);
  if (values.model || values.claims) return benchModelCommand(values, () => measureMachine(values.quick ?? false));
  const filter = values.filter ? new RegExp(values.filter) : undefined;
  const quick = values.quick ?? false;
  const log = (s: string) => err(s);
  const backend = values.backend ?? 'cpu';
  if (backend !== 'cpu' && backend !== 'cuda') throw new KvantError('KVANT_RANGE', `Expected 'cpu' or 'cuda' for --backend but received '${backend}'`);
  let emulated = false;
  if (backend === 'cuda') {
    emulated = requireCudaDevice().emulated;
    if (emulated) log(EMULATION_WARNING);
  }
  log(backend === 'cuda' ? 'measuring device ceilings…' : 'measuring machine ceilings…');
  const machine = backend === 'cuda' ? await measureDevice(quick) : await measureMachine(quick);
  const cases = backend === 'cuda' ? cudaCases(machine, quick) : allCases(machine, quick);
  const report = await runBenchmarks(cases, { filter, quick, log, machine });
  console.log(formatMachine(report.machine));
  console.log(formatTable(report.rows));
  if (emulated) console.log(EMULATION_WARNING);
  if (values.json) {
    fs.writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n');
    err(`wrote ${values.json}`);
  }
  return 0;
}

function infoCmd(argv: string[]): number {
  const { values } = parseArgs({ args: argv, options: { json: { type: 'boolean' } } });
  const info = backendInfo();
  if (values.json) {
    console.log(JSON.stringify(info, null, 2));
    return 0;
  }
  console.log(`backend: ${info.backend}`);
  console.log(`ISA: ${info.isa} (${info.isaReason})`);
  console.log(`threads: ${info.threads} (${info.threadsReason})`);
  console.log(`CUDA: ${info.cuda.reason}`);
  return 0;
}

/** Runs the CLI; resolves to the process exit code. */
export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  try {
    switch (cmd) {
      case 'demo': return await demoCommand(rest);
      case 'bench': return await bench(rest);
      case 'info': return infoCmd(rest);
      case 'plan': return planCommand(rest);
      case 'make-model': return makeModelCommand(rest);
      case 'generate': return await generateCommand(rest);
      case 'logits': return await logitsCommand(rest);
      case 'quantize': return await quantizeCommand(rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(HELP);
        return 0;
      default:
        err(`kvant: unknown command '${cmd}'\n`);
        process.stderr.write(HELP);
        return 2;
    }
  } catch (e) {
    if (e instanceof KvantError) {
      err(`kvant ${cmd}: ${e.code}: ${e.message}`);
      return 1;
    }
    if (e instanceof TypeError && (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      err(`kvant ${cmd}: ${e.message}`);
      return 2;
    }
    throw e;
  }
}
