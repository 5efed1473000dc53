// Device sampling (csrc/cuda/sampling.cuh) under the emulation against a host reference written
// from the definition in the header's comment (sequentially, with sorts where the kernel uses
// bitwise searches), token for token; the generator against a sequential splitmix64 (the CPU's
// SeededRandom); and the draw frequencies against the exact probabilities.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "helpers.h"
#include "sampling.cuh"

using namespace simttest;
using kvant::Status;
namespace kc = kvant::cuda;

namespace {

// lib/generate/sampler.ts expNonPositive, written as there (host code has no FMA contraction).
double jsExpNonPositive(double x) {
  const double y = x * 1.4426950408889634;
  double n = std::floor(y);
  if (y - n >= 0.5) n += 1;  // Math.round
  if (n < -1074) return 0;
  const double t = (y - n) * 0.6931471805599453;
  const double p = 1 + t * (1 + t * (0.5 + t * (1.0 / 6 + t * (1.0 / 24 + t * (1.0 / 120 + t * (1.0 / 720 + t * (1.0 / 5040 + t * (1.0 / 40320))))))));
  return p * std::ldexp(1.0, int(n));
}

// SeededRandom: the state advances by γ per call; the n-th call's output.
double jsRandom(uint64_t seed, uint64_t n) {
  uint64_t state = seed ^ 0x9e3779b97f4a7c15ull, z = 0;
  for (uint64_t i = 0; i < n; ++i) {
    state += 0x9e3779b97f4a7c15ull;
    z = state;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
  }
  return double(z >> 11) / 9007199254740992.0;
}

uint64_t hostKey(float v, int i) {
  uint32_t b;
  const float c = v == 0.f ? 0.f : v;
  std::memcpy(&b, &c, 4);
  b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
  return (uint64_t(b) << 32) | (0xffffffffu - uint32_t(i));
}

// The block's fixed tree: thread t sums i ≡ t (mod nt) in order; butterflies over lanes, then
// over the warps' partials (lanes past the warp count contribute 0).
double treeSum(const std::vector<double>& x, int nt) {
  std::vector<double> per(nt, 0);
  for (size_t i = 0; i < x.size(); ++i) per[i % nt] += x[i];
  auto butterfly = [](std::vector<double> v) {
    for (int o = 16; o > 0; o >>= 1) {
      std::vector<double> n(32);
      for (int l = 0; l < 32; ++l) n[l] = v[l] + v[l ^ o];
      v = n;
    }
    return v[0];
  };
  std::vector<double> red(32, 0);
  for (int w = 0; w < nt / 32; ++w) red[w] = butterfly(std::vector<double>(per.begin() + 32 * w, per.begin() + 32 * w + 32));
  return butterfly(red);
}

int hostSample(const std::vector<float>& logits, const kc::SampleRow& sr, const std::vector<int>& hist) {
  const int V = int(logits.size());
  std::vector<float> w = logits;
  if (sr.repetitionPenalty != 1)
    for (int t : hist)
      if (t >= 0 && t < V) w[t] = float(logits[t] > 0 ? double(logits[t]) / sr.repetitionPenalty : double(logits[t]) * sr.repetitionPenalty);
  int best = -1;
  for (int i = 0; i < V; ++i)
    if (!std::isnan(w[i]) && (best < 0 || w[i] > w[best])) best = i;
  if (best < 0 || w[best] == INFINITY) return -1;
  const float m = w[best];
  if (sr.temperature == 0 || m == -INFINITY) return best;
  const double T = sr.temperature, u01 = jsRandom(sr.seed, sr.counter);
  auto weight = [&](int i) { return std::isnan(w[i]) ? 0.0 : jsExpNonPositive((double(w[i]) - double(m)) / T); };
  std::vector<int> order;
  for (int i = 0; i < V; ++i)
    if (!std::isnan(w[i])) order.push_back(i);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return hostKey(w[a], a) > hostKey(w[b], b); });
  if (sr.topK > 0) {  // sampler.ts draw + pick
    const int kk = std::min<int>(sr.topK, int(order.size()));
    double z = 0;
    for (int i = 0; i < kk; ++i) z += weight(order[i]);
    int keep = kk;
    if (sr.topP < 1) {
      double acc = 0;
      for (int i = 0; i < kk; ++i)
        if ((acc += weight(order[i]) / z) >= sr.topP) {
          keep = i + 1;
          break;
        }
    }
    double mass = 0;
    for (int i = 0; i < keep; ++i) mass += weight(order[i]);
    double u = u01 * mass;
    for (int i = 0; i < keep; ++i)
      if ((u -= weight(order[i])) < 0) return order[i];
    return order[keep - 1];
  }
  const int nt = int(kc::sampleThreads(V));
  uint64_t K = 0;
  if (sr.topP < 1) {  // the shortest (key desc) prefix whose tree mass reaches topP · tree total
    std::vector<double> e(V);
    for (int i = 0; i < V; ++i) e[i] = weight(i);
    const double target = sr.topP * treeSum(e, nt);
    auto massFrom = [&](uint64_t k) {
      std::vector<double> x(V, 0);
      for (int i = 0; i < V; ++i) x[i] = !std::isnan(w[i]) && hostKey(w[i], i) >= k ? e[i] : 0;
      return treeSum(x, nt);
    };
    size_t lo = 0, hi = order.size() - 1;  // first j with massFrom(key of order[j]) >= target
    while (lo < hi) {
      const size_t mid = (lo + hi) / 2;
      if (massFrom(hostKey(w[order[mid]], order[mid])) >= target) hi = mid;
      else lo = mid + 1;
    }
    K = hostKey(w[order[lo]], order[lo]);
  }
  auto kept = [&](int i) { return !std::isnan(w[i]) && hostKey(w[i], i) >= K ? weight(i) : 0.0; };
  const int C = (V + nt - 1) / nt;
  std::vector<double> S(nt, 0);
  for (int i = 0; i < V; ++i) S[i / C] += kept(i);
  double total = 0;
  for (double s : S) total += s;
  double u = u01 * total;
  int c = 0;
  while (c < nt - 1 && !(u < S[c])) u -= S[c++];
  int tok = -1;
  for (int i = c * C; i < V; ++i) {
    const double e = kept(i);
    if (e == 0) continue;
    tok = i;
    if ((u -= e) < 0) break;
  }
  return tok < 0 ? best : tok;
}

