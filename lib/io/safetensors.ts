/**
 * safetensors files: a little-endian u64 header length, a JSON header describing each
 * tensor (dtype, shape, data_offsets into the data area), then the data.
 *
 * Reading memory-maps the file (copy-on-write) and hands out Tensors over the mapping: no
 * tensor byte enters the JS heap, and shards over 4 GiB work. The whole header is validated
 * before anything is allocated from it: length (exact u64, <= 100 MB, inside the file), JSON
 * object, known dtypes, integer shapes, shape x element size == byte span, spans inside the
 * data area, sorted and not overlapping.
 */
import * as fs from 'node:fs';
import { DType, dtypeSize } from '../dtype';
import { KvantError } from '../errors';
import { mapFile } from '../memory';
import { NativeMemoryHandle } from '../native';
import { Tensor } from '../tensor';

/** Largest header accepted (the format's own reference implementation uses the same cap). */
export const MAX_HEADER_BYTES = 100_000_000;

/** safetensors dtype names and their sizes; kvant tensors exist for the first six. */
const ST_DTYPES: Record<string, { size: number; kvant?: DType }> = {
  F32: { size: 4, kvant: 'f32' },
  F16: { size: 2, kvant: 'f16' },
  BF16: { size: 2, kvant: 'bf16' },
  I8: { size: 1, kvant: 'i8' },
  U8: { size: 1, kvant: 'u8' },
  I32: { size: 4, kvant: 'i32' },
  BOOL: { size: 1 },
  I16: { size: 2 },
  U16: { size: 2 },
  U32: { size: 4 },
  I64: { size: 8 },
  U64: { size: 8 },
  F64: { size: 8 },
  F8_E4M3: { size: 1 },
  F8_E5M2: { size: 1 },
};

const KVANT_TO_ST: Record<DType, string> = { f32: 'F32', f16: 'F16', bf16: 'BF16', i8: 'I8', u8: 'U8', i32: 'I32' };

export interface TensorEntry {
  name: string;
  /** The file's dtype string (e.g. "BF16", "I64"). */
  dtype: string;
  shape: number[];
  /** Absolute byte range in the file. */
  begin: number;
  end: number;
}

function bad(file: string, what: string): never {
  throw new KvantError('KVANT_FORMAT', `${file}: ${what}`);
}

