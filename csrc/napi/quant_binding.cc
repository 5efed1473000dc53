// Bindings of the group-quantization family (csrc/cpu/quant.h, gptq.h). Formats arrive as
// the 32 bytes of lib/quant/format.ts encodeQuantFormat, copied into the native struct;
// tensors as (storage, byteOffset, byteLength). lib/quant validates first, this layer
// re-checks every size against the format before any kernel touches memory.
#include <cstring>
#include <vector>

#include "addon.h"
#include "args.h"
#include "gptq.h"
#include "quant.h"

namespace kvant::napi {
namespace {

QuantFormat getFormat(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
    throwKvant(env, "KVANT_FORMAT", "Expected the encoded QuantFormat (a Uint8Array of 32 bytes) for format");
  Napi::Uint8Array b = info[i].As<Napi::Uint8Array>();
  if (b.ByteLength() != sizeof(QuantFormat))
    throwKvant(env, "KVANT_FORMAT", "Expected " + std::to_string(sizeof(QuantFormat)) + " bytes for format but received " + std::to_string(b.ByteLength()));
  QuantFormat f;
  std::memcpy(&f, b.Data(), sizeof f);
  const Status s = qCheckFormat(f);
  if (s == Status::kFormat)
    throwKvant(env, "KVANT_FORMAT", "Expected bits 2/3/4/8, a positive group size or -1 and a known zero format but received bits " +
                                        std::to_string(f.bits) + ", group " + std::to_string(f.groupSize));
  if (s != Status::kOk)
    throwKvant(env, "KVANT_SHAPE", "Expected K and N whose bits fill whole int32 words but received K " + std::to_string(f.K) + ", N " +
                                       std::to_string(f.N) + " at " + std::to_string(f.bits) + " bits");
  return f;
}

void need(Napi::Env env, const Span& s, uint64_t bytes, const char* name) {
  if (s.bytes != bytes)
    throwKvant(env, "KVANT_SHAPE", std::string("Expected ") + name + " to hold " + std::to_string(bytes) + " bytes but it holds " + std::to_string(s.bytes));
}

bool isNil(const Napi::Value& v) { return v.IsNull() || v.IsUndefined(); }

Isa isaArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) return Isa(-1);
  const int v = info[i].As<Napi::Number>().Int32Value();
  if (v >= 0 && !quantKernelsFor(Isa(v)))
    throwKvant(info.Env(), "KVANT_BACKEND", std::string("ISA level ") + isaName(Isa(v)) + " is not supported on this CPU");
  return Isa(v);
}

uint64_t qweightBytes(const QuantFormat& f) { return uint64_t(qWeightRows(f) * f.N) * 4; }
uint64_t qzerosBytes(const QuantFormat& f) { return uint64_t(qGroupCount(f) * qZeroCols(f)) * 4; }
uint64_t scalesBytes(const QuantFormat& f) { return uint64_t(qGroupCount(f) * f.N) * 2; }

// quantFormatLayout(): sizeof and field offsets of the native struct.
Napi::Value layoutB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object o = Napi::Object::New(env);
  o.Set("size", double(sizeof(QuantFormat)));
  Napi::Object off = Napi::Object::New(env);
  off.Set("bits", double(offsetof(QuantFormat, bits)));
  off.Set("groupSize", double(offsetof(QuantFormat, groupSize)));
  off.Set("sym", double(offsetof(QuantFormat, sym)));
  off.Set("zeroFormat", double(offsetof(QuantFormat, zeroFormat)));
  off.Set("K", double(offsetof(QuantFormat, K)));
  off.Set("N", double(offsetof(QuantFormat, N)));
  o.Set("offsets", off);
  return o;
}