struct Batch {
  int V;
  std::vector<std::vector<float>> logits;
  std::vector<kc::SampleRow> rows;
  std::vector<std::vector<int>> hist;
};

std::vector<int32_t> runDevice(const Batch& b, const kc::Device& dev, int32_t* badOut = nullptr) {
  const int B = int(b.rows.size());
  std::vector<float> lg, work = poisoned(size_t(B) * b.V);
  for (const auto& r : b.logits) lg.insert(lg.end(), r.begin(), r.end());
  std::vector<int32_t> off(B + 1, 0), ids;
  for (int i = 0; i < B; ++i) {
    ids.insert(ids.end(), b.hist[i].begin(), b.hist[i].end());
    off[i + 1] = int32_t(ids.size());
  }
  ids.push_back(0);  // never empty
  std::vector<int32_t> tokens(B, -7);
  int32_t bad = B;
  kc::SampleDeviceArgs a{lg.data(), work.data(), B, b.V, b.rows.data(), off.data(), ids.data(), tokens.data(), &bad};
  EXPECT_OK(kc::sampleTokens(dev, a));
  if (badOut) *badOut = bad;
  else EXPECT_EQ(bad, B);
  return tokens;
}

std::vector<float> randomLogits(Rng& r, int V) {
  std::vector<float> l = randomF32(r, V, -4, 4);
  for (int i = 7; i < V; i += 29) l[i] = NAN;
  for (int i = 11; i < V; i += 31) l[i] = -INFINITY;
  l[V / 3] = 6.5f, l[V / 2] = 6.5f;  // a tie for the best token: the lower id must win
  l[1] = 0.f, l[2] = -0.f;           // ±0 tie
  return l;
}

}  // namespace

TEST(cuda_sampling_generator_is_the_cpu_sequence) {
  for (uint64_t seed : {0ull, 1ull, 42ull, 9007199254740991ull})
    for (uint64_t n = 1; n <= 40; ++n) EXPECT_TRUE(kc::sampleUniform(seed, n) == jsRandom(seed, n));
}

