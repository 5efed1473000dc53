// The SIMT emulation's scheduler: fibers with a hand-written x86-64 context switch (ucontext's
// swapcontext makes a signal-mask system call per switch, and a warp shuffle costs 64 switches),
// annotated for AddressSanitizer so the test build can run under -fsanitize=address.
#include "simt.h"

#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define KV_ASAN 1
#else
#define KV_ASAN 0
#endif

#if !defined(__x86_64__)
#error "the SIMT emulation's context switch is written for x86-64"
#endif

// void kvSimtSwitch(void** save, void* load): saves the callee-saved registers, MXCSR and the x87
// control word on the current stack, stores the stack pointer in *save, and resumes the stack at
// `load` (which was saved the same way, or laid out by Fiber::reset).
extern "C" void kvSimtSwitch(void** save, void* load);
asm(R"(
  .text
  .globl kvSimtSwitch
  .type kvSimtSwitch,@function
kvSimtSwitch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size kvSimtSwitch,.-kvSimtSwitch
)");

namespace kvant::simt {
namespace {

// ASan fiber annotations (no-ops without ASan).
inline void startSwitch(void** fakeSave, const void* bottom, size_t size) {
#if KV_ASAN
  __sanitizer_start_switch_fiber(fakeSave, bottom, size);
#else
  (void)fakeSave, (void)bottom, (void)size;
#endif
}
inline void finishSwitch(void* fake, const void** bottomOld, size_t* sizeOld) {
#if KV_ASAN
  __sanitizer_finish_switch_fiber(fake, bottomOld, sizeOld);
#else
  (void)fake, (void)bottomOld, (void)sizeOld;
#endif
}

enum class State { kReady, kBarrier, kWarp, kDone };

// 256 KiB per thread: kernels keep register tiles (up to a few KB) on the stack, ASan adds
// redzones. mmap'd, so untouched pages cost nothing.
constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
  void* sp = nullptr;
  char* stack = nullptr;
  void* fake = nullptr;  // ASan fake stack
  ThreadCtx tc{};
  State state = State::kDone;
  int lane = 0, warp = 0;
  // Posted warp collective.
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int param = 0, width = 32;
  void* extra = nullptr;
};

struct Runner {
  std::vector<std::unique_ptr<Fiber>> fibers;  // reused across launches on this OS thread
  Fiber* cur = nullptr;
  void* schedSp = nullptr;
  void* schedFake = nullptr;
  const void* schedBottom = nullptr;
  size_t schedSize = 0;
  const std::function<void()>* body = nullptr;
  unsigned char* smem = nullptr;
  bool inLaunch = false;
  bool aborting = false;  // a deadlock was found: fibers must not be resumed
  std::string error;
  uint64_t rng = 1;
};

thread_local Runner gR;

bool gScheduleSet = false;
Schedule gSchedule{Order::kSeeded, 1};

uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void shuffle(std::vector<int>& v, uint64_t& rng) {
  for (size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[splitmix(rng) % i]);
}

// Back to the scheduler from the running fiber; returns when the scheduler resumes it.
void yieldToScheduler() {
  Fiber* f = gR.cur;
  startSwitch(&f->fake, gR.schedBottom, gR.schedSize);
  kvSimtSwitch(&f->sp, gR.schedSp);
  finishSwitch(f->fake, &gR.schedBottom, &gR.schedSize);
}

[[noreturn]] void fiberMain() {
  Fiber* f = gR.cur;
  finishSwitch(nullptr, &gR.schedBottom, &gR.schedSize);
  (*gR.body)();
  f->state = State::kDone;
  startSwitch(nullptr, gR.schedBottom, gR.schedSize);  // this fiber's fake stack dies with it
  kvSimtSwitch(&f->sp, gR.schedSp);
  std::abort();  // never resumed
}

void resetFiber(Fiber& f) {
  if (!f.stack) {
    void* p = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::fprintf(stderr, "simt: cannot map a fiber stack\n");
      std::abort();
    }
    f.stack = static_cast<char*>(p);
  }
#if KV_ASAN
  // A fiber that ended never unwound its frames: clear their redzones before reuse.
  __asan_unpoison_memory_region(f.stack, kStackBytes);
#endif
  // Initial frame for kvSimtSwitch's epilogue: MXCSR/FPU word, six registers, then the
  // "return address" fiberMain, entered with rsp = top - 8 as after a call (16-byte ABI).
  char* top = f.stack + kStackBytes - 64;
  top = reinterpret_cast<char*>(reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15));
  uint64_t* sp = reinterpret_cast<uint64_t*>(top - 8 - 64);
  uint32_t mxcsr;
  uint16_t fpucw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpucw));
  std::memset(sp, 0, 72);
  std::memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fpucw, 2);
  sp[7] = reinterpret_cast<uint64_t>(&fiberMain);
  sp[8] = 0;  // fake return address of fiberMain (it never returns)
  f.sp = sp;
  f.fake = nullptr;
}

