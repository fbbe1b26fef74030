// The model's layers as forward/backward pairs, each working on a range of rows (or,
// where it sums over rows, on this thread's share of the output), in the padded layout.
// The fused training step (step-inl.h) calls them on its thread's rows; the standalone
// kernels (standalone-inl.h) call the same functions on all rows. So the
// kernels the tests compare with PyTorch are the code that trains.
//
// Padded layout: a matrix whose rows are read as whole vectors has its row length
// rounded up to VW floats (H -> Hp, V -> Vp, T*E -> TEp), the pad columns zero. Products
// then never mask or pad an operand; the pads of weights and gradients stay zero.

// dst (rows, ldd) = src (rows, cols) (leading dimension lds), zero in columns [cols, ldd)
inline void copy_pad(const float* src, int64_t lds, int64_t rows, int cols, float* dst, int64_t ldd) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) dst[r * ldd + c] = src[r * lds + c];
    for (int64_t c = cols; c < ldd; ++c) dst[r * ldd + c] = 0.f;
  }
}
// dst (rows, cols) = the first cols columns of src (rows, lds)
inline void copy_unpad(const float* src, int64_t lds, int64_t rows, int cols, float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[r * cols + c] = src[r * lds + c];
}

// ---------------------------------------------------------------------------
// Embedding: emb (N, T*E) = C[X]                         C (V, E), X (N, T)
// ---------------------------------------------------------------------------

// Rows [r0, r1) of emb. Every index is checked as it is read: the bindings checked X
// before the call, but another thread may have changed it since. A bad index gathers
// row 0 and flags ex. A plain loop: for rows of a few floats a memcpy costs more.
inline void embedding_forward_rows(const float* C, int V, int E, const int32_t* X, int T, int64_t r0, int64_t r1,
                                   float* emb, Exec& ex) {
  for (int64_t r = r0 * T; r < r1 * T; ++r) {
    int32_t ix = X[r];
    if ((uint32_t)ix >= (uint32_t)V) {
      flag_bad_index(ex);
      ix = 0;
    }
    const float* src = C + (int64_t)ix * E;
    float* dst = emb + r * E;
    for (int e = 0; e < E; ++e) dst[e] = src[e];
  }
}

// dC rows [v0, v1) (V, E) += d_emb (N rows, leading dimension ld) scattered by X (N, T).
// The whole batch is scanned in example order and only rows in [v0, v1) are added to,
// so repeated indices accumulate in the same order on every run; a team splits the
// vocabulary rows (embedding_backward_share) and gets the same result.
inline void embedding_backward_range(const float* d_emb, int64_t ld, const int32_t* X, int64_t N, int T, int E,
                                     int V, float* dC, int64_t v0, int64_t v1, Exec& ex) {
  for (int64_t n = 0; n < N; ++n)
    for (int t = 0; t < T; ++t) {
      const int32_t v = X[n * T + t];
      if ((uint32_t)v >= (uint32_t)V) {
        flag_bad_index(ex);
        continue;
      }
      if (v < v0 || v >= v1) continue;
      float* dst = dC + (int64_t)v * E;
      const float* src = d_emb + n * ld + (int64_t)t * E;
      for (int e = 0; e < E; ++e) dst[e] += src[e];
    }
}

// This thread's share of C's rows: dC = scatter of d_emb (zeroed first), then, if
// apply, C -= lr * dC on the same rows (the SGD update of the embedding table).
inline void embedding_backward_share(const float* d_emb, int64_t ld, const int32_t* X, int64_t N, int T, int E,
                                     int V, float* dC, Exec& ex, float* C = nullptr, float lr = 0.f) {
  int64_t v0, v1;
  my_share(V, &v0, &v1);
  if (v1 <= v0) return;
  memset(dC + v0 * E, 0, sizeof(float) * (size_t)((v1 - v0) * E));
  embedding_backward_range(d_emb, ld, X, N, T, E, V, dC, v0, v1, ex);
  if (C) axpy(C + v0 * E, dC + v0 * E, (v1 - v0) * E, -lr);
}

// ---------------------------------------------------------------------------
// Linear: y (N, Mp) = x (N, K) @ W (K, Mp) + b (Mp,), then tanh if TANH
// ---------------------------------------------------------------------------
template <bool TANH>
inline void linear_forward_rows(const float* x, int64_t ldx, int K, const float* W, int Mp, const float* b, float* y,
                                int64_t r0, int64_t r1);
