#include "attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "gemm.h"
#include "small_ops.h"
#include "thread_pool.h"

namespace kvant {
namespace {

std::atomic<size_t> gFlashScratch{0};

void notePeak(size_t bytes) {
  size_t cur = gFlashScratch.load();
  while (bytes > cur && !gFlashScratch.compare_exchange_weak(cur, bytes)) {
  }
}

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

}  // namespace

namespace scalar {
namespace {
void qk(const float* q, size_t ldq, size_t m, const float* k, size_t ldk, size_t n, size_t d, float* s, size_t lds) {
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < n; ++j) {
      float a = 0;
      for (size_t t = 0; t < d; ++t) a += q[i * ldq + t] * k[j * ldk + t];
      s[i * lds + j] = a;
    }
}

void pv(const float* p, size_t ldp, size_t m, size_t n, const float* v, size_t ldv, size_t dv, float* acc, size_t lda) {
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < n; ++j) {
      const float w = p[i * ldp + j];
      for (size_t d = 0; d < dv; ++d) acc[i * lda + d] += w * v[j * ldv + d];
    }
}
void qkT(const float* qt, size_t ldqt, size_t m, const float* k, size_t ldk, size_t n, size_t d, float* st, size_t ldst) {
  for (size_t j = 0; j < n; ++j)
    for (size_t i = 0; i < m; ++i) {
      float a = 0;
      for (size_t t = 0; t < d; ++t) a += qt[t * ldqt + i] * k[j * ldk + t];
      st[j * ldst + i] = a;
    }
}

void softmaxT(float* st, size_t ldst, size_t m, size_t n, long c, float scale2, float* mx, float* l, float* corr) {
  for (size_t i = 0; i < m; ++i) {
    const long vis = long(i) + c + 1;  // keys 0..vis-1 are visible to row i
    const size_t nv = vis <= 0 ? 0 : size_t(vis) < n ? size_t(vis) : n;
    float bm = kNegInf;
    for (size_t j = 0; j < nv; ++j) bm = std::max(bm, st[j * ldst + i] * scale2);
    const float mNew = std::max(mx[i], bm);
    if (mNew == kNegInf) {  // nothing seen yet: p = 0, state unchanged
      for (size_t j = 0; j < n; ++j) st[j * ldst + i] = 0;
      corr[i] = 1;
      continue;
    }
    corr[i] = std::exp2(mx[i] - mNew);  // exp2(-inf) = 0 on the first block
    float sum = 0;
    for (size_t j = 0; j < n; ++j) {
      const float p = j < nv ? std::exp2(st[j * ldst + i] * scale2 - mNew) : 0.f;
      st[j * ldst + i] = p;
      sum += p;
    }
    l[i] = l[i] * corr[i] + sum;
    mx[i] = mNew;
  }
}

void pvT(const float* pt, size_t ldpt, size_t m, size_t n, const float* v, size_t ldv, size_t dv, const float* rowScale, float* acc, size_t lda) {
  for (size_t i = 0; i < m; ++i)
    for (size_t d = 0; d < dv; ++d) {
      float a = acc[i * lda + d] * rowScale[i];
      for (size_t j = 0; j < n; ++j) a += pt[j * ldpt + i] * v[j * ldv + d];
      acc[i * lda + d] = a;
    }
}
}  // namespace
const AttnKernels kAttnKernels = {qk, pv, qkT, softmaxT, pvT};
}  // namespace scalar

const AttnKernels* attnKernelsFor(Isa isa) {
  if (int(isa) < 0) isa = isaChoice().isa;
#if defined(__x86_64__) || defined(_M_X64)
  return tableForIsa<AttnKernels>(isa, scalar::kAttnKernels, &avx2::kAttnKernels, nullptr);
#else
  return tableForIsa<AttnKernels>(isa, scalar::kAttnKernels, nullptr, nullptr);
#endif
}

size_t flashScratchBytes() { return gFlashScratch.load(); }
void resetFlashScratchBytes() { gFlashScratch.store(0); }