TEST(cuda_sampling_matches_host_reference) {
  Rng r(51);
  const auto devs = devices();
  int di = 0;
  for (int V : {1000, 77, 300}) {
    Batch b;
    b.V = V;
    // (temperature, topK, topP, penalty): greedy, greedy + penalty, full, top-k, top-k + top-p,
    // top-p alone, top-k of 1, top-k larger than the valid tokens, penalty with sampling.
    const double params[][4] = {{0, 0, 1, 1},      {0, 0, 1, 1.3},  {1, 0, 1, 1},      {0.7, 0, 1, 1},   {1.2, 5, 1, 1},   {0.8, 40, 0.9, 1},
                                {0.9, 0, 0.5, 1},  {1, 0, 0.95, 1}, {0.6, 1, 1, 1},    {2, 1024, 1, 1},  {1, 0, 0.9, 1.5}, {0.5, 12, 0.7, 0.8},
                                {1.7, 0, 0.2, 1},  {0.3, 3, 1, 2}};
    for (const auto& pr : params)
      for (int rep = 0; rep < (V < 100 ? 2 : 1); ++rep) {
        kc::SampleRow s{};
        s.temperature = pr[0], s.topK = int(pr[1]), s.topP = pr[2], s.repetitionPenalty = pr[3];
        s.seed = r.next() >> 12, s.counter = 1 + r.below(1000);
        b.rows.push_back(s);
        b.logits.push_back(randomLogits(r, V));
        std::vector<int> h;
        for (int i = 0; i < 12; ++i) h.push_back(int(r.below(V + 20)) - 10);  // some out of range
        h.push_back(h[0]), h.push_back(V / 3);                                // a duplicate; the best token
        b.hist.push_back(h);
      }
    const std::vector<int32_t> got = runDevice(b, devs[di++ % devs.size()]);
    int changedByPenalty = 0;
    for (size_t i = 0; i < b.rows.size(); ++i) {
      const int want = hostSample(b.logits[i], b.rows[i], b.hist[i]);
      if (got[i] != want) {
        char m[160];
        std::snprintf(m, sizeof m, "V %d row %zu (T %.2f k %d p %.2f r %.2f): device %d, reference %d", V, i, b.rows[i].temperature, b.rows[i].topK,
                      b.rows[i].topP, b.rows[i].repetitionPenalty, got[i], want);
        kvtest::fail(__FILE__, __LINE__, m);
      }
      EXPECT_TRUE(got[i] >= 0 && got[i] < V && !std::isnan(b.logits[i][got[i]]));
      if (b.rows[i].temperature == 0 && b.rows[i].repetitionPenalty != 1) changedByPenalty += got[i] != V / 3;
    }
    EXPECT_TRUE(changedByPenalty > 0);  // the penalty demoted the tied best token at least once
    EXPECT_EQ(got[0], V / 3);           // greedy: the lower id of the tie
  }
}

