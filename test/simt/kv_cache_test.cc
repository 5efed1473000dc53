// The paged quantized KV cache on the GPU (csrc/cuda/kv_cache.cuh) under the emulation:
// append must write exactly the CPU cache's bytes (csrc/cpu/kv_cache.cc kvWriteRows) for every
// type, with and without the Hadamard rotation, for the standard (head-major) and the MLA row
// layouts; gather must return exactly the CPU's kvReadRows floats; paged decode attention is
// checked against an f64 attention over the stored values and against the CPU pagedDecode.
#include <algorithm>
#include <cstring>

#include "attention.h"
#include "helpers.h"
#include "kv_cache.cuh"
#include "kv_cache.h"

using namespace simttest;
using kvant::Isa;
using kvant::KvType;
using kvant::Status;
namespace kc = kvant::cuda;

namespace {

const char* typeName(int t) {
  static const char* n[] = {"f16", "bf16", "q8", "q6", "q4"};
  return n[t];
}

// A cache geometry and the runs / CPU segments that describe one append of it.
struct Layout {
  bool mla;
  int type, hadamard;
  int heads, dim;  // standard: kv heads x head dim
  int L, R;        // MLA: latent and rope dims
  int pageSize, numPages, layers, layer;
  int64_t rowBytesTotal, pageBytes, headBytes, headBlock;
  int width() const { return mla ? L + R : heads * dim; }
  kc::KvPagesDev pages(uint8_t* pool) const {
    const int64_t stride = mla ? rowBytesTotal : 2 * headBytes;  // head-major standard block (lib/kv/paged-cache.ts)
    return {pool, numPages, pageSize, pageBytes, int64_t(layer) * pageSize * rowBytesTotal, stride};
  }
};

Layout makeLayout(bool mla, int type, bool had, int a, int b, int pageSize, int numPages) {
  Layout l{};
  l.mla = mla, l.type = type, l.hadamard = had && kc::kvIsQuant(type);
  l.pageSize = pageSize, l.numPages = numPages, l.layers = 2, l.layer = 1;
  if (mla) {
    l.L = a, l.R = b;
    l.rowBytesTotal = kc::kvBytes(type, a) + 2 * b;
  } else {
    l.heads = a, l.dim = b;
    l.headBytes = kc::kvBytes(type, b);
    l.headBlock = int64_t(pageSize) * 2 * l.headBytes;
    l.rowBytesTotal = 2 * a * l.headBytes;
  }
  l.pageBytes = l.rowBytesTotal * pageSize * l.layers;
  return l;
}

// part 0: K (or the MLA row), part 1: V.
std::vector<kc::KvSegRun> runsOf(const Layout& l, int part) {
  if (l.mla) return {{l.type, l.L, l.hadamard, 1, 0, 0, 0, 0}, {kc::kKvBf16, l.R, 0, 1, kc::kvBytes(l.type, l.L), 0, l.L, 0}};
  return {{l.type, l.dim, l.hadamard, l.heads, part ? l.headBytes : 0, l.headBlock, 0, l.dim}};
}
std::vector<kvant::KvSegment> cpuSegs(const std::vector<kc::KvSegRun>& runs) {
  std::vector<kvant::KvSegment> s;
  for (const auto& r : runs)
    for (int c = 0; c < r.count; ++c)
      s.push_back({KvType(r.type), size_t(r.n), r.hadamard != 0, size_t(r.offset + c * r.offsetStride), size_t(r.src + c * r.srcStride)});
  return s;
}
kvant::KvPages cpuPages(const kc::KvPagesDev& p) {
  return {p.pool, size_t(p.numPages), size_t(p.pageSize), size_t(p.pageBytes), size_t(p.layerOffset), size_t(p.rowBytes)};
}

// Rows of normal-ish values with a few outlier channels (x8), the data the Hadamard option is for.
std::vector<float> cacheRows(Rng& r, size_t T, size_t width) {
  std::vector<float> x = randomF32(r, T * width, -1, 1);
  for (size_t t = 0; t < T; ++t)
    for (size_t c = 3; c < width; c += 37) x[t * width + c] *= 8;
  return x;
}

// Append through the GPU and the CPU into two pools of the same random bytes; both must end
// equal byte for byte. Returns the GPU pool.
std::vector<uint8_t> appendBoth(const Layout& l, const std::vector<float>& x, const std::vector<int32_t>& slots, int part, std::vector<uint8_t>* gpuPool,
                                std::vector<uint8_t>* cpuPool, const kc::Device& dev) {
  const auto runs = runsOf(l, part);
  const auto segs = cpuSegs(runs);
  const size_t T = slots.size(), w = size_t(l.width());
  int32_t bad = int32_t(T);
  kc::KvRowsDeviceArgs a{l.pages(gpuPool->data()), runs.data(), int(runs.size()), x.data(), nullptr, w, T, slots.data(), &bad};
  EXPECT_OK(kc::kvAppend(dev, a));
  EXPECT_EQ(bad, int32_t(T));
  EXPECT_TRUE(kvant::kvWriteRows(cpuPages(l.pages(cpuPool->data())), segs.data(), segs.size(), x.data(), w, T, slots.data(), Isa::kScalar) ==
              Status::kOk);
  return *gpuPool;
}

// Slots for B sequences of the given lengths over scrambled pages; table [B, maxPages].
struct Paging {
  std::vector<int32_t> table, slots;  // slots: every sequence's tokens in order, sequence after sequence
  int maxPages;
};
Paging makePaging(Rng& r, const std::vector<int>& lens, int pageSize, int numPages) {
  Paging p;
  int maxLen = 0;
  for (int x : lens) maxLen = std::max(maxLen, x);
  p.maxPages = std::max(1, (maxLen + pageSize - 1) / pageSize);
  p.table.assign(lens.size() * p.maxPages, -1);
  std::vector<int32_t> perm(numPages);
  for (int i = 0; i < numPages; ++i) perm[i] = i;
  for (int i = numPages - 1; i > 0; --i) std::swap(perm[i], perm[r.below(i + 1)]);
  int next = 0;
  for (size_t b = 0; b < lens.size(); ++b) {
    for (int pg = 0; pg < (lens[b] + pageSize - 1) / pageSize; ++pg) p.table[b * p.maxPages + pg] = perm[next++];
    for (int t = 0; t < lens[b]; ++t) p.slots.push_back(p.table[b * p.maxPages + t / pageSize] * pageSize + t % pageSize);
  }
  return p;
}

std::vector<uint8_t> randomBytes(Rng& r, size_t n) {
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = uint8_t(r.next());
  return v;
}

}  // namespace

