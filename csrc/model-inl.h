// The whole model in the padded layout, and the inference passes built from the layers:
// logits of many rows, and the loss of a whole split in chunks.
//
//   emb    = C[X]                          (N, T*E)
//   h_0    = tanh(emb @ W[0] + b[0])        (N, Hp)    hidden layer 1
//   h_l    = tanh(h_{l-1} @ W[l] + b[l])    (N, Hp)    hidden layers 2..L
//   logits = h_{L-1} @ W[L] + b[L]          (N, Vp)
// Under BatchNorm, h_l = tanh(BN(x W[l])); evaluation folds BN into W[l], b[l] (PaddedCopy).

struct Layout {
  int V, T, E, H, TE, Hp, Vp, TEp;
  int L;        // hidden layers
  bool bn;      // BatchNorm after each hidden Linear
  float eps, momentum;
  int fan_in(int l) const { return l == 0 ? TE : H; }         // rows of W[l] (the output layer's: H)
  int64_t ld_in(int l) const { return l == 0 ? TE : Hp; }     // row length of layer l's input
  int Kp(int l) const { return l == 0 ? TEp : Hp; }           // row length of W[l]^T
  int64_t macs_per_row() const { return (int64_t)TE * H + (int64_t)(L - 1) * H * H + (int64_t)H * V; }
};
inline Layout layout_of(const Dims& d) {
  return {d.V, d.T, d.E, d.H, d.T * d.E, round_up(d.H, VW), round_up(d.V, VW), round_up(d.T * d.E, VW),
          d.L, d.bn != 0, d.bn_eps, d.bn_momentum};
}

// The parameters (or gradients, or optimizer state) in the padded layout: a MutParams
// whose W[l], b[l], gamma[l], beta[l] rows are Hp (Vp for the output layer) long. C is
// never padded: a gather reads E floats.
typedef MutParams PadWeights;

// One tensor of the parameters' order: its shape, and its row length when padded.
struct Tensor {
  int64_t rows;
  int cols, ld;
};
constexpr int kMaxTensors = 1 + 3 * kMaxLayers + 2;

// The trainable tensors of w in the parameters' order (kernels.h): where each pointer
// lives, and its shape. Returns their number.
inline int param_tensors(PadWeights& w, const Layout& L, float** ptr[kMaxTensors], Tensor sh[kMaxTensors]) {
  int n = 0;
  auto add = [&](float** p, int64_t rows, int cols, int ld) {
    ptr[n] = p;
    sh[n] = {rows, cols, ld};
    ++n;
  };
  add(&w.C, L.V, L.E, L.E);
  for (int l = 0; l < L.L; ++l) {
    add(&w.W[l], L.fan_in(l), L.H, L.Hp);
    if (L.bn) {
      add(&w.gamma[l], 1, L.H, L.Hp);
      add(&w.beta[l], 1, L.H, L.Hp);
    } else {
      add(&w.b[l], 1, L.H, L.Hp);
    }
  }
  add(&w.W[L.L], L.H, L.V, L.Vp);
  add(&w.b[L.L], 1, L.V, L.Vp);
  return n;
}
inline MutParams mut_of(const Params& P) {
  MutParams m;
  memcpy(&m, &P, sizeof m);  // the same layout of pointers
  return m;
}
inline size_t vec_round(size_t n) { return (n + 15) / 16 * 16; }  // each tensor starts on a cache line

