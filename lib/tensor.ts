/**
 * Tensor: dtype + shape + contiguous storage. Storage is JS memory (ArrayBuffer or
 * SharedArrayBuffer) or native memory (64-byte aligned allocations, memory-mapped files);
 * views and reshapes share it, nothing is copied behind your back.
 */
import { DType, DTYPES, ElementArray, dtypeCode, dtypeSize, isDType, isFloatDType } from './dtype';
import { KvantError, awaitNative, callNative, expected, raw } from './errors';
import { NativeMemoryHandle, RawStorage, native } from './native';

/** TypedArray length limit on Node 20: larger tensors must live in native memory. */
export const MAX_JS_BYTES = 2 ** 32 - 1;

const asyncDisposeSymbol: symbol = (Symbol as { asyncDispose?: symbol }).asyncDispose ?? Symbol.for('nodejs.asyncDispose');
const disposeSymbol: symbol = (Symbol as { dispose?: symbol }).dispose ?? Symbol.for('nodejs.dispose');

/** Where a tensor's bytes live. */
export type Storage =
  | { readonly kind: 'js'; readonly bytes: Uint8Array }
  | { readonly kind: 'native'; readonly memory: NativeMemoryHandle };

export interface CreateOptions {
  /** Allocate in native memory (64-byte aligned, reported to V8) instead of an ArrayBuffer. */
  native?: boolean;
  /** Allocate a SharedArrayBuffer (shareable with worker_threads). */
  shared?: boolean;
}

export interface RandomOptions extends CreateOptions {
  seed?: number;
  /** 'uniform' in [low, high) (default [-1, 1)), or 'normal' with mean and std (default 0, 1). */
  dist?: 'uniform' | 'normal';
  low?: number;
  high?: number;
  mean?: number;
  std?: number;
}

export interface AsyncOptions {
  signal?: AbortSignal;
}

/** Validates a shape and returns its element count; sizes must be safe integers. */
export function checkShape(shape: unknown, name = 'shape'): number {
  if (!Array.isArray(shape)) throw expected('KVANT_SHAPE', 'an array of non-negative integers', name, shape);
  let n = 1;
  for (let i = 0; i < shape.length; i++) {
    const d = shape[i];
    if (typeof d !== 'number' || !Number.isInteger(d) || d < 0)
      throw expected('KVANT_SHAPE', 'non-negative integer dimensions', `${name}[${i}]`, d);
    n *= d;
    if (!Number.isSafeInteger(n))
      throw new KvantError('KVANT_RANGE', `Expected ${name} to have at most 2^53 elements but ${JSON.stringify(shape)} overflows`);
  }
  return n;
}

function checkDType(t: unknown, name = 'dtype'): DType {
  if (!isDType(t)) throw expected('KVANT_DTYPE', `one of ${DTYPES.join(', ')}`, name, t);
  return t;
}

function typedArrayDType(a: ArrayBufferView): DType | undefined {
  if (a instanceof Float32Array) return 'f32';
  if (a instanceof Uint16Array) return undefined; // f16 or bf16: caller must say which
  if (a instanceof Int8Array) return 'i8';
  if (a instanceof Uint8Array) return 'u8';
  if (a instanceof Int32Array) return 'i32';
  return undefined;
}

/** True for a detached ArrayBuffer (Node 20 has no ArrayBuffer.prototype.detached). */
export function isDetached(buffer: ArrayBufferLike): boolean {
  if (buffer.byteLength > 0 || !(buffer instanceof ArrayBuffer)) return false;
  try {
    new Uint8Array(buffer);
    return false;
  } catch {
    return true;
  }
}

/** Token of the constructor's unchecked path (module-private: only reshape and slice hold it). */
const VIEW_OF_CHECKED: unique symbol = Symbol('view of a checked tensor');

