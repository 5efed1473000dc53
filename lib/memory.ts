/** Native memory: 64-byte aligned allocations and memory-mapped files, outside the JS heap. */
import { callNative, expected } from './errors';
import { NativeMemoryHandle, native } from './native';

/** Allocates zeroed native memory (reported to V8 as external memory). Free with dispose(). */
export function allocateNative(byteLength: number): NativeMemoryHandle {
  if (!Number.isSafeInteger(byteLength) || byteLength < 0) throw expected('KVANT_RANGE', 'a non-negative safe integer', 'byteLength', byteLength);
  return callNative(() => new (native().NativeMemory)('alloc', byteLength));
}

/**
 * Maps a file into memory, copy-on-write: pages load on first touch, writes through views
 * never reach the file. Used for checkpoints, which are read in place.
 */
export function mapFile(path: string): NativeMemoryHandle {
  if (typeof path !== 'string' || path.length === 0) throw expected('KVANT_IO', 'a file path', 'path', path);
  return callNative(() => new (native().NativeMemory)('map', path));
}