void resume(Fiber& f) {
  gR.cur = &f;
  startSwitch(&gR.schedFake, f.stack, kStackBytes);
  kvSimtSwitch(&gR.schedSp, f.sp);
  finishSwitch(gR.schedFake, nullptr, nullptr);
  gR.cur = nullptr;
}

bool fail(const std::string& why) {
  if (gR.error.empty()) gR.error = why;
  return false;
}

// Resolve one complete warp collective among the waiting lanes of warp w, if there is one.
bool resolveWarp(Fiber** lanes, int nLanes) {
  bool progress = false;
  for (int i = 0; i < nLanes; ++i) {
    Fiber* f = lanes[i];
    if (!f || f->state != State::kWarp) continue;
    const unsigned mask = f->mask;
    // Every lane named in the mask must be waiting at a collective with the same mask.
    bool complete = true;
    for (int l = 0; l < 32; ++l)
      if (mask & (1u << l)) {
        if (l >= nLanes || !lanes[l] || lanes[l]->state != State::kWarp || lanes[l]->mask != mask) {
          complete = false;
          break;
        }
      }
    if (!complete) continue;
    const WarpOp op = f->op;
    for (int l = 0; l < 32; ++l)
      if ((mask & (1u << l)) && lanes[l]->op != op) {
        fail("mismatched warp collectives in warp " + std::to_string(f->warp) + " (mask " + std::to_string(mask) + ")");
        return false;
      }
    if (op == WarpOp::kMma) {
      // Gather the three 16x16 tiles from the lanes' fragments, multiply, scatter D.
      float A[256], B[256], C[256];
      const uint8_t *ma = fragmentMap(0), *mb = fragmentMap(1), *mc = fragmentMap(2);
      for (int l = 0; l < 32; ++l) {
        auto* p = static_cast<nvcuda::wmma::detail::MmaPost*>(lanes[l]->extra);
        for (int e = 0; e < 8; ++e) {
          A[ma[l * 8 + e]] = p->a[e];
          B[mb[l * 8 + e]] = p->b[e];
          C[mc[l * 8 + e]] = p->c[e];
        }
      }
      float D[256];
      for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c) {
          float s = C[r * 16 + c];
          for (int k = 0; k < 16; ++k) s = std::fma(A[r * 16 + k], B[k * 16 + c], s);
          D[r * 16 + c] = s;
        }
      for (int l = 0; l < 32; ++l) {
        auto* p = static_cast<nvcuda::wmma::detail::MmaPost*>(lanes[l]->extra);
        for (int e = 0; e < 8; ++e) p->d[e] = D[mc[l * 8 + e]];
      }
    } else {
      unsigned ballot = 0;
      for (int l = 0; l < 32; ++l)
        if ((mask & (1u << l)) && lanes[l]->value) ballot |= 1u << l;
      for (int l = 0; l < 32; ++l) {
        if (!(mask & (1u << l))) continue;
        Fiber* g = lanes[l];
        const int width = g->width;
        if (width <= 0 || width > 32 || (width & (width - 1))) {
          fail("shuffle width " + std::to_string(width) + " is not a power of two <= 32");
          return false;
        }
        const int base = l & ~(width - 1);
        int src = l;
        switch (op) {
          case WarpOp::kShfl: src = base + (g->param & (width - 1)); break;
          case WarpOp::kShflXor: src = l ^ g->param; if (src >= base + width || src < base) src = l; break;
          case WarpOp::kShflUp: src = (l - base) >= g->param ? l - g->param : l; break;
          case WarpOp::kShflDown: src = (l - base) + g->param < width ? l + g->param : l; break;
          default: break;
        }
        switch (op) {
          case WarpOp::kShfl: case WarpOp::kShflXor: case WarpOp::kShflUp: case WarpOp::kShflDown:
            if (src < 0 || src >= 32 || !(mask & (1u << src))) {
              fail("lane " + std::to_string(l) + " of warp " + std::to_string(g->warp) + " reads lane " + std::to_string(src) +
                   " outside the shuffle mask");
              return false;
            }
            g->result = lanes[src]->value;
            break;
          case WarpOp::kBallot: g->result = ballot; break;
          case WarpOp::kAny: g->result = ballot != 0; break;
          case WarpOp::kAll: g->result = ballot == mask; break;
          default: g->result = 0; break;
        }
      }
    }
    for (int l = 0; l < 32; ++l)
      if (mask & (1u << l)) lanes[l]->state = State::kReady;
    progress = true;
  }
  return progress;
}

