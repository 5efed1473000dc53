// KV cache bindings: the codecs (kvEncode/kvDecode), row writes and reads through slots, and
// the batched paged decode. Argument checks only: spans are sized against the shapes here,
// page/slot ranges are checked by the kernels (kRange), shapes were validated in lib/kv.
#include "addon.h"
#include "args.h"
#include "attention.h"
#include "kv_cache.h"

namespace kvant::napi {
namespace {

Isa isaAt(const Napi::CallbackInfo& info, size_t i) {
  return info.Length() > i && info[i].IsNumber() ? Isa(info[i].As<Napi::Number>().Int32Value()) : Isa(-1);
}

void need(Napi::Env env, const Span& s, size_t bytes, const char* name) {
  if (s.bytes < bytes)
    throwKvant(env, "KVANT_SHAPE", std::string("Expected ") + name + " to hold at least " + std::to_string(bytes) + " bytes but it holds " + std::to_string(s.bytes));
}

KvType typeAt(Napi::Env env, int32_t v, const char* name) {
  if (v < 0 || v > 4) throwKvant(env, "KVANT_DTYPE", std::string("Expected a KV cache type code 0..4 for ") + name + " but received " + std::to_string(v));
  return KvType(v);
}

// Segments as int32 quintuples [type, n, hadamard, rowByteOffset, denseFloatOffset].
std::vector<KvSegment> segmentsAt(const Napi::CallbackInfo& info, size_t i, size_t count) {
  const Span s = getSpan(info, i, "segments", 4);
  need(info.Env(), s, count * 5 * 4, "segments");
  const int32_t* v = reinterpret_cast<const int32_t*>(s.data);
  std::vector<KvSegment> out(count);
  for (size_t k = 0; k < count; ++k) {
    const int32_t* e = v + 5 * k;
    if (e[1] < 0 || e[3] < 0 || e[4] < 0) throwKvant(info.Env(), "KVANT_RANGE", "Expected non-negative segment sizes and offsets");
    out[k] = {typeAt(info.Env(), e[0], "segment type"), size_t(e[1]), e[2] != 0, size_t(e[3]), size_t(e[4])};
    if (kvSegmentBytes(out[k].type, out[k].n) == 0 && out[k].n != 0)
      throwKvant(info.Env(), "KVANT_SHAPE", "Expected a quantized segment length that is a multiple of 32 but it is " + std::to_string(out[k].n));
  }
  return out;
}

// pool3, numPages, pageSize, pageBytes, layerOffset, rowBytes at info[i..i+7]
KvPages pagesAt(const Napi::CallbackInfo& info, size_t i) {
  Napi::Env env = info.Env();
  const Span pool = getSpan(info, i, "pool", 1);
  KvPages p{};
  p.pool = pool.data;
  p.numPages = getSize(info, i + 3, "numPages"), p.pageSize = getSize(info, i + 4, "pageSize"), p.pageBytes = getSize(info, i + 5, "pageBytes");
  p.layerOffset = getSize(info, i + 6, "layerOffset"), p.rowBytes = getSize(info, i + 7, "rowBytes");
  constexpr size_t kMax = size_t(1) << 40;  // keeps every product below 2^64
  if (p.numPages > kMax || p.pageSize > kMax || p.pageBytes > kMax || p.layerOffset > kMax || p.rowBytes > kMax)
    throwKvant(env, "KVANT_RANGE", "Expected page geometry values below 2^40");
  if (p.pageSize == 0) throwKvant(env, "KVANT_SHAPE", "Expected pageSize > 0");
  need(env, pool, p.numPages * p.pageBytes, "pool");
  return p;
}

void check(Napi::Env env, Status s, const char* what) {
  if (s == Status::kOk) return;
  if (s == Status::kRange) throwKvant(env, "KVANT_RANGE", std::string(what) + ": a slot, page index or sequence length is out of range, or a value is not finite / overflows the scale");
  if (s == Status::kShape) throwKvant(env, "KVANT_SHAPE", std::string(what) + ": segments do not fit the row, or head counts do not divide");
  throwStatus(env, s, std::string(what) + " failed");
}

// kvEncode(type, hadamard, x3, n, dst3, isa)
Napi::Value encodeB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const KvType t = typeAt(env, info[0].As<Napi::Number>().Int32Value(), "type");
  const bool had = info[1].ToBoolean();
  const Span x = getSpan(info, 2, "x", 4);
  const size_t n = getSize(info, 5, "n");
  const Span dst = getSpan(info, 6, "dst", 1);
  const size_t bytes = kvSegmentBytes(t, n);
  if (bytes == 0 && n != 0) throwKvant(env, "KVANT_SHAPE", "Expected a multiple of 32 values for a quantized type but received " + std::to_string(n));
  need(env, x, n * 4, "x");
  need(env, dst, bytes, "dst");
  const KvKernels* k = kvKernelsFor(isaAt(info, 9));
  if (!k) throwKvant(env, "KVANT_BACKEND", "Expected an ISA level this CPU supports");
  if (!k->encode(t, had && kvQuantized(t), reinterpret_cast<const float*>(x.data), n, dst.data))
    throwKvant(env, "KVANT_RANGE", "Expected finite values whose group scales fit f16");
  return env.Undefined();
}

// kvDecode(type, src3, n, y3, isa)  (stored domain: rotated groups stay rotated)
Napi::Value decodeB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const KvType t = typeAt(env, info[0].As<Napi::Number>().Int32Value(), "type");
  const Span src = getSpan(info, 1, "src", 1);
  const size_t n = getSize(info, 4, "n");
  const Span y = getSpan(info, 5, "y", 4);
  const size_t bytes = kvSegmentBytes(t, n);
  if (bytes == 0 && n != 0) throwKvant(env, "KVANT_SHAPE", "Expected a multiple of 32 values for a quantized type but received " + std::to_string(n));
  need(env, src, bytes, "src");
  need(env, y, n * 4, "y");
  const KvKernels* k = kvKernelsFor(isaAt(info, 8));
  if (!k) throwKvant(env, "KVANT_BACKEND", "Expected an ISA level this CPU supports");
  k->decode(t, src.data, n, reinterpret_cast<float*>(y.data));
  return env.Undefined();
}

