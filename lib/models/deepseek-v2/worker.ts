/**
 * The worker-thread host of one DeepSeekV2Model (see engine.ts for the protocol). It loads
 * the model, then answers requests one at a time in arrival order; every model call is
 * synchronous here, which is the point: the main thread's event loop stays free.
 */
import * as path from 'node:path';
import { parentPort, workerData } from 'node:worker_threads';
import type { Admission } from '../../generate/scheduler';
import type { SamplerState } from '../../generate/sampler';
import { KvantError } from '../../errors';
import { ModelInfo, WorkerData, WorkerMessage, WorkerRequest, toWire } from './engine';

/** The shape of the model class this host drives (DeepSeekV2Model, or a test stand-in). */
export interface HostedModel {
  readonly config: unknown;
  readonly vocabSize: number;
  readonly maxContext: number;
  readonly cache: {
    admission(tokens: number): Admission;
    open(reserveTokens: number): number;
    close(seq: number): void;
    readonly bytesPerToken: number;
  };
  prefill(seq: number, tokens: readonly number[], o?: { allLogits?: boolean; chunkSize?: number }): Float32Array;
  decode(seqs: readonly number[], tokens: readonly number[]): Float32Array[];
  /** Optional: a decode step sampling on the model's side (the device model), one token per sequence. */
  decodeSample?(seqs: readonly number[], tokens: readonly number[], state: readonly SamplerState[]): Int32Array;
  /** With decodeSample: the largest topK it takes. */
  readonly sampleMaxTopK?: number;
  memory(): { weightsBytes: number; cacheBytes: number };
  dispose(): void;
}

interface HostedModelClass {
  load(dir: string, o: Record<string, unknown>): HostedModel;
}

const port = parentPort!;
const data = workerData as WorkerData;
const post = (m: WorkerMessage, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer);

/** A fresh, whole-buffer copy of several rows, so it can be transferred (never a view of model memory). */
function pack(parts: readonly Float32Array[], V: number): Float32Array {
  // One row that owns its whole buffer (the CPU model's decode of one sequence): post it as is.
  const p0 = parts[0];
  if (parts.length === 1 && p0.length === V && p0.byteOffset === 0 && p0.buffer instanceof ArrayBuffer && p0.buffer.byteLength === V * 4) return p0;
  const out = new Float32Array(parts.length * V);
  parts.forEach((p, i) => {
    if (p.length !== V) throw new KvantError('KVANT_SHAPE', `Expected logits of length ${V} from the model but received ${p.length}`);
    out.set(p, i * V);
  });
  return out;
}

function load(): HostedModel {
  const impl = data.implementation ?? { module: path.join(__dirname, 'model.js'), export: 'DeepSeekV2Model' };
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const cls = (require(impl.module) as Record<string, HostedModelClass>)[impl.export];
  if (!cls || typeof cls.load !== 'function') throw new KvantError('KVANT_BACKEND', `${impl.module} has no model class ${impl.export}`);
  return cls.load(data.dir, {
    ...data.load,
    onProgress: (p: { done: number; total: number; what: string }) => post({ type: 'progress', done: p.done, total: p.total, what: p.what }),
  });
}

let model: HostedModel;
try {
  const t0 = performance.now();
  model = load();
  const info: ModelInfo = {
    config: model.config,
    vocabSize: model.vocabSize,
    maxContext: model.maxContext,
    bytesPerToken: model.cache.bytesPerToken,
    loadMs: performance.now() - t0,
    sampleMaxTopK: typeof model.decodeSample === 'function' ? (model.sampleMaxTopK ?? Infinity) : undefined,
  };
  post({ type: 'ready', info });
} catch (e) {
  post({ type: 'loadError', error: toWire(e) });
  process.exit(1);
}

/** Logits at every position of a fresh sequence: one forward (prefill) or token by token through the cache (decode). */
function allLogits(tokens: number[], mode: 'prefill' | 'decode'): Float32Array {
  const V = model.vocabSize;
  const seq = model.cache.open(tokens.length);
  try {
    if (mode === 'prefill') {
      const flat = model.prefill(seq, tokens, { allLogits: true, chunkSize: data.load.chunkSize });
      return pack(Array.from({ length: tokens.length }, (_, i) => flat.subarray(i * V, (i + 1) * V)), V);
    }
    const out: Float32Array[] = [pack([model.prefill(seq, tokens.slice(0, 1))], V)];
    for (let i = 1; i < tokens.length; i++) out.push(pack(model.decode([seq], [tokens[i]]), V));
    return pack(out, V);
  } finally {
    model.cache.close(seq);
  }
}

port.on('message', (m: WorkerRequest) => {
  if (m.op === 'close') {
    try {
      model.cache.close(m.seq);
    } catch {
      // closing twice or an unknown id: nothing left to free
    }
    return;
  }
  try {
    let value: unknown;
    let transfer: ArrayBuffer[] | undefined;
    const V = model.vocabSize;
    const t0 = performance.now();
    switch (m.op) {
      case 'admission':
        value = model.cache.admission(m.tokens);
        break;
      case 'open':
        value = model.cache.open(m.tokens);
        break;
      case 'prefill': {
        const a = pack([model.prefill(m.seq, m.tokens, { chunkSize: data.load.chunkSize })], V);
        value = a;
        transfer = [a.buffer as ArrayBuffer];
        break;
      }
      case 'decode': {
        const a = pack(model.decode(m.seqs, m.tokens), V);
        value = a;
        transfer = [a.buffer as ArrayBuffer];
        break;
      }
      case 'decodeSample': {
        if (typeof model.decodeSample !== 'function') throw new KvantError('KVANT_BACKEND', 'This model does not sample on its side');
        const a = Int32Array.from(model.decodeSample(m.seqs, m.tokens, m.state));
        value = a;
        transfer = [a.buffer as ArrayBuffer];
        break;
      }
      case 'logits': {
        const a = allLogits(m.tokens, m.mode);
        value = a;
        transfer = [a.buffer as ArrayBuffer];
        break;
      }
      case 'memory':
        value = model.memory();
        break;
      case 'dispose':
        model.dispose();
        value = null;
        break;
    }
    post({ type: 'reply', id: m.id, ok: true, value, ms: performance.now() - t0 }, transfer);
    if (m.op === 'dispose') port.close();
  } catch (e) {
    post({ type: 'reply', id: m.id, ok: false, error: toWire(e) });
  }
});