TEST(cuda_kv_append_matches_cpu_bytes) {
  Rng r(31);
  const auto devs = devices();
  int di = 0;
  for (int type = 0; type <= 4; ++type)
    for (int had = 0; had <= (kc::kvIsQuant(type) ? 1 : 0); ++had)
      for (int mla = 0; mla <= 1; ++mla) {
        // 16-bit types take awkward dims (not multiples of 32: partial items); quantized need 32s.
        const bool q = kc::kvIsQuant(type);
        const Layout l = mla ? makeLayout(true, type, had, q ? 96 : 72, 24, 16, 7) : makeLayout(false, type, had, 3, q ? 64 : 40, 16, 7);
        const Paging pg = makePaging(r, {13, 1, 20}, l.pageSize, l.numPages);
        const size_t T = pg.slots.size(), w = size_t(l.width());
        std::vector<uint8_t> init = randomBytes(r, size_t(l.numPages) * l.pageBytes), gpu = init, cpu = init;
        for (int part = 0; part <= (mla ? 0 : 1); ++part) appendBoth(l, cacheRows(r, T, w), pg.slots, part, &gpu, &cpu, devs[di++ % devs.size()]);
        char what[96];
        std::snprintf(what, sizeof what, "append %s %s hadamard %d", mla ? "mla" : "standard", typeName(type), had);
        size_t diff = 0;
        for (size_t i = 0; i < gpu.size(); ++i) diff += gpu[i] != cpu[i];
        if (diff) kvtest::fail(__FILE__, __LINE__, std::string(what) + ": " + std::to_string(diff) + " bytes differ from the CPU cache");
        EXPECT_TRUE(gpu != init);  // something was written
        // Gather: the CPU's kvReadRows floats exactly (original domain), NaN-poisoned output.
        const auto runs = runsOf(l, 0);
        const auto segs = cpuSegs(runs);
        std::vector<float> yg = poisoned(T * w), yc = poisoned(T * w);
        int32_t bad = int32_t(T);
        kc::KvRowsDeviceArgs a{l.pages(gpu.data()), runs.data(), int(runs.size()), nullptr, yg.data(), w, T, pg.slots.data(), &bad};
        EXPECT_OK(kc::kvGather(devs[di++ % devs.size()], a));
        EXPECT_EQ(bad, int32_t(T));
        EXPECT_TRUE(kvant::kvReadRows(cpuPages(l.pages(cpu.data())), segs.data(), segs.size(), yc.data(), w, T, pg.slots.data(), Isa::kScalar) == Status::kOk);
        EXPECT_TRUE(std::memcmp(yg.data(), yc.data(), T * w * 4) == 0);
      }
}

