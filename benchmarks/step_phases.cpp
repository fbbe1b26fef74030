// Where one training step's time goes: each phase of the lecture's (or the large
// configuration's) step timed on its own, one thread, with the kernels' own code (this
// file includes csrc/kernels.cpp, so it runs exactly what the extension runs). Built and
// run by benchmarks/bench_phases.py, which passes the ISA's flags; prints a markdown table.
//
// Each phase runs back to back thousands of times, so its operands stay in cache: the
// sum is below a step in the fused loop (whose working set is larger than L1, and which
// also draws the batch). The products' ideal is their multiply-adds at the FMA peak
// measured here (padded columns count as waste, not as work). Where the batch takes the
// first layer through the embedding table (kernels.h's first_layer_tables: the large
// configuration), its three products are C's (table-inl.h), and their ideal counts the
// multiply-adds executed; the in-loop line gives the model's nominal work's share too.
//
// A second table times the same phases where they run, in the fused loop (train_steps on
// random examples): this file defines the phase marks (step-inl.h's FASTMLP_PHASE) as
// reads of the time-stamp counter, which cost ~15 ns each (14 a step; included there),
// summed in globals: valid with one thread, as it runs.
#include <stdint.h>
#include <stdio.h>

#include <chrono>
#if defined(__x86_64__) || defined(__i386__)
#include <x86intrin.h>
static inline uint64_t phase_clock() { return __rdtsc(); }
#else
static inline uint64_t phase_clock() {
  return (uint64_t)std::chrono::steady_clock::now().time_since_epoch().count();
}
#endif
namespace phase_marks {
uint64_t ticks[32], last;
}
#define FASTMLP_PHASE(p)                                   \
  do {                                                     \
    const uint64_t t_ = phase_clock();                     \
    phase_marks::ticks[p] += t_ - phase_marks::last;       \
    phase_marks::last = t_;                                \
  } while (0)

#include "kernels.cpp"

using namespace fastmlp;
using namespace fastmlp::FASTMLP_ISA;

namespace {
uint64_t seed = 1;
float frand() {
  seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
  return (float)(seed >> 40) / 16777216.0f - 0.5f;
}
float* make(size_t n, float scale) {
  float* p = (float*)aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
  for (size_t i = 0; i < n; ++i) p[i] = frand() * scale;
  return p;
}
void zero_pads(float* m, int rows, int cols, int ld) {
  for (int r = 0; r < rows; ++r)
    for (int c = cols; c < ld; ++c) m[r * ld + c] = 0.f;
}
template <class F>
double best_us(F f, int n) {  // the best of 7 blocks of n calls
  for (int i = 0; i < n / 10 + 1; ++i) f();
  double best = 1e30;
  for (int rep = 0; rep < 7; ++rep) {
    const double t0 = now_seconds();
    for (int i = 0; i < n; ++i) f();
    const double t = (now_seconds() - t0) / n * 1e6;
    best = t < best ? t : best;
  }
  return best;
}
// The one-core FMA peak, FLOP/s. The asm keeps the sum alive: this file is one translation
// unit with the kernels, and a compiler that inlines fma_loop may otherwise drop the loop
// whose result nobody reads.
double fma_peak() {
  float sink;
  return 12.0 * VW * 2 * 200000 / (best_us([&] {
           fma_loop(200000, &sink);
           asm volatile("" : : "m"(sink) : "memory");
         }, 20) * 1e-6);
}
// n random token ids in [0, V)
int32_t* tokens(int64_t n, int V) {
  int32_t* t = (int32_t*)malloc(sizeof(int32_t) * n);
  for (int64_t i = 0; i < n; ++i) t[i] = (int32_t)((frand() + 0.5f) * V) % V;
  return t;
}
}  // namespace

struct Row {
  const char* name;
  double us, macs;
};

