// qgemm() and moeMlp(): the fused dequant GEMV/GEMM and the grouped MoE MLP. Argument checks
// only (sizes of every packed tensor against the format, permutations, aliasing); the math is
// in csrc/cpu/gemm_q.*. lib/ops/qlinear.ts validates first with friendlier messages.
#include <cstring>
#include <new>
#include <vector>

#include "addon.h"
#include "args.h"
#include "gemm_q.h"

namespace kvant::napi {
namespace {

Span optSpan(const Napi::CallbackInfo& info, size_t i, const char* name, size_t align) {
  if (info[i].IsNull() || info[i].IsUndefined()) return Span{};
  return getSpan(info, i, name, align);
}

void need(Napi::Env env, const Span& s, uint64_t bytes, const std::string& name) {
  if (s.bytes != bytes)
    throwKvant(env, "KVANT_SHAPE", "Expected " + name + " to hold " + std::to_string(bytes) + " bytes but it holds " + std::to_string(s.bytes));
}

Isa isaArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || !info[i].IsNumber()) return Isa(-1);
  const int v = info[i].As<Napi::Number>().Int32Value();
  if (v >= 0 && !qgemmKernelsFor(Isa(v)))
    throwKvant(info.Env(), "KVANT_BACKEND", std::string("ISA level ") + isaName(Isa(v)) + " is not supported on this CPU");
  return Isa(v);
}

struct QArgs {
  QMatrix q{};
  std::vector<Span> spans;  // for aliasing checks
};

// Where the storages of qweight, qzeros, scales and perm sit among a QMatrix's 13 arguments.
constexpr size_t kQStorageArg[4] = {1, 4, 7, 10};

// 13 arguments from info[i]: fmt (32-byte Uint8Array), qweight, qzeros, scales, perm|null (each
// storage, byteOffset, byteLength).
QArgs getQMatrix(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  Napi::Env env = info.Env();
  QArgs r;
  if (!info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().ByteLength() != sizeof(QuantFormat))
    throwKvant(env, "KVANT_FORMAT", "Expected a 32-byte encoded QuantFormat for " + name + ".format");
  Napi::Uint8Array fb = info[i].As<Napi::Uint8Array>();
  std::memcpy(&r.q.fmt, fb.Data(), sizeof(QuantFormat));
  const QuantFormat& f = r.q.fmt;
  if (!qBitsSupported(f.bits)) throwKvant(env, "KVANT_FORMAT", "Expected bits 2, 3, 4 or 8 for " + name + ".format.bits but received " + std::to_string(f.bits));
  if (f.groupSize == 0 || f.groupSize < -1)
    throwKvant(env, "KVANT_FORMAT", "Expected a positive group size or -1 for " + name + ".format.groupSize but received " + std::to_string(f.groupSize));
  if (f.zeroFormat != 0 && f.zeroFormat != 1) throwKvant(env, "KVANT_FORMAT", "Expected zero format 0 (gptq) or 1 (gptq_v2) for " + name);
  if (f.K <= 0 || f.N <= 0 || f.K > (int64_t(1) << 40) || f.N > (int64_t(1) << 40))
    throwKvant(env, "KVANT_SHAPE", "Expected positive K and N for " + name + " but received K = " + std::to_string(f.K) + ", N = " + std::to_string(f.N));
  if (!qDimPackable(f.K, f.bits) || !qDimPackable(f.N, f.bits))
    throwKvant(env, "KVANT_SHAPE", "Expected " + name + ".K and N to fill whole int32 words at " + std::to_string(f.bits) + " bits but K = " +
                                       std::to_string(f.K) + ", N = " + std::to_string(f.N));
  if (f.groupSize > 0 && f.groupSize < f.K && f.groupSize % qUnitCodes(f.bits) != 0)
    throwKvant(env, "KVANT_FORMAT", "Expected " + name + ".groupSize to be a multiple of " + std::to_string(qUnitCodes(f.bits)) +
                                        " (codes per packed word at " + std::to_string(f.bits) + " bits) but it is " + std::to_string(f.groupSize));
  const uint64_t K = uint64_t(f.K), N = uint64_t(f.N), ng = uint64_t(qGroupCount(f));
  const Span qw = getSpan(info, i + kQStorageArg[0], (name + ".qweight").c_str(), 4), qz = getSpan(info, i + kQStorageArg[1], (name + ".qzeros").c_str(), 4);
  const Span sc = getSpan(info, i + kQStorageArg[2], (name + ".scales").c_str(), 2), pm = optSpan(info, i + kQStorageArg[3], (name + ".perm").c_str(), 4);
  need(env, qw, uint64_t(qWeightRows(f)) * N * 4, name + ".qweight (i32 [K*bits/32, N])");
  need(env, qz, ng * uint64_t(qZeroCols(f)) * 4, name + ".qzeros (i32 [ng, N*bits/32])");
  need(env, sc, ng * N * 2, name + ".scales (f16 [ng, N])");
  if (pm.data) {
    need(env, pm, K * 4, name + ".perm (i32 [K])");
    std::vector<bool> seen(K, false);
    const int32_t* p = reinterpret_cast<const int32_t*>(pm.data);
    for (uint64_t k = 0; k < K; ++k) {
      if (p[k] < 0 || uint64_t(p[k]) >= K || seen[size_t(p[k])])
        throwKvant(env, "KVANT_RANGE", "Expected " + name + ".perm to be a permutation of 0.." + std::to_string(K - 1) + " but perm[" + std::to_string(k) +
                                           "] = " + std::to_string(p[k]) + (p[k] >= 0 && uint64_t(p[k]) < K ? " repeats" : " is out of range"));
      seen[size_t(p[k])] = true;
    }
  }
  r.q.qweight = reinterpret_cast<const uint32_t*>(qw.data);
  r.q.qzeros = reinterpret_cast<const uint32_t*>(qz.data);
  r.q.scales = reinterpret_cast<const uint16_t*>(sc.data);
  r.q.perm = reinterpret_cast<const int32_t*>(pm.data);
  r.spans = {qw, qz, sc, pm};
  return r;
}