// quantEncodeFormat(bits, groupSize, sym, zeroFormat, K, N): the native struct's bytes.
Napi::Value encodeB(const Napi::CallbackInfo& info) {
  QuantFormat f;
  std::memset(&f, 0, sizeof f);
  f.bits = info[0].As<Napi::Number>().Int32Value();
  f.groupSize = info[1].As<Napi::Number>().Int32Value();
  f.sym = info[2].ToBoolean() ? 1 : 0;
  f.zeroFormat = info[3].As<Napi::Number>().Int32Value();
  f.K = int64_t(getSize(info, 4, "K"));
  f.N = int64_t(getSize(info, 5, "N"));
  Napi::Uint8Array out = Napi::Uint8Array::New(info.Env(), sizeof f);
  std::memcpy(out.Data(), &f, sizeof f);
  return out;
}

// quantRtn(fmt, w, wo, wb, qw, qwo, qwb, qz, qzo, qzb, sc, sco, scb)
Napi::Value rtnB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const QuantFormat f = getFormat(info, 0);
  const Span w = getSpan(info, 1, "w", 4), qw = getSpan(info, 4, "qweight", 4), qz = getSpan(info, 7, "qzeros", 4),
             sc = getSpan(info, 10, "scales", 2);
  need(env, w, uint64_t(f.N * f.K) * 4, "w");
  need(env, qw, qweightBytes(f), "qweight");
  need(env, qz, qzerosBytes(f), "qzeros");
  need(env, sc, scalesBytes(f), "scales");
  if (overlaps(w, qw) || overlaps(w, qz) || overlaps(w, sc) || overlaps(qw, qz) || overlaps(qw, sc) || overlaps(qz, sc))
    throwKvant(env, "KVANT_RANGE", "Expected w, qweight, qzeros and scales not to overlap");
  int64_t bad = -1;
  const Status s = quantizeRtn(f, reinterpret_cast<const float*>(w.data), reinterpret_cast<uint32_t*>(qw.data),
                               reinterpret_cast<uint32_t*>(qz.data), reinterpret_cast<uint16_t*>(sc.data), &bad);
  if (s == Status::kRange && bad >= 0)
    throwKvant(env, "KVANT_RANGE", "Expected finite weights but w[" + std::to_string(bad / f.K) + ", " + std::to_string(bad % f.K) + "] is " +
                                       std::to_string(reinterpret_cast<const float*>(w.data)[bad]));
  if (s == Status::kRange) throwKvant(env, "KVANT_RANGE", "A group's scale overflows f16 (weights beyond about 65504 * 2^bits)");
  if (s != Status::kOk) throwStatus(env, s, "quantizeRtn failed");
  return env.Undefined();
}

// quantDequant(fmt, qw.., qz.., sc.., gIdx|null.., perm|null.., out.., outDtype, isa)
Napi::Value dequantB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DequantArgs a;
  a.fmt = getFormat(info, 0);
  const QuantFormat& f = a.fmt;
  const Span qw = getSpan(info, 1, "qweight", 4), qz = getSpan(info, 4, "qzeros", 4), sc = getSpan(info, 7, "scales", 2);
  need(env, qw, qweightBytes(f), "qweight");
  need(env, qz, qzerosBytes(f), "qzeros");
  need(env, sc, scalesBytes(f), "scales");
  Span gi, pm;
  if (!isNil(info[10])) {
    gi = getSpan(info, 10, "gIdx", 4);
    need(env, gi, uint64_t(f.K) * 4, "gIdx");
  }
  if (!isNil(info[13])) {
    pm = getSpan(info, 13, "perm", 4);
    need(env, pm, uint64_t(f.K) * 4, "perm");
  }
  a.outType = getDType(info, 19, "out.dtype");
  if (a.outType != DType::kF32 && a.outType != DType::kF16 && a.outType != DType::kBF16)
    throwKvant(env, "KVANT_DTYPE", std::string("Expected f32, f16 or bf16 for out.dtype but received ") + dtypeName(a.outType));
  const Span out = getSpan(info, 16, "out", dtypeSize(a.outType));
  need(env, out, uint64_t(f.N * f.K) * dtypeSize(a.outType), "out");
  if (overlaps(out, qw) || overlaps(out, qz) || overlaps(out, sc) || overlaps(out, gi) || overlaps(out, pm))
    throwKvant(env, "KVANT_RANGE", "Expected out not to overlap the quantized tensors");
  a.qweight = reinterpret_cast<const uint32_t*>(qw.data);
  a.qzeros = reinterpret_cast<const uint32_t*>(qz.data);
  a.scales = reinterpret_cast<const uint16_t*>(sc.data);
  a.gIdx = gi.data ? reinterpret_cast<const int32_t*>(gi.data) : nullptr;
  a.perm = pm.data ? reinterpret_cast<const int32_t*>(pm.data) : nullptr;
  a.out = out.data;
  int64_t bad = -1;
  const Status s = dequantize(a, &bad, isaArg(info, 20));
  if (s == Status::kRange && a.gIdx && bad >= 0 && (a.gIdx[bad] < 0 || a.gIdx[bad] >= qGroupCount(f)))
    throwKvant(env, "KVANT_RANGE", "Expected g_idx values in 0.." + std::to_string(qGroupCount(f) - 1) + " but g_idx[" + std::to_string(bad) +
                                       "] = " + std::to_string(a.gIdx[bad]));
  if (s == Status::kRange) throwKvant(env, "KVANT_RANGE", "Expected perm to be a permutation of 0..K-1 but perm[" + std::to_string(bad) + "] repeats or is out of range");
  if (s != Status::kOk) throwStatus(env, s, "dequantize failed");
  return env.Undefined();
}