// The fused loop: train_steps on random examples, one thread; each phase's share of the
// marks' ticks in the best of 7 blocks, times that block's µs a step, beside the row of
// the same name in the table above (rows[0, nrows)).
void in_the_loop(const Dims& d, bool large, const Row* rows, int nrows, double peak, double flops,
                 double nominal) {  // FLOP/s, FLOP executed and the model's
  const int64_t N = 182625;  // the lecture's training split
  const int steps = large ? 100 : 5000, B = large ? 256 : 32;
  int32_t *X = tokens(N * d.T, d.V), *Y = tokens(N, d.V);
  float *C = make((size_t)d.V * d.E, 1.f), *W1 = make((size_t)d.T * d.E * d.H, 0.2f), *b1 = make(d.H, 0.1f);
  float *W2 = make((size_t)d.H * d.V, 0.2f), *b2 = make(d.V, 0.1f);
  MutParams P{};
  P.C = C, P.W[0] = W1, P.b[0] = b1, P.W[1] = W2, P.b[1] = b2;
  float* lrs = make(steps, 0.f);
  for (int i = 0; i < steps; ++i) lrs[i] = 1e-3f;
  float* losses = make(steps, 0.f);
  uint64_t rng[4];
  rng_seed(rng, 1);
  TrainArgs a{};
  a.X = X, a.Y = Y, a.n_examples = N, a.batch_size = B, a.steps = steps, a.lrs = lrs, a.rng_state = rng;
  a.losses = losses;
  Exec ex{1, 0, 0, nullptr};
  train_steps(P, d, a, ex);  // warm-up
  double best = 1e30;
  uint64_t best_ticks[kPhases] = {};
  for (int rep = 0; rep < 7; ++rep) {
    memset(phase_marks::ticks, 0, sizeof phase_marks::ticks);
    const double t0 = now_seconds();
    phase_marks::last = phase_clock();
    train_steps(P, d, a, ex);
    const double t = (now_seconds() - t0) / steps * 1e6;
    if (t < best) best = t, memcpy(best_ticks, phase_marks::ticks, sizeof best_ticks);
  }
  double all = 0;
  for (int p = 0; p < kPhases; ++p) all += (double)best_ticks[p];
  // the peak again, after the loop: a neighbour may have depressed the first sample
  const double peak_after = fma_peak();
  peak = peak_after > peak ? peak_after : peak;
  static const char* const rows_ph[kPhases] = {  // in StepPhase's order
      "embedding gather", "h = tanh(emb W1 + b1)", "logits = h W2 + b2", "softmax cross-entropy rows",
      "W1^T (transpose)", "dpre = dlogits W2^T (1 - h^2)", "demb = dpre W1^T",
      "W2^T -= lr dlogits^T h, W2 = (W2^T)^T (+ b2)", "W1 -= lr emb^T dpre (+ b1)", "embedding scatter + update",
      "the batch: draw the next, copy its rows", "the rest: loss sum, barriers, set-up and copies out"};
  static const char* const tables_ph[kPhases] = {  // through the tables (table-inl.h)
      "(embedding gather: none)", "P_t = C W1_t, h = tanh(P rows summed + b1)", "logits = h W2 + b2",
      "softmax cross-entropy rows", "W1_t^T (transposes)", "dpre = dlogits W2^T (1 - h^2)", "(demb: none)",
      "W2^T -= lr dlogits^T h, W2 = (W2^T)^T (+ b2)", "S = dpre by symbol, W1_t -= lr C^T S_t (+ b1)",
      "dC = S W1_t^T, C -= lr dC", "the batch: draw the next, copy its rows",
      "the rest: loss sum, barriers, set-up and copies out"};
  const char* const* ph = first_layer_tables(d, B) ? tables_ph : rows_ph;
  char nominal_pct[96] = "";
  if (nominal != flops)
    snprintf(nominal_pct, sizeof nominal_pct, " of the work executed (%.0f%% for the model's nominal work)",
             nominal / peak * 1e6 / best * 100);
  printf("\nIn the fused loop (train_steps on %lld random examples, one thread): the best of 7 blocks of %d steps, "
         "%.2f µs a step = %.0f%% of the peak%s (%.1f GFLOP/s: the higher of the samples before and after it)\n\n| phase | in the loop µs | alone µs | loop - alone |\n"
         "|---|---:|---:|---:|\n", (long long)N, steps, best, flops / peak * 1e6 / best * 100, nominal_pct, peak / 1e9);
  double sum_alone = 0;
  for (int p = 0; p < kPhases; ++p) {
    const double us = best_ticks[p] / all * best;
    const Row* alone = nullptr;
    for (int i = 0; i < nrows; ++i)
      if (strcmp(rows[i].name, ph[p]) == 0) alone = &rows[i];
    if (alone) {
      sum_alone += alone->us;
      printf("| %s | %.2f | %.2f | %+.2f |\n", ph[p], us, alone->us, us - alone->us);
    } else {
      printf("| %s | %.2f | | |\n", ph[p], us);
    }
  }
  printf("| **the step** | **%.2f** | **%.2f** | **%+.2f** |\n", best, sum_alone, best - sum_alone);
}