TEST(cuda_sampling_frequencies) {
  // 160 draws (counters 1..160 of one seed) from fixed logits: each token's frequency within
  // 5 standard deviations (+1/N) of its exact probability, and never a token outside the kept set.
  const std::vector<float> l{1.0f, 0.2f, -0.5f, 2.0f, 1.5f, -3.0f, 0.9f, 0.0f, 1.9f};
  const int V = int(l.size()), N = 160;
  for (int mode = 0; mode < 3; ++mode) {
    Batch b;
    b.V = V;
    kc::SampleRow s{};
    s.temperature = 0.8, s.topP = 1, s.repetitionPenalty = 1, s.seed = 12345;
    if (mode == 1) s.topK = 4, s.topP = 0.85;  // top-k then top-p inside it
    if (mode == 2) s.topP = 0.6;               // whole-vocabulary top-p
    for (int n = 1; n <= N; ++n) {
      s.counter = uint64_t(n);
      b.rows.push_back(s), b.logits.push_back(l), b.hist.push_back({});
    }
    const std::vector<int32_t> got = runDevice(b, device(80));
    // Exact probabilities of the definition (f64), over the kept set.
    std::vector<int> ord(V);
    std::iota(ord.begin(), ord.end(), 0);
    std::sort(ord.begin(), ord.end(), [&](int a, int c) { return l[a] > l[c] || (l[a] == l[c] && a < c); });
    std::vector<double> p(V);
    double z = 0;
    for (int i = 0; i < V; ++i) z += p[i] = std::exp((double(l[i]) - 2.0) / s.temperature);
    std::vector<char> keep(V, 1);
    if (mode) {
      const int k = mode == 1 ? 4 : V;
      double zk = 0, acc = 0;
      for (int i = 0; i < k; ++i) zk += p[ord[i]];
      std::fill(keep.begin(), keep.end(), 0);
      for (int i = 0; i < k; ++i) {
        keep[ord[i]] = 1;
        if ((acc += p[ord[i]] / zk) >= (mode == 1 ? 0.85 : 0.6)) break;
      }
    }
    double zk = 0;
    for (int i = 0; i < V; ++i) zk += keep[i] ? p[i] : 0;
    std::vector<int> count(V, 0);
    for (int t : got) {
      EXPECT_TRUE(t >= 0 && t < V && keep[t]);
      if (t >= 0 && t < V) ++count[t];
    }
    for (int i = 0; i < V; ++i) {
      const double pi = keep[i] ? p[i] / zk : 0, f = double(count[i]) / N;
      if (std::fabs(f - pi) > 5 * std::sqrt(pi * (1 - pi) / N) + 1.0 / N) {
        char m[128];
        std::snprintf(m, sizeof m, "mode %d token %d: frequency %.4f, probability %.4f", mode, i, f, pi);
        kvtest::fail(__FILE__, __LINE__, m);
      }
    }
  }
}

TEST(cuda_sampling_bad_inputs) {
  Rng r(52);
  const int V = 50;
  Batch b;
  b.V = V;
  kc::SampleRow ok{};
  ok.temperature = 1, ok.topP = 1, ok.repetitionPenalty = 1, ok.counter = 1;
  auto add = [&](kc::SampleRow s, std::vector<float> l) { b.rows.push_back(s), b.logits.push_back(l), b.hist.push_back({}); };
  add(ok, randomF32(r, V, -1, 1));  // row 0 fine
  kc::SampleRow s = ok;
  s.topK = kc::kSampleMaxTopK + 1;
  add(s, randomF32(r, V, -1, 1));   // row 1: topK too large
  s = ok, s.topP = 0;
  add(s, randomF32(r, V, -1, 1));   // row 2: topP outside (0, 1]
  s = ok, s.temperature = -1;
  add(s, randomF32(r, V, -1, 1));
  s = ok, s.temperature = NAN;
  add(s, randomF32(r, V, -1, 1));
  s = ok, s.repetitionPenalty = 0;
  add(s, randomF32(r, V, -1, 1));
  add(ok, std::vector<float>(V, NAN));  // every logit NaN
  std::vector<float> inf = randomF32(r, V, -1, 1);
  inf[3] = INFINITY;
  add(ok, inf);                                  // +inf logit
  add(ok, std::vector<float>(V, -INFINITY));     // all -inf: the first token
  int32_t bad = 0;
  const std::vector<int32_t> got = runDevice(b, device(86), &bad);
  EXPECT_EQ(bad, 1);
  EXPECT_TRUE(got[0] >= 0);
  for (int i = 1; i <= 7; ++i) EXPECT_EQ(got[i], -1);
  EXPECT_EQ(got[8], 0);
  // Entry-point checks.
  std::vector<float> lg(V), work(V);
  std::vector<int32_t> tok(1);
  int32_t bad1 = 1;
  kc::SampleDeviceArgs a{lg.data(), work.data(), 1, 0, &ok, nullptr, nullptr, tok.data(), &bad1};
  EXPECT_STATUS(kc::sampleTokens(device(86), a), Status::kShape);  // V = 0
  a.V = V, a.work = nullptr;
  EXPECT_STATUS(kc::sampleTokens(device(86), a), Status::kShape);  // no scratch row
  a.work = work.data();
  std::vector<int32_t> off{0, 1};
  a.histOffsets = off.data();
  EXPECT_STATUS(kc::sampleTokens(device(86), a), Status::kShape);  // offsets without ids
}