// quantMakeSequential(fmt, qwIn.., gIdx.., perm.., qwOut.., forward)
Napi::Value makeSequentialB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const QuantFormat f = getFormat(info, 0);
  const Span in = getSpan(info, 1, "qweight", 4), gi = getSpan(info, 4, "gIdx", 4), pm = getSpan(info, 7, "perm", 4),
             out = getSpan(info, 10, "qweightOut", 4);
  need(env, in, qweightBytes(f), "qweight");
  need(env, out, qweightBytes(f), "qweightOut");
  need(env, gi, uint64_t(f.K) * 4, "gIdx");
  need(env, pm, uint64_t(f.K) * 4, "perm");
  if (overlaps(in, out) || overlaps(gi, pm) || overlaps(out, gi) || overlaps(out, pm)) throwKvant(env, "KVANT_RANGE", "Expected distinct input and output buffers");
  const bool forward = info[13].ToBoolean();
  int64_t bad = -1;
  const Status s = qMakeSequential(f, reinterpret_cast<const uint32_t*>(in.data), reinterpret_cast<int32_t*>(gi.data),
                                   reinterpret_cast<int32_t*>(pm.data), reinterpret_cast<uint32_t*>(out.data), forward, &bad);
  if (s == Status::kRange && forward)
    throwKvant(env, "KVANT_RANGE", "Expected g_idx values in 0.." + std::to_string(qGroupCount(f) - 1) + " but g_idx[" + std::to_string(bad) + "] = " +
                                       std::to_string(reinterpret_cast<const int32_t*>(gi.data)[bad]));
  if (s == Status::kRange) throwKvant(env, "KVANT_RANGE", "Expected perm to be a permutation of 0..K-1 but perm[" + std::to_string(bad) + "] repeats or is out of range");
  if (s == Status::kFormat)
    throwKvant(env, "KVANT_FORMAT", "Expected every g_idx group to hold group_size channels (the last one the rest) but group " + std::to_string(bad) + " does not");
  if (s != Status::kOk) throwStatus(env, s, "makeSequential failed");
  return env.Undefined();
}

