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
export { QUANT_BITS, QUANT_FORMAT_BYTES, checkQuantFormat, encodeQuantFormat, decodeQuantFormat, groupCount, effectiveGroup } from './quant/format';
export type { QuantBits, QuantFormat, QTensor, CheckpointFormat } from './quant/format';
export { quantizeRtn, quantizeGptq, quantizeGptqAsync, Hessian, dequantize, makeSequential, restoreOrder } from './quant/quantize';
export type { QuantizeOptions, DequantDType, GptqStats } from './quant/quantize';
export { syntheticActivations } from './quant/calibration';
export type { SyntheticOptions } from './quant/calibration';
export { readQuantizeConfig, isQuantized, loadQTensor, parseQuantizeConfig } from './quant/checkpoint';
export type { QuantizeConfig } from './quant/checkpoint';
export { loadModel, Model } from './model';
export type { LoadModelOptions, LoadProgress, LogitsOptions, ModelGenerateOptions, ModelStats, Prompt, GenerateOptions, GenerationChunk, GenerationResult, GenerationStream, FinishReason, SamplingOptions, ChatMessage } from './model';
export { TextTokenizer } from './text/tokenizer';
export type { DeepSeekV2Config, YarnScaling } from './models/deepseek-v2/config';
export { quantizeModel, isLinearWeight } from './quant/quantize-model';
export type { QuantizeModelOptions, QuantizeReport, QuantizedTensorReport, CalibrationSource, CalibrationRequest } from './quant/quantize-model';
export { sequentialCalibrate, calibrationSequences } from './quant/calibrate-model';
export type { QuantizeLinear, SequentialOptions } from './quant/calibrate-model';
export { configFor, dynamicRuleFor } from './quant/checkpoint';
export { qlinear, moeMlp } from './ops/qlinear';
export { MlaKVCache } from './kv/mla-cache';
export type { MlaCacheOptions } from './kv/mla-cache';
export { KV_CACHE_TYPES, KV_BYTES_PER_VALUE, KV_DEFAULT_HADAMARD } from './kv/format';
export type { KvCacheType, KvCacheDescriptor, KvSegmentDesc } from './kv/format';
export { kvQuantize, kvDequantize } from './kv/codec';
export type { KvCodecOptions } from './kv/codec';
export type { Admission } from './kv/pages';
export { PagedKVCache } from './kv/paged-cache';
export type { PagedCacheOptions } from './kv/paged-cache';
export { DeepSeekV2Model } from './models/deepseek-v2/model';
export { DeviceDeepSeekV2Model } from './models/deepseek-v2/device-model';
export type { LoadOptions, PrefillOptions } from './models/deepseek-v2/model';
export { parseConfig } from './models/deepseek-v2/config';
export type { ForwardProfile, ForwardComponent } from './models/deepseek-v2/forward';
export { linear, linearHeads } from './ops/linear';
export type { LinearOptions, LinearHeadsOptions } from './ops/linear';
export { flashAttention } from './ops/attention';
export type { FlashOptions } from './ops/attention';
export { rmsNorm, ropeInPlace, siluGate, softmaxInPlace, routeTopK, embedding, argmax, axpyInPlace } from './ops/small';
export type { IsaLevel, RopeOptions, RouteOptions } from './ops/small';
export type { QLinearOptions, QActivations, MlpWeights, MoeRoutes, MoeMlpOptions } from './ops/qlinear';
export { Checkpoint } from './io/checkpoint';
export * as cuda from './cuda';
export { opsFor } from './cuda/host';
export type { HostOps } from './cuda/host';
export type { PagedLatentView } from './ops/attention';