export class Tensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly storage: Storage;
  /** Byte offset of element 0 inside the storage. */
  readonly byteOffset: number;
  readonly numel: number;

  /** Low-level constructor; prefer Tensor.from / zeros / random / fromBuffer. */
  constructor(storage: Storage, dtype: DType, shape: readonly number[], byteOffset = 0, trusted?: typeof VIEW_OF_CHECKED) {
    if (trusted === VIEW_OF_CHECKED) {
      // reshape / slice of a checked tensor, with the shape and offset already checked against
      // it: a decode step makes dozens of such views, and the full checks (an N-API accessor
      // call for native storage among them) were a visible share of its JS time.
      this.dtype = dtype;
      this.numel = shape.reduce((a, d) => a * d, 1);
      this.shape = Object.freeze(shape as number[]);
      this.storage = storage;
      this.byteOffset = byteOffset;
      return;
    }
    this.dtype = checkDType(dtype);
    this.numel = checkShape(shape as number[]);
    this.shape = Object.freeze([...shape]);
    this.storage = storage;
    this.byteOffset = byteOffset;
    const size = dtypeSize(this.dtype);
    if (!Number.isSafeInteger(this.numel * size))
      throw new KvantError('KVANT_RANGE', `Expected a tensor under 2^53 bytes but shape ${JSON.stringify(shape)} of ${dtype} overflows`);
    if (!Number.isInteger(byteOffset) || byteOffset < 0) throw expected('KVANT_RANGE', 'a non-negative integer', 'byteOffset', byteOffset);
    const cap = storage.kind === 'js' ? storage.bytes.byteLength : storage.memory.byteLength;
    if (byteOffset + this.byteLength > cap)
      throw new KvantError(
        'KVANT_SHAPE',
        `Expected storage of at least ${byteOffset + this.byteLength} bytes for shape ${JSON.stringify(shape)} of ${dtype} at byteOffset ${byteOffset} but it has ${cap}`,
      );
    const address = storage.kind === 'js' ? storage.bytes.byteOffset + byteOffset : byteOffset;
    if (address % size !== 0)
      throw new KvantError('KVANT_RANGE', `Expected byteOffset aligned to ${size} bytes (the ${dtype} element size) but it is ${address}`);
  }

  get byteLength(): number {
    return this.numel * dtypeSize(this.dtype);
  }

  get ndim(): number {
    return this.shape.length;
  }

  /** Zero-filled tensor. */
  static zeros(shape: readonly number[], dtype: DType = 'f32', opts: CreateOptions = {}): Tensor {
    const t = checkDType(dtype);
    const bytes = checkShape(shape as number[]) * dtypeSize(t);
    if (opts.native || bytes > MAX_JS_BYTES) {
      const memory = callNative(() => new (native().NativeMemory)('alloc', bytes));
      return new Tensor({ kind: 'native', memory }, t, shape);
    }
    // Memory kvant allocates is 64-byte aligned (a cache line, a full AVX-512 vector):
    // allocate 63 bytes of slack and start the tensor at the first 64-byte boundary.
    const buf = opts.shared ? new SharedArrayBuffer(bytes + 63) : new ArrayBuffer(bytes + 63);
    const whole = new Uint8Array(buf);
    const mod = callNative(() => native().addressMod64(whole, 0, whole.byteLength));
    const start = (64 - mod) % 64;
    return new Tensor({ kind: 'js', bytes: new Uint8Array(buf, start, bytes) }, t, shape);
  }

  /**
   * Wraps (no copy) a typed array, or copies a plain number array. f16/bf16 data comes as
   * a Uint16Array of bit patterns and needs `dtype`; shape defaults to 1-D.
   */
  static from(data: ArrayBufferView | readonly number[], opts: { dtype?: DType; shape?: readonly number[] } = {}): Tensor {
    if (Array.isArray(data)) {
      const dtype = checkDType(opts.dtype ?? 'f32');
      const t = Tensor.zeros(opts.shape ?? [data.length], dtype);
      if (t.numel !== data.length) throw new KvantError('KVANT_SHAPE', `Expected ${t.numel} values for shape ${JSON.stringify(opts.shape)} but received ${data.length}`);
      if (isFloatDType(dtype) && dtype !== 'f32') {
        Tensor.from(new Float32Array(data as number[])).convertInto(t);
      } else {
        (t.data() as ElementArray).set(data as number[]);
      }
      return t;
    }
    if (!ArrayBuffer.isView(data)) throw expected('KVANT_DTYPE', 'a TypedArray or an array of numbers', 'data', data);
    const inferred = typedArrayDType(data);
    const dtype = checkDType(opts.dtype ?? inferred ?? raw('missing (a Uint16Array needs dtype f16 or bf16)'));
    const size = dtypeSize(dtype);
    if (data.byteLength % size !== 0)
      throw new KvantError('KVANT_SHAPE', `Expected data.byteLength to be a multiple of ${size} (${dtype}) but it is ${data.byteLength}`);
    if (isDetached(data.buffer)) throw new KvantError('KVANT_RANGE', 'Expected data to be a live buffer but its ArrayBuffer is detached');
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return new Tensor({ kind: 'js', bytes }, dtype, opts.shape ?? [data.byteLength / size]);
  }

  /** Wraps (no copy) a range of an ArrayBuffer or SharedArrayBuffer. */
  static fromBuffer(buffer: ArrayBuffer | SharedArrayBuffer, dtype: DType, shape: readonly number[], byteOffset = 0): Tensor {
    if (!(buffer instanceof ArrayBuffer) && !(typeof SharedArrayBuffer !== 'undefined' && buffer instanceof SharedArrayBuffer))
      throw expected('KVANT_DTYPE', 'an ArrayBuffer or SharedArrayBuffer', 'buffer', buffer);
    if (isDetached(buffer)) throw new KvantError('KVANT_RANGE', 'Expected buffer to be live but it is a detached ArrayBuffer');
    if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset > buffer.byteLength)
      throw expected('KVANT_RANGE', `an integer byteOffset in 0..${buffer.byteLength}`, 'byteOffset', byteOffset);
    return new Tensor({ kind: 'js', bytes: new Uint8Array(buffer, 0, buffer.byteLength) }, dtype, shape, byteOffset);
  }

  /** Wraps native memory (e.g. a memory-mapped file) without copying. */
  static fromNative(memory: NativeMemoryHandle, dtype: DType, shape: readonly number[], byteOffset = 0): Tensor {
    return new Tensor({ kind: 'native', memory }, dtype, shape, byteOffset);
  }

  /** A Uint8Array over bytes [offset, offset+length) of this tensor (no copy); length <= 4 GiB - 1. */
  byteView(offset = 0, length: number = this.byteLength - offset): Uint8Array {
    if (offset < 0 || length < 0 || offset + length > this.byteLength) throw new KvantError('KVANT_RANGE', `Byte range [${offset}, ${offset + length}) is outside the tensor (${this.byteLength} bytes)`);
    if (this.storage.kind === 'js') return new Uint8Array(this.storage.bytes.buffer, this.storage.bytes.byteOffset + this.byteOffset + offset, length);
    const memory = this.storage.memory;
    return new Uint8Array(callNative(() => memory.view(this.byteOffset + offset, length)));
  }

  /** Seeded random tensor (deterministic for a given seed, whatever the thread count). */
  static random(shape: readonly number[], dtype: DType = 'f32', opts: RandomOptions = {}): Tensor {
    const t = Tensor.zeros(shape, dtype, opts);
    t.fillRandom(opts);
    return t;
  }

  /** Fills in place with seeded random values. */
  fillRandom(opts: RandomOptions = {}): this {
    const dist = opts.dist ?? 'uniform';
    if (dist !== 'uniform' && dist !== 'normal') throw expected('KVANT_RANGE', "'uniform' or 'normal'", 'dist', dist);
    const seed = opts.seed ?? 0;
    if (!Number.isSafeInteger(seed) || seed < 0) throw expected('KVANT_RANGE', 'a non-negative safe integer', 'seed', seed);
    const a = dist === 'uniform' ? (opts.low ?? -1) : (opts.mean ?? 0);
    const b = dist === 'uniform' ? (opts.high ?? 1) : (opts.std ?? 1);
    const [s, off] = this.rawArgs();
    callNative(() => native().fillRandom(s, off, this.byteLength, dtypeCode(this.dtype), seed, dist === 'uniform' ? 0 : 1, a, b));
    return this;
  }

  /** (storage, byteOffset) as the native layer takes them. */
  rawArgs(): [RawStorage, number] {
    if (this.storage.kind === 'js') {
      if (isDetached(this.storage.bytes.buffer))
        throw new KvantError('KVANT_RANGE', 'Expected a live tensor but its ArrayBuffer was detached');
      return [this.storage.bytes, this.byteOffset];
    }
    // A disposed NativeMemory is rejected by the binding (KVANT_RANGE naming the argument) when
    // it unwraps the storage; checking here too cost an N-API accessor call per argument, the
    // largest single item of a decode step's JS time (63 per grouped MoE call).
    return [this.storage.memory, this.byteOffset];
  }

  /** Same storage, new shape with the same element count. One dimension may be -1. */
  reshape(shape: readonly number[]): Tensor {
    const dims = [...shape];
    const free = dims.indexOf(-1);
    if (free >= 0) {
      const known = dims.reduce((p, d, i) => (i === free ? p : p * d), 1);
      dims[free] = known > 0 && this.numel % known === 0 ? this.numel / known : -2;
    }
    const n = checkShape(dims, 'shape');
    if (n !== this.numel)
      throw new KvantError('KVANT_SHAPE', `Expected a shape with ${this.numel} elements for reshape but received ${JSON.stringify(shape)} (${n})`);
    return new Tensor(this.storage, this.dtype, dims, this.byteOffset, VIEW_OF_CHECKED);
  }

  /** Rows [start, end) along the first dimension, sharing storage. */
  slice(start: number, end: number = this.shape[0]): Tensor {
    if (this.ndim === 0) throw new KvantError('KVANT_SHAPE', 'Cannot slice a 0-d tensor');
    const rows = this.shape[0];
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > rows || start > end)
      throw new KvantError('KVANT_RANGE', `Expected 0 <= start <= end <= ${rows} for slice but received ${start}, ${end}`);
    const rowBytes = rows === 0 ? 0 : this.byteLength / rows;
    return new Tensor(this.storage, this.dtype, [end - start, ...this.shape.slice(1)], this.byteOffset + start * rowBytes, VIEW_OF_CHECKED);
  }

  /** A typed-array view of the elements (no copy); f16/bf16 as 16-bit patterns. */
  data(): ElementArray {
    if (this.byteLength > MAX_JS_BYTES)
      throw new KvantError('KVANT_RANGE', `Expected a tensor of at most ${MAX_JS_BYTES} bytes for a TypedArray view but it has ${this.byteLength}; slice() it first`);
    let buf: ArrayBufferLike;
    let off: number;
    if (this.storage.kind === 'js') {
      buf = this.storage.bytes.buffer;
      off = this.storage.bytes.byteOffset + this.byteOffset;
    } else {
      buf = callNative(() => (this.storage as { memory: NativeMemoryHandle }).memory.view(this.byteOffset, this.byteLength));
      off = 0;
    }
    switch (this.dtype) {
      case 'f32': return new Float32Array(buf, off, this.numel);
      case 'f16':
      case 'bf16': return new Uint16Array(buf, off, this.numel);
      case 'i8': return new Int8Array(buf, off, this.numel);
      case 'u8': return new Uint8Array(buf, off, this.numel);
      case 'i32': return new Int32Array(buf, off, this.numel);
    }
  }

  /** The values as a new Float32Array (converting f16/bf16 natively). */
  toFloat32Array(): Float32Array {
    if (this.dtype === 'f32') return new Float32Array(this.data() as Float32Array);
    if (!isFloatDType(this.dtype)) return Float32Array.from(this.data() as ArrayLike<number>);
    const out = Tensor.zeros(this.shape, 'f32');
    this.convertInto(out);
    return out.data() as Float32Array;
  }

  /** A new tensor of another dtype (float types; round to nearest even). */
  to(dtype: DType, opts: CreateOptions = {}): Tensor {
    const out = Tensor.zeros(this.shape, checkDType(dtype), opts);
    this.convertInto(out);
    return out;
  }

  /** Converts into an existing tensor of the same element count (must not overlap unless same dtype). */
  convertInto(dst: Tensor, isa?: 'scalar' | 'avx2' | 'avx512'): Tensor {
    const args = convertArgs(this, dst, isa);
    callNative(() => native().convert(...args));
    return dst;
  }

  /** Asynchronous conversion on kvant's thread pool; abortable between chunks. */
  async toAsync(dtype: DType, opts: AsyncOptions & CreateOptions = {}): Promise<Tensor> {
    const out = Tensor.zeros(this.shape, checkDType(dtype), opts);
    await this.convertIntoAsync(out, opts);
    return out;
  }

  async convertIntoAsync(dst: Tensor, opts: AsyncOptions = {}): Promise<Tensor> {
    const args = convertArgs(this, dst, undefined);
    await runAbortable(opts.signal, 'The conversion', (token) => native().convertAsync(...args, token));
    return dst;
  }

  /** Frees native storage now (no-op for JS storage). Views of it become unusable. */
  dispose(): void {
    if (this.storage.kind === 'native') this.storage.memory.dispose();
  }

  [disposeSymbol](): void {
    this.dispose();
  }

  async [asyncDisposeSymbol](): Promise<void> {
    this.dispose();
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}], ${this.storage.kind})`;
  }
}

/** Checks that `value` is a Tensor, naming the argument otherwise. */
export function checkTensor(value: unknown, name: string): Tensor {
  if (!(value instanceof Tensor)) throw expected('KVANT_DTYPE', 'a Tensor', name, value);
  return value;
}

/** A caller-supplied output: a Tensor of `dtype` holding exactly the elements of `shape` (KVANT_SHAPE otherwise). */
export function checkOutTensor(value: unknown, name: string, dtype: DType, shape: readonly number[]): Tensor {
  const t = checkTensor(value, name);
  const n = shape.reduce((a, d) => a * d, 1);
  if (t.dtype !== dtype || t.numel !== n) throw expected('KVANT_SHAPE', `${dtype} with ${n} elements ([${shape.join(', ')}])`, name, `${t.dtype} [${t.shape.join(', ')}]`);
  return t;
}

const ISA_CODES = { scalar: 0, avx2: 1, avx512: 2 } as const;

function convertArgs(src: Tensor, dst: Tensor, isa: 'scalar' | 'avx2' | 'avx512' | undefined) {
  checkTensor(src, 'src');
  checkTensor(dst, 'dst');
  if (dst.numel !== src.numel)
    throw new KvantError('KVANT_SHAPE', `Expected dst to have ${src.numel} elements (src shape ${JSON.stringify(src.shape)}) but it has ${dst.numel}`);
  const ok = (t: DType) => isFloatDType(t);
  if (src.dtype !== dst.dtype && !(ok(src.dtype) && ok(dst.dtype)))
    throw new KvantError('KVANT_DTYPE', `Expected float dtypes (f32, f16, bf16) to convert between but received ${src.dtype} -> ${dst.dtype}`);
  if (isa !== undefined && !(isa in ISA_CODES)) throw expected('KVANT_BACKEND', "'scalar', 'avx2' or 'avx512'", 'isa', isa);
  const [s, so] = src.rawArgs();
  const [d, dof] = dst.rawArgs();
  return [s, so, src.byteLength, dtypeCode(src.dtype), d, dof, dst.byteLength, dtypeCode(dst.dtype), src.numel, isa === undefined ? undefined : ISA_CODES[isa]] as const;
}

/**
 * Runs an abortable native job: the AbortSignal sets a native flag that the kernel polls
 * between chunks; the promise then rejects with KVANT_ABORTED.
 */
export async function runAbortable<T>(
  signal: AbortSignal | undefined,
  what: string,
  start: (token: ReturnType<typeof newCancelToken>) => Promise<T>,
): Promise<T> {
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw expected('KVANT_DTYPE', 'an AbortSignal', 'signal', signal);
  if (signal?.aborted) throw new KvantError('KVANT_ABORTED', `${what} was aborted before it started`);
  const token = newCancelToken();
  const onAbort = () => token.cancel();
  signal?.addEventListener('abort', onAbort, { once: true });
  try {
    return await awaitNative(() => start(token));
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

function newCancelToken() {
  return new (native().CancelToken)();
}