// gptqHessianAdd(H, ho, hb, K, X, xo, xb, T, n, b, isa)
Napi::Value hessianB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Span h = getSpan(info, 0, "H", 4);
  const uint64_t K = getSize(info, 3, "K");
  const Span x = getSpan(info, 4, "x", 4);
  const uint64_t T = getSize(info, 7, "tokens");
  need(env, h, K * K * 4, "H");
  need(env, x, T * K * 4, "x");
  if (overlaps(h, x)) throwKvant(env, "KVANT_RANGE", "Expected x not to overlap H");
  const double n = info[8].As<Napi::Number>().DoubleValue(), b = info[9].As<Napi::Number>().DoubleValue();
  if (!(b > 0) || !(n >= 0)) throwKvant(env, "KVANT_RANGE", "Expected a positive sequence count for the batch");
  const Isa isa = info[10].IsNumber() ? Isa(info[10].As<Napi::Number>().Int32Value()) : Isa(-1);
  if (int(isa) >= 0 && !gptqKernelsFor(isa)) throwKvant(env, "KVANT_BACKEND", std::string("ISA level ") + isaName(isa) + " is not supported on this CPU");
  int64_t bad = -1;
  std::vector<float> scratch;
  try {
    scratch.resize(size_t(T * K));
  } catch (const std::bad_alloc&) {
    throwKvant(env, "KVANT_OOM", "Hessian accumulation: no memory for the transposed batch (" + std::to_string(T * K * 4) + " bytes)");
  }
  const Status s = hessianAdd(reinterpret_cast<float*>(h.data), int64_t(K), reinterpret_cast<const float*>(x.data), int64_t(T), n, b,
                              scratch.data(), &bad, isa);
  if (s == Status::kRange && bad >= 0)
    throwKvant(env, "KVANT_RANGE", "Expected finite calibration activations but x[" + std::to_string(bad / int64_t(K)) + ", " +
                                       std::to_string(bad % int64_t(K)) + "] is " + std::to_string(reinterpret_cast<const float*>(x.data)[bad]));
  if (s != Status::kOk) throwStatus(env, s, "Hessian accumulation failed");
  return env.Undefined();
}

struct GptqArgs {
  QuantFormat f;
  Span w, h, qw, qz, sc, gi;
  GptqOptions o;
  Isa isa;
};

// (fmt, w.., H.., damp, blockSize, actOrder, staticGroups, errorStats, qw.., qz.., sc.., gIdx.., isa, cancel)
GptqArgs parseGptq(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  GptqArgs a;
  a.f = getFormat(info, 0);
  const QuantFormat& f = a.f;
  a.w = getSpan(info, 1, "w", 4);
  a.h = getSpan(info, 4, "H", 4);
  a.o.dampPercent = info[7].As<Napi::Number>().DoubleValue();
  a.o.blockSize = int64_t(getSize(info, 8, "blockSize"));
  a.o.actOrder = info[9].ToBoolean();
  a.o.staticGroups = info[10].ToBoolean();
  a.o.errorStats = info[11].ToBoolean();
  a.qw = getSpan(info, 12, "qweight", 4);
  a.qz = getSpan(info, 15, "qzeros", 4);
  a.sc = getSpan(info, 18, "scales", 2);
  a.gi = getSpan(info, 21, "gIdx", 4);
  need(env, a.w, uint64_t(f.N * f.K) * 4, "w");
  need(env, a.h, uint64_t(f.K * f.K) * 4, "H");
  need(env, a.qw, qweightBytes(f), "qweight");
  need(env, a.qz, qzerosBytes(f), "qzeros");
  need(env, a.sc, scalesBytes(f), "scales");
  need(env, a.gi, uint64_t(f.K) * 4, "gIdx");
  if (!(a.o.dampPercent > 0 && a.o.dampPercent < 1))
    throwKvant(env, "KVANT_RANGE", "Expected dampPercent in (0, 1) but received " + std::to_string(a.o.dampPercent));
  if (a.o.blockSize < 1 || a.o.blockSize > 4096) throwKvant(env, "KVANT_RANGE", "Expected blockSize in 1..4096 but received " + std::to_string(a.o.blockSize));
  const Span outs[] = {a.qw, a.qz, a.sc, a.gi};
  for (const Span& o : outs)
    if (overlaps(o, a.w) || overlaps(o, a.h)) throwKvant(env, "KVANT_RANGE", "Expected the outputs not to overlap w or H");
  a.isa = info[24].IsNumber() ? Isa(info[24].As<Napi::Number>().Int32Value()) : Isa(-1);
  if (int(a.isa) >= 0 && !gptqKernelsFor(a.isa)) throwKvant(env, "KVANT_BACKEND", std::string("ISA level ") + isaName(a.isa) + " is not supported on this CPU");
  return a;
}

