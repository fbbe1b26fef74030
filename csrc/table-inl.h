// The first layer through the embedding table. Its product with the batch's embedding
// rows is emb W (N, Hp) = the sum over t of C[x_t] W_t, with W (T E, Hp) the layer's weights
// and W_t their rows [t E, (t + 1) E). So the T tables P_t = C W_t (V, Hp), V T E H
// multiply-adds, give every row's product as the sum of its T rows of P, T H additions,
// where emb W costs T E H multiply-adds a row; the backward pass's two products go the
// same way (table_scatter_share). Worth it where the batch is several times the
// vocabulary: kernels.h's first_layer_tables says where, and the fused step (step-inl.h)
// and evaluation (model-inl.h) follow it. Same layers, same padded layout (layers-inl.h).
//
// Rounding: each sum is regrouped, not lengthened beyond the products' own bounds (a
// forward entry sees E - 1 + T - 1 additions of its T E terms, against T E - 1 in order).

// This thread's share of the rows of P (T V, Hp), row t V + v = C[v] W_t, C (V, E). A
// team's threads then need a barrier before they read P.
inline void table_product_share(const float* C, int V, int E, int T, const float* W, int Hp, float* P) {
  int64_t r0, r1;
  my_share((int64_t)T * V, &r0, &r1);
  for (int t = 0; t < T; ++t) {
    const int64_t lo = (int64_t)t * V, a = r0 > lo ? r0 - lo : 0, b = r1 < lo + V ? r1 - lo : V;
    if (b > a) gemm_rows<kStore>(plan(V, Hp, E, C, E, 1, W + (int64_t)t * E * Hp, Hp, P + lo * Hp, Hp), a, b);
  }
}

// Rows [r0, r1) of y (N, Hp) = sum over t of P[t V + x_t] (in t's order), + b if given,
// then tanh if TANH: the first layer's product (and epilogue) through the tables, X (N,
// T). An index outside [0, V) (X changed during the call) flags ex and reads row 0.
template <bool TANH>
inline void table_sum_rows(const float* P, int V, int T, int Hp, const int32_t* X, const float* b, float* y,
                           int64_t r0, int64_t r1, Exec& ex) {
  constexpr int kRows = 8;  // rows of P summed in the registers at a time (a store per 8, not per row)
  for (int64_t i = r0; i < r1; ++i) {
    float* yi = y + i * Hp;
    for (int t0 = 0; t0 < T; t0 += kRows) {
      const int nt = T - t0 < kRows ? T - t0 : kRows;
      const float* p[kRows];
      for (int u = 0; u < nt; ++u) {
        int32_t x = X[i * T + t0 + u];
        if ((uint32_t)x >= (uint32_t)V) {
          flag_bad_index(ex);
          x = 0;
        }
        p[u] = P + ((int64_t)(t0 + u) * V + x) * Hp;
      }
      const bool last = t0 + nt == T;
      for (int j = 0; j < Hp; j += VW) {  // yi (+ P[x_t0]) + P[V + x_t0+1] + ..., in t's order
        vf s = t0 ? loadu(yi + j) + loadu(p[0] + j) : loadu(p[0] + j);
        for (int u = 1; u < nt; ++u) s += loadu(p[u] + j);
        if (last && b) s += loadu(b + j);
        storeu(yi + j, last && TANH ? tanh_v(s) : s);
      }
    }
  }
}

// S's row length: T Hp floats and a cache line more. The large configuration's T Hp is a
// power of two (16 KB), and its rows read as B in table_weight_share then fell all in the
// same few L1 sets.
inline int64_t table_ld(int T, int Hp) { return (int64_t)T * Hp + 64 / (int64_t)sizeof(float); }

// The first layer's backward through the tables. S (V, table_ld): S[v][t Hp + j] is the sum
// of g[b][j] over the rows b with x_bt = v, in row order. Then W's gradient is dW_t = C^T
// S_t, S_t = S's columns [t Hp, (t + 1) Hp), and C's is dC = S Wts, Wts (T Hp, Ep) the W_t^T
// one below the other: V T E H multiply-adds each, where x^T g and the scatter of g W^T
// take N T E H. This thread's share of S's column vectors, every t's: W's gradient on the
// same columns (table_weight_share) needs no other thread's; dC needs all of them.
inline void table_scatter_share(const float* g, int Hp, const int32_t* X, int64_t N, int T, int V, float* S,
                                Exec& ex) {
  int64_t c0, c1;
  my_share(Hp / VW, &c0, &c1);
  if (c1 <= c0) return;
  const int64_t ld = table_ld(T, Hp), j0 = c0 * VW, j1 = c1 * VW;
  for (int64_t v = 0; v < V; ++v)
    for (int t = 0; t < T; ++t) memset(S + v * ld + (int64_t)t * Hp + j0, 0, sizeof(float) * (size_t)(j1 - j0));
  for (int64_t b = 0; b < N; ++b)
    for (int t = 0; t < T; ++t) {
      const int32_t v = X[b * T + t];
      if ((uint32_t)v >= (uint32_t)V) {  // (as embedding_backward_range)
        flag_bad_index(ex);
        continue;
      }
      float* s = S + v * ld + (int64_t)t * Hp;
      const float* gb = g + b * Hp;
      for (int64_t j = j0; j < j1; j += VW) storeu(s + j, loadu(s + j) + loadu(gb + j));
    }
}

// dW_t = C^T S_t on this thread's share of the column vectors (table_scatter_share's),
// into dW (T E, Hp); or, with W given, the SGD update W_t -= lr C^T S_t instead.
inline void table_weight_share(const float* C, int V, int E, int T, const float* S, int Hp, float* dW, float* W,
                               float lr) {
  int64_t c0, c1;
  my_share(Hp / VW, &c0, &c1);
  if (c1 <= c0) return;
  const int64_t j0 = c0 * VW, ld = table_ld(T, Hp);
  const int n = (int)((c1 - c0) * VW);
  for (int t = 0; t < T; ++t) {
    const float* St = S + (int64_t)t * Hp + j0;
    const int64_t w0 = (int64_t)t * E * Hp + j0;
    if (W)
      gemm_rows<kAccumScaled>(plan(E, n, V, C, 1, E, St, ld, W + w0, Hp, nullptr, -lr), 0, E);
    else
      gemm_rows<kStore>(plan(E, n, V, C, 1, E, St, ld, dW + w0, Hp), 0, E);
  }
}