// y (N, Mp) = x W: the Linear without bias before a BatchNorm
inline void linear_nobias_forward_rows(const float* x, int64_t ldx, int K, const float* W, int Mp, float* y,
                                       int64_t r0, int64_t r1) {
  gemm_rows<kStore>(plan(r1, Mp, K, x, ldx, 1, W, Mp, y, Mp), r0, r1);
}
template <bool TANH>
inline void linear_forward_rows(const float* x, int64_t ldx, int K, const float* W, int Mp, const float* b, float* y,
                                int64_t r0, int64_t r1) {
  gemm_rows<TANH ? kBiasTanh : kBias>(plan(r1, Mp, K, x, ldx, 1, W, Mp, y, Mp, b), r0, r1);
}

// Backward, input side, rows [r0, r1): dx (N, Kp) = g (N, ld g) @ W^T, with WT (M, Kp)
// the transposed weights. EPI kStore; or kTanhGrad / kMul with ep (laid out like dx),
// which fuses the previous layer's tanh backward (and dropout) into the product.
template <int EPI>
inline void linear_backward_input_rows(const float* g, int64_t ldg, int M, const float* WT, int Kp, float* dx,
                                       const float* ep, int64_t r0, int64_t r1) {
  gemm_rows<EPI>(plan(r1, Kp, M, g, ldg, 1, WT, Kp, dx, Kp, ep), r0, r1);
}

// db (Mp,) = column sums of g (N, ld) in row order over this thread's share of the
// column vectors; with bias given, also bias -= lr * db (the fused SGD update). Four
// column vectors at a time: each sum is a chain of N dependent additions, and four chains
// side by side took half the time of one after another on Zen 3 (the lecture's b1: 0.42
// -> 0.22 us). Each column is still summed alone, in row order.
inline void column_sums_share(const float* g, int64_t N, int Mp, int64_t ld, float* db, float* bias, float lr) {
  int64_t b, e;
  my_share(Mp / VW, &b, &e);
  for (int64_t v = b; v < e; v += 4) {
    const int nv = e - v < 4 ? (int)(e - v) : 4;
    const float* gv = g + v * VW;
    vf s[4] = {};
    if (nv == 4) {
      for (int64_t i = 0; i < N; ++i)
        for (int u = 0; u < 4; ++u) s[u] += loadu(gv + i * ld + u * VW);
    } else {
      for (int64_t i = 0; i < N; ++i)
        for (int u = 0; u < nv; ++u) s[u] += loadu(gv + i * ld + u * VW);
    }
    for (int u = 0; u < nv; ++u) {
      const int j = (int)((v + u) * VW);
      storeu(db + j, s[u]);
      if (bias) storeu(bias + j, loadu(bias + j) - splat(lr) * s[u]);
    }
  }
}

// Backward, weight side, this thread's share (all of it outside a team), summing over
// the N rows of x (N, K) and g (N, Mp): dW (K, Mp) = x^T g and db = column sums of g.
// With W and b given, the SGD update is fused in instead of storing dW: W += -lr x^T g
// and b -= lr db (db then receives the column sums as scratch).
inline void linear_backward_weight_share(const float* x, int64_t ldx, int K, const float* g, int Mp, int64_t N,
                                         float* dW, float* db, float* W, float* b, float lr) {
  if (W) {
    gemm_share<kAccumScaled>(plan(K, Mp, (int)N, x, 1, ldx, g, Mp, W, Mp, nullptr, -lr));
    if (db) column_sums_share(g, N, Mp, Mp, db, b, lr);
  } else {
    gemm_share<kStore>(plan(K, Mp, (int)N, x, 1, ldx, g, Mp, dW, Mp));
    if (db) column_sums_share(g, N, Mp, Mp, db, nullptr, 0.f);
  }
}
// (db null: a layer without bias, BatchNorm's Linear.)

