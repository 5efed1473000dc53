/**
 * The `kvant` command line. Logs and progress go to stderr; stdout carries only results
 * (and, with --json, only JSON).
 */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { backendInfo } from '../backend';
import { KvantError } from '../errors';
import { allCases } from '../bench/suites';
import { formatMachine, formatTable, measureMachine, runBenchmarks } from '../bench/harness';
import { Tensor } from '../tensor';
import { planCommand } from './plan';
import { makeModelCommand } from './make-model';
import { quantizeCommand } from './quantize';

const HELP = `kvant — quantized LLM inference for Node.js

Usage: kvant <command> [options]

Commands:
  demo                      a short tour of the kernels on this machine
  info [--json]             backend, ISA level, threads and CUDA status
  plan --model DIR [--bits B] [--group-size G] [--context N] [--kv-cache TYPE] [--json]
                            memory for weights and KV cache, and whether it fits here
  bench [--json FILE] [--filter REGEX] [--quick]
                            measure machine ceilings, then run the kernel benchmarks
  make-model --preset tiny|lite [--layers N] [--seed S] [--dtype f32|bf16] [--config-override JSON] --out DIR
                            write a random DeepSeek-V2 checkpoint in the real file layout
  quantize --model IN --out OUT --bits B --group-size G [--act-order] [--asym] [--method gptq|rtn]
           [--rules FILE|JSON] [--calib-tokens N] [--seed S] [--json]   (per channel: --group-size=-1)
                            GPTQ/RTN group quantization into an AutoGPTQ-compatible folder
  help                      this text
`;

const err = (s: string) => process.stderr.write(s + '\n');

async function demo(): Promise<number> {
  const info = backendInfo();
  console.log(`kvant demo — CPU backend, ISA ${info.isa} (${info.isaReason}), ${info.threads} threads`);
  console.log(`CUDA: ${info.cuda.reason}`);
  const n = 1 << 23;
  const x = Tensor.random([n], 'f32', { seed: 42, dist: 'normal', std: 100 });
  const levels = (['scalar', 'avx2', 'avx512'] as const).filter((l) => ['scalar', 'avx2', 'avx512'].indexOf(l) <= ['scalar', 'avx2', 'avx512'].indexOf(info.bestIsa));
  for (const dtype of ['f16', 'bf16'] as const) {
    const ref = Tensor.zeros([n], dtype);
    x.convertInto(ref, 'scalar');
    const refBits = ref.data() as Uint16Array;
    for (const level of levels) {
      const out = Tensor.zeros([n], dtype);
      const t0 = process.hrtime.bigint();
      x.convertInto(out, level);
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      const bits = out.data() as Uint16Array;
      let mismatches = 0;
      for (let i = 0; i < n; i++) if (bits[i] !== refBits[i]) mismatches++;
      const gbps = (n * 6) / (ms / 1e3) / 1e9;
      console.log(`  f32 -> ${dtype.padEnd(4)} ${level.padEnd(6)} ${ms.toFixed(2).padStart(7)} ms  ${gbps.toFixed(1).padStart(5)} GB/s  ${mismatches === 0 ? 'bit-identical to scalar' : `${mismatches} mismatches!`}`);
      if (mismatches) return 1;
    }
    const back = ref.toFloat32Array();
    const xs = x.data() as Float32Array;
    let maxRel = 0;
    for (let i = 0; i < n; i++) if (Math.abs(xs[i]) > 1e-3) maxRel = Math.max(maxRel, Math.abs(back[i] - xs[i]) / Math.abs(xs[i]));
    console.log(`  round trip f32 -> ${dtype} -> f32: max relative error ${maxRel.toExponential(2)} (bound ${dtype === 'f16' ? '2^-11' : '2^-8'})`);
  }
  const ctl = new AbortController();
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  const big = Tensor.random([1 << 26], 'f32', { seed: 7, native: true });
  const t0 = Date.now();
  const half = await big.toAsync('f16', { signal: ctl.signal, native: true });
  clearInterval(timer);
  console.log(`  async f32 -> f16 of ${big.numel} values off the event loop: ${Date.now() - t0} ms, event loop ticked ${ticks} times meanwhile`);
  big.dispose();
  half.dispose();
  console.log('The DeepSeek-V2 demo (tiny model, GPTQ 4-bit, generation) replaces this tour once the model lands.');
  return 0;
}

async function bench(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: { json: { type: 'string' }, filter: { type: 'string' }, quick: { type: 'boolean' } },
  });
  const filter = values.filter ? new RegExp(values.filter) : undefined;
  const quick = values.quick ?? false;
  const log = (s: string) => err(s);
  log('measuring machine ceilings…');
  const machine = await measureMachine(quick);
  const report = await runBenchmarks(allCases(machine, quick), { filter, quick, log, machine });
  console.log(formatMachine(report.machine));
  console.log(formatTable(report.rows));
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
      case 'demo': return await demo();
      case 'bench': return await bench(rest);
      case 'info': return infoCmd(rest);
      case 'plan': return planCommand(rest);
      case 'make-model': return makeModelCommand(rest);
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