AsyncResult runGptq(const GptqArgs& a, GptqStats* st, const std::atomic<bool>* cancel) {
  GptqWorkspace ws;
  ws.reserve(a.f, a.o);  // std::bad_alloc -> KVANT_OOM (caught by the callers)
  int64_t bad = 0;
  const Status s = gptqQuantize(a.f, reinterpret_cast<const float*>(a.w.data), reinterpret_cast<const float*>(a.h.data), a.o, ws,
                                reinterpret_cast<uint32_t*>(a.qw.data), reinterpret_cast<uint32_t*>(a.qz.data),
                                reinterpret_cast<uint16_t*>(a.sc.data), reinterpret_cast<int32_t*>(a.gi.data), st, cancel, &bad, a.isa);
  if (s == Status::kOk) return {};
  if (s == Status::kAborted) return {s, "GPTQ was aborted"};
  if (s == Status::kRange && bad > 0)
    return {s, "Expected finite weights but w[" + std::to_string(bad / a.f.K) + ", " + std::to_string(bad % a.f.K) + "] is not"};
  if (s == Status::kRange && bad < 0)
    return {s, "Expected a finite Hessian but H[" + std::to_string((-1 - bad) / a.f.K) + ", " + std::to_string((-1 - bad) % a.f.K) + "] is not"};
  if (s == Status::kRange)
    return {s, "GPTQ: the Hessian is all zero, is not positive definite even with 64% damping, or a scale overflows f16"};
  return {s, "GPTQ failed"};
}

Napi::Object statsObject(Napi::Env env, const GptqStats& s) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("dampPercent", s.dampPercent);
  o.Set("retries", s.retries);
  o.Set("deadColumns", double(s.deadColumns));
  o.Set("loss", s.loss);
  o.Set("errNum", s.errNum);
  o.Set("errDen", s.errDen);
  o.Set("secondsFactor", s.secondsFactor);
  o.Set("secondsQuant", s.secondsQuant);
  o.Set("secondsUpdate", s.secondsUpdate);
  o.Set("secondsError", s.secondsError);
  o.Set("flopsFactor", s.flopsFactor);
  o.Set("flopsUpdate", s.flopsUpdate);
  return o;
}

Napi::Value gptqSyncB(const Napi::CallbackInfo& info) {
  const GptqArgs a = parseGptq(info);
  GptqStats st;
  AsyncResult r;
  try {
    r = runGptq(a, &st, nullptr);
  } catch (const std::bad_alloc&) {
    r = {Status::kOom, "GPTQ: could not allocate its workspace (about 12 K^2 + 4 N K bytes)"};
  }
  if (r.status != Status::kOk) throwKvant(info.Env(), statusCode(r.status), r.message);
  return statsObject(info.Env(), st);
}

Napi::Value gptqAsyncB(const Napi::CallbackInfo& info) {
  const GptqArgs a = parseGptq(info);
  CancelFlag cancel = getCancelFlag(info, 25);
  auto st = std::make_shared<GptqStats>();
  return runAsync(
      info.Env(), "kvant.gptq", {info[1], info[4], info[12], info[15], info[18], info[21]},
      [a, st, cancel]() -> AsyncResult {
        try {
          return runGptq(a, st.get(), cancel.get());
        } catch (const std::bad_alloc&) {
          return {Status::kOom, "GPTQ: could not allocate its workspace (about 12 K^2 + 4 N K bytes)"};
        }
      },
      [st](Napi::Env env) -> Napi::Value { return statsObject(env, *st); });
}