TEST(cuda_kv_append_bad_rows) {
  Rng r(32);
  const auto dev = device(89);
  for (int type : {int(kc::kKvF16), int(kc::kKvQ8), int(kc::kKvQ4)}) {
    const Layout l = makeLayout(false, type, true, 2, 64, 16, 4);
    const Paging pg = makePaging(r, {30}, l.pageSize, l.numPages);
    const size_t T = pg.slots.size(), w = size_t(l.width());
    std::vector<float> x = cacheRows(r, T, w);
    x[7 * w + 70] = NAN;                                  // row 7: a NaN
    x[11 * w + 5] = type == kc::kKvF16 ? 1e5f : 1e7f;     // row 11: f16 value / scale overflow (65504)
    std::vector<int32_t> slots = pg.slots;
    slots[20] = l.numPages * l.pageSize;                  // row 20: slot outside the pool
    std::vector<uint8_t> init = randomBytes(r, size_t(l.numPages) * l.pageBytes), gpu = init, cpu = init;
    const auto runs = runsOf(l, 0);
    const auto segs = cpuSegs(runs);
    int32_t bad = int32_t(T);
    kc::KvRowsDeviceArgs a{l.pages(gpu.data()), runs.data(), 1, x.data(), nullptr, w, T, slots.data(), &bad};
    EXPECT_OK(kc::kvAppend(dev, a));
    EXPECT_EQ(bad, 7);  // the first bad row, whatever the block order
    // The CPU writer stops at a bad row with kRange: write the good stretches separately. Then
    // the GPU pool (every good row written, bad rows untouched) must equal the CPU pool.
    const kvant::KvPages cp = cpuPages(l.pages(cpu.data()));
    EXPECT_TRUE(kvant::kvWriteRows(cp, segs.data(), segs.size(), x.data(), w, 30, slots.data(), Isa::kScalar) == Status::kRange);
    cpu = init;
    for (auto [b, e] : {std::pair<size_t, size_t>{0, 7}, {8, 11}, {12, 20}, {21, 30}})
      EXPECT_TRUE(kvant::kvWriteRows(cp, segs.data(), segs.size(), x.data() + b * w, w, e - b, slots.data() + b, Isa::kScalar) == Status::kOk);
    EXPECT_TRUE(gpu == cpu);
  }
  // Bad descriptors: kShape / kDtype before anything runs.
  const Layout l = makeLayout(false, kc::kKvQ8, true, 2, 64, 16, 4);
  std::vector<uint8_t> pool(size_t(l.numPages) * l.pageBytes);
  std::vector<float> x(64 * 2, 0.f);
  std::vector<int32_t> slots{0};
  int32_t bad = 1;
  auto runs = runsOf(l, 0);
  kc::KvRowsDeviceArgs a{l.pages(pool.data()), runs.data(), 1, x.data(), nullptr, 128, 1, slots.data(), &bad};
  runs[0].n = 48;  // not a multiple of 32 for q8
  EXPECT_STATUS(kc::kvAppend(dev, a), Status::kShape);
  runs[0].n = 64, runs[0].type = 9;
  EXPECT_STATUS(kc::kvAppend(dev, a), Status::kDtype);
  runs[0].type = kc::kKvQ8, runs[0].offsetStride = l.pageBytes;  // head 1 past the page
  EXPECT_STATUS(kc::kvAppend(dev, a), Status::kShape);
  runs[0].offsetStride = l.headBlock, runs[0].srcStride = 100;  // source past the dense row
  EXPECT_STATUS(kc::kvAppend(dev, a), Status::kShape);
  runs[0].srcStride = 64, a.nRuns = 5;
  EXPECT_STATUS(kc::kvAppend(dev, a), Status::kShape);
  a.nRuns = 1;
  EXPECT_OK(kc::kvAppend(dev, a));
  EXPECT_EQ(bad, 1);
}