Status flashAttention(const FlashArgs& a, Isa isa) {
  const GemmKernels* g = gemmKernelsFor(isa);
  const SmallOpsKernels* so = smallOpsKernelsFor(isa);
  const AttnKernels* ak = attnKernelsFor(isa);
  if (!g || !so || !ak) return Status::kBackend;
  if (a.Hkv == 0 || a.Hq % a.Hkv != 0) return Status::kShape;
  const bool varlen = a.cuQ != nullptr;
  const size_t B = a.B, Hq = a.Hq, Hkv = a.Hkv, Dqk = a.Dqk, Dv = a.Dv;
  const size_t group = Hq / Hkv;
  // Tasks: (batch, head, query block); each computes its rows completely.
  std::vector<size_t> blockStart(B + 1, 0);
  for (size_t b = 0; b < B; ++b) {
    const size_t sq = varlen ? size_t(a.cuQ[b + 1] - a.cuQ[b]) : a.Sq;
    blockStart[b + 1] = blockStart[b] + (sq + kFlashBr - 1) / kFlashBr;
  }
  // Task order: batch, head, then query block, so consecutive tasks (on any thread) re-read
  // the same head's K/V while it is still in L2/L3 (head-fastest order streamed all heads'
  // K/V, 42 MB at 16 heads x 2048 x 320, from DRAM for every query block).
  const size_t tasks = blockStart[B] * Hq;
  threadPool().parallelFor(tasks, [&](size_t task) {
    size_t b = 0;
    while (blockStart[b + 1] * Hq <= task) ++b;
    const size_t nb = blockStart[b + 1] - blockStart[b];
    const size_t h = (task - blockStart[b] * Hq) / nb;
    const size_t qb = (task - blockStart[b] * Hq) % nb;
    const size_t sq = varlen ? size_t(a.cuQ[b + 1] - a.cuQ[b]) : a.Sq;
    const size_t sk = varlen ? size_t(a.cuK[b + 1] - a.cuK[b]) : a.Sk;
    const size_t q0 = varlen ? size_t(a.cuQ[b]) : b * sq;  // first query token of this batch
    const size_t k0 = varlen ? size_t(a.cuK[b]) : b * sk;
    const size_t hk = h / group;
    const size_t r0 = qb * kFlashBr, rows = sq - r0 < kFlashBr ? sq - r0 : kFlashBr;
    const size_t mPad = (rows + 15) & ~size_t(15);  // kernels run whole 16-row tiles; pad rows are zero queries
    // O(tile) scratch: running max (base 2) / sum per row, the transposed query block, the
    // transposed score block and the output accumulator.
    // K/V blocks are copied into panels with a padded row stride: the heads' interleaved rows
    // are Hkv·D floats apart (a multiple of 4 KB for 16 heads x 128), so a column stripe of
    // the raw block maps every row to one L1 set and is re-fetched from L2 for each row tile;
    // a stride of D + 16 floats spreads the rows over the sets.
    const size_t ldkp = Dqk + 16, ldvp = Dv + 16;
    // qt and st are read down their columns (qkT: 64 bytes of qt per t, pvT: a few floats of
    // st per key), so their row strides get one spare cache line too: at 128 floats (512
    // bytes) the Dqk lines of a 16-row qt slice, or the 64 lines of a pt column, fell into
    // 8 of the 64 L1 sets and could not all stay (measured: ~1/3 of qkT and pvT time).
    const size_t ldqt = mPad + 16;
    constexpr size_t ldst = kFlashBr + 16;
    float m[kFlashBr], l[kFlashBr], corr[kFlashBr], st[kFlashBc * ldst];
    thread_local std::vector<float> qt, acc, kp, vp;
    qt.assign(Dqk * ldqt, 0.f), acc.assign(mPad * Dv, 0.f), kp.resize(kFlashBc * ldkp), vp.resize(kFlashBc * ldvp);
    notePeak(sizeof(m) + sizeof(l) + sizeof(corr) + sizeof(st) + (qt.size() + acc.size() + kp.size() + vp.size()) * sizeof(float));
    for (size_t i = 0; i < kFlashBr; ++i) {
      m[i] = kNegInf;
      l[i] = 0;
    }
    const size_t ldq = Hq * Dqk, ldk = Hkv * Dqk, ldv = Hkv * Dv;
    const float* qBase = a.q + ((q0 + r0) * Hq + h) * Dqk;
    // The block's query rows (cold: Q is read once per task) are requested all at once
    // before the transpose, whose scalar loads otherwise took their misses one row at a time.
    for (size_t i = 0; i < rows; ++i)
      for (size_t off = 0; off < Dqk * sizeof(float); off += 64) __builtin_prefetch(reinterpret_cast<const char*>(qBase + i * ldq) + off, 0, 3);
    for (size_t i = 0; i < rows; ++i)  // transpose once per task; reused by every K block
      for (size_t t = 0; t < Dqk; ++t) qt[t * ldqt + i] = qBase[i * ldq + t];
    // Scores in base 2: 2^(s·scale·log2 e) = e^(s·scale).
    const float scale2 = a.scale * 1.44269504088896340736f;
    // Keys visible to the block's last row bound the K/V stream (lower-right causal mask).
    const long shift = long(sk) - long(sq);
    const size_t kEnd = a.causal ? size_t(std::max<long>(0, std::min<long>(long(sk), long(r0 + rows) + shift))) : sk;
    for (size_t j0 = 0; j0 < kEnd; j0 += kFlashBc) {
      const size_t cols = kEnd - j0 < kFlashBc ? kEnd - j0 : kFlashBc;
      const float* kBase = a.k + ((k0 + j0) * Hkv + hk) * Dqk;
      const float* vBase = a.v + ((k0 + j0) * Hkv + hk) * Dv;
      for (size_t j = 0; j < cols; ++j) {
        std::copy_n(kBase + j * ldk, Dqk, kp.data() + j * ldkp);
        std::copy_n(vBase + j * ldv, Dv, vp.data() + j * ldvp);
      }
      // Sᵀ = K_blk · Q_blkᵀ, then the online softmax step: key j visible to row i iff
      // j0 + j <= r0 + i + shift, i.e. i >= -c. Rows below i0 (a multiple of 8 <= -c) see no
      // key of this block and are skipped: for them the step would be the identity (corr = 1
      // or a zero accumulator, p = 0, acc·1 + 0·v = acc), so the bits are those of running
      // them, and a 128-row block costs no more causal waste than a 64-row one.
      const long c = a.causal ? long(r0) + shift - long(j0) : long(cols);
      const size_t i0 = c < 0 ? std::min(mPad, size_t(-c) & ~size_t(7)) : 0;
      if (i0 == mPad) continue;
      const size_t mb = mPad - i0;
      // The next block's K/V rows are prefetched (into L2) while this block computes: each
      // row is a 512-byte run 8 KB from the next (16 heads x 128), which the hardware
      // streamers do not follow, so without it the copy above waited on L3 for every row
      // (~27 % of the time). The prefetches are spread over the block's work — qkT is called
      // per 16-row slice and pvT per 16-column stripe, which are exactly the kernels' own
      // outer loops, so the arithmetic (and the bits) are unchanged — because one burst of
      // all 1024 lines stalled on the miss buffers instead.
      const size_t nextCols = j0 + kFlashBc < kEnd ? std::min(kFlashBc, kEnd - j0 - kFlashBc) : 0;
      const size_t pieces = (mb + 15) / 16 + (Dv + 15) / 16;
      const size_t pfStep = (nextCols + pieces - 1) / pieces;
      size_t pfRow = 0;
      auto prefetchNext = [&] {
        for (size_t e = std::min(nextCols, pfRow + pfStep); pfRow < e; ++pfRow) {
          const char* kn = reinterpret_cast<const char*>(kBase + (kFlashBc + pfRow) * ldk);
          const char* vn = reinterpret_cast<const char*>(vBase + (kFlashBc + pfRow) * ldv);
          for (size_t off = 0; off < Dqk * sizeof(float); off += 64) __builtin_prefetch(kn + off, 0, 2);
          for (size_t off = 0; off < Dv * sizeof(float); off += 64) __builtin_prefetch(vn + off, 0, 2);
        }
      };
      for (size_t i = i0; i < mPad; i += 16) {
        prefetchNext();
        ak->qkT(qt.data() + i, ldqt, std::min<size_t>(16, mPad - i), kp.data(), ldkp, cols, Dqk, st + i, ldst);
      }
      ak->softmaxT(st + i0, ldst, mb, cols, c + long(i0), scale2, m + i0, l + i0, corr + i0);
      // O_blk = O_blk · corr + P · V_blk (the rescale fused into the accumulator load).
      for (size_t d = 0; d < Dv; d += 16) {
        prefetchNext();
        ak->pvT(st + i0, ldst, mb, cols, vp.data() + d, ldvp, std::min<size_t>(16, Dv - d), corr + i0, acc.data() + i0 * Dv + d, Dv);
      }
    }
    for (size_t i = 0; i < rows; ++i) {
      float* o = a.out + ((q0 + r0 + i) * Hq + h) * Dv;
      const size_t lseIdx = varlen ? h * a.Sq + q0 + r0 + i : (b * Hq + h) * sq + r0 + i;  // varlen: Sq holds Tq
      if (l[i] == 0) {  // saw no key: output 0, lse +inf (FlashAttention-2's convention)
        for (size_t d = 0; d < Dv; ++d) o[d] = 0;
        if (a.lse) a.lse[lseIdx] = std::numeric_limits<float>::infinity();
        continue;
      }
      const float inv = 1.f / l[i];
      for (size_t d = 0; d < Dv; ++d) o[d] = acc[i * Dv + d] * inv;
      // lse in natural units: ln(Σ e^(s·scale)) = (m2 + log2 l) · ln 2.
      if (a.lse) a.lse[lseIdx] = (m[i] + std::log2(l[i])) * 0.693147180559945309417f;
    }
  });
  return Status::kOk;
}