// WT's rows [j, j1) = W's columns [j, j1), W (rows, ldw), WT (cols, ldwt). With 8x8
// transposes (AVX2, AVX-512) the blocks cut by the last rows or columns go through the
// same transpose (the model's 30 x 200 and 200 x 27 are both cut): WT's columns [rows,
// round_up(rows, 8)) then receive zeros, so ldwt must reach that (the padded layout's
// does); columns past that are left alone (the callers zero them once).
inline void transpose_cols(const float* W, int64_t ldw, int rows, int64_t j, int64_t j1, float* WT, int64_t ldwt) {
#if defined(__AVX2__)
  for (; j < j1; j += 8) {
    const int nc = (int)min64(8, j1 - j);
    for (int k = 0; k < rows; k += 8)
      transpose8x8(W + (int64_t)k * ldw + j, ldw, WT + j * ldwt + k, ldwt, rows - k < 8 ? rows - k : 8, nc);
  }
#endif
  for (; j < j1; ++j)
    for (int k = 0; k < rows; ++k) WT[j * ldwt + k] = W[(int64_t)k * ldw + j];
}

// This thread's share of WT (cols, ldwt) = W (rows, ldw)^T, in blocks of 8 output rows.
inline void transpose_share(const float* W, int64_t ldw, int rows, int cols, float* WT, int64_t ldwt) {
  int64_t b, e;
  my_share((cols + 7) / 8, &b, &e);
  transpose_cols(W, ldw, rows, b * 8, min64(e * 8, cols), WT, ldwt);
}

// The fused SGD update of a layer through its transposed weights, this thread's share:
// WT (M, ldwt) -= lr g^T x on a share of WT's columns (x (N, ldx) with K columns, g (N,
// ldg) with M), then those columns transposed back into W's rows (W (K, ldw)). The
// output layer's update takes this form (step-inl.h): its M = V = 27 rows are tiles'
// rows there, where W (H, Vp)'s update pads 27 columns to 32 (on AVX2 4.55 against 5.40
// µs, the lecture's), and the transposed weights it keeps current spare the next step
// its transpose. Each weight sees the same additions in the same order as W's own
// update: the results are bit-identical. x is the product's B, so readable (zero) up to
// round_up(K, VW) in each row; W's columns [M, round_up(M, 8)) receive zeros (ldw must
// reach that: the padded layout's does).
inline void linear_update_transposed_share(const float* x, int64_t ldx, int K, const float* g, int64_t ldg, int M,
                                           int64_t N, float* WT, int64_t ldwt, float* W, int64_t ldw, float lr) {
  int64_t b, e;
  my_share((K + VW - 1) / VW, &b, &e);
  const int64_t k0 = b * VW, k1 = min64(e * VW, K);
  if (k1 <= k0) return;
  gemm_rows<kAccumScaled>(plan(M, (int)(k1 - k0), (int)N, g, 1, ldg, x + k0, ldx, WT + k0, ldwt, nullptr, -lr), 0, M);
  transpose_cols(WT, ldwt, M, k0, k1, W, ldw);
}

// dpre (rows [r0, r1), ld) = tanh_grad(dy, y), the tanh backward on its own.
inline void tanh_backward_rows(const float* dy, const float* y, int64_t ld, int64_t r0, int64_t r1, float* dpre) {
  for (int64_t i = r0 * ld; i < r1 * ld; i += VW) storeu(dpre + i, tanh_grad(loadu(dy + i), loadu(y + i)));
}

// ---------------------------------------------------------------------------
// BatchNorm1d, then tanh: h (N, Hp) = tanh(gamma * xhat + beta), xhat = (pre - mean) / sqrt(var + eps)
// ---------------------------------------------------------------------------
// Training mode normalises with the batch's statistics: a reduction over all N rows. A
// team shares it by columns (vectors of VW), each column summed in row order by one
// thread, so results do not depend on the thread count; the rows' products before and
// after are shared by rows, with a barrier between. Pad columns stay zero (gamma's and
// beta's pads are zero). stats (3, Hp): the batch mean, the biased variance and
// 1 / sqrt(var + eps), as torch's batch_norm keeps them for the backward pass.
struct BatchNormStats {
  float *mean, *var, *invstd;
};

