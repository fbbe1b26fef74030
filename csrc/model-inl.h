// The whole model in the padded layout, and the inference passes built from the layers:
// logits of many rows, and the loss of a whole split in chunks.
//
//   emb    = C[X]                  (N, T*E)
//   h      = tanh(emb @ W1 + b1)   (N, Hp)
//   logits = h @ W2 + b2           (N, Vp)

struct Layout {
  int V, T, E, H, TE, Hp, Vp, TEp;
};
inline Layout layout_of(const Dims& d) {
  return {d.V, d.T, d.E, d.H, d.T * d.E, round_up(d.H, VW), round_up(d.V, VW), round_up(d.T * d.E, VW)};
}

// The parameters (or gradients, or optimizer state) in the padded layout. C is never
// padded: a gather reads E floats.
struct PadWeights {
  float* C;   // (V, E)
  float* W1;  // (TE, Hp)
  float* b1;  // (Hp,)
  float* W2;  // (H, Vp)
  float* b2;  // (Vp,)
};

// Owns a padded W1, b1, W2, b2 (and, if asked, its own C).
struct PaddedCopy {
  Buf c, w1, b1, w2, b2;
  PadWeights w;
  // From the caller's arrays; C is used in place (train_steps updates the caller's C).
  PaddedCopy(const Params& P, const Layout& L) {
    alloc(L, false);
    w.C = const_cast<float*>(P.C);  // written only by train_steps, whose caller passed it writable
    copy_pad(P.W1, L.H, L.TE, L.H, w.W1, L.Hp);
    copy_pad(P.b1, L.H, 1, L.H, w.b1, L.Hp);
    copy_pad(P.W2, L.V, L.H, L.V, w.W2, L.Vp);
    copy_pad(P.b2, L.V, 1, L.V, w.b2, L.Vp);
  }
  // All zero, C included (for gradients).
  explicit PaddedCopy(const Layout& L) {
    alloc(L, true);
    memset(w.C, 0, sizeof(float) * L.V * L.E);
    memset(w.W1, 0, sizeof(float) * L.TE * L.Hp);
    memset(w.b1, 0, sizeof(float) * L.Hp);
    memset(w.W2, 0, sizeof(float) * L.H * L.Vp);
    memset(w.b2, 0, sizeof(float) * L.Vp);
  }
  void alloc(const Layout& L, bool own_C) {
    if (own_C) w.C = c.get((size_t)L.V * L.E);
    w.W1 = w1.get((size_t)L.TE * L.Hp);
    w.b1 = b1.get(L.Hp);
    w.W2 = w2.get((size_t)L.H * L.Vp);
    w.b2 = b2.get(L.Vp);
  }
  // W1, b1, W2, b2 (and C if it is our own) back into the caller's layout.
  void copy_out(const Layout& L, const MutParams& out) const {
    copy_unpad(w.W1, L.Hp, L.TE, L.H, out.W1);
    copy_unpad(w.b1, L.Hp, 1, L.H, out.b1);
    copy_unpad(w.W2, L.Vp, L.H, L.V, out.W2);
    copy_unpad(w.b2, L.Vp, 1, L.V, out.b2);
    if (w.C != out.C) memcpy(out.C, w.C, sizeof(float) * L.V * L.E);
  }
};

// Rows per chunk for inference: emb, h and logits of a chunk stay in L2.
constexpr int64_t kChunk = 256;

// One thread's buffers for the forward pass of up to kChunk rows.
struct ForwardWork {
  Buf emb, h, logits, loss;
  void prepare(const Layout& L, int64_t n) {
    emb.get((size_t)(n * L.TE));
    h.get((size_t)(n * L.Hp));
    logits.get((size_t)(n * L.Vp));
    loss.get((size_t)n);
  }
};

// A ForwardWork for each thread a call may use, allocated before any parallel region.
struct ForwardTeamWork {
  ForwardWork* ws;
  explicit ForwardTeamWork(const Layout& L, int threads, int64_t rows) : ws(new ForwardWork[threads]) {
    try {
      for (int i = 0; i < threads; ++i) ws[i].prepare(L, rows);
    } catch (...) {
      delete[] ws;
      throw;
    }
  }
  ~ForwardTeamWork() { delete[] ws; }
  ForwardTeamWork(const ForwardTeamWork&) = delete;
  ForwardTeamWork& operator=(const ForwardTeamWork&) = delete;
  ForwardWork& mine() { return ws[team_rank()]; }
};

// Padded logits (n, Vp) of rows X (n, T), on this thread; returns ws.logits.
inline float* forward_rows(const PadWeights& W, const Layout& L, const int32_t* X, int64_t n, ForwardWork& ws,
                           Exec& ex) {
  float* emb = ws.emb.p;
  float* h = ws.h.p;
  float* logits = ws.logits.p;
  embedding_forward_rows(W.C, L.V, L.E, X, L.T, 0, n, emb, ex);
  linear_forward_rows<true>(emb, L.TE, L.TE, W.W1, L.Hp, W.b1, h, 0, n);
  linear_forward_rows<false>(h, L.Hp, L.H, W.W2, L.Vp, W.b2, logits, 0, n);
  return logits;
}

inline bool parallel_rows(int64_t N, const Layout& L, const Exec& ex) {
  const int64_t macs_per_row = (int64_t)L.TE * L.H + (int64_t)L.H * L.V;
  return ex.threads > 1 && N > kChunk && N * macs_per_row >= kParallelMacs;
}

void mlp_forward(const Params& P, const Dims& d, const int32_t* X, int64_t N, float* logits, Exec& ex) {
  const Layout L = layout_of(d);
  const PaddedCopy M(P, L);
  ForwardTeamWork team(L, ex.threads, kChunk);
  const int64_t chunks = (N + kChunk - 1) / kChunk;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(ex.threads) if (parallel_rows(N, L, ex))
#endif
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk, n = min64(kChunk, N - i0);
    const float* lp = forward_rows(M.w, L, X + i0 * L.T, n, team.mine(), ex);
    copy_unpad(lp, L.Vp, n, L.V, logits + i0 * L.V);
  }
}

// Sum of the per-example losses, per fixed chunk of rows and the chunks summed in
// order: the same for any thread count. No (N, V) buffer.
double mlp_loss_sum(const Params& P, const Dims& d, const int32_t* X, const int32_t* Y, int64_t N, Exec& ex) {
  const Layout L = layout_of(d);
  const PaddedCopy M(P, L);
  ForwardTeamWork team(L, ex.threads, kChunk);
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  Buf partial_buf;
  double* partial = partial_buf.get_as<double>((size_t)chunks);
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(ex.threads) if (parallel_rows(N, L, ex))
#endif
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk, n = min64(kChunk, N - i0);
    ForwardWork& ws = team.mine();
    const float* logits = forward_rows(M.w, L, X + i0 * L.T, n, ws, ex);
    xent_rows(logits, L.Vp, Y + i0, L.V, 0, n, nullptr, 0.f, ws.loss.p, ex);
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += ws.loss.p[i];
    partial[c] = s;
  }
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  return total;
}