Status naiveAttention(const FlashArgs& a, Isa isa) {
  if (a.Hkv == 0 || a.Hq % a.Hkv != 0) return Status::kShape;
  if (a.cuQ || a.cuK) return Status::kShape;
  const size_t Sq = a.Sq, Sk = a.Sk, Dqk = a.Dqk, Dv = a.Dv, group = a.Hq / a.Hkv;
  std::vector<float> q(Sq * Dqk), k(Sk * Dqk), vt(Dv * Sk), s(Sq * Sk), o(Sq * Dv);
  for (size_t b = 0; b < a.B; ++b)
    for (size_t h = 0; h < a.Hq; ++h) {
      const size_t hk = h / group;
      for (size_t i = 0; i < Sq; ++i) std::copy_n(a.q + ((b * Sq + i) * a.Hq + h) * Dqk, Dqk, q.data() + i * Dqk);
      for (size_t j = 0; j < Sk; ++j) {
        std::copy_n(a.k + ((b * Sk + j) * a.Hkv + hk) * Dqk, Dqk, k.data() + j * Dqk);
        for (size_t d = 0; d < Dv; ++d) vt[d * Sk + j] = a.v[((b * Sk + j) * a.Hkv + hk) * Dv + d];
      }
      Status st = gemm(q.data(), Sq, Dqk, k.data(), DType::kF32, Sk, nullptr, s.data(), isa);
      if (st != Status::kOk) return st;
      const long shift = long(Sk) - long(Sq);
      for (size_t i = 0; i < Sq; ++i) {
        float* si = s.data() + i * Sk;
        const long vis = a.causal ? std::max<long>(0, std::min<long>(long(Sk), long(i) + shift + 1)) : long(Sk);
        for (size_t j = 0; j < Sk; ++j) si[j] = long(j) < vis ? si[j] * a.scale : kNegInf;
        float m = kNegInf;
        for (size_t j = 0; j < Sk; ++j) m = si[j] > m ? si[j] : m;
        double z = 0;
        for (size_t j = 0; j < Sk; ++j) z += si[j] = m == kNegInf ? 0.f : std::exp(si[j] - m);
        for (size_t j = 0; j < Sk; ++j) si[j] = z > 0 ? float(si[j] / z) : 0.f;
        if (a.lse) a.lse[(b * a.Hq + h) * Sq + i] = z > 0 ? float(m + std::log(z)) : std::numeric_limits<float>::infinity();
      }
      st = gemm(s.data(), Sq, Sk, vt.data(), DType::kF32, Dv, nullptr, o.data(), isa);
      if (st != Status::kOk) return st;
      for (size_t i = 0; i < Sq; ++i) std::copy_n(o.data() + i * Dv, Dv, a.out + ((b * Sq + i) * a.Hq + h) * Dv);
    }
  return Status::kOk;
}