namespace {

constexpr double u = kU32;

// In-place f64 Walsh–Hadamard on each group of 32 (unnormalized).
void hadamard64(double* v, size_t n) {
  for (size_t g = 0; g < n; g += 32)
    for (size_t h = 1; h < 32; h <<= 1)
      for (size_t i = g; i < g + 32; i += 2 * h)
        for (size_t j = i; j < i + h; ++j) {
          const double a = v[j], b = v[j + h];
          v[j] = a + b, v[j + h] = a - b;
        }
}

struct DecodeCase {
  bool mla;
  int type;
  bool hadamard;
  int Hq, Hkv, dim;  // standard: query heads, kv heads, head dim; MLA: heads, -, L (R = dim2)
  int R;
  std::vector<int> lens;
  int pageSize, keysPerSplit;
};

void runDecode(const DecodeCase& c, Rng& r, const kc::Device& dev) {
  const int B = int(c.lens.size());
  int maxLen = 0, total = 0;
  for (int x : c.lens) maxLen = std::max(maxLen, x), total += x;
  const int numPages = (total + c.pageSize - 1) / c.pageSize + B + 2;
  const Layout l = c.mla ? makeLayout(true, c.type, c.hadamard, c.dim, c.R, c.pageSize, numPages) : makeLayout(false, c.type, c.hadamard, c.Hkv, c.dim, c.pageSize, numPages);
  const Paging pg = makePaging(r, c.lens, c.pageSize, numPages);
  const size_t T = pg.slots.size(), w = size_t(l.width());
  std::vector<uint8_t> pool(size_t(numPages) * l.pageBytes, 0), cpuPool = pool;
  const std::vector<float> kx = cacheRows(r, T, w), vx = cacheRows(r, T, w);
  if (T) {
    appendBoth(l, kx, pg.slots, 0, &pool, &cpuPool, dev);
    if (!c.mla) appendBoth(l, vx, pg.slots, 1, &pool, &cpuPool, dev);
  }
  EXPECT_TRUE(pool == cpuPool);
  const kc::KvPagesDev P = l.pages(pool.data());
  const int Hkv = c.mla ? 1 : c.Hkv, Dk = c.mla ? c.dim + c.R : c.dim, Dv = c.dim, group = c.Hq / Hkv;
  const float scale = float(1 / std::sqrt(double(Dk)));
  kc::PagedDecodeDeviceArgs a{};
  std::vector<float> q = randomF32(r, size_t(B) * c.Hq * Dk, -1, 1), out = poisoned(size_t(B) * c.Hq * Dv), lse = poisoned(size_t(B) * c.Hq);
  a.q = q.data(), a.out = out.data(), a.lse = lse.data(), a.B = B, a.Hq = c.Hq, a.Hkv = Hkv;
  const auto kRuns = runsOf(l, 0), vRuns = runsOf(l, 1);
  const int had = l.hadamard;
  if (c.mla) {
    a.k0 = {c.type, c.dim, had, 0};
    a.k1 = {kc::kKvBf16, c.R, 0, kc::kvBytes(c.type, c.dim)};
    a.v = a.k0;
    a.vFromKey = true;
    a.headStride = 0;
  } else {
    a.k0 = {c.type, c.dim, had, 0};
    a.k1 = {kc::kKvBf16, 0, 0, 0};
    a.v = {c.type, c.dim, had, l.headBytes};
    a.headStride = size_t(l.headBlock);
  }
  a.pages = P, a.pageTable = pg.table.data(), a.maxPages = pg.maxPages, a.seqLens = c.lens.data(), a.maxSeqLen = maxLen;
  a.keysPerSplit = c.keysPerSplit, a.scale = scale;
  std::vector<float> scratch = poisoned(kc::pagedDecodeScratchFloats(a));
  std::vector<int> spb(B, -1);
  int bad = 0;
  a.scratch = scratch.data(), a.splitsPerBatch = spb.data(), a.bad = &bad;
  EXPECT_OK(kc::pagedDecode(dev, a));
  EXPECT_EQ(bad, 0);
  if (B > 1) {  // batch invariance: sequence 0 alone (another grid, another maxSeqLen) gives the same bits
    kc::PagedDecodeDeviceArgs one = a;
    std::vector<float> o1 = poisoned(size_t(c.Hq) * Dv), l1 = poisoned(size_t(c.Hq));
    one.B = 1, one.out = o1.data(), one.lse = l1.data(), one.maxSeqLen = c.lens[0];
    EXPECT_OK(kc::pagedDecode(dev, one));
    EXPECT_TRUE(std::memcmp(o1.data(), out.data(), o1.size() * 4) == 0 && std::memcmp(l1.data(), lse.data(), l1.size() * 4) == 0);
  }

  // f64 reference over the stored values y (decoded exactly: code·d has <= 18 significant bits),
  // in the stored domain: scores with q' = H·q/32 on rotated key groups, output Σ p·y rotated back.
  // Bounds (first order, doubled), per row:
  //   score: (Dk+1)·u·scale·Σ|q'y| (the f32 dot) + scale·Σ_g 5u·‖q_g‖₁/32·‖y_g‖₁ (the f32 rotation of
  //   q: five rounded butterfly stages), then as test/simt/attention_test.cc's refRow: exp and the
  //   running sums over nTiles tiles and the split merge; the output rotation adds 6u·max Σp|y|.
  const kvant::KvKernels* kk = kvant::kvKernelsFor(Isa::kScalar);
  const size_t no = out.size();
  std::vector<double> wantO(no), tolO(no), wantL(lse.size()), tolL(lse.size()), slackCpu(no, 0);
  const bool rotK = had, rotV = had;
  for (int b = 0; b < B; ++b) {
    const int len = c.lens[b];
    // Stored rows of this sequence for kv head hk: key [Dk], value [Dv], decoded as stored.
    std::vector<size_t> rowOf(len);
    size_t base = 0;
    for (int x = 0; x < b; ++x) base += size_t(c.lens[x]);
    for (int h = 0; h < c.Hq; ++h) {
      const int hk = h / group;
      std::vector<std::vector<float>> ky(len, std::vector<float>(Dk)), vy(len, std::vector<float>(Dv));
      for (int t = 0; t < len; ++t) {
        const int32_t slot = pg.slots[base + t];
        const uint8_t* row = P.pool + slot / P.pageSize * P.pageBytes + P.layerOffset + slot % P.pageSize * P.rowBytes + int64_t(hk) * int64_t(a.headStride);
        kk->decode(KvType(a.k0.type), row + a.k0.offset, a.k0.n, ky[t].data());
        if (a.k1.n) kk->decode(KvType(a.k1.type), row + a.k1.offset, a.k1.n, ky[t].data() + a.k0.n);
        if (c.mla) std::copy_n(ky[t].data(), Dv, vy[t].data());
        else kk->decode(KvType(a.v.type), row + a.v.offset, Dv, vy[t].data());
      }
      const float* qh = &q[(size_t(b) * c.Hq + h) * Dk];
      std::vector<double> qp(qh, qh + Dk), qabs(Dk / 32 + 1, 0);
      if (rotK) {
        for (int g = 0; g < a.k0.n / 32; ++g)
          for (int i = 0; i < 32; ++i) qabs[g] += std::fabs(double(qh[32 * g + i]));
        hadamard64(qp.data(), a.k0.n);
        for (int i = 0; i < a.k0.n; ++i) qp[i] /= 32;
      }
      std::vector<double> s(len), ds(len);
      double mx = -INFINITY, delta = 0;
      for (int t = 0; t < len; ++t) {
        double dot = 0, mag = 0, rot = 0, intSlack = 0;
        for (int d = 0; d < Dk; ++d) dot += qp[d] * ky[t][d], mag += std::fabs(qp[d] * ky[t][d]);
        if (rotK)
          for (int g = 0; g < a.k0.n / 32; ++g) {
            double yl1 = 0, qmax = 0;
            for (int i = 0; i < 32; ++i) yl1 += std::fabs(double(ky[t][32 * g + i])), qmax = std::max(qmax, std::fabs(qp[32 * g + i]));
            rot += 5 * u * qabs[g] / 32 * yl1;
            intSlack += qmax / 127 / 2 * yl1;
          }
        else
          for (int g = 0; kc::kvIsQuant(c.type) && g < a.k0.n / 32; ++g) {
            double yl1 = 0, qmax = 0;
            for (int i = 0; i < 32; ++i) yl1 += std::fabs(double(ky[t][32 * g + i])), qmax = std::max(qmax, std::fabs(qp[32 * g + i]));
            intSlack += qmax / 127 / 2 * yl1;
          }
        s[t] = dot * scale;
        ds[t] = double(Dk + 1) * u * scale * mag + scale * rot * 1.01;
        delta = std::max(delta, scale * intSlack);
        mx = std::max(mx, s[t]);
      }
      double z = 0, E = 0;
      for (int t = 0; t < len; ++t) z += std::exp(s[t] - mx), E = std::max(E, ds[t] + std::fabs(s[t] - mx) * u + 2 * u);
      std::vector<double> oy(Dv, 0), mag(Dv, 0);
      for (int t = 0; t < len; ++t) {
        const double p = std::exp(s[t] - mx) / z;
        for (int d = 0; d < Dv; ++d) oy[d] += p * vy[t][d], mag[d] += p * std::fabs(double(vy[t][d]));
      }
      if (rotV) {
        hadamard64(oy.data(), Dv);
        for (double& x : oy) x /= 32;
      }
      const size_t splits = size_t(std::max(1, (len + c.keysPerSplit - 1) / c.keysPerSplit));
      const double tiles = double((len + 31) / 32 + splits);
      double mm = 0;
      for (double x : mag) mm = std::max(mm, x);
      const double tol = 2 * (2 * E + (4 * tiles + 18 + 8 * double(splits)) * u) * mm + (rotV ? 6 * u * mm : 0) + 1e-30;
      const size_t o = (size_t(b) * c.Hq + h) * Dv;
      // The CPU's integer score path (one query head per kv head, q8 / q4 keys) moves each score
      // by at most δ = scale·Σ_g (qd_g/2)·‖y_g‖₁ (csrc/cpu/attention.cc), so its output by at most
      // (e^{2δ} − 1)·Σ p|y| (every p_j moves by a factor within e^{±2δ}).
      const bool cpuInt = !c.mla && group == 1 && (c.type == kc::kKvQ8 || c.type == kc::kKvQ4);
      for (int d = 0; d < Dv; ++d) {
        wantO[o + d] = len ? oy[d] : 0;
        tolO[o + d] = len ? tol : 0;
        if (cpuInt) slackCpu[o + d] = std::expm1(2 * delta) * mm;
      }
      const size_t li = size_t(b) * c.Hq + h;
      if (len == 0) {
        EXPECT_TRUE(std::isinf(lse[li]) && lse[li] > 0);
        lse[li] = 0, wantL[li] = 0, tolL[li] = 0;
      } else {
        wantL[li] = mx + std::log(z);
        tolL[li] = 2 * (E + (2 * tiles + 8 + 4 * double(splits)) * u + u * std::fabs(wantL[li]));
      }
    }
  }
  char what[160];
  std::snprintf(what, sizeof what, "paged decode %s %s had%d H%d/%d D%d split%d", c.mla ? "mla" : "standard", typeName(c.type), int(had), c.Hq, Hkv, Dk,
                c.keysPerSplit);
  EXPECT_CLOSE(what, out.data(), wantO.data(), no, [&](size_t i) { return tolO[i]; });
  EXPECT_CLOSE(what, lse.data(), wantL.data(), lse.size(), [&](size_t i) { return tolL[i]; });
  // The CPU pagedDecode over the same bytes (scalar and AVX2): both within their bounds of f64.
  std::vector<float> cpuO(no), cpuL(lse.size());
  kvant::PagedDecodeArgs ca{};
  ca.q = q.data(), ca.out = cpuO.data(), ca.lse = cpuL.data(), ca.B = size_t(B), ca.Hq = size_t(c.Hq), ca.Hkv = size_t(Hkv);
  auto seg = [](const kc::KvSegDev& s) { return kvant::KvSegment{KvType(s.type), size_t(s.n), s.hadamard != 0, size_t(s.offset), 0}; };
  ca.k0 = seg(a.k0), ca.k1 = seg(a.k1), ca.v = seg(a.v), ca.headStride = a.headStride, ca.vFromKey = a.vFromKey, ca.scale = scale;
  ca.pages = cpuPages(P), ca.pageTable = pg.table.data(), ca.maxPages = size_t(pg.maxPages), ca.seqLens = c.lens.data();
  for (Isa isa : {Isa::kScalar, Isa::kAvx2}) {
    if (!kvant::isaSupported(isa)) continue;
    std::fill(cpuO.begin(), cpuO.end(), NAN);
    EXPECT_TRUE(kvant::pagedDecode(ca, isa) == Status::kOk);
    const std::vector<double> co = toDouble(cpuO);
    EXPECT_CLOSE(isa == Isa::kScalar ? "paged decode vs CPU scalar" : "paged decode vs CPU avx2", out.data(), co.data(), no,
                 [&](size_t i) { return 2 * tolO[i] + slackCpu[i]; });
  }
}

}  // namespace

