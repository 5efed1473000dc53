/**
 * kvant's one error type. Every public entry point throws (or rejects with) a KvantError
 * whose `code` is stable and whose message names the argument and the expected vs actual value.
 */

/** The stable error codes. */
export type KvantErrorCode =
  | 'KVANT_SHAPE'
  | 'KVANT_DTYPE'
  | 'KVANT_FORMAT'
  | 'KVANT_RANGE'
  | 'KVANT_OOM'
  | 'KVANT_BACKEND'
  | 'KVANT_IO'
  | 'KVANT_ABORTED';

export const ERROR_CODES: readonly KvantErrorCode[] = [
  'KVANT_SHAPE',
  'KVANT_DTYPE',
  'KVANT_FORMAT',
  'KVANT_RANGE',
  'KVANT_OOM',
  'KVANT_BACKEND',
  'KVANT_IO',
  'KVANT_ABORTED',
];

export class KvantError extends Error {
  readonly code: KvantErrorCode;
  constructor(code: KvantErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'KvantError';
    this.code = code;
  }
}

/** Renders a value for an error message, briefly. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'string') return JSON.stringify(value.length > 40 ? value.slice(0, 40) + '…' : value);
  if (typeof value === 'number' || typeof value === 'bigint' || typeof value === 'boolean') return String(value);
  if (Array.isArray(value)) return value.length > 8 ? `[${value.slice(0, 8).map(describe).join(', ')}, …]` : `[${value.map(describe).join(', ')}]`;
  if (ArrayBuffer.isView(value)) return `${value.constructor.name}(${value.byteLength} bytes)`;
  if (typeof value === 'function') return 'a function';
  const name = (value as object).constructor?.name;
  return name && name !== 'Object' ? `a ${name}` : 'an object';
}

/** "Expected X for NAME but received V": the one formatter for parameter errors. */
export function expected(code: KvantErrorCode, what: string, name: string, actual: unknown): KvantError {
  return new KvantError(code, `Expected ${what} for ${name} but received ${typeof actual === 'string' && actual.startsWith('\u0000') ? actual.slice(1) : describe(actual)}`);
}

/** Marks a string as already formatted for `expected` (no quoting). */
export function raw(text: string): string {
  return '\u0000' + text;
}

function isCoded(e: unknown): e is Error & { code: string } {
  return e instanceof Error && typeof (e as { code?: unknown }).code === 'string';
}

/**
 * Converts an error thrown by the native addon into a KvantError. `stackFrom` is an Error
 * captured before an async native call so the user's stack survives the thread hop.
 */
export function fromNative(e: unknown, stackFrom?: Error): unknown {
  if (e instanceof KvantError) return e;
  if (isCoded(e) && (ERROR_CODES as readonly string[]).includes(e.code)) {
    const k = new KvantError(e.code as KvantErrorCode, e.message);
    if (stackFrom?.stack) k.stack = `KvantError: ${e.message}\n${stackFrom.stack.split('\n').slice(1).join('\n')}`;
    else if (e.stack) k.stack = e.stack.replace(/^Error/, 'KvantError');
    return k;
  }
  return e;
}

/** Runs a synchronous native call, converting its errors. */
export function callNative<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw fromNative(e);
  }
}

/** Awaits an asynchronous native call, converting its errors and keeping the caller's stack. */
export async function awaitNative<T>(start: () => Promise<T>): Promise<T> {
  const stackFrom = new Error();
  try {
    return await start();
  } catch (e) {
    throw fromNative(e, stackFrom);
  }
}

export function abortError(what: string): KvantError {
  return new KvantError('KVANT_ABORTED', `${what} was aborted`);
}
