// ESM entry: re-exports the one CommonJS implementation (same classes, same thread pool).
import kvant from '../dist/index.js';

export const {
  KvantError,
  ERROR_CODES,
  DTYPES,
  dtypeSize,
  isDType,
  Tensor,
  MAX_JS_BYTES,
  checkShape,
  backendInfo,
  setThreads,
  getThreads,
  resolveBackend,
  cudaInfo,
  allocateNative,
  mapFile,
} = kvant;
export default kvant;
