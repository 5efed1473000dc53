/**
 * The CUDA backend (`kvant.cuda`): device tensors, streams, the device memory budget, and the
 * kernels over device tensors; plus {@link opsFor}, the op-level API on a chosen backend.
 * Everything here needs a usable CUDA addon (see `kvant.cudaInfo()` / `backendInfo()`); without
 * one each call throws KVANT_BACKEND with the reason.
 */
export { DeviceTensor, Stream, checkDeviceTensor, deviceProperties, memoryStats, setMemoryBudget, synchronize } from './device';
export type { StreamOptions } from './device';
export type { DeviceProperties, DeviceMemoryStats, DeviceBufferHandle, StreamHandle } from './native';
export {
  rmsNorm, ropeInPlace, siluGate, softmaxInPlace, argmax, embedding, routeTopK, uploadQTensor, freeQTensor, dequantize, quantizeRtn, qlinear,
  flashAttention, mlaDecode,
} from './ops';
export type { DeviceOutOptions, DeviceRopeOptions, DeviceQTensor, DeviceQLinearOptions, DeviceFlashOptions, DevicePagedLatent } from './ops';
export { opsFor } from './host';
export type { HostOps } from './host';
export { DeviceMlaCache, accumulateRows, copyRows, denseLinear, denseLinearHeads } from './rows';
export type { CopyRowsOptions, DenseHeadsGeometry, DeviceMlaCacheOptions } from './rows';
export { DEVICE_DECODE_HEAD_DIMS, DevicePagedKVCache } from './kv-cache';
export type { DevicePagedCacheOptions } from './kv-cache';
export { sampleTokens } from './sampling';
export type { DeviceSampleRow } from './sampling';
