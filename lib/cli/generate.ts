/**
 * `kvant generate`: load a checkpoint, generate from a text prompt or token ids. Text streams
 * to stdout as it is generated; with --json stdout carries exactly one JSON object and every
 * log and progress line goes to stderr.
 */
import { parseArgs } from 'node:util';
import { KvantError } from '../errors';
import { GenerationResult } from '../generate/scheduler';
import { loadModel, Model, Prompt } from '../model';
import { cliLoadOptions, quietEpipe, parseActivations, parseKvCache, parseNumber, parseTokenList } from './model-args';

/** The --json output. */
export interface GenerateJson {
  tokens: number[];
  text: string | null;
  finish_reason: string;
  usage: { prompt_tokens: number; completion_tokens: number };
  timing: { prefill_tokens_per_s: number | null; decode_tokens_per_s: number | null };
}

/** Tokens per second of a result's prefill and decode phases (null when a phase did not run). */
export function throughput(r: GenerationResult): { prefill: number | null; decode: number | null } {
  const rate = (n: number, ms: number) => (n > 0 && ms > 0 ? (n * 1000) / ms : null);
  return { prefill: rate(r.usage.promptTokens, r.timing.prefillMs), decode: rate(r.timing.decodeSteps, r.timing.decodeMs) };
}

export function toGenerateJson(r: GenerationResult): GenerateJson {
  const t = throughput(r);
  return {
    tokens: r.tokens,
    text: r.text ?? null,
    finish_reason: r.finishReason,
    usage: { prompt_tokens: r.usage.promptTokens, completion_tokens: r.usage.completionTokens },
    timing: { prefill_tokens_per_s: t.prefill, decode_tokens_per_s: t.decode },
  };
}

export async function generateCommand(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      prompt: { type: 'string' },
      tokens: { type: 'string' },
      chat: { type: 'boolean' },
      'max-tokens': { type: 'string' },
      temperature: { type: 'string' },
      'top-k': { type: 'string' },
      'top-p': { type: 'string' },
      'repetition-penalty': { type: 'string' },
      seed: { type: 'string' },
      stop: { type: 'string', multiple: true },
      'ignore-eos': { type: 'boolean' },
      'kv-cache': { type: 'string' },
      activations: { type: 'string' },
      json: { type: 'boolean' },
    },
  });
  if (!values.model) throw new KvantError('KVANT_IO', 'Expected --model DIR (a checkpoint folder with config.json)');
  if ((values.prompt === undefined) === (values.tokens === undefined)) throw new KvantError('KVANT_RANGE', 'Expected exactly one of --prompt TEXT or --tokens 1,2,3');
  const tokens = values.tokens !== undefined ? parseTokenList(values.tokens) : undefined;
  const opts = {
    maxTokens: parseNumber(values['max-tokens'], '--max-tokens', { int: true, min: 1 }) ?? 64,
    temperature: parseNumber(values.temperature, '--temperature', { min: 0 }),
    topK: parseNumber(values['top-k'], '--top-k', { int: true, min: 0 }),
    topP: parseNumber(values['top-p'], '--top-p', { min: 0, max: 1 }),
    repetitionPenalty: parseNumber(values['repetition-penalty'], '--repetition-penalty', { min: 0 }),
    seed: parseNumber(values.seed, '--seed', { int: true, min: 0 }),
    stopStrings: values.stop,
    ignoreEos: values['ignore-eos'] ?? false,
  };
  const kvCache = parseKvCache(values['kv-cache']);
  const activations = parseActivations(values.activations);
  quietEpipe();
  const model: Model = await loadModel(values.model, { ...cliLoadOptions('loading'), kvCache, activations });
  try {
    const prompt: Prompt = tokens ?? (values.chat ? { messages: [{ role: 'user', content: values.prompt! }] } : values.prompt!);
    let result: GenerationResult;
    if (values.json) {
      result = await model.generate(prompt, opts);
      process.stdout.write(JSON.stringify(toGenerateJson(result)) + '\n');
    } else {
      const stream = model.stream(prompt, opts);
      const textMode = model.tokenizer !== null;
      let first = true;
      for await (const c of stream) {
        if (textMode) process.stdout.write(c.text ?? '');
        else if (c.token >= 0) {
          process.stdout.write((first ? '' : ',') + c.token);
          first = false;
        }
      }
      process.stdout.write('\n');
      result = await stream.result;
      const t = throughput(result);
      const f = (v: number | null) => (v === null ? 'n/a' : v.toFixed(1));
      process.stderr.write(
        `finish: ${result.finishReason}; ${result.usage.promptTokens} prompt + ${result.usage.completionTokens} generated tokens; ` +
          `prefill ${f(t.prefill)} tok/s, decode ${f(t.decode)} tok/s; load ${(model.loadMs / 1000).toFixed(2)} s\n`,
      );
    }
  } finally {
    await model.close();
  }
  return 0;
}
