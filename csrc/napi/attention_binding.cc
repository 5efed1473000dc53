// flashAttention / mlaDecode bindings: spans are re-checked here; shapes were validated in
// lib/ops/attention.ts.
#include "addon.h"
#include "args.h"
#include "attention.h"

namespace kvant::napi {
namespace {

Isa isaAt(const Napi::CallbackInfo& info, size_t i) {
  return info.Length() > i && info[i].IsNumber() ? Isa(info[i].As<Napi::Number>().Int32Value()) : Isa(-1);
}

void need(Napi::Env env, const Span& s, size_t bytes, const char* name) {
  if (s.bytes < bytes)
    throwKvant(env, "KVANT_SHAPE", std::string("Expected ") + name + " to hold at least " + std::to_string(bytes) + " bytes but it holds " + std::to_string(s.bytes));
}

// flash(q3, k3, v3, out3, lse3, dims{B,Sq,Sk,Hq,Hkv,Dqk,Dv} as 7 numbers, scale, causal, cuQ3|null, cuK3|null, isa)
Napi::Value flashB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const Span q = getSpan(info, 0, "q", 4), k = getSpan(info, 3, "k", 4), v = getSpan(info, 6, "v", 4), out = getSpan(info, 9, "out", 4),
             lse = getSpan(info, 12, "lse", 4);
  FlashArgs a{};
  a.B = getSize(info, 15, "B"), a.Sq = getSize(info, 16, "Sq"), a.Sk = getSize(info, 17, "Sk"), a.Hq = getSize(info, 18, "Hq");
  a.Hkv = getSize(info, 19, "Hkv"), a.Dqk = getSize(info, 20, "Dqk"), a.Dv = getSize(info, 21, "Dv");
  a.scale = info[22].As<Napi::Number>().FloatValue();
  a.causal = info[23].ToBoolean();
  const bool varlen = !info[24].IsNull() && !info[24].IsUndefined();
  Span cq, ck;
  if (varlen) {
    cq = getSpan(info, 24, "cuSeqlensQ", 4);
    ck = getSpan(info, 27, "cuSeqlensK", 4);
    need(env, cq, (a.B + 1) * 4, "cuSeqlensQ");
    need(env, ck, (a.B + 1) * 4, "cuSeqlensK");
    const int32_t* cqp = reinterpret_cast<const int32_t*>(cq.data);
    const int32_t* ckp = reinterpret_cast<const int32_t*>(ck.data);
    if (cqp[0] != 0 || ckp[0] != 0) throwKvant(env, "KVANT_RANGE", "Expected cuSeqlens to start at 0");
    for (size_t b = 0; b < a.B; ++b)
      if (cqp[b + 1] < cqp[b] || ckp[b + 1] < ckp[b]) throwKvant(env, "KVANT_RANGE", "Expected cuSeqlens to be non-decreasing (at batch " + std::to_string(b) + ")");
    if (size_t(cqp[a.B]) != a.Sq || size_t(ckp[a.B]) != a.Sk)
      throwKvant(env, "KVANT_RANGE", "Expected cuSeqlens to end at the total token counts " + std::to_string(a.Sq) + " and " + std::to_string(a.Sk));
    a.cuQ = cqp;
    a.cuK = ckp;
  }
  const size_t qTok = varlen ? a.Sq : a.B * a.Sq, kTok = varlen ? a.Sk : a.B * a.Sk;
  need(env, q, qTok * a.Hq * a.Dqk * 4, "q");
  need(env, k, kTok * a.Hkv * a.Dqk * 4, "k");
  need(env, v, kTok * a.Hkv * a.Dv * 4, "v");
  need(env, out, qTok * a.Hq * a.Dv * 4, "out");
  need(env, lse, qTok * a.Hq * 4, "lse");
  if (overlaps(out, q) || overlaps(out, k) || overlaps(out, v) || overlaps(lse, out)) throwKvant(env, "KVANT_RANGE", "Expected out and lse not to overlap the inputs");
  a.q = reinterpret_cast<const float*>(q.data), a.k = reinterpret_cast<const float*>(k.data), a.v = reinterpret_cast<const float*>(v.data);
  a.out = reinterpret_cast<float*>(out.data), a.lse = reinterpret_cast<float*>(lse.data);
  const bool naive = info.Length() > 31 && info[31].ToBoolean();
  if (naive && varlen) throwKvant(env, "KVANT_SHAPE", "Expected fixed-length batches for the naive attention baseline");
  const Status s = naive ? naiveAttention(a, isaAt(info, 30)) : flashAttention(a, isaAt(info, 30));
  if (s != Status::kOk) throwStatus(env, s, "flashAttention failed (Hq must be a multiple of Hkv)");
  return env.Undefined();
}

// mla(q3, out3, lse3, B, H, L, R, scale, pool3, numPages, pageSize, maxPages, pageTable3, seqLens3, isa)
Napi::Value mlaB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MlaDecodeArgs a{};
  a.B = getSize(info, 9, "B"), a.H = getSize(info, 10, "H"), a.L = getSize(info, 11, "L"), a.R = getSize(info, 12, "R");
  a.scale = info[13].As<Napi::Number>().FloatValue();
  const Span q = getSpan(info, 0, "q", 4), out = getSpan(info, 3, "out", 4), lse = getSpan(info, 6, "lse", 4);
  const Span pool = getSpan(info, 14, "pool", 2);
  a.numPages = getSize(info, 17, "numPages"), a.pageSize = getSize(info, 18, "pageSize"), a.maxPages = getSize(info, 19, "maxPages");
  const Span pt = getSpan(info, 20, "pageTable", 4), sl = getSpan(info, 23, "seqLens", 4);
  need(env, q, a.B * a.H * (a.L + a.R) * 4, "q");
  need(env, out, a.B * a.H * a.L * 4, "out");
  need(env, lse, a.B * a.H * 4, "lse");
  need(env, pool, a.numPages * a.pageSize * (a.L + a.R) * 2, "pool");
  need(env, pt, a.B * a.maxPages * 4, "pageTable");
  need(env, sl, a.B * 4, "seqLens");
  if (a.pageSize == 0) throwKvant(env, "KVANT_RANGE", "Expected pageSize > 0");
  a.q = reinterpret_cast<const float*>(q.data), a.out = reinterpret_cast<float*>(out.data), a.lse = reinterpret_cast<float*>(lse.data);
  a.pool = reinterpret_cast<const uint16_t*>(pool.data);
  a.pageTable = reinterpret_cast<const int32_t*>(pt.data), a.seqLens = reinterpret_cast<const int32_t*>(sl.data);
  const Status s = mlaDecode(a, isaAt(info, 26));
  if (s == Status::kRange) throwKvant(env, "KVANT_RANGE", "mlaDecode: a page table entry or sequence length is out of range");
  if (s != Status::kOk) throwStatus(env, s, "mlaDecode failed");
  return env.Undefined();
}

Napi::Value scratchB(const Napi::CallbackInfo& info) {
  if (info.Length() > 0 && info[0].ToBoolean()) resetFlashScratchBytes();
  return Napi::Number::New(info.Env(), double(flashScratchBytes()));
}

void registerAttention(Napi::Env env, Napi::Object exports) {
  exports.Set("flashAttention", Napi::Function::New(env, flashB, "flashAttention"));
  exports.Set("mlaDecode", Napi::Function::New(env, mlaB, "mlaDecode"));
  exports.Set("flashScratchBytes", Napi::Function::New(env, scratchB, "flashScratchBytes"));
}

}  // namespace

static Registration registration("attention", registerAttention);

}  // namespace kvant::napi