/** Parses and validates a header; `fileSize` bounds every offset. Exported for tests. */
export function parseHeader(file: string, headerBytes: Buffer, fileSize: number): { entries: TensorEntry[]; metadata: Record<string, string> } {
  let json: unknown;
  try {
    json = JSON.parse(headerBytes.toString('utf8'));
  } catch (e) {
    bad(file, `header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) bad(file, 'header is not a JSON object');
  const dataStart = 8 + headerBytes.length;
  const dataBytes = fileSize - dataStart;
  const entries: TensorEntry[] = [];
  let metadata: Record<string, string> = {};
  for (const [name, v] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (typeof v !== 'object' || v === null || Array.isArray(v) || !Object.values(v).every((x) => typeof x === 'string'))
        bad(file, '__metadata__ must map strings to strings');
      metadata = v as Record<string, string>;
      continue;
    }
    if (typeof v !== 'object' || v === null) bad(file, `tensor "${name}": entry is not an object`);
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e.dtype !== 'string' || !(e.dtype in ST_DTYPES)) bad(file, `tensor "${name}": unknown dtype ${JSON.stringify(e.dtype)}`);
    if (!Array.isArray(e.shape) || !e.shape.every((d) => Number.isSafeInteger(d) && d >= 0))
      bad(file, `tensor "${name}": shape must be an array of non-negative integers, found ${JSON.stringify(e.shape)}`);
    const off = e.data_offsets;
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[0] > off[1])
      bad(file, `tensor "${name}": data_offsets must be [begin, end] with 0 <= begin <= end, found ${JSON.stringify(off)}`);
    let n = 1;
    for (const d of e.shape as number[]) {
      n *= d;
      if (!Number.isSafeInteger(n)) bad(file, `tensor "${name}": shape ${JSON.stringify(e.shape)} overflows`);
    }
    const bytes = n * ST_DTYPES[e.dtype].size;
    const [b, en] = off as number[];
    if (en - b !== bytes) bad(file, `tensor "${name}": ${e.dtype} ${JSON.stringify(e.shape)} needs ${bytes} bytes but data_offsets span ${en - b}`);
    if (en > dataBytes) bad(file, `tensor "${name}": data_offsets [${b}, ${en}] point past the end of the data (${dataBytes} bytes; truncated file?)`);
    entries.push({ name, dtype: e.dtype, shape: e.shape as number[], begin: dataStart + b, end: dataStart + en });
  }
  const sorted = [...entries].sort((a, b) => a.begin - b.begin || a.end - b.end);
  for (let i = 1; i < sorted.length; i++)
    if (sorted[i].begin < sorted[i - 1].end && sorted[i].end > sorted[i].begin)
      bad(file, `tensors "${sorted[i - 1].name}" and "${sorted[i].name}" overlap`);
  return { entries, metadata };
}

/** An open safetensors file: validated header, the mapping, tensors by name. */
export class SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  private readonly entries: Map<string, TensorEntry>;
  private memory: NativeMemoryHandle | null;

  private constructor(path: string, entries: TensorEntry[], metadata: Record<string, string>, memory: NativeMemoryHandle) {
    this.path = path;
    this.entries = new Map(entries.map((e) => [e.name, e]));
    this.metadata = metadata;
    this.memory = memory;
  }

  /** Opens and validates a file; only the header is read before mapping. */
  static open(path: string): SafetensorsFile {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r');
    } catch (e) {
      throw new KvantError('KVANT_IO', `Cannot open ${path}: ${(e as Error).message}`);
    }
    try {
      const size = fs.fstatSync(fd).size;
      if (size < 8) bad(path, `file is ${size} bytes, shorter than the 8-byte header length`);
      const lenBuf = Buffer.alloc(8);
      fs.readSync(fd, lenBuf, 0, 8, 0);
      const len = lenBuf.readBigUInt64LE(0); // exact: never through a lossy double
      if (len > BigInt(MAX_HEADER_BYTES)) bad(path, `header length ${len} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
      if (len > BigInt(size - 8)) bad(path, `header length ${len} is larger than the file (${size} bytes)`);
      const header = Buffer.alloc(Number(len));
      if (fs.readSync(fd, header, 0, header.length, 8) !== header.length) bad(path, 'short read of the header');
      const { entries, metadata } = parseHeader(path, header, size);
      return new SafetensorsFile(path, entries, metadata, mapFile(path));
    } finally {
      fs.closeSync(fd);
    }
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  entry(name: string): TensorEntry {
    const e = this.entries.get(name);
    if (!e) throw new KvantError('KVANT_FORMAT', `${this.path}: no tensor named "${name}"`);
    return e;
  }

  /** The tensor as a view of the mapping (no copy). Dtypes kvant has no type for get KVANT_DTYPE. */
  tensor(name: string): Tensor {
    if (!this.memory) throw new KvantError('KVANT_RANGE', `${this.path} was closed`);
    const e = this.entry(name);
    const kv = ST_DTYPES[e.dtype].kvant;
    if (!kv) throw new KvantError('KVANT_DTYPE', `${this.path}: tensor "${name}" has dtype ${e.dtype}, which kvant does not load`);
    const view = new Tensor({ kind: 'native', memory: this.memory }, 'u8', [e.end - e.begin], e.begin);
    if (e.begin % dtypeSize(kv) === 0) return Tensor.fromNative(this.memory, kv, e.shape, e.begin);
    // The format does not promise alignment (writers that do not sort by dtype leave tensors
    // at odd offsets); kernels need element alignment, so such a tensor alone is copied once.
    const copy = Tensor.zeros(e.shape, kv, { native: true });
    for (let b = 0; b < view.byteLength; b += 1 << 30) copy.byteView(b, Math.min(1 << 30, view.byteLength - b)).set(view.byteView(b, Math.min(1 << 30, view.byteLength - b)));
    return copy;
  }

  /** Unmaps the file; tensors handed out become unusable (never dangling). */
  close(): void {
    this.memory?.dispose();
    this.memory = null;
  }
}

export interface WriteOptions {
  metadata?: Record<string, string>;
}

/** A tensor to write, made only when its turn comes (so a model need not fit in memory). */
export interface LazyTensor {
  name: string;
  dtype: DType;
  shape: readonly number[];
  make(): Tensor;
}

const lazyBytes = (t: LazyTensor) => t.shape.reduce((a, b) => a * b, 1) * dtypeSize(t.dtype);

/**
 * Writes tensors to one safetensors file, streaming each tensor's bytes (no concatenation in
 * memory). The header is padded with spaces to a multiple of 8 so the data stays aligned.
 */
export function writeSafetensors(path: string, tensors: ReadonlyArray<[string, Tensor]>, opts: WriteOptions = {}): number {
  return writeLazySafetensors(path, tensors.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape, make: () => t })), opts, false);
}