// The absorbed MLA decode over a plain bf16 pool is pagedDecode over a one-layer pool whose
// key is [c | k_pe] and whose value is the latent prefix c of the key: one implementation (the
// shared-row panel path) and one set of kernels for both entry points.
Status mlaDecode(const MlaDecodeArgs& a, Isa isa) {
  const size_t D = a.L + a.R;
  PagedDecodeArgs p{};
  p.q = a.q, p.out = a.out, p.lse = a.lse;
  p.B = a.B, p.Hq = a.H, p.Hkv = 1;
  p.k0 = KvSegment{KvType::kBf16, a.L, false, 0, 0};
  p.k1 = KvSegment{KvType::kBf16, a.R, false, 2 * a.L, a.L};
  p.v = p.k0, p.headStride = 0, p.vFromKey = true, p.scale = a.scale;
  // pagedDecode only reads the pool (KvPages is shared with the writers, hence non-const).
  p.pages = KvPages{reinterpret_cast<uint8_t*>(const_cast<uint16_t*>(a.pool)), a.numPages, a.pageSize, a.pageSize * D * 2, 0, D * 2};
  p.pageTable = a.pageTable, p.maxPages = a.maxPages, p.seqLens = a.seqLens;
  return pagedDecode(p, isa);
}

}  // namespace kvant