TEST(cuda_kv_paged_decode_standard) {
  Rng r(33);
  const auto devs = devices();
  int di = 0;
  for (int type = 0; type <= 4; ++type) {
    const bool q = kc::kvIsQuant(type);
    // GQA 3 over 2 kv heads, an empty sequence, partial pages, several splits.
    runDecode({false, type, q, 6, 2, 64, 0, {45, 0, 38}, 16, 32}, r, devs[di++ % devs.size()]);
    // One query head per kv head (the CPU's fused path), one split, head dim 128.
    runDecode({false, type, q, 2, 2, 128, 0, {33, 5}, 16, 64}, r, devs[di++ % devs.size()]);
  }
  runDecode({false, kc::kKvQ4, false, 4, 1, 64, 0, {50}, 16, 32}, r, devs[0]);  // quantized without rotation, MQA
  runDecode({false, kc::kKvQ8, true, 20, 1, 64, 0, {19}, 32, 32}, r, devs[1]);  // two row blocks of one kv head
}

TEST(cuda_kv_paged_decode_mla) {
  Rng r(34);
  const auto devs = devices();
  int di = 0;
  for (int type = 0; type <= 4; ++type)
    runDecode({true, type, kc::kvIsQuant(type), 5, 1, 64, 32, {45, 0, 66, 1}, 16, 32}, r, devs[di++ % devs.size()]);
  runDecode({true, kc::kKvQ4, true, 16, 1, 512, 64, {37, 3}, 64, 32}, r, devs[1]);   // DeepSeek-V2 latent, q4 + rotation
  runDecode({true, kc::kKvBf16, false, 16, 1, 512, 64, {40}, 64, 64}, r, devs[2]);   // the bf16 pool of mlaDecode
}