bool runBlock(dim3 grid, dim3 block, uint3 bIdx, size_t smemBytes) {
  const int nThreads = int(block.x * block.y * block.z);
  while (int(gR.fibers.size()) < nThreads) gR.fibers.push_back(std::make_unique<Fiber>());
  struct Free {
    void operator()(unsigned char* p) const { ::operator delete[](p, std::align_val_t(128)); }
  };
  std::unique_ptr<unsigned char[], Free> smem(static_cast<unsigned char*>(::operator new[](smemBytes ? smemBytes : 1, std::align_val_t(128))));
  std::memset(smem.get(), 0xff, smemBytes ? smemBytes : 1);
  gR.smem = smem.get();
  for (int t = 0; t < nThreads; ++t) {
    Fiber& f = *gR.fibers[t];
    resetFiber(f);
    f.tc.tIdx = uint3{unsigned(t) % block.x, (unsigned(t) / block.x) % block.y, unsigned(t) / (block.x * block.y)};
    f.tc.bIdx = bIdx;
    f.tc.bDim = block;
    f.tc.gDim = grid;
    f.lane = t % 32;
    f.warp = t / 32;
    f.state = State::kReady;
  }
  std::vector<int> order(nThreads), warpOrder;
  std::vector<Fiber*> lanes(32);
  for (;;) {
    for (int t = 0; t < nThreads; ++t) order[t] = gSchedule.order == Order::kReverse ? nThreads - 1 - t : t;
    if (gSchedule.order == Order::kSeeded) shuffle(order, gR.rng);
    for (int t : order)
      if (gR.fibers[t]->state == State::kReady) resume(*gR.fibers[t]);
    // Nobody is ready now: complete warp collectives, else release the barrier, else deadlock.
    // Completing every warp's collective at once would keep the warps in lockstep (each round
    // advances each warp by one collective), which hides missing __syncthreads between warps
    // that run the same sequence of collectives. So some rounds release a single warp, which
    // then runs ahead alone until it reaches a barrier or a collective: always under the
    // reverse order (the highest warp first), half of the rounds under a seed.
    bool progress = false;
    const int nWarps = (nThreads + 31) / 32;
    warpOrder.resize(nWarps);
    for (int w = 0; w < nWarps; ++w) warpOrder[w] = gSchedule.order == Order::kReverse ? nWarps - 1 - w : w;
    if (gSchedule.order == Order::kSeeded) shuffle(warpOrder, gR.rng);
    const bool single = gSchedule.order == Order::kReverse || (splitmix(gR.rng) & 1);
    for (int w : warpOrder) {
      const int n = nThreads - w * 32 < 32 ? nThreads - w * 32 : 32;
      for (int l = 0; l < 32; ++l) lanes[l] = l < n ? gR.fibers[w * 32 + l].get() : nullptr;
      if (resolveWarp(lanes.data(), n)) progress = true;
      if (!gR.error.empty()) return false;
      if (progress && single) break;
    }
    if (progress) continue;
    int done = 0, atBarrier = 0;
    for (int t = 0; t < nThreads; ++t) {
      done += gR.fibers[t]->state == State::kDone;
      atBarrier += gR.fibers[t]->state == State::kBarrier;
    }
    if (done == nThreads) return true;
    if (atBarrier + done == nThreads) {
      for (int t = 0; t < nThreads; ++t)
        if (gR.fibers[t]->state == State::kBarrier) gR.fibers[t]->state = State::kReady;
      continue;
    }
    std::string who;
    for (int t = 0; t < nThreads && who.size() < 200; ++t)
      if (gR.fibers[t]->state == State::kWarp) who += " " + std::to_string(t);
    return fail("deadlock in block (" + std::to_string(bIdx.x) + "," + std::to_string(bIdx.y) + "," + std::to_string(bIdx.z) +
                "): " + std::to_string(atBarrier) + " threads at __syncthreads, " + std::to_string(done) +
                " returned, threads stuck in a warp collective:" + who);
  }
}

}  // namespace