int main(int argc, char** argv) {
  const bool large = argc > 1 && strcmp(argv[1], "large") == 0;
  const int T = large ? 8 : 3, E = large ? 24 : 10, H = large ? 512 : 200, V = 27, B = large ? 256 : 32;
  Dims d{};
  d.V = V, d.T = T, d.E = E, d.H = H, d.L = 1, d.bn = 0, d.bn_eps = 1e-5f, d.bn_momentum = 0.1f;
  const Layout L = layout_of(d);
  float* C = make((size_t)V * E, 1.f);
  float *W1 = make((size_t)L.TE * L.Hp, 0.2f), *b1 = make(L.Hp, 0.1f);
  float *W2 = make((size_t)H * L.Vp, 0.2f), *b2 = make(L.Vp, 0.1f);
  zero_pads(W1, L.TE, H, L.Hp), zero_pads(b1, 1, H, L.Hp), zero_pads(W2, H, V, L.Vp), zero_pads(b2, 1, V, L.Vp);
  float *emb = make((size_t)B * L.TE, 1), *h = make((size_t)B * L.Hp, 1), *logits = make((size_t)B * L.Vp, 1);
  float *dl = make((size_t)B * L.Vp, 1), *dpre = make((size_t)B * L.Hp, 1), *demb = make((size_t)B * L.TEp, 1);
  float *wt1 = make((size_t)H * L.TEp, 0), *wt2 = make((size_t)V * L.Hp, 0), *loss = make(B, 0);
  float *colsum = make(L.Vp + L.Hp, 0), *dC = make((size_t)V * E, 0);
  int32_t *X = tokens((int64_t)B * T, V), *Y = tokens(B, V);
  Exec ex{1, 0, 0, nullptr};
  const int n = large ? 200 : 20000;
  const float lr = 1e-9f;  // the updates run, and leave the weights (nearly) as they are

  const double peak = fma_peak();
  Row rows[16];
  int nrows = 0;
  auto add = [&](const char* name, double us, double macs) { rows[nrows++] = {name, us, macs}; };
  const double mac1 = (double)B * L.TE * H, mac2 = (double)B * H * V;
  // where the batch takes the first layer through the tables (table-inl.h), its three
  // products are C's: V T E H multiply-adds each
  const bool tables = first_layer_tables(d, B);
  const double mact = (double)V * L.TE * H;
  const int Ep = round_up(E, VW);
  float *P = make((size_t)T * V * L.Hp, 0), *S = make((size_t)(V * table_ld(T, L.Hp)), 0);
  float* wts = make((size_t)T * L.Hp * Ep, 0);
  if (!tables) {
    add("embedding gather", best_us([&] { embedding_forward_rows(C, V, E, X, T, 0, B, emb, ex); }, n), 0);
    add("h = tanh(emb W1 + b1)",
        best_us([&] { linear_forward_rows<true>(emb, L.TE, L.TE, W1, L.Hp, b1, h, 0, B); }, n), mac1);
    add("  (the same without tanh)",
        best_us([&] { linear_forward_rows<false>(emb, L.TE, L.TE, W1, L.Hp, b1, h, 0, B); }, n), -mac1);
  } else {
    add("P_t = C W1_t, h = tanh(P rows summed + b1)", best_us([&] {
          table_product_share(C, V, E, T, W1, L.Hp, P);
          table_sum_rows<true>(P, V, T, L.Hp, X, b1, h, 0, B, ex);
        }, n), mact);
    add("  (the same without tanh)", best_us([&] {
          table_product_share(C, V, E, T, W1, L.Hp, P);
          table_sum_rows<false>(P, V, T, L.Hp, X, b1, h, 0, B, ex);
        }, n), -mact);
  }
  add("logits = h W2 + b2", best_us([&] { linear_forward_rows<false>(h, L.Hp, H, W2, L.Vp, b2, logits, 0, B); }, n),
      mac2);
  add("softmax cross-entropy rows", best_us([&] { xent_rows(logits, L.Vp, Y, V, 0, B, dl, 1.f / B, loss, ex); }, n), 0);
  // (W2^T is made once: the fused loop's update keeps it current, see the W2 row)
  transpose_share(W2, L.Vp, H, V, wt2, L.Hp);
  if (!tables)
    add("W1^T (transpose)", best_us([&] { transpose_share(W1, L.Hp, L.TE, H, wt1, L.TEp); }, n), 0);
  else
    add("W1_t^T (transposes)", best_us([&] {
          for (int t = 0; t < T; ++t) transpose_share(W1 + (int64_t)t * E * L.Hp, L.Hp, E, H, wts + (int64_t)t * L.Hp * Ep, Ep);
        }, n), 0);
  add("dpre = dlogits W2^T (1 - h^2)",
      best_us([&] { linear_backward_input_rows<kTanhGrad>(dl, L.Vp, V, wt2, L.Hp, dpre, h, 0, B); }, n), mac2);
  if (!tables)
    add("demb = dpre W1^T",
        best_us([&] { linear_backward_input_rows<kStore>(dpre, L.Hp, H, wt1, L.TEp, demb, nullptr, 0, B); }, n), mac1);
  add("W2^T -= lr dlogits^T h, W2 = (W2^T)^T (+ b2)", best_us([&] {
        column_sums_share(dl, B, L.Vp, L.Vp, colsum, b2, lr);
        linear_update_transposed_share(h, L.Hp, H, dl, L.Vp, V, B, wt2, L.Hp, W2, L.Vp, lr);
      }, n), mac2);
  if (!tables) {
    add("W1 -= lr emb^T dpre (+ b1)", best_us([&] {
          linear_backward_weight_share(emb, L.TE, L.TE, dpre, L.Hp, B, nullptr, colsum + L.Vp, W1, b1, lr);
        }, n), mac1);
    add("embedding scatter + update",
        best_us([&] { embedding_backward_share(demb, L.TEp, X, B, T, E, V, dC, ex, C, lr); }, n), 0);
  } else {
    add("S = dpre by symbol, W1_t -= lr C^T S_t (+ b1)", best_us([&] {
          table_scatter_share(dpre, L.Hp, X, B, T, V, S, ex);
          table_weight_share(C, V, E, T, S, L.Hp, nullptr, W1, lr);
          column_sums_share(dpre, B, L.Hp, L.Hp, colsum + L.Vp, b1, lr);
        }, n), mact);
    add("dC = S W1_t^T, C -= lr dC", best_us([&] {
          gemm_share<kStore>(plan(V, E, T * L.Hp, S, table_ld(T, L.Hp), 1, wts, Ep, dC, E));
          axpy(C, dC, (int64_t)V * E, -lr);
        }, n), mact);
  }

  double total = 0, macs = 0;
  for (int i = 0; i < nrows; ++i)
    if (rows[i].macs >= 0) total += rows[i].us, macs += rows[i].macs;
  printf("%s config (block %d, E %d, H %d, batch %d), one thread, %s kernels; FMA peak measured here %.1f GFLOP/s\n\n",
         large ? "large" : "lecture", T, E, H, B, FASTMLP_STR(FASTMLP_ISA), peak / 1e9);
  printf("| phase | µs | share | ideal µs (FMA peak) | %% of peak |\n|---|---:|---:|---:|---:|\n");
  for (int i = 0; i < nrows; ++i) {
    const double m = rows[i].macs < 0 ? -rows[i].macs : rows[i].macs;  // negative: a comparison row, not summed
    char share[16] = "";
    if (rows[i].macs >= 0) snprintf(share, sizeof share, "%.0f%%", rows[i].us / total * 100);
    if (m > 0) {
      const double ideal = 2 * m / peak * 1e6;
      printf("| %s | %.2f | %s | %.2f | %.0f%% |\n", rows[i].name, rows[i].us, share, ideal, ideal / rows[i].us * 100);
    } else {
      printf("| %s | %.2f | %s | | |\n", rows[i].name, rows[i].us, share);
    }
  }
  printf("| **sum of the phases** | **%.2f** | | **%.2f** | **%.0f%%** |\n", total, 2 * macs / peak * 1e6,
         2 * macs / peak * 1e6 / total * 100);
  in_the_loop(d, large, rows, nrows, peak, 2 * macs, 2 * (3 * mac1 + 3 * mac2));
  return 0;
}