// Owns a padded copy of the parameters (C used in place, or its own C) and, under
// BatchNorm, of the running statistics.
struct PaddedCopy {
  Buf buf;
  PadWeights w;
  // From the caller's arrays; C is used in place (train_steps updates the caller's C).
  // eval: BatchNorm folded into the hidden layers for evaluation, W[l] columns times
  // s = gamma / sqrt(running_var + eps) and b[l] = beta - running_mean * s (the linear map
  // torch's eval-mode batch_norm applies), so inference runs the plain layers.
  PaddedCopy(const Params& P, const Layout& L, bool eval = false) {
    MutParams src = mut_of(P);
    alloc(L, false, eval);
    w.C = src.C;  // written only by train_steps, whose caller passed it writable
    float** sp[kMaxTensors];
    float** dp[kMaxTensors];
    Tensor sh[kMaxTensors];
    const int n = param_tensors(src, L, sp, sh);
    param_tensors(w, L, dp, sh);
    for (int k = 1; k < n; ++k) copy_pad(*sp[k], sh[k].cols, sh[k].rows, sh[k].cols, *dp[k], sh[k].ld);
    if (L.bn && P.run_mean[0]) {
      for (int l = 0; l < L.L; ++l) {
        copy_pad(P.run_mean[l], L.H, 1, L.H, w.run_mean[l], L.Hp);
        copy_pad(P.run_var[l], L.H, 1, L.H, w.run_var[l], L.Hp);
      }
    }
    if (eval && L.bn)
      for (int l = 0; l < L.L; ++l) {
        float* Wl = w.W[l];
        float* bl = w.b[l];
        memset(bl, 0, sizeof(float) * L.Hp);
        bool finite = true;
        for (int j = 0; j < L.H; ++j) {
          const float s = (float)((double)P.gamma[l][j] / sqrt((double)P.run_var[l][j] + (double)L.eps));
          bl[j] = P.beta[l][j] - P.run_mean[l][j] * s;
          finite &= __builtin_isfinite(s) && __builtin_isfinite(bl[j]);
          for (int k = 0; k < L.fan_in(l); ++k) {
            Wl[(int64_t)k * L.Hp + j] *= s;
            finite &= __builtin_isfinite(Wl[(int64_t)k * L.Hp + j]);
          }
        }
        // (before any parallel region: the exception reaches Python as a ValueError)
        if (!finite) throw std::domain_error("a BatchNorm layer cannot be evaluated in float32: gamma / "
                                             "sqrt(running_var + eps) overflows its weights (a corrupt model)");
      }
  }
  // All zero, C included (for gradients).
  explicit PaddedCopy(const Layout& L) {
    alloc(L, true, false);
    memset(buf.p, 0, sizeof(float) * buf.cap);
  }
  void alloc(const Layout& L, bool own_C, bool eval) {
    memset(&w, 0, sizeof w);
    float** dp[kMaxTensors];
    Tensor sh[kMaxTensors];
    const int n = param_tensors(w, L, dp, sh);
    size_t total = 0;
    for (int k = own_C ? 0 : 1; k < n; ++k) total += vec_round((size_t)sh[k].rows * sh[k].ld);
    const bool fold = eval && L.bn;
    const size_t extra = L.bn ? (size_t)L.L * vec_round(L.Hp) * (fold ? 3 : 2) : 0;  // running stats (+ folded b)
    float* p = buf.get(total + extra);
    for (int k = own_C ? 0 : 1; k < n; ++k) {
      *dp[k] = p;
      p += vec_round((size_t)sh[k].rows * sh[k].ld);
    }
    if (L.bn)
      for (int l = 0; l < L.L; ++l) {
        w.run_mean[l] = p;
        p += vec_round(L.Hp);
        w.run_var[l] = p;
        p += vec_round(L.Hp);
        if (fold) {
          w.b[l] = p;
          p += vec_round(L.Hp);
        }
      }
  }
  // The parameters (and C if it is our own, and the running statistics where both have
  // them) back into the caller's layout.
  void copy_out(const Layout& L, const MutParams& out_) const {
    MutParams out = out_, mine = w;
    float** sp[kMaxTensors];
    float** dp[kMaxTensors];
    Tensor sh[kMaxTensors];
    const int n = param_tensors(mine, L, sp, sh);
    param_tensors(out, L, dp, sh);
    for (int k = 1; k < n; ++k) copy_unpad(*sp[k], sh[k].ld, sh[k].rows, sh[k].cols, *dp[k]);
    if (w.C != out.C) memcpy(out.C, w.C, sizeof(float) * L.V * L.E);
    if (L.bn && out.run_mean[0])
      for (int l = 0; l < L.L; ++l) {
        copy_unpad(w.run_mean[l], L.Hp, 1, L.H, out.run_mean[l]);
        copy_unpad(w.run_var[l], L.Hp, 1, L.H, out.run_var[l]);
      }
  }
};

// Rows per chunk for inference: emb, h and logits of a chunk stay in L2.
constexpr int64_t kChunk = 256;