inline void batchnorm_tanh_forward_share(const float* pre, int64_t N, int Hp, const float* gamma, const float* beta,
                                         float eps, float* xhat, float* h, const BatchNormStats& st) {
  int64_t b, e;
  my_share(Hp / VW, &b, &e);
  const vf n = splat((float)N);
  for (int64_t v = b; v < e; ++v) {
    const int64_t j = v * VW;
    vf s = {};
    for (int64_t i = 0; i < N; ++i) s += loadu(pre + i * Hp + j);
    const vf m = s / n;
    vf q = {};
    for (int64_t i = 0; i < N; ++i) {
      const vf d = loadu(pre + i * Hp + j) - m;
      q += d * d;
    }
    const vf var = q / n;
    storeu(st.mean + j, m);
    storeu(st.var + j, var);
    for (int u = 0; u < VW; ++u) st.invstd[j + u] = 1.f / sqrtf(st.var[j + u] + eps);
    const vf is = loadu(st.invstd + j), g = loadu(gamma + j), be = loadu(beta + j);
    for (int64_t i = 0; i < N; ++i) {
      const vf xh = (loadu(pre + i * Hp + j) - m) * is;
      storeu(xhat + i * Hp + j, xh);
      storeu(h + i * Hp + j, tanh_v(g * xh + be));
    }
  }
}

// Backward of batchnorm on this thread's columns, from dy (N, Hp) = d loss / d(gamma xhat
// + beta) (the tanh backward already applied): dgamma = sum dy xhat, dbeta = sum dy (row
// order), dpre = gamma invstd (dy - dbeta / N - xhat dgamma / N) (torch's formula, which
// uses the old gamma). Then dgamma, dbeta into dgamma_out, dbeta_out if given, and if
// update the SGD update gamma, beta -= lr (dgamma, dbeta). run_mean, run_var given: the
// running statistics move toward the batch's, with the unbiased variance, as torch's
// BatchNorm1d: run = (1 - momentum) run + momentum batch.
inline void batchnorm_backward_share(const float* dy, const float* xhat, const BatchNormStats& st, int64_t N, int Hp,
                                     float* gamma, float* beta, float* dpre, float* dgamma_out, float* dbeta_out,
                                     bool update, float lr, float* run_mean, float* run_var, float momentum) {
  int64_t b, e;
  my_share(Hp / VW, &b, &e);
  const vf n = splat((float)N);
  for (int64_t v = b; v < e; ++v) {
    const int64_t j = v * VW;
    vf sg = {}, sb = {};
    for (int64_t i = 0; i < N; ++i) {
      const vf d = loadu(dy + i * Hp + j);
      sb += d;
      sg += d * loadu(xhat + i * Hp + j);
    }
    const vf k = loadu(gamma + j) * loadu(st.invstd + j), mb = sb / n, mg = sg / n;
    for (int64_t i = 0; i < N; ++i)
      storeu(dpre + i * Hp + j, (loadu(dy + i * Hp + j) - mb - loadu(xhat + i * Hp + j) * mg) * k);
    if (dgamma_out) {
      storeu(dgamma_out + j, sg);
      storeu(dbeta_out + j, sb);
    }
    if (update) {
      storeu(gamma + j, loadu(gamma + j) - splat(lr) * sg);
      storeu(beta + j, loadu(beta + j) - splat(lr) * sb);
    }
    if (run_mean) {
      const vf mo = splat(momentum), keep = splat(1.f - momentum), unbias = splat((float)N / (float)(N - 1));
      storeu(run_mean + j, keep * loadu(run_mean + j) + mo * loadu(st.mean + j));
      storeu(run_var + j, keep * loadu(run_var + j) + mo * (loadu(st.var + j) * unbias));
    }
  }
}

// ---------------------------------------------------------------------------
// Dropout on every hidden layer's output (inverted): hd = h * s, dt = tanh_grad(s, h),
// where the multiplier s is 1/(1-p) for a kept unit and 0 for a dropped one (and for pads).
// ---------------------------------------------------------------------------
struct Dropout {
  float p = 0.f;                // probability of dropping a hidden unit; 0 = off
  uint32_t key = 0;             // this step's mask key (dropout_key): its last hidden layer's
  const float* mask = nullptr;  // explicit (L, N, H) multipliers instead of drawn ones
  int64_t mask_stride = 0;      // N * H: one layer's explicit multipliers
  bool on() const { return p > 0.f || mask != nullptr; }
  // hidden layer l's (0-based) of n: its own key, its slice of the explicit mask
  Dropout layer(int l, int n) const {
    Dropout d = *this;
    d.key = dropout_layer_key(key, l + 1, n);
    if (mask) d.mask = mask + l * mask_stride;
    return d;
  }
};