void checkX(Napi::Env env, DType t, const char* name) {
  if (t != DType::kF32 && t != DType::kF16 && t != DType::kBF16)
    throwKvant(env, "KVANT_DTYPE", std::string("Expected f32, f16 or bf16 for ") + name + " but received " + dtypeName(t));
}

// Scratch for one call. Calls run synchronously on the JS thread, so one buffer per thread
// is reused: a fresh multi-hundred-KB allocation per decode GEMV costs page faults and zeroing
// comparable to the kernel itself. Large requests (prefill) are not kept.
struct Scratch {
  std::vector<float> owned;
  float* data = nullptr;
};
constexpr size_t kKeepScratchFloats = size_t(16) << 20;  // 64 MB

Scratch allocScratch(Napi::Env env, size_t n, std::vector<float>& cache) {
  Scratch s;
  try {
    if (n <= kKeepScratchFloats) {
      if (cache.size() < n) cache.resize(n);
      s.data = cache.data();
    } else {
      s.owned.resize(n);
      s.data = s.owned.data();
    }
  } catch (const std::bad_alloc&) {
    throwKvant(env, "KVANT_OOM", "Could not allocate " + std::to_string(n * sizeof(float)) + " bytes of qgemm scratch");
  }
  return s;
}

thread_local std::vector<float> tQgemmScratch, tMoeScratch;

QAct actArg(const Napi::CallbackInfo& info, size_t i) {
  if (info.Length() <= i || info[i].IsUndefined()) return QAct::kF32;
  const uint64_t v = getSize(info, i, "activations");
  if (v > 1) throwKvant(info.Env(), "KVANT_RANGE", "Expected activations 0 (f32) or 1 (int8)");
  return QAct(int(v));
}

