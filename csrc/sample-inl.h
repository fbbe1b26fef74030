// Sampling words from the model in batches: all words of a batch advance one character
// per forward pass (the model's own forward_rows). Word i draws from its own stream
// seeded by (seed, i), so results do not depend on batching or threads.

constexpr int64_t kSampleBatch = 256;

// One thread's buffers: contexts, RNG streams, alive flags and a probability row.
struct SampleWork {
  ForwardWork fw;
  Buf ctx, rng, alive, prob;
  void prepare(const Layout& L) {
    fw.prepare(L, kSampleBatch);
    ctx.get_as<int32_t>((size_t)(kSampleBatch * L.T));
    rng.get_as<uint64_t>((size_t)(kSampleBatch * 4));
    alive.get_as<unsigned char>((size_t)kSampleBatch);
    prob.get((size_t)L.V);
  }
};

// The next character from logits z (V,): temperature, then top_k, then a draw.
inline int32_t draw_char(const float* z, int V, const SampleArgs& a, float* prob, uint64_t s[4]) {
  float thresh = -INFINITY;  // keep the top_k largest logits: threshold = k-th largest value
  if (a.top_k > 0 && a.top_k < V) {
    for (int v = 0; v < V; ++v) prob[v] = z[v];
    for (int k = 0; k < a.top_k; ++k) {  // partial selection sort, descending
      int best = k;
      for (int v = k + 1; v < V; ++v)
        if (prob[v] > prob[best]) best = v;
      const float t = prob[k];
      prob[k] = prob[best];
      prob[best] = t;
    }
    thresh = prob[a.top_k - 1];
  }
  float m = -INFINITY;
  for (int v = 0; v < V; ++v) m = z[v] > m ? z[v] : m;
  double total = 0.0;
  for (int v = 0; v < V; ++v) {
    const float p = z[v] >= thresh ? expf((z[v] - m) / a.temperature) : 0.f;
    prob[v] = p;
    total += p;
  }
  const double u = (double)rng_uniform(s) * total;
  double c = 0.0;
  int32_t ix = 0;
  for (int v = 0; v < V; ++v) {
    if (prob[v] <= 0.f) continue;
    c += prob[v];
    ix = v;
    if (u < c) break;
  }
  return ix;
}

void sample(const Params& P, const Dims& d, const SampleArgs& a, Exec& ex) {
  const Layout L = layout_of(d);
  const PaddedCopy M(P, L, /*eval=*/true);
  // the first layer's tables, made once, if a batch of words pays for them: by the batch's
  // size, not the call's, so that word i still depends only on (seed, i)
  Buf tb;
  const float* table = eval_tables(M.w, L, d, kSampleBatch, tb);
  const int64_t batches = (a.n_samples + kSampleBatch - 1) / kSampleBatch;
  const int threads = batches > 1 ? ex.threads : 1;
  SampleWork* work = new SampleWork[threads];
  struct Owner {
    SampleWork* w;
    ~Owner() { delete[] w; }
  } owner{work};
  for (int i = 0; i < threads; ++i) work[i].prepare(L);
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic) num_threads(threads) if (threads > 1)
#endif
  for (int64_t bi = 0; bi < batches; ++bi) {
    SampleWork& w = work[team_rank()];
    int32_t* ctx = (int32_t*)w.ctx.p;
    uint64_t(*rng)[4] = (uint64_t(*)[4])w.rng.p;
    unsigned char* alive = (unsigned char*)w.alive.p;
    const int64_t w0 = bi * kSampleBatch, n = min64(kSampleBatch, a.n_samples - w0);
    memset(ctx, 0, (size_t)n * L.T * sizeof(int32_t));
    memset(alive, 1, (size_t)n);
    memset(a.out + w0 * a.max_len, 0, (size_t)(n * a.max_len) * sizeof(int32_t));
    for (int64_t i = 0; i < n; ++i) rng_seed(rng[i], a.seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(w0 + i + 1)));
    int64_t n_alive = n;
    for (int pos = 0; pos < a.max_len && n_alive > 0; ++pos) {
      const float* logits = forward_rows(M.w, L, ctx, n, w.fw, ex, table);
      for (int64_t i = 0; i < n; ++i) {
        if (!alive[i]) continue;
        const int32_t ix = draw_char(logits + i * L.Vp, L.V, a, w.prob.p, rng[i]);
        a.out[(w0 + i) * a.max_len + pos] = ix;
        int32_t* row = ctx + i * L.T;
        for (int t = 0; t + 1 < L.T; ++t) row[t] = row[t + 1];
        row[L.T - 1] = ix;
        if (ix == 0) {
          alive[i] = 0;
          --n_alive;
        }
      }
    }
  }
}