ThreadCtx& ctx() {
  if (!gR.cur) {
    std::fprintf(stderr, "simt: threadIdx/blockIdx used outside a kernel launch\n");
    std::abort();
  }
  return gR.cur->tc;
}

int laneId() {
  ctx();
  return gR.cur->lane;
}

Schedule schedule() {
  if (!gScheduleSet) {
    gScheduleSet = true;
    const char* e = std::getenv("KVANT_SIMT_SEED");
    if (e && std::strcmp(e, "reverse") == 0) gSchedule = {Order::kReverse, 0};
    else if (e && *e) gSchedule = {Order::kSeeded, std::strtoull(e, nullptr, 10)};
  }
  return gSchedule;
}
void setSchedule(Schedule s) {
  gScheduleSet = true;
  gSchedule = s;
}
std::string scheduleName() {
  const Schedule s = schedule();
  return s.order == Order::kReverse ? "KVANT_SIMT_SEED=reverse" : "KVANT_SIMT_SEED=" + std::to_string(s.seed);
}

const std::string& lastError() { return gR.error; }

void* dynamicSmem() {
  ctx();
  return gR.smem;
}

void reportMisuse(const std::string& what) {
  if (gR.error.empty()) gR.error = what;
}

void blockBarrier() {
  Fiber* f = gR.cur;
  if (!f) std::abort();
  f->state = State::kBarrier;
  yieldToScheduler();
}

uint64_t warpCollective(WarpOp op, unsigned mask, uint64_t value, int param, int width, void* extra) {
  Fiber* f = gR.cur;
  if (!f) std::abort();
  f->op = op;
  f->mask = mask;
  f->value = value;
  f->param = param;
  f->width = width;
  f->extra = extra;
  f->state = State::kWarp;
  yieldToScheduler();
  return f->result;
}

const uint8_t* fragmentMap(int kind) {
  // Drawn once per process from the seed; reverse order uses the reversed identity.
  static uint8_t maps[3][256];
  static bool made = false;
  if (!made) {
    made = true;
    const Schedule s = schedule();
    uint64_t rng = s.seed * 0x2545F4914F6CDD1Dull + 77;
    for (int k = 0; k < 3; ++k) {
      std::vector<int> p(256);
      for (int i = 0; i < 256; ++i) p[i] = s.order == Order::kReverse ? 255 - i : i;
      if (s.order == Order::kSeeded) shuffle(p, rng);
      for (int i = 0; i < 256; ++i) maps[k][i] = uint8_t(p[i]);
    }
  }
  return maps[kind];
}

bool run(dim3 grid, dim3 block, size_t dynamicSmemBytes, const std::function<void()>& body) {
  gR.error.clear();
  if (gR.inLaunch) return fail("nested launch (dynamic parallelism is not emulated)");
  const Schedule s = schedule();
  gR.rng = s.seed ^ 0x5bd1e995u;
  const uint64_t nThreads = uint64_t(block.x) * block.y * block.z;
  if (nThreads == 0 || nThreads > 1024) return fail("block of " + std::to_string(nThreads) + " threads");
  const uint64_t nBlocks = uint64_t(grid.x) * grid.y * grid.z;
  gR.inLaunch = true;
  gR.body = &body;
  std::vector<uint64_t> blocks(nBlocks);
  for (uint64_t i = 0; i < nBlocks; ++i) blocks[i] = s.order == Order::kReverse ? nBlocks - 1 - i : i;
  if (s.order == Order::kSeeded)
    for (uint64_t i = nBlocks; i > 1; --i) std::swap(blocks[i - 1], blocks[splitmix(gR.rng) % i]);
  bool ok = true;
  for (uint64_t b : blocks) {
    const uint3 bIdx{unsigned(b % grid.x), unsigned((b / grid.x) % grid.y), unsigned(b / (uint64_t(grid.x) * grid.y))};
    if (!runBlock(grid, block, bIdx, dynamicSmemBytes) || !gR.error.empty()) {
      ok = false;
      break;
    }
  }
  // A deadlocked block leaves fibers suspended mid-kernel; their stacks are simply reset on the
  // next launch (nothing on them owns resources: kernels do not allocate).
  gR.smem = nullptr;
  gR.body = nullptr;
  gR.inLaunch = false;
  return ok && gR.error.empty();
}

}  // namespace kvant::simt