// qgemm(x, xo, xb, xDtype, M, <13 QMatrix args>, bias|null, bo, bb, y, yo, yb, isa, act, yDtype)
Napi::Value qgemmB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const DType xt = getDType(info, 3, "x.dtype");
  checkX(env, xt, "x.dtype");
  const uint64_t M = getSize(info, 4, "M");
  QArgs w = getQMatrix(info, 5, "w");
  const uint64_t K = uint64_t(w.q.fmt.K), N = uint64_t(w.q.fmt.N);
  if (M > (uint64_t(1) << 40) / K) throwKvant(env, "KVANT_RANGE", "M * K overflows");
  // y's dtype (argument 26, optional): f32 (default), f16 or bf16.
  const DType yt = info.Length() > 26 && !info[26].IsUndefined() ? getDType(info, 26, "y.dtype") : DType::kF32;
  if (yt != DType::kF32 && yt != DType::kF16 && yt != DType::kBF16)
    throwKvant(env, "KVANT_DTYPE", std::string("Expected f32, f16 or bf16 for y.dtype but received ") + dtypeName(yt));
  const Span x = getSpan(info, 0, "x", dtypeSize(xt)), b = optSpan(info, 18, "bias", 4), y = getSpan(info, 21, "y", dtypeSize(yt));
  need(env, x, M * K * dtypeSize(xt), "x ([M, K] = [" + std::to_string(M) + ", " + std::to_string(K) + "])");
  need(env, y, M * N * dtypeSize(yt), std::string("y (") + dtypeName(yt) + " [M, N] = [" + std::to_string(M) + ", " + std::to_string(N) + "])");
  if (b.data) need(env, b, N * 4, "bias (f32 [N])");
  bool alias = overlaps(y, x) || overlaps(y, b);
  for (const Span& s : w.spans) alias = alias || overlaps(y, s);
  if (alias) throwKvant(env, "KVANT_RANGE", "Expected the output not to overlap x, the weight tensors or bias");
  const Isa isa = isaArg(info, 24);
  const QAct act = actArg(info, 25);
  const size_t yFloats = yt == DType::kF32 ? 0 : size_t(M) * size_t(N);  // the f32 result before rounding to f16/bf16
  Scratch scratch = allocScratch(env, qgemmScratchFloats(w.q.fmt, size_t(M), act) + yFloats, tQgemmScratch);
  const Status s = qgemmTyped(w.q, x.data, xt, size_t(M), b.data ? reinterpret_cast<const float*>(b.data) : nullptr, y.data, yt,
                              scratch.data, isa, act);
  if (s != Status::kOk) throwStatus(env, s, "qgemm failed");
  return env.Undefined();
}

// One projection = 17 args: kind (0 dense, 1 quantized), N, K, dense dtype, then 13 QMatrix
// args (for a dense weight: format null, the weight in the qweight slot, the rest null).
constexpr size_t kProjArgs = 17;

struct ProjArgs {
  MlpProj p;
  QArgs q;
  Span dense;
};

ProjArgs getProj(const Napi::CallbackInfo& info, size_t i, const std::string& name) {
  Napi::Env env = info.Env();
  ProjArgs r;
  const uint64_t kind = getSize(info, i, (name + ".kind").c_str());
  r.p.N = size_t(getSize(info, i + 1, (name + ".N").c_str()));
  r.p.K = size_t(getSize(info, i + 2, (name + ".K").c_str()));
  if (kind == 1) {
    r.q = getQMatrix(info, i + 4, name);
    if (uint64_t(r.q.q.fmt.N) != r.p.N || uint64_t(r.q.q.fmt.K) != r.p.K) throwKvant(env, "KVANT_SHAPE", "Expected " + name + "'s format to match its N and K");
  } else if (kind == 0) {
    r.p.denseType = getDType(info, i + 3, (name + ".dtype").c_str());
    checkX(env, r.p.denseType, (name + ".dtype").c_str());
    if (r.p.N == 0 || r.p.K == 0 || r.p.N > (size_t(1) << 30) || r.p.K > (size_t(1) << 30)) throwKvant(env, "KVANT_SHAPE", "Expected positive N and K for " + name);
    r.dense = getSpan(info, i + 5, name.c_str(), dtypeSize(r.p.denseType));
    need(env, r.dense, uint64_t(r.p.N) * r.p.K * dtypeSize(r.p.denseType), name + " ([N, K])");
    r.p.dense = r.dense.data;
  } else {
    throwKvant(env, "KVANT_DTYPE", "Expected kind 0 (dense) or 1 (quantized) for " + name);
  }
  return r;
}

// Every MLP is gate, up [I, H] and down [H, I].
void checkMlpShapes(Napi::Env env, const std::vector<MlpDesc>& mlps, size_t H) {
  for (size_t e = 0; e < mlps.size(); ++e) {
    const MlpDesc& d = mlps[e];
    const std::string n = "mlps[" + std::to_string(e) + "]";
    if (d.gate.K != H || d.up.K != H || d.down.N != H)
      throwKvant(env, "KVANT_SHAPE", "Expected " + n + ".gate/up to be [I, " + std::to_string(H) + "] and down [" + std::to_string(H) + ", I]");
    if (d.gate.N != d.up.N || d.down.K != d.gate.N)
      throwKvant(env, "KVANT_SHAPE", "Expected " + n + " gate and up to have the same I = down's K but got " + std::to_string(d.gate.N) + ", " +
                                         std::to_string(d.up.N) + ", " + std::to_string(d.down.K));
  }
}