namespace kvant {

Status pagedDecode(const PagedDecodeArgs& a, Isa isa) {
  const GemmKernels* g = gemmKernelsFor(isa);
  const SmallOpsKernels* so = smallOpsKernelsFor(isa);
  const KvKernels* kv = kvKernelsFor(isa);
  const AttnKernels* ak = attnKernelsFor(isa);
  if (!g || !so || !kv || !ak) return Status::kBackend;
  if (a.Hkv == 0 || a.Hq % a.Hkv != 0) return Status::kShape;
  const KvPages& P = a.pages;
  const size_t Dk = a.k0.n + a.k1.n, Dv = a.v.n, group = a.Hq / a.Hkv;
  if (Dk == 0 || Dv == 0 || P.pageSize == 0) return Status::kShape;
  if (a.vFromKey && (a.Hkv != 1 || a.v.n > a.k0.n || a.v.type != a.k0.type || a.v.hadamard != a.k0.hadamard)) return Status::kShape;
  for (const KvSegment* s : {&a.k0, &a.k1, &a.v}) {
    const size_t bytes = kvSegmentBytes(s->type, s->n);
    // The farthest byte this segment reaches (last slot, last head) must stay inside the page.
    if ((bytes == 0 && s->n != 0) || P.layerOffset + (P.pageSize - 1) * P.rowBytes + s->offset + (a.Hkv - 1) * a.headStride + bytes > P.pageBytes)
      return Status::kShape;
  }
  for (size_t b = 0; b < a.B; ++b) {
    if (a.seqLens[b] < 0) return Status::kRange;
    const size_t pages = (size_t(a.seqLens[b]) + P.pageSize - 1) / P.pageSize;
    if (pages > a.maxPages) return Status::kRange;
    for (size_t p = 0; p < pages; ++p) {
      const int32_t page = a.pageTable[b * a.maxPages + p];
      if (page < 0 || size_t(page) >= P.numPages) return Status::kRange;
    }
  }
  const bool rotK = a.k0.hadamard && kvQuantized(a.k0.type), rotV = a.v.hadamard && kvQuantized(a.v.type);
  std::vector<size_t> splitStart(a.B + 1, 0);
  for (size_t b = 0; b < a.B; ++b) splitStart[b + 1] = splitStart[b] + std::max<size_t>(1, (size_t(a.seqLens[b]) + kDecodeSplit - 1) / kDecodeSplit);
  const size_t nSplits = splitStart[a.B];
  std::vector<float> pm(nSplits * a.Hq), pl(nSplits * a.Hq), pacc(nSplits * a.Hq * Dv);
  // Fused path: rows scored per softmax step. Shared-row path: rows decoded per panel, a
  // multiple of qkT's 6-key tile; 48 rows of up to 576 f32 (108 KB) stay in L2 while every
  // query head of the kv head uses them. 48 rather than 24: pvT loads, rescales and stores
  // its accumulator tiles once per panel (36 of every 24·12 + 36 vector ops at 24 rows), and
  // the prefetch of the next panel goes out twice as far ahead.
  //
  // Fused-path rows per step: 8 when a head's K + V row is >= 256 bytes (f16 / bf16 / q8 at
  // head dim 128: 4 KB of K/V per step), else 16 (q6 / q4: 3.3 / 2.3 KB). The next step's
  // rows are prefetched as one burst; with 16 f16 rows (8 KB, 128 lines) the burst outran the
  // miss buffers and the prefetch instructions themselves stalled (~8 % of the samples sat on
  // prefetchnta). Measured in one process, 1 thread, 32k tokens (speed pass 5, under load):
  // f16 / bf16 1.15-1.4x and q8 ~1.1x faster at 8 rows than at 16; q4 ~10 % slower at 8
  // (its rows cost more compute per byte, so 16 of them cover the latency); 32 or 64 rows
  // were slower for every type. A function of the cache type and head dim alone, so the
  // bits still do not depend on the thread count or the batch.
  constexpr size_t kRowsMax = 16, kPanel = 48;
  const size_t headRowBytes = kvSegmentBytes(a.k0.type, a.k0.n) + kvSegmentBytes(a.v.type, a.v.n);
  const size_t kRows = headRowBytes >= 256 ? 8 : kRowsMax;
  auto runSplit = [&](size_t task) {
    const size_t sidx = task / a.Hkv, hk = task % a.Hkv;
    size_t b = 0;
    while (splitStart[b + 1] <= sidx) ++b;
    const size_t len = size_t(a.seqLens[b]);
    const size_t t0 = (sidx - splitStart[b]) * kDecodeSplit, t1 = std::min(len, t0 + kDecodeSplit);
    thread_local std::vector<float> qbuf, kbuf, vbuf, sbuf;
    qbuf.resize(group * Dk), kbuf.resize(kPanel * Dk), vbuf.resize(kPanel * Dv), sbuf.resize(kRowsMax);
    // The query heads of this kv head, with the rotated part of the key pre-transformed:
    // q·x = (H·q)·y / 32 where y = H·x is what the cache stores (1/32 is exact).
    for (size_t j = 0; j < group; ++j) {
      float* qr = qbuf.data() + j * Dk;
      std::copy(a.q + (b * a.Hq + hk * group + j) * Dk, a.q + (b * a.Hq + hk * group + j + 1) * Dk, qr);
      if (rotK) {
        kv->hadamard32(qr, a.k0.n);
        for (size_t d = 0; d < a.k0.n; ++d) qr[d] *= 1.0f / 32;
      }
    }
    float* m = pm.data() + sidx * a.Hq + hk * group;
    float* l = pl.data() + sidx * a.Hq + hk * group;
    float* acc = pacc.data() + (sidx * a.Hq + hk * group) * Dv;
    for (size_t j = 0; j < group; ++j) m[j] = kNegInf, l[j] = 0;
    std::fill(acc, acc + group * Dv, 0.f);
    // Pointers to rows [t, t + n) of this sequence: one division per call, then slot stepping
    // (two divisions per row, for the row and its prefetch, cost ~10% of the MLA decode).
    const int32_t* table = a.pageTable + b * a.maxPages;
    auto rowsAt = [&](size_t t, size_t n, const uint8_t** out) {
      size_t page = t / P.pageSize, slot = t % P.pageSize;
      const uint8_t* base = P.pool + size_t(table[page]) * P.pageBytes + P.layerOffset;
      for (size_t r = 0; r < n; ++r) {
        out[r] = base + slot * P.rowBytes;
        if (++slot == P.pageSize && r + 1 < n) slot = 0, base = P.pool + size_t(table[++page]) * P.pageBytes + P.layerOffset;
      }
    };
    // Bytes of this kv head's part of a row: from its first segment to the end of its last.
    const size_t segEnd[3] = {a.k0.offset + kvSegmentBytes(a.k0.type, a.k0.n), a.k1.n ? a.k1.offset + kvSegmentBytes(a.k1.type, a.k1.n) : 0,
                              a.vFromKey ? 0 : a.v.offset + kvSegmentBytes(a.v.type, a.v.n)};
    const size_t segBeg = std::min(a.k0.offset, a.vFromKey ? a.k0.offset : a.v.offset);
    const size_t prefetchFrom = segBeg + hk * a.headStride;
    const size_t prefetchBytes = std::max({segEnd[0], segEnd[1], segEnd[2]}) - segBeg;
    // One query head per kv head (standard-cache decode without GQA): nothing would reuse a
    // decoded row, so decode it in registers straight into the dot and the accumulation.
    const bool fused = group == 1 && !a.vFromKey && a.k1.n == 0;
    // Software prefetch one step ahead (the next step's rows while this step's are used): a
    // head's run of rows is contiguous only within a page (pages are scattered), and the
    // kernel is a pure stream otherwise.
    const size_t step = fused ? kRows : kPanel;
    const uint8_t* cur[kPanel > kRowsMax ? kPanel : kRowsMax];
    const uint8_t* nxt[kPanel > kRowsMax ? kPanel : kRowsMax];
    if (t0 < t1) rowsAt(t0, std::min(step, t1 - t0), cur);
    auto nextRows = [&](size_t c0, size_t n) {  // the rows of the step after [c0, c0 + n)
      const size_t nn = c0 + n < t1 ? std::min(step, t1 - c0 - n) : 0;
      if (nn) rowsAt(c0 + n, nn, nxt);
      return nn;
    };
    auto prefetchRow = [&](const uint8_t* row) {
      for (size_t off = 0; off < prefetchBytes; off += 64) __builtin_prefetch(row + prefetchFrom + off, 0, 0);
    };
    if (fused) {
      float* s = sbuf.data();
      // q8 / q4 keys: scores in integers against the query quantized per group of 32 (once per
      // task). Added score error <= Σ_g (qd_g / 2)·‖y_g‖₁ (y = the stored key group), see
      // kvQuantizeQuery; the tests bound it by (√32 / 254)·Σ_g ‖q_g‖₂‖k_g‖₂.
      const bool intScore = kvIntScore(a.k0.type);
      // All rows of a step scored in one call (one reduction per 8 rows) where its shape
      // limits allow; otherwise row by row (same bounds).
      const bool batched = kvQuantized(a.k0.type) ? Dk <= 32 * kDotRowsMaxGroups : Dk % 16 == 0;
      thread_local std::vector<int8_t> q8buf;
      thread_local std::vector<float> qdbuf;
      if (intScore) {
        q8buf.resize(Dk), qdbuf.resize(Dk / 32);
        kvQuantizeQuery(qbuf.data(), Dk, q8buf.data(), qdbuf.data());
      }
      for (size_t c0 = t0; c0 < t1; c0 += kRows) {
        const size_t n = std::min(kRows, t1 - c0);
        const size_t nn = nextRows(c0, n);
        const uint8_t* rp[kRowsMax];
        float bm = kNegInf;
        for (size_t r = 0; r < n; ++r) {
          rp[r] = cur[r] + hk * a.headStride;
          if (!batched)
            s[r] = intScore ? kv->dotI8(a.k0.type, rp[r] + a.k0.offset, q8buf.data(), qdbuf.data(), Dk) : kv->dot(a.k0.type, rp[r] + a.k0.offset, qbuf.data(), Dk);
        }
        if (batched) kv->dotRows(a.k0.type, rp, a.k0.offset, n, qbuf.data(), intScore ? q8buf.data() : nullptr, qdbuf.data(), Dk, s);
        for (size_t r = 0; r < n; ++r) {
          s[r] *= a.scale;
          bm = s[r] > bm ? s[r] : bm;
        }
        const float mNew = m[0] > bm ? m[0] : bm;
        const float corr = m[0] == kNegInf ? 0.f : std::exp(m[0] - mNew);
        l[0] = l[0] * corr + float(so->expShift(s, mNew, s, n));
        if (corr != 1.f)
          for (size_t d = 0; d < Dv; ++d) acc[d] *= corr;
        m[0] = mNew;
        // The next step's prefetches go out here, after the scores: issued before them, the
        // burst filled the miss buffers and stalled the score loads (measured ~10% slower).
        for (size_t r = 0; r < nn; ++r) prefetchRow(nxt[r]);
        kv->axpyRows(a.v.type, rp, a.v.offset, n, s, acc, Dv);
        for (size_t r = 0; r < nn; ++r) cur[r] = nxt[r];  // (std::copy_n became rep movsq: ~30 cycles to start)
      }
      return;
    }
    // Shared rows (GQA groups, MLA's 16 heads on one latent row): a small GEMM per panel of
    // kPanel rows, run on the FlashAttention-2 prefill kernels with the group's query heads as
    // the vector lanes. Sᵀ [n x mPad] = panel · Qᵀ (qkT: 16 heads x 6 keys per register tile,
    // 12 accumulators, no horizontal sums), the online softmax step in base 2 down the lanes
    // (softmaxT), then acc = acc·corr + P·V (pvT: 6 heads x 16 columns, 12 accumulators, the
    // rescale fused into the accumulator load). The panel is decoded once to f32 and every head
    // uses it while it sits in L1/L2: per row 2·group·(Dk + Dv) FLOP against Dk + Dv values
    // decoded, so the decode is ~1/(2·group) of the work (MLA: 1/32).
    const size_t mPad = (group + 7) & ~size_t(7);  // AVX2 qkT / softmaxT run whole 8-lane groups
    thread_local std::vector<float> qt, st, stat;
    qt.assign(Dk * mPad, 0.f), st.resize(kPanel * mPad), stat.resize(3 * mPad);
    for (size_t j = 0; j < group; ++j)
      for (size_t t = 0; t < Dk; ++t) qt[t * mPad + j] = qbuf[j * Dk + t];
    float* mx = stat.data();  // running max in base 2 (pad lanes: zero queries, never read)
    float* lx = mx + mPad;
    float* corr = lx + mPad;
    for (size_t j = 0; j < mPad; ++j) mx[j] = kNegInf, lx[j] = 0;
    const float scale2 = a.scale * 1.44269504088896340736f;  // e^(s·scale) = 2^(s·scale2)
    const float* vrows = a.vFromKey ? kbuf.data() : vbuf.data();
    const size_t ldv = a.vFromKey ? Dk : Dv;
    for (size_t c0 = t0; c0 < t1; c0 += kPanel) {
      const size_t n = std::min(kPanel, t1 - c0);
      const size_t nn = nextRows(c0, n);
      for (size_t r = 0; r < n; ++r) {
        const uint8_t* row = cur[r] + hk * a.headStride;
        if (r < nn) prefetchRow(nxt[r]);
        kv->decode(a.k0.type, row + a.k0.offset, a.k0.n, kbuf.data() + r * Dk);
        if (a.k1.n) kv->decode(a.k1.type, row + a.k1.offset, a.k1.n, kbuf.data() + r * Dk + a.k0.n);
        if (!a.vFromKey) kv->decode(a.v.type, row + a.v.offset, Dv, vbuf.data() + r * Dv);
      }
      ak->qkT(qt.data(), mPad, mPad, kbuf.data(), Dk, n, Dk, st.data(), mPad);
      ak->softmaxT(st.data(), mPad, mPad, n, long(n), scale2, mx, lx, corr);  // c = n: no mask
      ak->pvT(st.data(), mPad, group, n, vrows, ldv, Dv, corr, acc, Dv);
      std::copy_n(nxt, nn, cur);
    }
    for (size_t j = 0; j < group; ++j) m[j] = mx[j] * 0.693147180559945309417f, l[j] = lx[j];  // back to natural units
  };
  // Merge each sequence's splits in order: out = Σ_s e^{m_s - M} acc_s / Σ_s e^{m_s - M} l_s,
  // then undo the value rotation once: x = H·y / 32.
  auto mergeHead = [&](size_t bh) {
    const size_t b = bh / a.Hq, h = bh % a.Hq;
    float M = kNegInf;
    for (size_t s = splitStart[b]; s < splitStart[b + 1]; ++s) M = pm[s * a.Hq + h] > M ? pm[s * a.Hq + h] : M;
    float* o = a.out + bh * Dv;
    for (size_t d = 0; d < Dv; ++d) o[d] = 0;
    if (M == kNegInf) {  // empty sequence: output 0, lse +inf
      if (a.lse) a.lse[bh] = std::numeric_limits<float>::infinity();
      return;
    }
    float denom = 0;
    for (size_t s = splitStart[b]; s < splitStart[b + 1]; ++s) {
      if (pm[s * a.Hq + h] == kNegInf) continue;
      const float w = std::exp(pm[s * a.Hq + h] - M);
      denom += w * pl[s * a.Hq + h];
      so->axpy(w, pacc.data() + (s * a.Hq + h) * Dv, o, Dv);
    }
    const float inv = (rotV ? 1.0f / 32 : 1.0f) / denom;
    if (rotV) kv->hadamard32(o, Dv);
    for (size_t d = 0; d < Dv; ++d) o[d] *= inv;
    if (a.lse) a.lse[bh] = M + std::log(denom);
  };
  // One pass over the pool instead of a split pass and a merge pass (the merge pass woke the
  // workers a second time per call, a fixed cost that weighs most on short sequences): the
  // task that finishes the last split of a (sequence, kv head) merges that kv head's query
  // heads. Which thread that is varies; the merge reads the splits in split order either way,
  // so the bits do not. The acq_rel countdown orders every split's partial results before the
  // merge that reads them.
  std::unique_ptr<std::atomic<size_t>[]> pending(new std::atomic<size_t>[a.B * a.Hkv]);
  for (size_t b = 0; b < a.B; ++b)
    for (size_t hk = 0; hk < a.Hkv; ++hk) pending[b * a.Hkv + hk].store(splitStart[b + 1] - splitStart[b], std::memory_order_relaxed);
  threadPool().parallelFor(nSplits * a.Hkv, [&](size_t task) {
    runSplit(task);
    const size_t sidx = task / a.Hkv, hk = task % a.Hkv;
    size_t b = 0;
    while (splitStart[b + 1] <= sidx) ++b;
    if (pending[b * a.Hkv + hk].fetch_sub(1, std::memory_order_acq_rel) == 1)
      for (size_t j = 0; j < group; ++j) mergeHead(b * a.Hq + hk * group + j);
  });
  return Status::kOk;
}

}  // namespace kvant