TEST(cuda_kv_paged_decode_bad_inputs) {
  const auto dev = device(80);
  Rng r(35);
  const Layout l = makeLayout(false, kc::kKvQ8, true, 1, 64, 16, 3);
  std::vector<uint8_t> pool(size_t(3) * l.pageBytes, 0);
  std::vector<float> q(64, 0.5f), out(64), lse(1), scratch(4096);
  std::vector<int32_t> lens{20}, table{0, 7};  // page 7 is outside the pool of 3
  std::vector<int> spb(1);
  int bad = 0;
  kc::PagedDecodeDeviceArgs a{};
  a.q = q.data(), a.out = out.data(), a.lse = lse.data(), a.B = 1, a.Hq = 3, a.Hkv = 2;
  a.k0 = {kc::kKvQ8, 64, 1, 0}, a.k1 = {kc::kKvBf16, 0, 0, 0}, a.v = {kc::kKvQ8, 64, 1, l.headBytes};
  a.headStride = size_t(l.headBlock), a.pages = l.pages(pool.data()), a.pageTable = table.data(), a.maxPages = 2, a.seqLens = lens.data();
  a.maxSeqLen = 20, a.keysPerSplit = 32, a.scale = 0.125f, a.scratch = scratch.data(), a.splitsPerBatch = spb.data(), a.bad = &bad;
  EXPECT_STATUS(kc::pagedDecode(dev, a), Status::kShape);  // Hq % Hkv
  a.Hq = 1, a.Hkv = 1, a.keysPerSplit = 48;
  EXPECT_STATUS(kc::pagedDecode(dev, a), Status::kShape);  // split not a multiple of 32
  a.keysPerSplit = 32, a.k0.type = 7;
  EXPECT_STATUS(kc::pagedDecode(dev, a), Status::kDtype);
  a.k0.type = kc::kKvQ8, a.k0.n = 40;
  EXPECT_STATUS(kc::pagedDecode(dev, a), Status::kShape);  // q8 segment not a multiple of 32
  a.k0.n = 64, a.v.offset = l.pageBytes;
  EXPECT_STATUS(kc::pagedDecode(dev, a), Status::kShape);  // value segment past the page
  a.v.offset = l.headBytes, a.maxSeqLen = 33;
  EXPECT_STATUS(kc::pagedDecode(dev, a), Status::kRange);  // more than 2 pages of 16
  a.maxSeqLen = 20, a.vFromKey = true, a.v.n = 128;
  EXPECT_STATUS(kc::pagedDecode(dev, a), Status::kShape);  // V longer than the key it is taken from
  a.vFromKey = false, a.v.n = 64, a.k0.n = 32, a.k1 = {kc::kKvBf16, 32, 0, 40};
  EXPECT_OK(kc::pagedDecode(dev, a));  // (Dk, Dv) = (64, 64) from two key segments; reads page 7: flagged, not read
  EXPECT_EQ(bad, 1);
  a.k1.n = 0, a.k0.n = 64, bad = 0, lens[0] = 40;  // a length past maxSeqLen is flagged and clamped
  table[1] = 1;
  EXPECT_OK(kc::pagedDecode(dev, a));
  EXPECT_EQ(bad, 1);
  a.k0.n = 96, a.v.n = 96;
  EXPECT_STATUS(kc::pagedDecode(dev, a), Status::kShape);  // head dims not instantiated
  (void)r;
}