// x, the routes and out of a grouped MoE call: x at info[0..2], routes.mlp / row / weight at
// info[r..r+8], out at info[r+9..r+11]; sizes checked against M, H and the pair count.
struct MoeIO {
  Span x, mlp, row, weight, out;
  size_t P = 0;
};

MoeIO getMoeIO(const Napi::CallbackInfo& info, size_t r, uint64_t M, uint64_t H) {
  Napi::Env env = info.Env();
  MoeIO io;
  io.x = getSpan(info, 0, "x", 4);
  io.mlp = getSpan(info, r, "routes.mlp", 4);
  io.row = getSpan(info, r + 3, "routes.row", 4);
  io.weight = getSpan(info, r + 6, "routes.weight", 4);
  io.out = getSpan(info, r + 9, "out", 4);
  need(env, io.x, M * H * 4, "x (f32 [M, H])");
  need(env, io.out, M * H * 4, "out (f32 [M, H])");
  io.P = io.mlp.bytes / 4;
  need(env, io.row, io.P * 4, "routes.row (one per pair)");
  need(env, io.weight, io.P * 4, "routes.weight (one per pair)");
  return io;
}

// Every pair names an MLP in [0, E) and a row in [0, M); `used` (if given, size E) marks the MLPs.
void checkRoutes(Napi::Env env, const MoeIO& io, uint64_t E, uint64_t M, std::vector<bool>* used) {
  const int32_t* mp = reinterpret_cast<const int32_t*>(io.mlp.data);
  const int32_t* rp = reinterpret_cast<const int32_t*>(io.row.data);
  for (size_t i = 0; i < io.P; ++i) {
    if (mp[i] < 0 || uint64_t(mp[i]) >= E) throwKvant(env, "KVANT_RANGE", "Expected routes.mlp[" + std::to_string(i) + "] in 0.." + std::to_string(E) + " (exclusive) but it is " + std::to_string(mp[i]));
    if (rp[i] < 0 || uint64_t(rp[i]) >= M) throwKvant(env, "KVANT_RANGE", "Expected routes.row[" + std::to_string(i) + "] in 0.." + std::to_string(M) + " (exclusive) but it is " + std::to_string(rp[i]));
    if (used) (*used)[size_t(mp[i])] = true;
  }
}

// out overlaps x, the routes or one of `weights`.
bool outAliases(const MoeIO& io, const std::vector<Span>& weights) {
  bool alias = overlaps(io.out, io.x) || overlaps(io.out, io.mlp) || overlaps(io.out, io.row) || overlaps(io.out, io.weight);
  for (const Span& s : weights) alias = alias || overlaps(io.out, s);
  return alias;
}

// The checked call: scratch sized for these routes, then the kernel.
void runMoe(Napi::Env env, const MoeIO& io, const MlpDesc* mlps, size_t E, size_t M, size_t H, Isa isa, QAct act) {
  const int32_t* mp = reinterpret_cast<const int32_t*>(io.mlp.data);
  const int32_t* rp = reinterpret_cast<const int32_t*>(io.row.data);
  const size_t scratchFloats = moeScratchFloats(mlps, E, mp, io.P, H, act);
  Scratch scratch = allocScratch(env, scratchFloats, tMoeScratch);
  const Status s = moeMlp(reinterpret_cast<const float*>(io.x.data), M, H, mlps, E, mp, rp, reinterpret_cast<const float*>(io.weight.data), io.P,
                          reinterpret_cast<float*>(io.out.data), scratch.data, scratchFloats, isa, act);
  if (s != Status::kOk) throwStatus(env, s, "moeMlp failed");
}