inline void dropout_rows(const Dropout& dr, const float* h, int H, int Hp, int64_t r0, int64_t r1, float* hd,
                         float* dt) {
  const uint32_t threshold = (uint32_t)((double)dr.p * 4294967296.0);
  const float keep_scale = 1.f / (1.f - dr.p);
  for (int64_t i = r0; i < r1; ++i) {
    const float* hi = h + i * Hp;
    float* hdi = hd + i * Hp;
    float* dti = dt + i * Hp;
    // branch-free loops, so the compiler vectorises the hash
    if (dr.mask) {
      for (int j = 0; j < H; ++j) dti[j] = dr.mask[i * H + j];
    } else {
      const uint32_t base = (uint32_t)(i * H);
      for (int j = 0; j < H; ++j) dti[j] = mix32((base + (uint32_t)j) ^ dr.key) >= threshold ? keep_scale : 0.f;
    }
    for (int j = H; j < Hp; ++j) dti[j] = 0.f;
    for (int j = 0; j < Hp; j += VW) {
      const vf s = loadu(dti + j), hv = loadu(hi + j);
      storeu(hdi + j, hv * s);
      storeu(dti + j, tanh_grad(s, hv));
    }
  }
}

// ---------------------------------------------------------------------------
// Softmax cross-entropy
// ---------------------------------------------------------------------------

// G rows z[g] (round_up(V, VW) readable floats; the pad lanes are ignored) with targets
// y[g]: loss[g], and if d is given d[g] = d(loss)/dz * scale (pad lanes 0). Subtracting
// the row max keeps exp finite; NaN anywhere in a row reaches its sum. The G rows' chains
// (max, exp, sum, log, scale) are independent and interleaved: one row at a time ran at
// its chain's latency. Each row's operations are the same whatever G.
template <int G>
inline void xent_group(const float* const* z, const int32_t* y, int V, float* const* d, float scale, float* loss) {
  const vi lane = lane_index();
  const vf neg_inf = splat(-INFINITY);
  vf mv[G], sumv[G], ms[G];
  for (int g = 0; g < G; ++g) mv[g] = neg_inf, sumv[g] = vf{};
  for (int v = 0; v < V; v += VW)
    for (int g = 0; g < G; ++g) mv[g] = vmax(select(lane < V - v, loadu(z[g] + v), neg_inf), mv[g]);
  for (int g = 0; g < G; ++g) ms[g] = splat(hmax(mv[g]));
  for (int v = 0; v < V; v += VW)
    for (int g = 0; g < G; ++g) {
      const vf e = select(lane < V - v, exp_v(loadu(z[g] + v) - ms[g]), vf{});
      sumv[g] += e;
      if (d) storeu(d[g] + v, e);
    }
  for (int g = 0; g < G; ++g) {
    const float sum = hsum(sumv[g]);
    loss[g] = logf(sum) - (z[g][y[g]] - ms[g][0]);
    sumv[g] = splat(scale / sum);
  }
  if (d) {
    for (int v = 0; v < V; v += VW)
      for (int g = 0; g < G; ++g) storeu(d[g] + v, loadu(d[g] + v) * sumv[g]);
    for (int g = 0; g < G; ++g) d[g][y[g]] -= scale;
  }
}

// Rows [r0, r1) of logits (N, ld): row_loss[i], and dlogits (N, ld) if given, four rows
// at a time (the rest one by one). A target outside [0, V) (Y changed during the call)
// flags ex and counts as 0.
inline void xent_rows(const float* logits, int64_t ld, const int32_t* Y, int V, int64_t r0, int64_t r1,
                      float* dlogits, float scale, float* row_loss, Exec& ex) {
  constexpr int G = 4;
  for (int64_t i = r0; i < r1; i += G) {
    const int n = r1 - i < G ? (int)(r1 - i) : G;
    const float* z[G];
    float* d[G];
    int32_t y[G];
    for (int g = 0; g < n; ++g) {
      y[g] = Y[i + g];
      if ((uint32_t)y[g] >= (uint32_t)V) {
        flag_bad_index(ex);
        y[g] = 0;
      }
      z[g] = logits + (i + g) * ld;
      d[g] = dlogits ? dlogits + (i + g) * ld : nullptr;
    }
    if (n == G)
      xent_group<G>(z, y, V, dlogits ? d : nullptr, scale, row_loss + i);
    else
      for (int g = 0; g < n; ++g) xent_group<1>(z + g, y + g, V, dlogits ? d + g : nullptr, scale, row_loss + i + g);
  }
}