/** Like writeSafetensors, but each tensor is made just before it is written and disposed after. */
export function writeLazySafetensors(path: string, tensors: ReadonlyArray<LazyTensor>, opts: WriteOptions = {}, dispose = true): number {
  const header: Record<string, unknown> = { __metadata__: { format: 'pt', ...(opts.metadata ?? {}) } };
  // Wider elements first (stable otherwise): with an 8-aligned data area every tensor then
  // starts at a multiple of its element size, which is what kernels need to use it in place.
  const order = [...tensors].sort((a, b) => dtypeSize(b.dtype) - dtypeSize(a.dtype));
  let offset = 0;
  for (const t of order) {
    if (t.name === '__metadata__' || t.name in header) throw new KvantError('KVANT_FORMAT', `Duplicate or reserved tensor name "${t.name}"`);
    header[t.name] = { dtype: KVANT_TO_ST[t.dtype], shape: [...t.shape], data_offsets: [offset, offset + lazyBytes(t)] };
    offset += lazyBytes(t);
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  let fd: number;
  try {
    fd = fs.openSync(path, 'w');
  } catch (e) {
    throw new KvantError('KVANT_IO', `Cannot write ${path}: ${(e as Error).message}`);
  }
  try {
    fs.writeSync(fd, len);
    fs.writeSync(fd, json);
    const CHUNK = 1 << 30; // a TypedArray view per GiB: tensors over 4 GiB stream through slices
    for (const lt of order) {
      const t = lt.make();
      if (t.dtype !== lt.dtype || t.byteLength !== lazyBytes(lt)) throw new KvantError('KVANT_SHAPE', `Tensor "${lt.name}" was announced as ${lt.dtype} ${JSON.stringify(lt.shape)}`);
      for (let b = 0; b < t.byteLength; b += CHUNK) fs.writeSync(fd, t.byteView(b, Math.min(CHUNK, t.byteLength - b)));
      if (dispose) t.dispose();
    }
  } finally {
    fs.closeSync(fd);
  }
  return 8 + Buffer.byteLength(json) + offset;
}

export interface ShardedWriteResult {
  files: string[];
  totalSize: number;
}

/**
 * Writes tensors as `model-0000i-of-0000n.safetensors` shards of at most `maxShardBytes` (a
 * tensor larger than that gets a shard of its own) plus model.safetensors.index.json; a single
 * shard is written as model.safetensors with no index, as transformers does.
 */
export function writeShardedSafetensors(
  dir: string,
  tensors: ReadonlyArray<[string, Tensor]> | ReadonlyArray<LazyTensor>,
  maxShardBytes: number,
  opts: WriteOptions & { onShard?: (i: number, n: number) => void } = {},
): ShardedWriteResult {
  const lazy: LazyTensor[] = (tensors as ReadonlyArray<[string, Tensor] | LazyTensor>).map((t) =>
    Array.isArray(t) ? { name: t[0], dtype: t[1].dtype, shape: t[1].shape, make: () => t[1] } : t,
  );
  const dispose = !Array.isArray(tensors[0]);
  const shards: LazyTensor[][] = [[]];
  let cur = 0;
  for (const t of lazy) {
    const bytes = lazyBytes(t);
    if (cur > 0 && cur + bytes > maxShardBytes) {
      shards.push([]);
      cur = 0;
    }
    shards[shards.length - 1].push(t);
    cur += bytes;
  }
  const total = lazy.reduce((a, t) => a + lazyBytes(t), 0);
  if (shards.length === 1) {
    opts.onShard?.(0, 1);
    writeLazySafetensors(`${dir}/model.safetensors`, shards[0], opts, dispose);
    return { files: ['model.safetensors'], totalSize: total };
  }
  const n = shards.length;
  const pad = (i: number) => String(i).padStart(5, '0');
  const files = shards.map((_, i) => `model-${pad(i + 1)}-of-${pad(n)}.safetensors`);
  const weightMap: Record<string, string> = {};
  shards.forEach((s, i) => {
    opts.onShard?.(i, n);
    writeLazySafetensors(`${dir}/${files[i]}`, s, opts, dispose);
    for (const t of s) weightMap[t.name] = files[i];
  });
  fs.writeFileSync(`${dir}/model.safetensors.index.json`, JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n');
  return { files, totalSize: total };
}
