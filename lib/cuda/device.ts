/**
 * Device tensors and streams of the CUDA backend.
 *
 * A {@link DeviceTensor} is dtype + shape + a range of a device buffer (cudaMalloc'd memory, or
 * host memory under the test-only emulation). Views (reshape, slice) share the buffer; `free()`
 * releases the whole buffer at once (every view becomes unusable: KVANT_RANGE), and the GC frees
 * it if nobody did. All device memory comes from one budgeted allocator per process:
 * {@link setMemoryBudget} caps it, and an allocation beyond the cap is KVANT_OOM with the bytes
 * needed and available.
 *
 * Work is ordered per {@link Stream}; without one, the default stream. Uploads return once the
 * host data was read, downloads once the data arrived (JS memory is pageable, for which CUDA's
 * copies are staged), so host arrays may be reused as soon as a call returns.
 */
import { DType, dtypeSize, isDType } from '../dtype';
import { KvantError, callNative, expected } from '../errors';
import { Tensor, checkShape, checkTensor } from '../tensor';
import { DeviceBufferHandle, DeviceMemoryStats, DeviceProperties, StreamHandle, cudaNative } from './native';

// `using t = ...` frees at the end of the scope (Symbol.dispose where the runtime has it).
const disposeSymbol: symbol = (Symbol as { dispose?: symbol }).dispose ?? Symbol.for('nodejs.dispose');

/** A device work queue: operations given the same stream run in order. */
export class Stream {
  /** @internal */
  readonly handle: StreamHandle;

  constructor() {
    const n = cudaNative();
    this.handle = callNative(() => new n.Stream());
  }

  /** Waits until all work queued on this stream has finished. */
  synchronize(): void {
    callNative(() => this.handle.synchronize());
  }

  /** Destroys the stream (after its queued work); using it afterwards is KVANT_RANGE. */
  destroy(): void {
    callNative(() => this.handle.destroy());
  }

  get destroyed(): boolean {
    return this.handle.destroyed;
  }

  [disposeSymbol](): void {
    this.destroy();
  }
}

/** Options shared by device calls. */
export interface StreamOptions {
  /** Where the work is queued; default: the default stream. */
  stream?: Stream;
}

/** @internal The native stream argument. */
export function streamArg(s: Stream | undefined): StreamHandle | undefined {
  if (s === undefined) return undefined;
  if (!(s instanceof Stream)) throw expected('KVANT_DTYPE', 'a cuda.Stream or undefined', 'stream', s);
  return s.handle;
}

function hostBytes(v: ArrayBufferView): Uint8Array {
  return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
}