// kvWrite(pool3, numPages, pageSize, pageBytes, layerOffset, rowBytes, segs3, nSegs, x3, width, T, slots3, isa)
// kvRead (same, with y3 in place of x3)
Napi::Value rowsB(const Napi::CallbackInfo& info, bool write) {
  Napi::Env env = info.Env();
  const KvPages p = pagesAt(info, 0);
  const size_t nSegs = getSize(info, 11, "nSegs");
  const std::vector<KvSegment> segs = segmentsAt(info, 8, nSegs);
  const Span x = getSpan(info, 12, write ? "rows" : "out", 4);
  const size_t width = getSize(info, 15, "width"), T = getSize(info, 16, "T");
  const Span slots = getSpan(info, 17, "slots", 4);
  need(env, x, T * width * 4, write ? "rows" : "out");
  need(env, slots, T * 4, "slots");
  const int32_t* sl = reinterpret_cast<const int32_t*>(slots.data);
  const Status s = write ? kvWriteRows(p, segs.data(), nSegs, reinterpret_cast<const float*>(x.data), width, T, sl, isaAt(info, 20))
                         : kvReadRows(p, segs.data(), nSegs, reinterpret_cast<float*>(x.data), width, T, sl, isaAt(info, 20));
  check(env, s, write ? "kvWrite" : "kvRead");
  return env.Undefined();
}

Napi::Value writeB(const Napi::CallbackInfo& info) { return rowsB(info, true); }
Napi::Value readB(const Napi::CallbackInfo& info) { return rowsB(info, false); }

// pagedDecode(q3, out3, lse3, B, Hq, Hkv, scale, pool3, numPages, pageSize, pageBytes, layerOffset, rowBytes,
//             pageTable3, maxPages, seqLens3, layout3 (3 segments + headStride + vFromKey), isa)
Napi::Value decodeAttnB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  PagedDecodeArgs a{};
  const Span q = getSpan(info, 0, "q", 4), out = getSpan(info, 3, "out", 4), lse = getSpan(info, 6, "lse", 4);
  a.B = getSize(info, 9, "B"), a.Hq = getSize(info, 10, "Hq"), a.Hkv = getSize(info, 11, "Hkv");
  a.scale = info[12].As<Napi::Number>().FloatValue();
  a.pages = pagesAt(info, 13);
  const Span pt = getSpan(info, 21, "pageTable", 4);
  a.maxPages = getSize(info, 24, "maxPages");
  const Span sl = getSpan(info, 25, "seqLens", 4);
  const std::vector<KvSegment> segs = segmentsAt(info, 28, 3);
  const Span lay = getSpan(info, 28, "layout", 4);
  need(env, lay, 17 * 4, "layout");
  const int32_t* lv = reinterpret_cast<const int32_t*>(lay.data);
  if (lv[15] < 0) throwKvant(env, "KVANT_RANGE", "Expected a non-negative head stride");
  a.k0 = segs[0], a.k1 = segs[1], a.v = segs[2], a.headStride = size_t(lv[15]), a.vFromKey = lv[16] != 0;
  if (a.Hq > (1u << 20) || a.Hkv > (1u << 20) || a.B > (size_t(1) << 32)) throwKvant(env, "KVANT_RANGE", "Expected at most 2^20 heads and 2^32 sequences");
  if (a.Hkv == 0 || a.Hq % a.Hkv != 0)
    throwKvant(env, "KVANT_SHAPE", "Expected the query heads (" + std::to_string(a.Hq) + ") to be a multiple of the kv heads (" + std::to_string(a.Hkv) + ")");
  const size_t Dk = a.k0.n + a.k1.n, Dv = a.v.n;
  need(env, q, a.B * a.Hq * Dk * 4, "q");
  need(env, out, a.B * a.Hq * Dv * 4, "out");
  need(env, lse, a.B * a.Hq * 4, "lse");
  need(env, pt, a.B * a.maxPages * 4, "pageTable");
  need(env, sl, a.B * 4, "seqLens");
  if (overlaps(out, q) || overlaps(lse, out) || overlaps(lse, q)) throwKvant(env, "KVANT_RANGE", "Expected out and lse not to overlap q");
  a.q = reinterpret_cast<const float*>(q.data), a.out = reinterpret_cast<float*>(out.data), a.lse = reinterpret_cast<float*>(lse.data);
  a.pageTable = reinterpret_cast<const int32_t*>(pt.data), a.seqLens = reinterpret_cast<const int32_t*>(sl.data);
  check(env, pagedDecode(a, isaAt(info, 31)), "pagedDecode");
  return env.Undefined();
}

void registerKv(Napi::Env env, Napi::Object exports) {
  exports.Set("kvEncode", Napi::Function::New(env, encodeB, "kvEncode"));
  exports.Set("kvDecode", Napi::Function::New(env, decodeB, "kvDecode"));
  exports.Set("kvWrite", Napi::Function::New(env, writeB, "kvWrite"));
  exports.Set("kvRead", Napi::Function::New(env, readB, "kvRead"));
  exports.Set("pagedDecode", Napi::Function::New(env, decodeAttnB, "pagedDecode"));
}

}  // namespace

static Registration registration("kv", registerKv);

}  // namespace kvant::napi
