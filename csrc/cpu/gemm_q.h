// Fused dequant GEMV/GEMM: y[M,N] = x[M,K] · dequant(W)[N,K]ᵀ (+ bias) straight from the GPTQ
// checkpoint layout (csrc/include/kvant/quant_format.h), never materializing float weights.
//
// The math every level performs, per output (m, n), is fixed so that all paths (scalar,
// AVX2 GEMV, AVX2 GEMM) produce the same bits:
//   W[n][k] = s(g,n) · (c(k,n) − z(g,n))            g = k / G (kernel row order)
//   y(m,n)  = Σ_g s(g,n) · (A(m,g,n) − z(g,n) · X(m,g))
//   A(m,g,n) = Σ_{k∈g} x(m,k) · c(k,n)   (sequential correctly-rounded FMAs, k ascending, from 0)
//   X(m,g)   = Σ_{k∈g} x(m,k)            (sequential f32 adds, computed once per call)
//   combine: t = fma(−z, X, A); y = fma(s, t, y), groups ascending from y = 0; then y += bias.
// Factoring the scale and zero out of the inner loop leaves one FMA per weight (ExLlama and
// llama.cpp apply the scale per block the same way). The codes enter the FMA as exact small
// integers, so the only rounding is that of the sums (bounds in test/qgemm.test.ts).
//
// "In-place" codes: a code sitting at bit offset e of its word is used as (word & mask << e),
// an exact integer c·2^e, without the shift; the activation it multiplies is stored
// pre-scaled by 2^−e, so the product x·2^−e · c·2^e is exactly x·c (power-of-two scaling is
// exact unless x·2^−e falls below 2^−126, i.e. |x| < 2^−98: then every path still agrees bit
// for bit, as they all read the same pre-scaled x). Codes at the top of a word, or split
// across two words (3 bits), are shifted down instead (e = 0).
//
// Activations are prepared once per call (qgemmPrepare): permuted through w.perm (act-order),
// converted from f16/bf16, pre-scaled, and summed per group. A row's result depends only on
// its own x row, never on M or the thread count: batch-invariant and thread-invariant.
// How N (and, for decode, the groups) are split into tasks never changes a result: each
// output is one fixed operation sequence, and split-K tasks only hand the group terms t to
// a combine step that applies y = fma(s, t, y) in the same group order.
#pragma once
#include <cstddef>
#include <cstdint>

#include "isa.h"
#include "kvant/dtype.h"
#include "kvant/quant_format.h"
#include "kvant/status.h"

