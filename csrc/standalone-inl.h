// The standalone kernels: the layers' functions (layers-inl.h) on all rows, on a team of
// ex.threads when the work is large enough; inputs and outputs in the caller's (unpadded)
// layout. The bindings expose them and the tests compare them with PyTorch: they are the
// code that trains, called on every row instead of one thread's share.

inline bool big_enough(const Exec& ex, int64_t work) { return ex.threads > 1 && work >= kParallelMacs; }

void embedding_forward(const float* C, const int32_t* X, float* emb, int64_t N, int T, int E, int V, Exec& ex) {
#ifdef _OPENMP
#pragma omp parallel num_threads(ex.threads) if (big_enough(ex, N * T * E * 4))
#endif
  {
    int64_t r0, r1;
    my_share(N, &r0, &r1);
    embedding_forward_rows(C, V, E, X, T, r0, r1, emb, ex);
  }
}

void embedding_backward(const float* d_emb, const int32_t* X, float* dC, int64_t N, int T, int E, int V, Exec& ex) {
#ifdef _OPENMP
#pragma omp parallel num_threads(ex.threads) if (big_enough(ex, N * T * E * 4))
#endif
  embedding_backward_share(d_emb, (int64_t)T * E, X, N, T, E, V, dC, ex);
}

// A (rows, cols) matrix in the padded layout: the caller's memory when cols is already
// a whole number of vectors, else a padded copy.
struct Padded {
  Buf buf;
  const float* p;
  int ld;
  Padded(const float* src, int64_t rows, int cols) : ld(round_up(cols, VW)) {
    if (ld == cols) {
      p = src;
    } else {
      float* d = buf.get((size_t)rows * ld);
      copy_pad(src, cols, rows, cols, d, ld);
      p = d;
    }
  }
};

void linear_forward(const float* x, const float* W, const float* b, float* y, int64_t N, int K, int M, bool tanh,
                    Exec& ex) {
  const Padded Wp(W, K, M), bp(b, 1, M);
  const int Mp = Wp.ld;
  Buf yb;
  float* yp = Mp == M ? y : yb.get((size_t)N * Mp);
#ifdef _OPENMP
#pragma omp parallel num_threads(ex.threads) if (big_enough(ex, N * K * M))
#endif
  {
    int64_t r0, r1;
    my_share(N, &r0, &r1);
    if (tanh)
      linear_forward_rows<true>(x, K, K, Wp.p, Mp, bp.p, yp, r0, r1);
    else
      linear_forward_rows<false>(x, K, K, Wp.p, Mp, bp.p, yp, r0, r1);
    if (yp != y) copy_unpad(yp + r0 * Mp, Mp, r1 - r0, M, y + r0 * M);
  }
}

// From dy (N, M): dx (N, K) = g W^T, dW (K, M) = x^T g, db = column sums of g, where
// g = dy, or tanh_grad(dy, y_tanh) when the forward's tanh output y_tanh is given.
void linear_backward(const float* dy, const float* x, const float* W, const float* y_tanh, float* dx, float* dW,
                     float* db, int64_t N, int K, int M, Exec& ex) {
  const int Mp = round_up(M, VW), Kp = round_up(K, VW);
  Buf gb, yb, wtb, dxb, dwb, dbb;
  float* g = gb.get((size_t)N * Mp);
  copy_pad(dy, M, N, M, g, Mp);
  if (y_tanh) {
    float* yp = yb.get((size_t)N * Mp);
    copy_pad(y_tanh, M, N, M, yp, Mp);
    tanh_backward_rows(g, yp, Mp, 0, N, g);
  }
  float* WT = wtb.get((size_t)M * Kp);
  memset(WT, 0, sizeof(float) * (size_t)M * Kp);
  float* dxp = Kp == K ? dx : dxb.get((size_t)N * Kp);
  float* dWp = Mp == M ? dW : dwb.get((size_t)K * Mp);
  float* dbp = dbb.get(Mp);
  Barrier bar = {};
#ifdef _OPENMP
#pragma omp parallel num_threads(ex.threads) if (big_enough(ex, N * K * M))
#endif
  {
    transpose_share(W, M, K, M, WT, Kp);
    team_barrier(bar);
    int64_t r0, r1;
    my_share(N, &r0, &r1);
    linear_backward_input_rows<kStore>(g, Mp, M, WT, Kp, dxp, nullptr, r0, r1);
    if (dxp != dx) copy_unpad(dxp + r0 * Kp, Kp, r1 - r0, K, dx + r0 * K);
    linear_backward_weight_share(x, K, K, g, Mp, N, dWp, dbp, nullptr, nullptr, 0.f);
  }
  if (dWp != dW) copy_unpad(dWp, Mp, K, M, dW);
  memcpy(db, dbp, sizeof(float) * M);
}

