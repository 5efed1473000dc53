// Attention on the CPU: FlashAttention-2 forward (prefill, explicit MHA form) and the
// absorbed MLA decode over a paged latent cache.
//
// Both are built from the ISA-dispatched inner loops of the gemm tile (Q·Kᵀ blocks) and the
// small ops (vector exp, axpy), so this file holds only the algorithms: the FA2 loop order
// (per query block, stream K/V blocks, running max and sum, rescale, divide once at the end)
// and flash-decoding's split-KV with LSE merging in split order.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "isa.h"
#include "kv_cache.h"
#include "kvant/status.h"

namespace kvant {

// The P·V step of every attention loop, one table per ISA level:
//   acc[i·lda + d] += Σ_j p[i·ldp + j] · v[j·ldv + d]   for i < m, j < n, d < dv,
// j summed in order for every output element (so a result never depends on how callers
// split rows among threads). The AVX2 version keeps a 4-row x 16-column block of acc in
// registers across all n rows of V: each V vector loaded is used by 4 rows (query heads),
// where a per-row axpy would reload and re-store acc for every j.
//
// qk: s[i·lds + j] = Σ_t q[i·ldq + t] · k[j·ldk + t] (i < m, j < n), 2 query rows x 4 keys
// per register tile; an output depends only on its own row and key, never on m or n.
//
// The FlashAttention-2 prefill loop works on transposed blocks instead (query rows are the
// vector lanes, so the per-row online softmax is vertical vector math, no reductions):
// qkT: st[j·ldst + i] = Σ_t qt[t·ldqt + i] · k[j·ldk + t]  (qt = the query block transposed,
//      packed once per task; each output summed over t in order, one FMA per term).
//      AVX2 tiles are 16 rows (two vectors of qt) x 6 keys (broadcasts of k): 12 accumulators,
//      8 loads per 12 FMAs. AVX2 needs m a multiple of 8 (callers pad qt with zero rows).
// softmaxT: one online-softmax step in base 2 for rows i < m over keys j < n of st:
//      x = st·scale2 (scale2 = scale·log2 e), key j visible to row i iff j <= i + c;
//      mNew = max(mx, max_j x), p = 2^(x - mNew) (0 when masked) written back to st,
//      corr[i] = 2^(mx - mNew), l = l·corr + Σ_j p (j in order), mx = mNew. Rows that have
//      seen no key keep mx = -inf, l = 0, p = 0. AVX2 needs m a multiple of 8.
// pvT: acc[i·lda + d] = acc[i·lda + d]·rowScale[i] + Σ_j pt[j·ldpt + i] · v[j·ldv + d]
//      (j in order): the rescale by corr is fused into the load of the accumulator tile.
struct AttnKernels {
  void (*qk)(const float* q, size_t ldq, size_t m, const float* k, size_t ldk, size_t n, size_t d, float* s, size_t lds);
  void (*pv)(const float* p, size_t ldp, size_t m, size_t n, const float* v, size_t ldv, size_t dv, float* acc, size_t lda);
  void (*qkT)(const float* qt, size_t ldqt, size_t m, const float* k, size_t ldk, size_t n, size_t d, float* st, size_t ldst);
  void (*softmaxT)(float* st, size_t ldst, size_t m, size_t n, long c, float scale2, float* mx, float* l, float* corr);
  void (*pvT)(const float* pt, size_t ldpt, size_t m, size_t n, const float* v, size_t ldv, size_t dv, const float* rowScale, float* acc, size_t lda);
};
namespace scalar { extern const AttnKernels kAttnKernels; }
namespace avx2 { extern const AttnKernels kAttnKernels; }
const AttnKernels* attnKernelsFor(Isa isa);  // Isa(-1): chosen level; nullptr if unsupported

struct FlashArgs {
  // Fixed-length: q [B, Sq, Hq, Dqk], k [B, Sk, Hkv, Dqk], v [B, Sk, Hkv, Dv],
  // out [B, Sq, Hq, Dv], lse [B, Hq, Sq]. Varlen (cuQ/cuK non-null, B+1 entries each):
  // q [Tq, Hq, Dqk], k/v [Tk, Hkv, D], out [Tq, Hq, Dv], lse [Hq, Tq]; then Sq = Tq and Sk = Tk.
  const float* q;
  const float* k;
  const float* v;
  float* out;
  float* lse;
  size_t B, Sq, Sk, Hq, Hkv, Dqk, Dv;
  float scale;
  bool causal;  // lower-right aligned: query i sees keys j <= i + (Sk - Sq)
  const int32_t* cuQ;
  const int32_t* cuK;
};

// Block sizes: 128 query rows share each streamed block of 64 keys (their K/V rows stay in
// L2 while all 128 rows use them: each K/V element copied from L3 feeds 128 FMAs per pass;
// with 64 rows the K/V stream was re-read from L3 twice as often and its copy was ~1/4 of
// the time). Query rows of a diagonal block that see none of its keys are skipped, so the
// causal waste stays the upper half of 64 x 64 diagonal tiles, Bc / (2·Sk) = 1.6 % at 2048.
constexpr size_t kFlashBr = 128, kFlashBc = 64;

Status flashAttention(const FlashArgs& a, Isa isa = Isa(-1));

// The textbook baseline FlashAttention is measured against (benchmarks and tests only):
// per head, materialize S = Q·Kᵀ [Sq, Sk] with the GEMM, mask + row softmax, then O = P·V
// with the GEMM. O(Sq·Sk) extra memory, allocated here. Fixed-length batches only.
Status naiveAttention(const FlashArgs& a, Isa isa = Isa(-1));

// Peak scratch bytes any flashAttention task used since the last reset (tests check that it
// depends on the tile sizes and head dims, never on Sk).
size_t flashScratchBytes();
void resetFlashScratchBytes();

// Absorbed MLA decode over a paged cache of rows [c (L) | k_pe (R)] stored as bf16 (the public
// op over a plain bf16 pool; MlaKVCache decodes through pagedDecode directly):
//   score(h, t) = scale * (q[h, :L]·c_t + q[h, L:]·k_pe_t),  out[h] = Σ_t softmax(score)_t c_t.
// q [B, H, L+R] f32, out [B, H, L] f32, lse [B, H]. Row t of sequence b lives in page
// pageTable[b * maxPages + t / pageSize] at slot t % pageSize; a page holds pageSize rows.
struct MlaDecodeArgs {
  const float* q;
  float* out;
  float* lse;
  size_t B, H, L, R;
  float scale;
  const uint16_t* pool;  // page p starts at pool + p * pageSize * (L + R)
  size_t numPages, pageSize, maxPages;
  const int32_t* pageTable;
  const int32_t* seqLens;
};

// Runs as pagedDecode over a one-layer bf16 pool (key [c | k_pe], value = c): the same splits
// of kDecodeSplit keys, chosen from the sequence length alone and merged by LSE in split order,
// so the same bits for any thread count. kShape for a zero page size or head dim, kRange for a
// page table entry or length out of range.
Status mlaDecode(const MlaDecodeArgs& a, Isa isa = Isa(-1));

// Batched decode attention over a paged, possibly quantized cache (both the standard K/V cache
// and the MLA latent cache). q [B, Hq, Dk] f32 with Dk = k0.n + k1.n; out [B, Hq, Dv]; lse [B, Hq].
// The key of kv head h is [k0 | k1] at row offsets k0.offset + h·headStride (k1 likewise);
// the value is segment v at v.offset + h·headStride, or, with vFromKey (MLA: V is the latent
// c, the first Dv values of the key), the first v.n values of the decoded key.
// Sequence b has seqLens[b] rows, row t at page pageTable[b·maxPages + t / pageSize].
// GQA: query head j uses kv head j / (Hq / Hkv). All query heads of a kv head are processed
// per cache row read; splits of kDecodeSplit rows (a function of the length alone) are
// merged by LSE in split order, so results are bit-identical for any thread count and
// independent of the other sequences of the batch.
struct PagedDecodeArgs {
  const float* q;
  float* out;
  float* lse;
  size_t B, Hq, Hkv;
  KvSegment k0, k1, v;
  size_t headStride;
  bool vFromKey;
  float scale;
  KvPages pages;
  const int32_t* pageTable;
  size_t maxPages;
  const int32_t* seqLens;
};

constexpr size_t kDecodeSplit = 512;

// kShape: head counts that do not divide, segments that do not fit the row or pages;
// kRange: a sequence length beyond its page table or a page index outside the pool.
Status pagedDecode(const PagedDecodeArgs& a, Isa isa = Isa(-1));

}  // namespace kvant