// Benchmark state: buffers allocated once by gptqBenchPrepare, so the timed calls measure only
// the kernels (plus the O(K^2) refill of the in-place factorization).
struct BenchState {
  int64_t N = 0, K = 0, B = 0;
  std::vector<double> m, scratch;
  std::vector<float> w, u, err;
};
BenchState& benchState() {
  static BenchState s;
  return s;
}

// gptqBenchPrepare(N, K, B): allocates; gptqBenchRun(kind 0 factor | 1 update); gptqBenchRelease()
Napi::Value benchPrepareB(const Napi::CallbackInfo& info) {
  BenchState& s = benchState();
  s.N = int64_t(getSize(info, 0, "N"));
  s.K = int64_t(getSize(info, 1, "K"));
  s.B = int64_t(getSize(info, 2, "B"));
  if (s.K == 0 || s.N == 0 || s.B == 0) throwKvant(info.Env(), "KVANT_SHAPE", "Expected positive N, K and B");
  try {
    s.m.assign(size_t(s.K * s.K), 0.0);
    s.scratch.assign(size_t(gptqFactorScratch(s.K)), 0.0);
    s.w.assign(size_t(s.N * s.K), 0.5f);
    s.u.assign(size_t(s.K * s.K), 0.001f);
    s.err.assign(size_t(s.N * s.B * kGptqSuper), 0.01f);
  } catch (const std::bad_alloc&) {
    const int64_t K = s.K;
    s = BenchState();
    throwKvant(info.Env(), "KVANT_OOM", "gptqBenchPrepare: not enough memory for K = " + std::to_string(K));
  }
  return info.Env().Undefined();
}

Napi::Value benchRunB(const Napi::CallbackInfo& info) {
  BenchState& s = benchState();
  if (s.K == 0) throwKvant(info.Env(), "KVANT_RANGE", "gptqBenchRun before gptqBenchPrepare");
  const uint64_t kind = getSize(info, 0, "kind");
  if (kind == 0) {
    if (!gptqBenchFactor(s.m.data(), s.K, s.scratch.data())) throwKvant(info.Env(), "KVANT_BACKEND", "benchmark matrix was not positive definite");
  } else {
    gptqBenchUpdate(s.w.data(), s.u.data(), s.err.data(), s.N, s.K, s.B);
  }
  return info.Env().Undefined();
}

Napi::Value benchReleaseB(const Napi::CallbackInfo& info) {
  benchState() = BenchState();
  return info.Env().Undefined();
}

void registerQuant(Napi::Env env, Napi::Object exports) {
  exports.Set("gptqBenchPrepare", Napi::Function::New(env, benchPrepareB, "gptqBenchPrepare"));
  exports.Set("gptqBenchRun", Napi::Function::New(env, benchRunB, "gptqBenchRun"));
  exports.Set("gptqBenchRelease", Napi::Function::New(env, benchReleaseB, "gptqBenchRelease"));
  exports.Set("gptqHessianAdd", Napi::Function::New(env, hessianB, "gptqHessianAdd"));
  exports.Set("gptqQuantize", Napi::Function::New(env, gptqSyncB, "gptqQuantize"));
  exports.Set("gptqQuantizeAsync", Napi::Function::New(env, gptqAsyncB, "gptqQuantizeAsync"));
  exports.Set("quantFormatLayout", Napi::Function::New(env, layoutB, "quantFormatLayout"));
  exports.Set("quantEncodeFormat", Napi::Function::New(env, encodeB, "quantEncodeFormat"));
  exports.Set("quantRtn", Napi::Function::New(env, rtnB, "quantRtn"));
  exports.Set("quantDequant", Napi::Function::New(env, dequantB, "quantDequant"));
  exports.Set("quantMakeSequential", Napi::Function::New(env, makeSequentialB, "quantMakeSequential"));
}

}  // namespace

static Registration registration("quant", registerQuant);

}  // namespace kvant::napi