// One thread's buffers for the forward pass of up to kChunk rows.
struct ForwardWork {
  Buf emb, h, h2, logits, loss;
  void prepare(const Layout& L, int64_t n) {
    emb.get((size_t)(n * L.TE));
    h.get((size_t)(n * L.Hp));
    if (L.L > 1) h2.get((size_t)(n * L.Hp));
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

// The first layer's tables P (T V, Hp) from an eval copy W (table-inl.h), made once, on
// this thread, for a call that takes `rows` rows through the model; null where they do
// not pay for themselves (kernels.h's first_layer_tables). (So a call's rows are computed
// one way or the other by the call's size: the same within float32 rounding's bounds.)
inline const float* eval_tables(const PadWeights& W, const Layout& L, const Dims& d, int64_t rows, Buf& buf) {
  if (!first_layer_tables(d, rows)) return nullptr;
  float* P = buf.get((size_t)L.T * L.V * L.Hp);
  table_product_share(W.C, L.V, L.E, L.T, W.W[0], L.Hp, P);  // (outside a team: every row)
  return P;
}

// Padded logits (n, Vp) of rows X (n, T), on this thread; returns ws.logits. W: an eval
// copy; table: its first layer's tables (eval_tables), or null.
inline float* forward_rows(const PadWeights& W, const Layout& L, const int32_t* X, int64_t n, ForwardWork& ws,
                           Exec& ex, const float* table) {
  float* emb = ws.emb.p;
  float* logits = ws.logits.p;
  if (!table) embedding_forward_rows(W.C, L.V, L.E, X, L.T, 0, n, emb, ex);
  const float* x = emb;
  for (int l = 0; l < L.L; ++l) {  // the hidden layers, h alternating between two buffers
    float* h = l % 2 ? ws.h2.p : ws.h.p;
    if (l == 0 && table)
      table_sum_rows<true>(table, L.V, L.T, L.Hp, X, W.b[0], h, 0, n, ex);
    else
      linear_forward_rows<true>(x, L.ld_in(l), L.fan_in(l), W.W[l], L.Hp, W.b[l], h, 0, n);
    x = h;
  }
  linear_forward_rows<false>(x, L.Hp, L.H, W.W[L.L], L.Vp, W.b[L.L], logits, 0, n);
  return logits;
}

inline bool parallel_rows(int64_t N, const Layout& L, const Exec& ex) {
  return ex.threads > 1 && N > kChunk && N * L.macs_per_row() >= kParallelMacs;
}

void mlp_forward(const Params& P, const Dims& d, const int32_t* X, int64_t N, float* logits, Exec& ex) {
  const Layout L = layout_of(d);
  const PaddedCopy M(P, L, /*eval=*/true);
  Buf tb;
  const float* table = eval_tables(M.w, L, d, N, tb);
  ForwardTeamWork team(L, ex.threads, kChunk);
  const int64_t chunks = (N + kChunk - 1) / kChunk;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) num_threads(ex.threads) if (parallel_rows(N, L, ex))
#endif
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t i0 = c * kChunk, n = min64(kChunk, N - i0);
    const float* lp = forward_rows(M.w, L, X + i0 * L.T, n, team.mine(), ex, table);
    copy_unpad(lp, L.Vp, n, L.V, logits + i0 * L.V);
  }
}

// Sum of the per-example losses, per fixed chunk of rows and the chunks summed in
// order: the same for any thread count. No (N, V) buffer.
double mlp_loss_sum(const Params& P, const Dims& d, const int32_t* X, const int32_t* Y, int64_t N, Exec& ex) {
  const Layout L = layout_of(d);
  const PaddedCopy M(P, L, /*eval=*/true);
  Buf tb;
  const float* table = eval_tables(M.w, L, d, N, tb);
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
    const float* logits = forward_rows(M.w, L, X + i0 * L.T, n, ws, ex, table);
    xent_rows(logits, L.Vp, Y + i0, L.V, 0, n, nullptr, 0.f, ws.loss.p, ex);
    double s = 0.0;
    for (int64_t i = 0; i < n; ++i) s += ws.loss.p[i];
    partial[c] = s;
  }
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  return total;
}