// moeMlp(x, xo, xb, M, H, E, mlp, mo, mb, row, ro, rb, weight, wo, wb, out, oo, ob, isa, act, ...E*3 projections)
Napi::Value moeMlpB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t M = getSize(info, 3, "M"), H = getSize(info, 4, "H"), E = getSize(info, 5, "E");
  if (E == 0 || E > (uint64_t(1) << 20) || info.Length() < 20 + E * 3 * kProjArgs) throwKvant(env, "KVANT_SHAPE", "Expected " + std::to_string(E * 3) + " projections");
  if (H == 0 || M > (uint64_t(1) << 40) / H) throwKvant(env, "KVANT_SHAPE", "Expected H > 0 and M * H in range");
  const MoeIO io = getMoeIO(info, 6, M, H);
  const Isa isa = isaArg(info, 18);
  const QAct act = actArg(info, 19);
  std::vector<ProjArgs> projs;
  projs.reserve(size_t(E) * 3);
  std::vector<MlpDesc> mlps(static_cast<size_t>(E), MlpDesc{});
  const char* which[3] = {"gate", "up", "down"};
  for (size_t e = 0; e < size_t(E); ++e)
    for (int j = 0; j < 3; ++j) {
      projs.push_back(getProj(info, 20 + (e * 3 + size_t(j)) * kProjArgs, "mlps[" + std::to_string(e) + "]." + which[j]));
      MlpProj& p = projs.back().p;
      if (projs.back().q.q.qweight) p.q = &projs.back().q.q;
      (j == 0 ? mlps[e].gate : j == 1 ? mlps[e].up : mlps[e].down) = p;
    }
  checkMlpShapes(env, mlps, size_t(H));
  checkRoutes(env, io, E, M, nullptr);
  std::vector<Span> weights;
  for (const ProjArgs& p : projs) {
    weights.push_back(p.dense);
    for (const Span& sp : p.q.spans) weights.push_back(sp);
  }
  if (outAliases(io, weights)) throwKvant(env, "KVANT_RANGE", "Expected out not to overlap x, the routes or any weight tensor");
  runMoe(env, io, mlps.data(), size_t(E), size_t(M), size_t(H), isa, act);
  return env.Undefined();
}

// ---- MoeExpertSet: a fixed set of MLPs checked once (lib/ops/qlinear.ts MlpSet) --------------
//
// new MoeExpertSet(H, ...E*3 projections) checks every projection exactly as moeMlp does and
// keeps a reference to each storage; moeMlpSet() then names members by index, so a decode step's
// MoE call passes ~20 arguments instead of ~380 (17 per projection), and nothing is re-checked
// but what can change: on every call the storages of the routed members are resolved again (a
// disposed NativeMemory, a detached or shrunk ArrayBuffer is rejected, never read). The kernel
// gets every member's descriptor; members no pair names have no rows, so none of their memory
// is touched, and the result is that of moeMlp over exactly the routed members (a pair's output
// depends on its MLP and row only, and out accumulates in pair order).
class MoeExpertSet : public Napi::ObjectWrap<MoeExpertSet> {
 public:
  static Napi::Function define(Napi::Env env) {
    return DefineClass(env, "MoeExpertSet", {InstanceAccessor<&MoeExpertSet::sizeB>("size")});
  }
  static MoeExpertSet* unwrapOrNull(Napi::Value v) {
    if (!v.IsObject() || !v.As<Napi::Object>().CheckTypeTag(&kTag)) return nullptr;
    return Unwrap(v.As<Napi::Object>());
  }

  explicit MoeExpertSet(const Napi::CallbackInfo& info) : Napi::ObjectWrap<MoeExpertSet>(info) {
    Napi::Env env = info.Env();
    info.This().As<Napi::Object>().TypeTag(&kTag);
    H = size_t(getSize(info, 0, "H"));
    if (H == 0 || info.Length() < 1 + kProjArgs * 3 || (info.Length() - 1) % (kProjArgs * 3) != 0)
      throwKvant(env, "KVANT_SHAPE", "Expected H > 0 and whole MLPs (3 projections of " + std::to_string(kProjArgs) + " arguments each)");
    const size_t E = (info.Length() - 1) / (kProjArgs * 3);
    mlps.assign(E, MlpDesc{});
    qm.assign(E * 3, QMatrix{});  // sized once: MlpProj::q points into it
    held.resize(E * 3);
    const char* which[3] = {"gate", "up", "down"};
    for (size_t e = 0; e < E; ++e) {
      for (int j = 0; j < 3; ++j) {
        const size_t k = e * 3 + size_t(j), base = 1 + k * kProjArgs;
        Held& h = held[k];
        h.name = "mlps[" + std::to_string(e) + "]." + which[j];
        ProjArgs a = getProj(info, base, h.name);
        if (a.q.q.qweight) {
          qm[k] = a.q.q;
          a.p.q = &qm[k];
          // The projection's QMatrix arguments start at base + 4 (getProj); qweight, qzeros,
          // scales and perm are aligned to their element sizes.
          const size_t align[4] = {4, 4, 2, 4};
          for (int t = 0; t < 4; ++t) hold(info, h, base + 4 + kQStorageArg[t], align[t]);
        } else {
          hold(info, h, base + 5, dtypeSize(a.p.denseType));
        }
        (j == 0 ? mlps[e].gate : j == 1 ? mlps[e].up : mlps[e].down) = a.p;
      }
    }
    checkMlpShapes(env, mlps, H);
  }

