// Bindings of the decode loop's small ops. Argument order per tensor: (storage, byteOffset,
// byteLength); lib/ops/small.ts validates shapes first, this layer re-checks sizes.
#include "addon.h"
#include "args.h"
#include "small_ops.h"

namespace kvant::napi {
namespace {

Isa isaArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) return Isa(-1);
  const int v = info[i].As<Napi::Number>().Int32Value();
  if (v >= 0 && !smallOpsKernelsFor(Isa(v)))
    throwKvant(info.Env(), "KVANT_BACKEND", std::string("ISA level ") + isaName(Isa(v)) + " is not supported on this CPU");
  return Isa(v);
}

void need(Napi::Env env, const Span& s, size_t bytes, const char* name) {
  if (s.bytes != bytes)
    throwKvant(env, "KVANT_SHAPE", std::string("Expected ") + name + " to hold " + std::to_string(bytes) + " bytes but it holds " + std::to_string(s.bytes));
}

void check(Napi::Env env, Status s, const char* what) {
  if (s != Status::kOk) throwStatus(env, s, std::string(what) + " failed");
}

// rmsNorm(x, xo, xb, w, wo, wb, wDtype, y, yo, yb, rows, n, eps, isa)
Napi::Value rmsNormB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType wt = getDType(info, 6, "w.dtype");
  const Span x = getSpan(info, 0, "x", 4), w = getSpan(info, 3, "w", dtypeSize(wt)), y = getSpan(info, 7, "y", 4);
  const size_t rows = getSize(info, 10, "rows"), n = getSize(info, 11, "n");
  need(env, x, rows * n * 4, "x");
  need(env, y, rows * n * 4, "y");
  need(env, w, n * dtypeSize(wt), "w");
  if (overlaps(y, w)) throwKvant(env, "KVANT_RANGE", "Expected y not to overlap w");
  if (overlaps(x, y) && x.data != y.data) throwKvant(env, "KVANT_RANGE", "Expected y to be x itself or disjoint from it");
  const float eps = info[12].As<Napi::Number>().FloatValue();
  check(env, rmsNorm(reinterpret_cast<float*>(x.data), w.data, wt, eps, reinterpret_cast<float*>(y.data), rows, n, isaArg(info, 13)), "rmsNorm");
  return env.Undefined();
}

// addRmsNorm(x, xo, xb, d, do, db, w, wo, wb, wDtype, y, yo, yb, rows, n, eps, isa)
Napi::Value addRmsNormB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType wt = getDType(info, 9, "w.dtype");
  const Span x = getSpan(info, 0, "x", 4), d = getSpan(info, 3, "delta", 4), w = getSpan(info, 6, "w", dtypeSize(wt)), y = getSpan(info, 10, "y", 4);
  const size_t rows = getSize(info, 13, "rows"), n = getSize(info, 14, "n");
  need(env, x, rows * n * 4, "x");
  need(env, d, rows * n * 4, "delta");
  need(env, y, rows * n * 4, "y");
  need(env, w, n * dtypeSize(wt), "w");
  if (overlaps(y, w) || overlaps(y, x) || overlaps(y, d)) throwKvant(env, "KVANT_RANGE", "Expected y not to overlap x, delta or w");
  if (overlaps(x, d) || overlaps(x, w)) throwKvant(env, "KVANT_RANGE", "Expected x (updated in place) not to overlap delta or w");
  const float eps = info[15].As<Napi::Number>().FloatValue();
  check(env, addRmsNorm(reinterpret_cast<float*>(x.data), reinterpret_cast<const float*>(d.data), w.data, wt, eps, reinterpret_cast<float*>(y.data), rows, n, isaArg(info, 16)), "addRmsNorm");
  return env.Undefined();
}

// rope(x, xo, xb, rows, heads, stride, offset, pairs, pos, po, pb, invFreq, fo, fb, amp)
Napi::Value ropeB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Span x = getSpan(info, 0, "x", 4);
  const size_t rows = getSize(info, 3, "rows"), heads = getSize(info, 4, "heads"), stride = getSize(info, 5, "stride");
  const size_t offset = getSize(info, 6, "offset"), pairs = getSize(info, 7, "pairs");
  const Span pos = getSpan(info, 8, "positions", 4), inv = getSpan(info, 11, "invFreq", 4);
  need(env, x, rows * heads * stride * 4, "x");
  need(env, pos, rows * 4, "positions");
  need(env, inv, pairs * 4, "invFreq");
  if (offset + 2 * pairs > stride) throwKvant(env, "KVANT_SHAPE", "Expected offset + 2*pairs <= head stride " + std::to_string(stride));
  const float amp = info[14].As<Napi::Number>().FloatValue();
  check(env, ropeInterleaved(reinterpret_cast<float*>(x.data), rows, heads, stride, offset, pairs,
                             reinterpret_cast<const int32_t*>(pos.data), reinterpret_cast<const float*>(inv.data), amp), "rope");
  return env.Undefined();
}

// siluGate(g, go, gb, u, uo, ub, inStride, y, yo, yb, rows, n, isa)
Napi::Value siluGateB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Span g = getSpan(info, 0, "gate", 4), u = getSpan(info, 3, "up", 4);
  const size_t stride = getSize(info, 6, "inStride");
  const Span y = getSpan(info, 7, "y", 4);
  const size_t rows = getSize(info, 10, "rows"), n = getSize(info, 11, "n");
  if (rows > 0 && (g.bytes < ((rows - 1) * stride + n) * 4 || u.bytes < ((rows - 1) * stride + n) * 4))
    throwKvant(env, "KVANT_SHAPE", "gate/up are too short for rows x n with the given stride");
  need(env, y, rows * n * 4, "y");
  if ((overlaps(y, g) && y.data != g.data) || (overlaps(y, u) && y.data != u.data))
    throwKvant(env, "KVANT_RANGE", "Expected y to be disjoint from gate and up (or to be gate itself)");
  check(env, siluGate(reinterpret_cast<const float*>(g.data), reinterpret_cast<const float*>(u.data), stride,
                      reinterpret_cast<float*>(y.data), rows, n, isaArg(info, 12)), "siluGate");
  return env.Undefined();
}