// Sum of the per-row losses of logits (N, V) against Y (N,), summed in row order in
// double (the same for any thread count); dlogits (N, V) = d(mean loss)/d(logits) if given.
double cross_entropy(const float* logits, const int32_t* Y, float* dlogits, int64_t N, int V, Exec& ex) {
  const Padded z(logits, N, V);
  const int Vp = z.ld;
  Buf db, lb;
  float* d = dlogits == nullptr ? nullptr : Vp == V ? dlogits : db.get((size_t)N * Vp);
  float* row_loss = lb.get((size_t)N);
#ifdef _OPENMP
#pragma omp parallel num_threads(ex.threads) if (big_enough(ex, N * V * 16))
#endif
  {
    int64_t r0, r1;
    my_share(N, &r0, &r1);
    xent_rows(z.p, Vp, Y, V, r0, r1, d, 1.0f / (float)N, row_loss, ex);
    if (d && d != dlogits) copy_unpad(d + r0 * Vp, Vp, r1 - r0, V, dlogits + r0 * V);
  }
  double s = 0.0;
  for (int64_t i = 0; i < N; ++i) s += row_loss[i];
  return s;
}

// BatchNorm1d + tanh on all rows (the training step's column-shared functions, on a team
// when the work is large enough); caller's layout (N, H), padded here.
void batchnorm_tanh_forward(const float* pre, const float* gamma, const float* beta, float eps, float* h, float* xhat,
                            float* stats, int64_t N, int H, Exec& ex) {
  const Padded P(pre, N, H), g(gamma, 1, H), b(beta, 1, H);
  const int Hp = P.ld;
  Buf hb, xb, sb;
  float *hp = hb.get((size_t)N * Hp), *xp = xb.get((size_t)N * Hp), *sp = sb.get((size_t)3 * Hp);
  const BatchNormStats st{sp, sp + Hp, sp + 2 * Hp};
#ifdef _OPENMP
#pragma omp parallel num_threads(ex.threads) if (big_enough(ex, N * H * 16))
#endif
  batchnorm_tanh_forward_share(P.p, N, Hp, g.p, b.p, eps, xp, hp, st);
  copy_unpad(hp, Hp, N, H, h);
  copy_unpad(xp, Hp, N, H, xhat);
  for (int k = 0; k < 3; ++k) copy_unpad(sp + k * Hp, Hp, 1, H, stats + (int64_t)k * H);
}

void batchnorm_tanh_backward(const float* dh, const float* h, const float* xhat, const float* stats,
                             const float* gamma, float* dpre, float* dgamma, float* dbeta, int64_t N, int H, Exec& ex) {
  const Padded D(dh, N, H), Hh(h, N, H), X(xhat, N, H), S(stats, 3, H), g(gamma, 1, H);
  const int Hp = D.ld;
  Buf yb, db, gb, bb, gam;
  float *dy = yb.get((size_t)N * Hp), *dp = db.get((size_t)N * Hp), *dg = gb.get(Hp), *dbt = bb.get(Hp);
  float* gm = gam.get(Hp);  // a copy: the kernel's gamma is written only by a fused update, never here
  memcpy(gm, g.p, sizeof(float) * Hp);
  tanh_backward_rows(D.p, Hh.p, Hp, 0, N, dy);
  const BatchNormStats st{const_cast<float*>(S.p), const_cast<float*>(S.p) + Hp, const_cast<float*>(S.p) + 2 * Hp};
#ifdef _OPENMP
#pragma omp parallel num_threads(ex.threads) if (big_enough(ex, N * H * 16))
#endif
  batchnorm_backward_share(dy, X.p, st, N, Hp, gm, nullptr, dp, dg, dbt, false, 0.f, nullptr, nullptr, 0.f);
  copy_unpad(dp, Hp, N, H, dpre);
  memcpy(dgamma, dg, sizeof(float) * H);
  memcpy(dbeta, dbt, sizeof(float) * H);
}