namespace kvant {

// Activation precision. kF32: the math above. kInt8 (every width: 2, 3, 4 and 8 bits): x is
// quantized per block of 32 consecutive kernel rows inside a group,
// q = round(x / d) in [−127, 127], d = max|x| / 127 (llama.cpp's Q8 blocks), and
//   I_b = Σ_{k∈b} q_k · c_k,  Q_b = Σ_{k∈b} q_k   (exact integers)
//   J_b = I_b − z · Q_b (exact), A_g = Σ_b fma(J_b, d_b, ·), y = Σ_g fma(s_g, A_g, ·)
// which lets the GEMV use byte dot products (maddubs): about 2-3x fewer instructions per
// weight. Every path computes I_b exactly, so kInt8 is as batch- and thread-invariant as kF32.
enum class QAct : int { kF32 = 0, kInt8 = 1 };
inline QAct qActFor(int bits, QAct requested) {
  return requested == QAct::kInt8 && (bits == 2 || bits == 3 || bits == 4 || bits == 8) ? QAct::kInt8 : QAct::kF32;
}
constexpr size_t kQ8Block = 32;

// 3-bit int8 byte order. A 96-bit unit (words w0, w1, w2 of one column; code i at bits
// [3i, 3i + 3) of the concatenation) is unpacked into 8 "quads", 32-bit lanes of 4 code
// bytes each; the activations of the unit are stored quad by quad in the same order
// (qx[unit·32 + 4j + p] = q of code kQ3Quads[j][p]), so one broadcast 32-bit activation word per
// quad lines up with the codes of every column lane. Word r holds the codes whose position
// in it is ≡ r (mod 3), so at a byte offset o (0..5) byte p of word r = (2p + o) mod 3 holds
// a whole code at bits [8p + o, 8p + o + 3): quad o (0..5) is the byte blend of w0/w1/w2 with
// that pattern (three patterns, o and o + 3 share one), shifted right by o and masked with 7
// per byte. The 8 codes at byte offsets 6 and 7 span two bytes (2, 5, 13, 18, 26, 29) or two
// words (10: w0 bits 30-31 + w1 bit 0; 21: w1 bit 31 + w2 bits 0-1): quad 6 takes its low
// two bits from blend 0 >> 6 and its third bit from blend 1 rotated right by 6, quad 7 bit 0
// from blend 1 >> 7 and bits 1-2 from blend 2 rotated right by 7 (the rotation brings the next
// byte's, or the next word's, low bits under the code). Every kernel (AVX2, AVX-512, GEMV and
// GEMM panel) unpacks in this order; only the order of the activation bytes is shared, so any
// exact unpack would give the same bits.
constexpr uint8_t kQ3Quads[8][4] = {{0, 24, 16, 8},  {11, 3, 27, 19}, {22, 14, 6, 30}, {1, 25, 17, 9},
                                    {12, 4, 28, 20}, {23, 15, 7, 31}, {2, 26, 18, 10}, {13, 5, 29, 21}};

// Prepared activations (views into the caller's scratch).
//   kF32:  xs [M, K] (permuted, pre-scaled), xsum [M, ng] (X above).
//   kInt8: xs [M, K] = float(q) (natural order, for the scalar reference), qx [M, K] int8 in
//          "word order" (per packing unit, the bytes in the order the kernels' unpack yields
//          codes, 4 per 32-bit lane: 2/4/8 bits, for shift j, byte i holds code (8/bits)·i + j;
//          3 bits, kQ3Quads below), d and Q per block [M, nbt].
//   GEMM (M > kQSplitMaxM, both precisions): xp, the same floats as xs packed for the panel
//          micro-kernel, group-major: group g's slice (rows [k0, k1)) starts at xp + k0·Mp, and
//          holds Mp / kQGemmTileRows row tiles of (k1 − k0) × kQGemmTileRows floats, k-major:
//          xp[k0·Mp + t·(k1 − k0)·6 + (k − k0)·6 + i] = xs[(6t + i)·K + k]; rows M..Mp−1 are 0.
//          (nullptr for M <= kQSplitMaxM.)
//   GEMM, kInt8: also xq, qx packed the same way in 4-byte quads (one maddubs operand per
//          row): xq[k0·Mp + t·(k1 − k0)·6 + r·24 + 4i + b] = qx[(6t + i)·K + k0 + 4r + b].
struct QActs {
  const float* xs;
  const float* xsum;
  size_t M, K, ng;
  QAct act;
  const int8_t* qx;
  const float* dx;
  const float* qsum;
  size_t bpg, nbt;  // blocks per group, blocks per row (ng · bpg)
  const float* xp;
  const int8_t* xq;
  size_t Mp;  // M rounded up to kQGemmTileRows
};

// Rows per register tile of the GEMM micro-kernels (6 rows x 16 columns = 12 ymm accumulators).
constexpr size_t kQGemmTileRows = 6;

// Writes y[m*ldy + n] for m < a.M, n0 <= n < n1 (n0, n1 multiples of 8 or n1 = N). Runs on
// the calling thread: the dispatcher (qgemm, moeMlp) splits N into fixed blocks.
using QColumnsFn = void (*)(const QMatrix& w, const QActs& a, size_t n0, size_t n1, float* y, size_t ldy);

// y[i] = fma(a, x[i], y[i]) for i < n: the fixed-order accumulation of moeMlp.
using FmaRowFn = void (*)(float a, const float* x, float* y, size_t n);

// Decode with split-K (M <= 8, several groups): one task reads whole qweight rows of one
// group (long contiguous runs, as a dense GEMV streams its rows) and writes the group's
// combined term t(m,g,n) (kF32: A − z·X; kInt8: A) to T[(m·ng + g)·N + n], n0 <= n < n1;
// then groupCombine forms y = Σ_g fma(s, t, y) over ascending g: the same chain as columns().
using QGroupFn = void (*)(const QMatrix& w, const QActs& a, size_t g, size_t n0, size_t n1, float* T);
using QCombineFn = void (*)(const QMatrix& w, const float* T, size_t M, size_t n0, size_t n1, float* y, size_t ldy);

struct QGemmKernels {
  QColumnsFn columns;
  FmaRowFn fmaRow;
  QGroupFn groupTerms;
  QCombineFn groupCombine;
};

namespace scalar { extern const QGemmKernels kQGemmKernels; }
namespace avx2 { extern const QGemmKernels kQGemmKernels; }
// AVX-512: the int8-activation paths use VPMADDUBSW, or VPDPBUSD in the Vnni table, which
// qgemmKernelsFor(kAvx512) picks only when CPUID reports AVX512-VNNI (avx512VnniUsable()).
namespace avx512 { extern const QGemmKernels kQGemmKernels, kQGemmKernelsVnni; }
const QGemmKernels* qgemmKernelsFor(Isa isa);  // Isa(-1): the chosen level; nullptr if unsupported

// Codes per packing unit and words per unit: 2/4/8 bits pack 32/bits codes in one word;
// 3 bits pack 32 codes in 3 words (the 96-bit cross-word layout).
inline int qUnitCodes(int bits) { return bits == 3 ? 32 : 32 / bits; }
inline int qUnitWords(int bits) { return bits == 3 ? 3 : 1; }

// Bit offset at which code j (0 <= j < qUnitCodes) is used in place (see above), else 0.
constexpr int qInPlaceShift(int bits, int j) {
  const int pos = bits * j, s = pos % 32;
  return s + bits < 32 ? s : 0;
}

// Checks the format (bits, K/N packable, group size a multiple of the packing unit so a
// group never starts inside a word) and the pointers. kFormat / kShape on failure.
Status qgemmValidate(const QMatrix& w);

// Split-K decode: used when M <= kQSplitMaxM and the matrix has >= kQSplitMinGroups groups.
// A task covers one group × up to kQSplitCols columns (8 KB per qweight row at 4 bits is
// two pages read front to back; the per-column accumulators, 2 x 8 KB, stay in L1).
constexpr size_t kQSplitMaxM = 8, kQSplitMinGroups = 4, kQSplitCols = 2048;

// Split-K task order. Group-major (task t: group t / colBlocks, block t % colBlocks) lets a
// thread's consecutive tasks continue along the same qweight rows into the next column block,
// but every block's terms T then wait for the last group: the whole M·ng·N-float T lives
// through the call. Once T exceeds kQBlockMajorTermBytes (lm_head: 6.5 MB at g128) it leaves
// the caches and is written to and read back from DRAM, 2·8/G·(32/bits) extra bytes per weight
// byte (+12.5% at 4 bits, +25% at 2). Then, for int8 activations at 4 bits, tasks run
// block-major (group t % ng of block t / ng): a block's T (<= 16 x 8 KB at g128) is combined
// while it is still in L2. Measured side by side, 2 threads, 4b int8 lm_head: 0.61-0.96x in
// eight runs. 2 bits measured 0.90-0.97x in four runs and 1.04-1.22x in the next four, 8 bits
// 1.07-1.12x, f32 activations 0.99-1.03x: they keep group-major. The order never changes a
// result (each output's chain is fixed; tested with T above and below the limit).
constexpr size_t kQBlockMajorTermBytes = size_t(4) << 20;
inline bool qSplitBlockMajor(int bits, QAct act, size_t M, size_t ng, size_t N) {
  return act == QAct::kInt8 && bits == 4 && M * ng * N * sizeof(float) > kQBlockMajorTermBytes;
}

// Floats of scratch qgemm needs for M rows (act: the requested precision).
size_t qgemmScratchFloats(const QuantFormat& f, size_t M, QAct act = QAct::kF32);

// The views of a prepared scratch (no work). scratch must be 16-byte aligned.
QActs qgemmActsView(const QuantFormat& f, size_t M, QAct act, float* scratch);

// Fills the scratch (qgemmScratchFloats floats) from x [M, ldx] of type xType (f32, f16,
// bf16) and returns the view. Plain C++, shared by every level.
QActs qgemmPrepare(const QMatrix& w, const void* x, DType xType, size_t ldx, size_t M, float* scratch, QAct act = QAct::kF32);

// Output columns per pool task. 32 columns = 4 AVX2 vectors of accumulators per row; a task
// of 64 columns reads K·bits/32 rows of 256 contiguous bytes of qweight. N = 576 (kv_a)
// still gives 9 tasks for 2 threads.
constexpr size_t kQGemmColsPerTask = 64;

// y [M, N] f32 = x · dequant(W)ᵀ (+ bias f32 [N] or nullptr). scratch: qgemmScratchFloats.
Status qgemm(const QMatrix& w, const void* x, DType xType, size_t M, const float* bias, float* y, float* scratch,
             Isa isa = Isa(-1), QAct act = QAct::kF32);

// The same with y [M, N] of type yType (f32, f16 or bf16). f16/bf16: the f32 result (bias
// included) is rounded once to nearest even; scratch must hold qgemmScratchFloats + M·N.
Status qgemmTyped(const QMatrix& w, const void* x, DType xType, size_t M, const float* bias, void* y, DType yType, float* scratch,
                  Isa isa = Isa(-1), QAct act = QAct::kF32);

// ---- Grouped MoE MLP ----------------------------------------------------------------------

// One projection of an MLP: quantized (q != nullptr) or dense [N, K] f32/f16/bf16 (dense).
struct MlpProj {
  const QMatrix* q = nullptr;
  const void* dense = nullptr;
  DType denseType = DType::kF32;
  size_t N = 0, K = 0;
};

// down(silu(gate(x)) ⊙ up(x)): gate, up [I, H]; down [H, I].
struct MlpDesc {
  MlpProj gate, up, down;
};

// Floats of scratch moeMlp needs (the buffer must be 8-byte aligned).
size_t moeScratchFloats(const MlpDesc* mlps, size_t E, const int32_t* mlp, size_t P, size_t H, QAct act = QAct::kF32);

// out[M, H] = Σ_i weight[i] · mlps[mlp[i]](x[row[i]]), accumulated in pair order
// (out = fma(weight, d, out) starting from 0). One call: gate+up of every (mlp, rows) set in
// one parallel phase, a barrier, then the downs, then the fixed-order accumulation.
// Validates indices (kRange) and shapes (kShape) before touching any output.
Status moeMlp(const float* x, size_t M, size_t H, const MlpDesc* mlps, size_t E, const int32_t* mlp, const int32_t* row,
              const float* weight, size_t P, float* out, float* scratch, size_t scratchFloats, Isa isa = Isa(-1),
              QAct act = QAct::kF32);

}  // namespace kvant