// softmax(x, xo, xb, rows, n, isa)
Napi::Value softmaxB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Span x = getSpan(info, 0, "x", 4);
  const size_t rows = getSize(info, 3, "rows"), n = getSize(info, 4, "n");
  need(env, x, rows * n * 4, "x");
  check(env, softmaxRows(reinterpret_cast<float*>(x.data), rows, n, isaArg(info, 5)), "softmax");
  return env.Undefined();
}

// routeTopK(l, lo, lb, rows, E, k, nGroup, topkGroup, groupLimited, normTopk, scaling, idx, io, ib, w, wo, wb)
Napi::Value routeB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Span l = getSpan(info, 0, "logits", 4);
  const size_t rows = getSize(info, 3, "rows"), E = getSize(info, 4, "experts"), k = getSize(info, 5, "k");
  const size_t nGroup = getSize(info, 6, "nGroup"), topkGroup = getSize(info, 7, "topkGroup");
  const bool gl = info[8].ToBoolean(), norm = info[9].ToBoolean();
  const float scaling = info[10].As<Napi::Number>().FloatValue();
  const Span idx = getSpan(info, 11, "idx", 4), w = getSpan(info, 14, "weights", 4);
  need(env, l, rows * E * 4, "logits");
  need(env, idx, rows * k * 4, "idx");
  need(env, w, rows * k * 4, "weights");
  const Status s = routeTopK(reinterpret_cast<const float*>(l.data), rows, E, k, nGroup, topkGroup, gl, norm, scaling,
                             reinterpret_cast<int32_t*>(idx.data), reinterpret_cast<float*>(w.data));
  if (s != Status::kOk) throwStatus(env, s, "routeTopK: k, n_group and topk_group are inconsistent with " + std::to_string(E) + " experts");
  return env.Undefined();
}

// embedding(t, to, tb, dtype, vocab, dim, ids, io, ib, out, oo, ob)
Napi::Value embeddingB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType dt = getDType(info, 3, "table.dtype");
  const Span t = getSpan(info, 0, "table", dtypeSize(dt));
  const size_t vocab = getSize(info, 4, "vocab"), dim = getSize(info, 5, "dim");
  const Span ids = getSpan(info, 6, "ids", 4), out = getSpan(info, 9, "out", 4);
  need(env, t, vocab * dim * dtypeSize(dt), "table");
  const size_t n = ids.bytes / 4;
  need(env, out, n * dim * 4, "out");
  size_t bad = 0;
  const Status s = embeddingGather(t.data, dt, vocab, dim, reinterpret_cast<const int32_t*>(ids.data), n, reinterpret_cast<float*>(out.data), &bad);
  if (s == Status::kRange)
    throwKvant(env, "KVANT_RANGE", "Expected token ids in 0.." + std::to_string(vocab - 1) + " but ids[" + std::to_string(bad) + "] = " +
                                       std::to_string(reinterpret_cast<const int32_t*>(ids.data)[bad]));
  check(env, s, "embedding");
  return env.Undefined();
}

// argmax(x, xo, xb, rows, n, out, oo, ob)
Napi::Value argmaxB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Span x = getSpan(info, 0, "x", 4);
  const size_t rows = getSize(info, 3, "rows"), n = getSize(info, 4, "n");
  const Span out = getSpan(info, 5, "out", 4);
  need(env, x, rows * n * 4, "x");
  need(env, out, rows * 4, "out");
  check(env, argmaxRows(reinterpret_cast<const float*>(x.data), rows, n, reinterpret_cast<int32_t*>(out.data)), "argmax");
  return env.Undefined();
}

// axpy(a, x, xo, xb, y, yo, yb, isa)
Napi::Value axpyB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const float a = info[0].As<Napi::Number>().FloatValue();
  const Span x = getSpan(info, 1, "x", 4), y = getSpan(info, 4, "y", 4);
  need(env, y, x.bytes, "y");
  if (overlaps(x, y) && x.data != y.data) throwKvant(env, "KVANT_RANGE", "Expected y to be disjoint from x");
  check(env, axpy(a, reinterpret_cast<const float*>(x.data), reinterpret_cast<float*>(y.data), x.bytes / 4, isaArg(info, 7)), "axpy");
  return env.Undefined();
}

void registerSmallOps(Napi::Env env, Napi::Object exports) {
  exports.Set("rmsNorm", Napi::Function::New(env, rmsNormB, "rmsNorm"));
  exports.Set("addRmsNorm", Napi::Function::New(env, addRmsNormB, "addRmsNorm"));
  exports.Set("rope", Napi::Function::New(env, ropeB, "rope"));
  exports.Set("siluGate", Napi::Function::New(env, siluGateB, "siluGate"));
  exports.Set("softmax", Napi::Function::New(env, softmaxB, "softmax"));
  exports.Set("routeTopK", Napi::Function::New(env, routeB, "routeTopK"));
  exports.Set("embedding", Napi::Function::New(env, embeddingB, "embedding"));
  exports.Set("argmax", Napi::Function::New(env, argmaxB, "argmax"));
  exports.Set("axpy", Napi::Function::New(env, axpyB, "axpy"));
}

}  // namespace

static Registration registration("smallOps", registerSmallOps);

}  // namespace kvant::napi
