/**
 * kvant: quantized LLM inference for Node.js. One implementation behind both the
 * CommonJS entry (this file, compiled) and the ESM entry (esm/index.mjs re-exports it),
 * so there is one KvantError class and one native thread pool per process.
 */
export { KvantError, ERROR_CODES } from './errors';
export type { KvantErrorCode } from './errors';
export { DTYPES, dtypeSize, isDType } from './dtype';
export type { DType, ElementArray } from './dtype';
export { Tensor, MAX_JS_BYTES, checkShape } from './tensor';
export type { Storage, CreateOptions, RandomOptions, AsyncOptions } from './tensor';
export { backendInfo, setThreads, getThreads, resolveBackend, cudaInfo } from './backend';
export type { BackendInfo, BackendName, CudaStatus } from './backend';
export { allocateNative, mapFile } from './memory';
export type { NativeMemoryHandle, RawStorage } from './native';
export { qlinear, moeMlp } from './ops/qlinear';
export type { QLinearOptions, QActivations, MlpWeights, MoeRoutes, MoeMlpOptions } from './ops/qlinear';