/** A tensor in device memory. */
export class DeviceTensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly numel: number;
  /** Byte offset of element 0 inside the buffer. */
  readonly byteOffset: number;
  /** @internal */
  readonly buffer: DeviceBufferHandle;

  /** Low-level constructor; prefer DeviceTensor.empty / zeros / fromHost. */
  constructor(buffer: DeviceBufferHandle, dtype: DType, shape: readonly number[], byteOffset = 0) {
    if (!isDType(dtype)) throw expected('KVANT_DTYPE', 'a dtype (f32, f16, bf16, i8, u8, i32)', 'dtype', dtype);
    this.dtype = dtype;
    this.numel = checkShape(shape as number[]);
    this.shape = Object.freeze([...shape]);
    this.buffer = buffer;
    this.byteOffset = byteOffset;
    if (!Number.isInteger(byteOffset) || byteOffset < 0 || byteOffset % dtypeSize(dtype) !== 0)
      throw expected('KVANT_RANGE', `a non-negative byteOffset aligned to ${dtypeSize(dtype)} bytes`, 'byteOffset', byteOffset);
    if (byteOffset + this.byteLength > buffer.byteLength)
      throw new KvantError('KVANT_SHAPE', `Expected a device buffer of at least ${byteOffset + this.byteLength} bytes for shape [${shape.join(', ')}] of ${dtype} but it has ${buffer.byteLength}`);
  }

  get byteLength(): number {
    return this.numel * dtypeSize(this.dtype);
  }

  get ndim(): number {
    return this.shape.length;
  }

  /** True once the buffer was freed (by this tensor or any view of it). */
  get freed(): boolean {
    return this.buffer.freed;
  }

  /** Uninitialized device memory (fresh memory under the emulation reads as NaN / -1). */
  static empty(shape: readonly number[], dtype: DType = 'f32'): DeviceTensor {
    if (!isDType(dtype)) throw expected('KVANT_DTYPE', 'a dtype (f32, f16, bf16, i8, u8, i32)', 'dtype', dtype);
    const bytes = checkShape(shape as number[]) * dtypeSize(dtype);
    const n = cudaNative();
    const buffer = callNative(() => new n.DeviceBuffer(bytes));
    return new DeviceTensor(buffer, dtype, shape);
  }

  /** Zero-filled device memory. */
  static zeros(shape: readonly number[], dtype: DType = 'f32', opts: StreamOptions = {}): DeviceTensor {
    const t = DeviceTensor.empty(shape, dtype);
    t.fill(0, opts);
    return t;
  }

  /**
   * Copies a host Tensor (or a typed array, then 1-D unless `shape` is given; f16/bf16 as
   * Uint16Array bit patterns with `dtype`) to new device memory.
   */
  static fromHost(src: Tensor | ArrayBufferView, opts: StreamOptions & { dtype?: DType; shape?: readonly number[] } = {}): DeviceTensor {
    const host = src instanceof Tensor ? src : Tensor.from(src as ArrayBufferView, { dtype: opts.dtype, shape: opts.shape });
    const t = DeviceTensor.empty(host.shape, host.dtype);
    try {
      t.copyFromHost(host, opts);
    } catch (e) {
      t.free();
      throw e;
    }
    return t;
  }

  /** @internal (buffer, byteOffset, byteLength) as the bindings take them. */
  rawArgs(): [DeviceBufferHandle, number, number] {
    if (this.buffer.freed) throw new KvantError('KVANT_RANGE', `Expected a live DeviceTensor but its device memory was freed`);
    return [this.buffer, this.byteOffset, this.byteLength];
  }

  /** Overwrites this tensor with a host Tensor's bytes (same dtype and element count). */
  copyFromHost(src: Tensor, opts: StreamOptions = {}): this {
    checkTensor(src, 'src');
    if (src.dtype !== this.dtype || src.numel !== this.numel)
      throw new KvantError('KVANT_SHAPE', `Expected a ${this.dtype} source of ${this.numel} elements but received ${src.dtype} with ${src.numel}`);
    const n = cudaNative();
    const bytes = src.byteView();
    callNative(() => n.upload(...this.rawArgs(), bytes, streamArg(opts.stream)));
    return this;
  }

  /** Copies to a new host Tensor (complete when this returns; ordered after the stream's work). */
  toHost(opts: StreamOptions = {}): Tensor {
    const out = Tensor.zeros(this.shape, this.dtype);
    this.copyToHost(out, opts);
    return out;
  }

  /** Copies into an existing host Tensor of the same dtype and element count. */
  copyToHost(dst: Tensor, opts: StreamOptions = {}): Tensor {
    checkTensor(dst, 'dst');
    if (dst.dtype !== this.dtype || dst.numel !== this.numel)
      throw new KvantError('KVANT_SHAPE', `Expected a ${this.dtype} destination of ${this.numel} elements but received ${dst.dtype} with ${dst.numel}`);
    const n = cudaNative();
    const bytes = dst.byteView();
    callNative(() => n.download(...this.rawArgs(), bytes, streamArg(opts.stream)));
    return dst;
  }

  /** Copies to a new host typed array (f16/bf16 as Uint16Array bit patterns). */
  toArray(opts: StreamOptions = {}): Float32Array | Uint16Array | Int8Array | Uint8Array | Int32Array {
    return this.toHost(opts).data();
  }

  /** Device-to-device copy from a tensor of the same dtype and element count. */
  copyFrom(src: DeviceTensor, opts: StreamOptions = {}): this {
    checkDeviceTensor(src, 'src');
    if (src.dtype !== this.dtype || src.numel !== this.numel)
      throw new KvantError('KVANT_SHAPE', `Expected a ${this.dtype} source of ${this.numel} elements but received ${src.dtype} with ${src.numel}`);
    const n = cudaNative();
    callNative(() => n.copyDevice(...this.rawArgs(), ...src.rawArgs(), streamArg(opts.stream)));
    return this;
  }

  /** Sets every byte to `byte` (0..255). */
  fill(byte: number, opts: StreamOptions = {}): this {
    const n = cudaNative();
    callNative(() => n.memset(...this.rawArgs(), byte, streamArg(opts.stream)));
    return this;
  }

  /** Same buffer, new shape with the same element count. */
  reshape(shape: readonly number[]): DeviceTensor {
    const n = checkShape(shape as number[]);
    if (n !== this.numel) throw new KvantError('KVANT_SHAPE', `Expected a shape with ${this.numel} elements for reshape but received [${shape.join(', ')}] (${n})`);
    return new DeviceTensor(this.buffer, this.dtype, shape, this.byteOffset);
  }

  /** Rows [start, end) along the first dimension, sharing the buffer. */
  slice(start: number, end: number = this.shape[0]): DeviceTensor {
    if (this.ndim === 0) throw new KvantError('KVANT_SHAPE', 'Cannot slice a 0-d tensor');
    const rows = this.shape[0];
    if (!Number.isInteger(start) || !Number.isInteger(end) || start < 0 || end > rows || start > end)
      throw new KvantError('KVANT_RANGE', `Expected 0 <= start <= end <= ${rows} for slice but received ${start}, ${end}`);
    const rowBytes = rows === 0 ? 0 : this.byteLength / rows;
    return new DeviceTensor(this.buffer, this.dtype, [end - start, ...this.shape.slice(1)], this.byteOffset + start * rowBytes);
  }

  /** Frees the device buffer now (shared by every view of it); a second call is a no-op. */
  free(): void {
    callNative(() => this.buffer.free());
  }

  [disposeSymbol](): void {
    this.free();
  }

  toString(): string {
    return `DeviceTensor(${this.dtype}, [${this.shape.join(', ')}]${this.freed ? ', freed' : ''})`;
  }
}

