// The quantized KV cache's element codecs and its paged row storage.
//
// A cache row (one token of one layer) is a sequence of *segments*; each segment is n values
// stored in one element type:
//   f16 / bf16 : n x 2 bytes
//   q8 / q6 / q4 : n/32 blocks, each one f16 scale d followed by 32 symmetric codes
//                  q in [-qmax, qmax] (qmax = 127 / 31 / 7), value = d * q.
// With the Hadamard option a group of 32 values is first rotated by the unnormalized 32-point
// Walsh–Hadamard transform H (Sylvester order, H = Hᵀ, H·H = 32·I), which spreads one outlier
// channel over all 32 codes so it no longer sets the scale of its 31 neighbours alone
// (ExLlamaV2's cache trick, SPEC §5.1). Stored codes then describe y = H·x; x = H·y / 32.
//
// Attention never undoes the rotation per row: for a rotated key group, q·x = (H·q)·y / 32, so
// the query is rotated once per call; the output Σ p·x = H·(Σ p·y) / 32 is rotated back once at
// the end. Rotation therefore costs nothing inside the attention loop.
//
// Paging (vLLM style): a page holds `pageSize` tokens of every layer: layer ℓ's rows start at
// page + ℓ·pageSize·rowBytes. A token at position t of a sequence lives in page
// pageTable[t / pageSize], slot t % pageSize.
#pragma once
#include <cstddef>
#include <cstdint>

#include "isa.h"
#include "kvant/status.h"