  // Member e's storages resolved again: its pointers refreshed, its byte ranges appended.
  void resolve(Napi::Env env, size_t e, std::vector<Span>& spans) {
    for (int j = 0; j < 3; ++j) {
      const size_t k = e * 3 + size_t(j);
      Held& h = held[k];
      Span r[4];
      for (size_t t = 0; t < h.n; ++t) {
        const Held::Ref& s = h.refs[t];
        if (!s.storage.IsEmpty()) r[t] = spanOf(env, s.storage.Value(), s.offset, s.bytes, h.name.c_str(), s.align);
        spans.push_back(r[t]);
      }
      MlpProj& p = j == 0 ? mlps[e].gate : j == 1 ? mlps[e].up : mlps[e].down;
      if (p.q) {
        qm[k].qweight = reinterpret_cast<const uint32_t*>(r[0].data);
        qm[k].qzeros = reinterpret_cast<const uint32_t*>(r[1].data);
        qm[k].scales = reinterpret_cast<const uint16_t*>(r[2].data);
        qm[k].perm = reinterpret_cast<const int32_t*>(r[3].data);
      } else {
        p.dense = r[0].data;
      }
    }
  }

  size_t H = 0;
  std::vector<MlpDesc> mlps;

 private:
  static constexpr napi_type_tag kTag = {0x6b76616e745f6d6fULL, 0x655f7365745f7631ULL};  // "kvant_mo" "e_set_v1"
  // One projection's storages (up to 4: qweight, qzeros, scales, perm; a dense weight: 1).
  struct Held {
    struct Ref {
      Napi::ObjectReference storage;  // empty: no tensor (perm null)
      uint64_t offset = 0, bytes = 0;
      size_t align = 1;
    };
    Ref refs[4];
    size_t n = 0;
    std::string name;
  };

  void hold(const Napi::CallbackInfo& info, Held& h, size_t i, size_t align) {
    Held::Ref& r = h.refs[h.n++];
    if (info[i].IsNull() || info[i].IsUndefined()) return;
    r.storage = Napi::Persistent(info[i].As<Napi::Object>());  // getProj checked it is a storage
    r.offset = getSize(info, i + 1, h.name.c_str());
    r.bytes = getSize(info, i + 2, h.name.c_str());
    r.align = align;
  }

  Napi::Value sizeB(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(mlps.size())); }

  std::vector<QMatrix> qm;
  std::vector<Held> held;
};

// moeMlpSet(x, xo, xb, M, set, mlp, mo, mb, row, ro, rb, weight, wo, wb, out, oo, ob, isa, act)
Napi::Value moeMlpSetB(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  MoeExpertSet* set = MoeExpertSet::unwrapOrNull(info[4]);
  if (!set) throwKvant(env, "KVANT_DTYPE", "Expected a MoeExpertSet for set");
  const size_t E = set->mlps.size(), H = set->H;
  const uint64_t M = getSize(info, 3, "M");
  if (M > (uint64_t(1) << 40) / H) throwKvant(env, "KVANT_SHAPE", "Expected M * H in range");
  const MoeIO io = getMoeIO(info, 5, M, H);
  const Isa isa = isaArg(info, 17);
  const QAct act = actArg(info, 18);
  std::vector<bool> used(E, false);
  checkRoutes(env, io, E, M, &used);
  std::vector<Span> weights;
  for (size_t e = 0; e < E; ++e)
    if (used[e]) set->resolve(env, e, weights);
  if (outAliases(io, weights)) throwKvant(env, "KVANT_RANGE", "Expected out not to overlap x, the routes or any weight tensor");
  runMoe(env, io, set->mlps.data(), E, size_t(M), H, isa, act);
  return env.Undefined();
}

void registerQGemm(Napi::Env env, Napi::Object exports) {
  exports.Set("qgemm", Napi::Function::New(env, qgemmB, "qgemm"));
  exports.Set("moeMlp", Napi::Function::New(env, moeMlpB, "moeMlp"));
  exports.Set("moeMlpSet", Napi::Function::New(env, moeMlpSetB, "moeMlpSet"));
  exports.Set("MoeExpertSet", MoeExpertSet::define(env));
}

}  // namespace

static Registration registration("qgemm", registerQGemm);

}  // namespace kvant::napi