/** Checks that `value` is a live DeviceTensor, naming the argument otherwise. */
export function checkDeviceTensor(value: unknown, name: string): DeviceTensor {
  if (!(value instanceof DeviceTensor)) {
    if (value instanceof Tensor) throw expected('KVANT_DTYPE', 'a cuda.DeviceTensor (upload host tensors with DeviceTensor.fromHost)', name, value);
    throw expected('KVANT_DTYPE', 'a cuda.DeviceTensor', name, value);
  }
  if (value.freed) throw new KvantError('KVANT_RANGE', `Expected a live DeviceTensor for ${name} but its device memory was freed`);
  return value;
}

/** Device 0's properties (name, compute capability, memory, limits). */
export function deviceProperties(): DeviceProperties {
  const n = cudaNative();
  return callNative(() => n.properties());
}

/** The allocator's accounting: budget, allocated and peak bytes, live allocations. */
export function memoryStats(): DeviceMemoryStats {
  return callNative(() => cudaNative().memoryStats());
}

/**
 * Caps the device memory kvant allocates (bytes; default the device's memory). Allocations
 * beyond it fail with KVANT_OOM; a budget below what is allocated now is KVANT_OOM too.
 */
export function setMemoryBudget(bytes: number): void {
  if (!Number.isSafeInteger(bytes) || bytes < 0) throw expected('KVANT_RANGE', 'a non-negative integer number of bytes', 'budget', bytes);
  callNative(() => cudaNative().setMemoryBudget(bytes));
}

/** Waits for all device work (every stream). */
export function synchronize(): void {
  callNative(() => cudaNative().synchronize());
}

/** @internal Host typed array bytes, for a few bindings that take them. */
export { hostBytes };