namespace kvant {

enum class KvType : int { kF16 = 0, kBf16 = 1, kQ8 = 2, kQ6 = 3, kQ4 = 4 };

constexpr size_t kKvGroup = 32;

// Packed blocks of 32 values (ggml-style POD layouts; lib/kv/format.ts mirrors the sizes).
struct KvBlockQ8 { uint16_t d; int8_t qs[32]; };   // codes -127..127
// q6: 8 little-endian 24-bit words; word i holds codes i, 8+i, 16+i, 24+i (each +32, 6 bits)
// at bits 0, 6, 12, 18, so one shift per lane unpacks 8 consecutive codes (see the AVX2 file).
struct KvBlockQ6 { uint16_t d; uint8_t qs[24]; };  // codes -31..31
// q4: byte j holds code j + 8 (low nibble) and code 16 + j + 8 (high nibble), as ggml's q4_0.
struct KvBlockQ4 { uint16_t d; uint8_t qs[16]; };  // codes -7..7
static_assert(sizeof(KvBlockQ8) == 34, "q8 block: 2 + 32 bytes (1.0625 B/value)");
static_assert(sizeof(KvBlockQ6) == 26, "q6 block: 2 + 24 bytes (0.8125 B/value)");
static_assert(sizeof(KvBlockQ4) == 18, "q4 block: 2 + 16 bytes (0.5625 B/value)");

inline bool kvQuantized(KvType t) { return t == KvType::kQ8 || t == KvType::kQ6 || t == KvType::kQ4; }
inline int kvQmax(KvType t) { return t == KvType::kQ8 ? 127 : t == KvType::kQ6 ? 31 : 7; }
// Bytes of n values; 0 when n is not valid for the type (quantized types need n % 32 == 0).
size_t kvSegmentBytes(KvType t, size_t n);

// Vectorizable codec loops, one table per ISA level; the scalar table is the reference and the
// AVX2 table must give identical bytes (encode) and identical floats (decode).
struct KvKernels {
  // Encode n values; quantized types need n % 32 == 0. `hadamard` applies to quantized types.
  // Returns false when a value or a group scale is not finite in f16 (caller: kRange).
  bool (*encode)(KvType t, bool hadamard, const float* x, size_t n, uint8_t* dst);
  // Decode n values to f32 *as stored* (rotated domain when the segment was rotated).
  void (*decode)(KvType t, const uint8_t* src, size_t n, float* y);
  // In-place unnormalized 32-point WHT on each group of 32 (n % 32 == 0).
  void (*hadamard32)(float* x, size_t n);
  // Fused decode-and-use for attention rows that no other head shares (standard-cache decode
  // with one query head per kv head): values are decoded in registers, never stored.
  // dot returns Σ q[i]·x[i]; axpy does acc[i] += p·x[i] (x as stored, like decode).
  float (*dot)(KvType t, const uint8_t* src, const float* q, size_t n);
  void (*axpy)(KvType t, const uint8_t* src, float p, float* acc, size_t n);
  // axpy over nrows rows (row r at rows[r] + off) in row order: the same arithmetic per
  // element as nrows axpy calls (bit-identical), but the AVX2 level keeps a 64-column slice of
  // acc in registers across all rows instead of loading and storing acc once per row.
  void (*axpyRows)(KvType t, const uint8_t* const* rows, size_t off, size_t nrows, const float* p, float* acc, size_t n);
  // Integer score path for q8 / q4 keys (t must be one of them; n % 32 == 0): the query is
  // given quantized per group of 32, q ≈ qd[g]·q8[i], and
  //   dotI8 = Σ_g (qd[g]·d_g) · Σ_{i in g} q8[i]·code[i]
  // with the inner sums exact in integers (|Σ| <= 32·127·127 < 2^19) and one float multiply
  // per group (AVX2: maddubs/madd on 32 codes at a time). kvQuantizeQuery makes q8 / qd.
  float (*dotI8)(KvType t, const uint8_t* src, const int8_t* q8, const float* qd, size_t n);
  // Scores of nrows rows (row r at rows[r] + off) into out[r]: dot(q) when q8 is null, else
  // dotI8(q8, qd) (then t is q8 or q4). Same per-term arithmetic as the one-row forms; only
  // the order of the float sums may differ (AVX2: one transposing reduction per 8 rows
  // instead of a horizontal sum per row; q4's exact integer group sums split over 4 lanes
  // instead of 8, two groups per register), so the
  // dot / dotI8 error bounds hold unchanged.
  // Needs n % 16 == 0 for f16 / bf16 and n <= 32·kDotRowsMaxGroups.
  void (*dotRows)(KvType t, const uint8_t* const* rows, size_t off, size_t nrows, const float* q, const int8_t* q8, const float* qd, size_t n,
                  float* out);
};
constexpr size_t kDotRowsMaxGroups = 16;  // head dims up to 512 on the row-batched score path

// The query side of dotI8: per group of 32, qd = max|q| / 127 and q8 = round(q / qd)
// (0 for an all-zero group), so |q - qd·q8| <= qd / 2 per element.
void kvQuantizeQuery(const float* q, size_t n, int8_t* q8, float* qd);
inline bool kvIntScore(KvType t) { return t == KvType::kQ8 || t == KvType::kQ4; }

namespace scalar { extern const KvKernels kKvKernels; }
namespace avx2 { extern const KvKernels kKvKernels; }
const KvKernels* kvKernelsFor(Isa isa);  // Isa(-1): chosen level; nullptr if unsupported

// One segment of a cache row: `n` values of `type` at byte `offset` of the row, taken from (or
// returned to) float offset `src` of the caller's dense row.
struct KvSegment {
  KvType type;
  size_t n;
  bool hadamard;
  size_t offset;  // bytes into the cache row
  size_t src;     // floats into the dense row
};

// Where the rows of one layer live: token slot t of page P starts at
// pool + P·pageBytes + layerOffset + t·rowBytes. Segment offsets may exceed rowBytes (a
// head-major layout puts head h at h·pageSize·rowBytes); the kernels check that every byte a
// segment can reach stays inside its page.
struct KvPages {
  uint8_t* pool;
  size_t numPages, pageSize, pageBytes, layerOffset, rowBytes;
};

// Encode dense rows x [T, width] into the slots slots[t] (= page·pageSize + position % pageSize)
// of one layer, segment by segment. kRange on a slot outside the pool or a non-finite value
// (nothing is written past the first bad row; earlier rows are written).
Status kvWriteRows(const KvPages& p, const KvSegment* segs, size_t nSegs, const float* x, size_t width, size_t T,
                   const int32_t* slots, Isa isa = Isa(-1));
// Decode the rows at slots[t] into y [T, width] in the original (unrotated) domain.
Status kvReadRows(const KvPages& p, const KvSegment* segs, size_t nSegs, float* y, size_t width, size_t T,
                  const int32_t* slots, Isa isa = Isa(-1));

}  // namespace kvant
