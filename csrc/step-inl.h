// The training step, built from the layers: forward and backward of one batch on a team
// of threads, the per-batch gradient kernel (mlp_loss_and_grad) and the fused training
// loop (train_steps) with its minibatch sampler and optimizers.

// Phase marks: FASTMLP_PHASE(p) says the time since the previous mark was phase p's.
// benchmarks/step_phases.cpp defines it before it includes kernels.cpp, to see where a
// step's time goes inside the fused loop; elsewhere the marks are empty.
enum StepPhase {
  kPhGather, kPhForward, kPhLogits, kPhXent, kPhTranspose, kPhDinput, kPhDemb, kPhOutUpdate, kPhUpdate,
  kPhEmbBackward, kPhBatch, kPhOther, kPhases
};
#ifndef FASTMLP_PHASE
#define FASTMLP_PHASE(p) ((void)0)
#endif

// The first layer through the tables (kernels.h's rule, table-inl.h's layers).
inline bool fold_first(const Layout& L, int64_t N) {
  Dims d{};
  d.V = L.V, d.T = L.T, d.E = L.E, d.H = L.H;
  return first_layer_tables(d, N);
}

// Workspace of one step, reused across steps; allocated before any parallel region.
struct StepWork {
  Buf b_emb, b_h, b_logits, b_dlogits, b_dpre, b_demb, b_wt, b_dC, b_loss, b_X[2], b_Y[2], b_ix, b_hd, b_dt,
      b_colsum, b_pre, b_xhat, b_dy, b_stats, b_table, b_S, b_wts;
  float *emb, *logits, *dlogits, *demb, *dC, *row_loss;
  // where fold_first (table-inl.h): the first layer's tables P (T V, Hp), the sums S (V, T Hp)
  // of its pre-activation gradient by symbol, and its W_t^T one below the other, Wts (T Hp, Ep)
  float *table = nullptr, *S = nullptr, *wts = nullptr;
  int Ep = 0;
  float* h[kMaxLayers];     // each hidden layer's output (B, Hp)
  float* dpre[kMaxLayers];  // d(loss)/d(its pre-activation: x W[l] + b[l]) (B, Hp)
  float* wt[kMaxLayers + 1];  // W[l]^T (H, Kp(l)); the output layer's (V, Hp)
  float *pre[kMaxLayers], *xhat[kMaxLayers];  // BatchNorm: x W[l] and the normalised (B, Hp)
  BatchNormStats stats[kMaxLayers];           // BatchNorm: the batch's statistics (Hp each)
  float* dy;               // BatchNorm: d(loss)/d(its output), one layer at a time (B, Hp)
  bool bn_update = false;  // BatchNorm: move the running statistics (train_steps)
  float* colsum;           // the bias gradients' column sums when the update is fused, (Vp + L Hp)
  float *hd[kMaxLayers], *dt[kMaxLayers];  // dropout: h * mask and mask * (1 - h^2), (B, Hp) a layer
  int32_t *Xb[2], *Yb[2];  // two batches: the next one's rows are copied in while the current one is read
  int64_t* ix;             // the example indices of a batch
  Barrier bar;             // the team's
  void prepare(const Layout& L, int64_t B) {
    bar = Barrier{};
    const size_t bh = (size_t)(B * L.Hp);
    const bool fold = fold_first(L, B);  // no row of emb or demb then (table-inl.h)
    emb = fold ? nullptr : b_emb.get((size_t)(B * L.TE));     // (B, TE)
    logits = b_logits.get((size_t)(B * L.Vp));                // (B, Vp)
    dlogits = b_dlogits.get((size_t)(B * L.Vp));              // (B, Vp)
    demb = fold ? nullptr : b_demb.get((size_t)(B * L.TEp));  // (B, TEp)
    float* hs = b_h.get(bh * L.L);
    float* ds = b_dpre.get(bh * L.L);
    size_t wt_size = (size_t)L.V * L.Hp;
    for (int l = 0; l < L.L; ++l) wt_size += (size_t)L.H * L.Kp(l);
    float* w = b_wt.get(wt_size);
    memset(w, 0, sizeof(float) * wt_size);  // pad columns: zero for good, transposes skip them
    for (int l = 0; l < L.L; ++l) {
      h[l] = hs + l * bh;
      dpre[l] = ds + l * bh;
      wt[l] = w;
      w += (size_t)L.H * L.Kp(l);
    }
    wt[L.L] = w;
    if (L.bn) {
      float* ps = b_pre.get(bh * L.L);
      float* xs = b_xhat.get(bh * L.L);
      float* ss = b_stats.get((size_t)3 * L.Hp * L.L);
      for (int l = 0; l < L.L; ++l) {
        pre[l] = ps + l * bh;
        xhat[l] = xs + l * bh;
        stats[l] = {ss + (3 * l) * L.Hp, ss + (3 * l + 1) * L.Hp, ss + (3 * l + 2) * L.Hp};
      }
      dy = b_dy.get(bh);
    }
    dC = b_dC.get((size_t)L.V * L.E);
    row_loss = b_loss.get((size_t)B);
    colsum = b_colsum.get((size_t)(L.Vp + L.L * L.Hp));
    float* hds = b_hd.get(bh * L.L);
    float* dts = b_dt.get(bh * L.L);
    for (int l = 0; l < L.L; ++l) {
      hd[l] = hds + l * bh;
      dt[l] = dts + l * bh;
    }
    table = S = wts = nullptr;
    if (fold) {
      Ep = round_up(L.E, VW);
      table = b_table.get((size_t)L.T * L.V * L.Hp);
      S = b_S.get((size_t)(L.V * table_ld(L.T, L.Hp)));
      wts = b_wts.get((size_t)L.T * L.Hp * Ep);
      memset(wts, 0, sizeof(float) * (size_t)L.T * L.Hp * Ep);  // pads: zero for good, the transposes skip them
    }
    ix = b_ix.get_as<int64_t>((size_t)B);
    for (int i = 0; i < 2; ++i) {
      Xb[i] = b_X[i].get_as<int32_t>((size_t)(B * L.T));
      Yb[i] = b_Y[i].get_as<int32_t>((size_t)B);
    }
  }
};

// Forward and backward of one batch (contexts Xb, targets Yb; ws.emb gathered unless the
// first layer goes through the tables, ws.table), run by every thread of
// the current team (or one thread outside a team). Each thread owns a contiguous range
// of the batch's rows and takes them through every layer's forward pass, the loss and
// the row-wise backward products without waiting for the others; the weight gradients,
// which sum over all rows, are shared out by weight rows (the output layer's fused
// update: by column vectors of W^T, see below). Two barriers (and two more a layer under
// BatchNorm, whose statistics need every row: batchnorm_*_share; and where the first
// layer goes through the tables ws.table, one more before any row reads them, and
// embedding_grad_share's after: fold_first).
// G given: gradients go to G. G null: the SGD update W -= lr * grad is fused into the
// weight-gradient products; the output layer's runs on its transposed copy ws.wt[n]
// (linear_update_transposed_share), which it leaves equal to W[n]^T. Returns the mean
// loss (the same on every thread); if it is not finite nothing is updated. On return
// this thread's share of the weight products is done, not necessarily the others'; demb
// (all rows) is complete, or through the tables this thread's columns of S (the rest
// after embedding_grad_share's barrier). dg given (a diagnostic step): its buffers are filled on the
// way, every layer's (diag-inl.h). out_t_current: ws.wt[n] is already W[n]^T, so its
// transpose is skipped; true only when the previous call was a fused step with the same
// W and ws that ran to its end, and nothing else wrote W[n] since (train_steps).
double step_team(const PadWeights& W, const PadWeights* G, float lr, const Layout& L, int64_t B, const int32_t* Xb,
                 const int32_t* Yb, StepWork& ws, const Dropout& dr, Exec& ex, StepDiag* dg = nullptr, bool out_t_current = false) {
  const int H = L.H, V = L.V, Hp = L.Hp, Vp = L.Vp, n = L.L;
  int64_t r0, r1;
  my_share(B, &r0, &r1);
  const float* in[kMaxLayers + 1];  // each layer's input rows: emb, then the hidden outputs (after dropout)
  in[0] = ws.emb;
  const bool table = ws.table != nullptr;  // the first layer's product through the table (fold_first)
  if (table) {
    table_product_share(W.C, L.V, L.E, L.T, W.W[0], Hp, ws.table);
    team_barrier(ws.bar);
  }
  for (int l = 0; l < n; ++l) {
    if (!L.bn) {  // tanh(x W + b)
      if (l == 0 && table)
        table_sum_rows<true>(ws.table, L.V, L.T, Hp, Xb, W.b[0], ws.h[0], r0, r1, ex);
      else
        linear_forward_rows<true>(in[l], L.ld_in(l), L.fan_in(l), W.W[l], Hp, W.b[l], ws.h[l], r0, r1);
    } else {  // tanh(BN(x W)): the statistics need every row
      if (l == 0 && table)
        table_sum_rows<false>(ws.table, L.V, L.T, Hp, Xb, nullptr, ws.pre[0], r0, r1, ex);
      else
        linear_nobias_forward_rows(in[l], L.ld_in(l), L.fan_in(l), W.W[l], Hp, ws.pre[l], r0, r1);
      team_barrier(ws.bar);
      batchnorm_tanh_forward_share(ws.pre[l], B, Hp, W.gamma[l], W.beta[l], L.eps, ws.xhat[l], ws.h[l],
                                   ws.stats[l]);
      team_barrier(ws.bar);
    }
    in[l + 1] = ws.h[l];
    if (dr.on()) {  // this thread's rows, each layer with its own mask
      dropout_rows(dr.layer(l, n), ws.h[l], H, Hp, r0, r1, ws.hd[l], ws.dt[l]);
      in[l + 1] = ws.hd[l];
    }
    FASTMLP_PHASE(kPhForward);
  }
  if (dg) {  // each layer's tanh input, by the forward's own product (or BatchNorm's gamma xhat + beta)
    for (int l = 0; l < n; ++l) {
      float* pre = dg->pre_of(l);
      if (!L.bn) {
        if (l == 0 && table)
          table_sum_rows<false>(ws.table, L.V, L.T, Hp, Xb, W.b[0], pre, r0, r1, ex);
        else
          linear_forward_rows<false>(in[l], L.ld_in(l), L.fan_in(l), W.W[l], Hp, W.b[l], pre, r0, r1);
      } else {
        for (int64_t i = r0; i < r1; ++i)
          for (int j = 0; j < Hp; j += VW)
            storeu(pre + i * Hp + j, loadu(W.gamma[l] + j) * loadu(ws.xhat[l] + i * Hp + j) + loadu(W.beta[l] + j));
      }
    }
    if (team_rank() == 0) copy_weights(W, dg->before->w, L);  // nothing is updated before the barrier
  }
  const float* hout = in[n];  // what the output layer sees
  linear_forward_rows<false>(hout, Hp, H, W.W[n], Vp, W.b[n], ws.logits, r0, r1);  // logits = h W + b
  FASTMLP_PHASE(kPhLogits);
  xent_rows(ws.logits, Vp, Yb, V, r0, r1, ws.dlogits, 1.0f / (float)B, ws.row_loss, ex);
  FASTMLP_PHASE(kPhXent);
  // and a share of the transposed weights the backward pass reads, made before any update
  // (the output layer's is already current after a fused step: see out_t_current above)
  if (!out_t_current) transpose_share(W.W[n], Vp, H, V, ws.wt[n], Hp);
  for (int l = n - 1; l >= 0; --l)
    if (l > 0 || !table) transpose_share(W.W[l], Hp, L.fan_in(l), H, ws.wt[l], L.Kp(l));
  if (table)  // W[0]'s W_t^T, one below the other, for dC (embedding_grad_share)
    for (int t = 0; t < L.T; ++t)
      transpose_share(W.W[0] + (int64_t)t * L.E * Hp, Hp, L.E, H, ws.wts + (int64_t)t * Hp * ws.Ep, ws.Ep);
  FASTMLP_PHASE(kPhTranspose);
  team_barrier(ws.bar);
  double loss = 0.0;  // every thread sums the same numbers in the same order
  for (int64_t i = 0; i < B; ++i) loss += ws.row_loss[i];
  loss /= (double)B;
  if (!__builtin_isfinite(loss)) return loss;
  FASTMLP_PHASE(kPhOther);

  // this thread's rows, layer by layer down: dpre[l] = tanh_grad(g W[l+1]^T, h[l]) [through
  // the mask] (then through BatchNorm, by columns); demb = dpre[0] W[0]^T (not through the
  // tables: S, below, takes its place)
  const PadWeights* DG = dg && !G ? &dg->grad->w : nullptr;  // a fused step's gradients, kept too
  const float* g = ws.dlogits;
  int64_t ldg = Vp;
  int M = V;
  for (int l = n - 1; l >= 0; --l) {
    float* out = L.bn ? ws.dy : ws.dpre[l];
    if (dr.on())
      linear_backward_input_rows<kMul>(g, ldg, M, ws.wt[l + 1], Hp, out, ws.dt[l], r0, r1);
    else
      linear_backward_input_rows<kTanhGrad>(g, ldg, M, ws.wt[l + 1], Hp, out, ws.h[l], r0, r1);
    if (L.bn) {
      team_barrier(ws.bar);
      const PadWeights* keep = G ? G : DG;  // the gradients go there (with G: instead of the update)
      batchnorm_backward_share(ws.dy, ws.xhat[l], ws.stats[l], B, Hp, W.gamma[l], W.beta[l], ws.dpre[l],
                               keep ? keep->gamma[l] : nullptr, keep ? keep->beta[l] : nullptr, !G, lr,
                               ws.bn_update ? W.run_mean[l] : nullptr, ws.bn_update ? W.run_var[l] : nullptr,
                               L.momentum);
      team_barrier(ws.bar);
    }
    g = ws.dpre[l];
    ldg = Hp;
    M = H;
    FASTMLP_PHASE(kPhDinput);
  }
  if (!table) linear_backward_input_rows<kStore>(ws.dpre[0], Hp, H, ws.wt[0], L.TEp, ws.demb, nullptr, r0, r1);
  FASTMLP_PHASE(kPhDemb);
  if (dg)  // d loss / d(each layer's output): the backward-input product without tanh's epilogue
    for (int l = n - 1; l >= 0; --l) {
      if (l == n - 1)
        linear_backward_input_rows<kStore>(ws.dlogits, Vp, V, ws.wt[n], Hp, dg->dh_of(l), nullptr, r0, r1);
      else
        linear_backward_input_rows<kStore>(ws.dpre[l + 1], Hp, H, ws.wt[l + 1], Hp, dg->dh_of(l), nullptr, r0, r1);
      diag_rows(*dg, L, l, ws.h[l], r0, r1);  // the statistics epilogue of this thread's rows
    }
  if (DG) linear_backward_weight_share(hout, Hp, H, ws.dlogits, Vp, B, DG->W[n], DG->b[n], nullptr, nullptr, 0.f);
  // the weights, which need every row: the output layer's gradient (or its bias's update) now, the
  // rest once all of dpre is there and no thread reads the transposed weights any more
  if (G)
    linear_backward_weight_share(hout, Hp, H, ws.dlogits, Vp, B, G->W[n], G->b[n], nullptr, nullptr, 0.f);
  else
    column_sums_share(ws.dlogits, B, Vp, Vp, ws.colsum, W.b[n], lr);
  team_barrier(ws.bar);
  if (!G) linear_update_transposed_share(hout, Hp, H, ws.dlogits, Vp, V, B, ws.wt[n], Hp, W.W[n], Vp, lr);
  FASTMLP_PHASE(kPhOutUpdate);
  if (dg) diag_grad_rows(*dg, L, r0, r1);  // every row's max |dh| is known now
  for (int l = n - 1; l >= 0; --l) {
    if (l == 0 && table) {  // through the tables: S by symbol, then C^T S_t (table-inl.h)
      table_scatter_share(ws.dpre[0], Hp, Xb, B, L.T, L.V, ws.S, ex);
      float* db = L.bn ? nullptr : ws.colsum + Vp;
      if (DG) table_weight_share(W.C, L.V, L.E, L.T, ws.S, Hp, DG->W[0], nullptr, 0.f);
      if (DG && db) column_sums_share(ws.dpre[0], B, Hp, Hp, DG->b[0], nullptr, 0.f);
      table_weight_share(W.C, L.V, L.E, L.T, ws.S, Hp, G ? G->W[0] : nullptr, G ? nullptr : W.W[0], lr);
      if (db) column_sums_share(ws.dpre[0], B, Hp, Hp, G ? G->b[0] : db, G ? nullptr : W.b[0], lr);
      continue;
    }
    const float* xl = in[l];
    const int64_t ldx = L.ld_in(l);
    const int K = L.fan_in(l);
    if (DG) linear_backward_weight_share(xl, ldx, K, ws.dpre[l], Hp, B, DG->W[l], DG->b[l], nullptr, nullptr, 0.f);
    if (G)
      linear_backward_weight_share(xl, ldx, K, ws.dpre[l], Hp, B, G->W[l], L.bn ? nullptr : G->b[l], nullptr,
                                   nullptr, 0.f);
    else
      linear_backward_weight_share(xl, ldx, K, ws.dpre[l], Hp, B, nullptr,
                                   L.bn ? nullptr : ws.colsum + Vp + (int64_t)l * Hp, W.W[l], W.b[l], lr);
  }
  FASTMLP_PHASE(kPhUpdate);
  return loss;
}

// This thread's share of the embedding table's gradient dC (V, E) for the batch Xb, after
// step_team (which left demb or, through the tables, its share of S), and with C given its
// SGD update C -= lr dC on the same rows. Through the tables dC = S Wts needs every
// thread's columns of S, hence the barrier; every thread has then also finished reading C
// (table_weight_share's C^T S_t), which the update writes.
inline void embedding_grad_share(const Layout& L, int64_t B, const int32_t* Xb, StepWork& ws, float* dC, Exec& ex,
                                 float* C, float lr) {
  if (!ws.table) {
    embedding_backward_share(ws.demb, L.TEp, Xb, B, L.T, L.E, L.V, dC, ex, C, lr);
    return;
  }
  team_barrier(ws.bar);
  gemm_share<kStore>(plan(L.V, L.E, L.T * L.Hp, ws.S, table_ld(L.T, L.Hp), 1, ws.wts, ws.Ep, dC, L.E));
  int64_t v0, v1;
  my_share(L.V, &v0, &v1);  // gemm_share's rows
  if (C && v1 > v0) axpy(C + v0 * L.E, dC + v0 * L.E, (v1 - v0) * L.E, -lr);
}

// This thread's rows of a batch's embeddings, gathered from C into ws.emb. (Not where the
// first layer goes through the tables: then no product reads them.)
inline void gather_share(const PadWeights& W, const Layout& L, int64_t B, const int32_t* Xb, StepWork& ws, Exec& ex) {
  if (ws.table) return;
  int64_t r0, r1;
  my_share(B, &r0, &r1);
  embedding_forward_rows(W.C, L.V, L.E, Xb, L.T, r0, r1, ws.emb, ex);
}

// The example indices of step `step`'s batch: explicit, or drawn with the RNG (which
// advances). Their rows are prefetched, so that the (cache-missing) loads overlap one
// another, and, drawn a step ahead (train_steps), the step's work as well.
inline void draw_batch(const TrainArgs& a, const Layout& L, int64_t step, int64_t* ix, Exec& ex) {
  const int B = a.batch_size;
  for (int b = 0; b < B; ++b) {
    int64_t i = a.batches ? a.batches[step * B + b] : (int64_t)rng_below(a.rng_state, (uint64_t)a.n_examples);
    if ((uint64_t)i >= (uint64_t)a.n_examples) {
      flag_bad_index(ex);
      i = 0;
    }
    ix[b] = i;
    __builtin_prefetch(a.X + i * L.T);
    __builtin_prefetch(a.Y + i);
  }
}

// The contexts X (B, T) and targets Y (B,) of the examples ix. Every value read from the
// caller's arrays is checked: they may have been changed by another thread since the
// bindings checked them.
inline void copy_batch(const TrainArgs& a, const Layout& L, const int64_t* ix, int32_t* X, int32_t* Y, Exec& ex) {
  const int B = a.batch_size, T = L.T;  // (locals: the stores below could alias a and L)
  const uint32_t V = (uint32_t)L.V;
  for (int b = 0; b < B; ++b) {
    const int32_t* src = a.X + ix[b] * T;
    for (int t = 0; t < T; ++t) {
      const int32_t v = src[t];
      if ((uint32_t)v >= V) flag_bad_index(ex);
      X[(int64_t)b * T + t] = (uint32_t)v < V ? v : 0;
    }
    const int32_t y = a.Y[ix[b]];
    if ((uint32_t)y >= V) flag_bad_index(ex);
    Y[b] = (uint32_t)y < V ? y : 0;
  }
}

// The floats a fused step reads and writes: the weights and their transposed copies, and
// each row's activations and gradients, as padded for AVX2 (the lecture's: 41,632, 166
// KB); through the tables, P, S and W[0]'s W_t^T instead of emb, demb and W[0]^T (the large
// configuration's: 729,520, 2.9 MB). C and the biases are left out: a few KB.
inline int64_t step_floats(const Layout& L, int64_t B) {
  int64_t w = (int64_t)L.H * L.Vp;
  for (int l = 0; l < L.L; ++l) w += (int64_t)L.fan_in(l) * L.Hp;
  const int64_t rows = B * (2 * L.Vp + 2 * (int64_t)L.L * L.Hp);
  if (!fold_first(L, B)) return 2 * w + rows + B * (L.TE + L.TEp);
  const int64_t wts = (int64_t)L.T * L.Hp * round_up(L.E, VW), w0t = (int64_t)L.TE * L.Hp;
  return 2 * w - w0t + wts + rows + (int64_t)L.T * L.V * L.Hp + L.V * table_ld(L.T, L.Hp);
}

// The next batch is drawn a step ahead (train_steps) where the step's working set leaves
// its rows in cache: measured in the loop on Zen 3 (benchmarks/step_phases.cpp), the
// lecture's batch took 0.8-1.3 us drawn ahead against 1.35-1.8 drawn at the step's end;
// the large configuration's, whose step moved 2.4 MB, 40-58 us against 19-35 (the rows
// prefetched at the start are gone by the end, and the prefetches cost their page walks).
constexpr int64_t kDrawAheadFloats = 65536;  // 256 KB: half of Zen 3's L2

inline Dropout step_dropout(const TrainArgs& a, int64_t s) {
  Dropout dr;
  dr.p = a.dropout;
  if (a.dropout > 0.f) dr.key = dropout_key(a.dropout_seed, a.step0 + s);
  return dr;
}

// One optimizer step on every parameter tensor (padded layout), shared out over the team.
inline void optimizer_share(const Optimizer& o, const PadWeights& W, const PadWeights& G, const PadWeights& S0,
                            const PadWeights* S1, const Layout& L, float lr, int64_t t) {
  PadWeights w = W, g = G, s0 = S0, s1 = S1 ? *S1 : S0;
  float **p[kMaxTensors], **pg[kMaxTensors], **ps0[kMaxTensors], **ps1[kMaxTensors];
  Tensor sh[kMaxTensors];
  const int count = param_tensors(w, L, p, sh);
  param_tensors(g, L, pg, sh);
  param_tensors(s0, L, ps0, sh);
  param_tensors(s1, L, ps1, sh);
  for (int k = 0; k < count; ++k) {
    const int64_t n = sh[k].rows * sh[k].ld;
    int64_t i0, i1;
    block_share(n, &i0, &i1);
    if (i1 > i0)
      optimizer_rule(o, *p[k] + i0, *pg[k] + i0, *ps0[k] + i0, S1 ? *ps1[k] + i0 : nullptr, i1 - i0, lr, t);
  }
}

inline Params params_of(const MutParams& p) {
  Params q;
  memcpy(&q, &p, sizeof q);  // the same layout of pointers
  return q;
}

// Batches with at least this many multiply-adds a step run on a team (measured on 2
// cores: the lecture's 1.1M already gains).
constexpr int64_t kTeamMacs = 1 << 19;

inline bool use_team(const Layout& L, int64_t B, const Exec& ex) {
  const int64_t macs = 3 * B * L.macs_per_row();
  return ex.threads > 1 && macs >= kTeamMacs;
}

// Mean loss and gradients (in the caller's layout, overwritten) of one batch: the
// training step's own code, with the gradients kept instead of applied.
double mlp_loss_and_grad(const Params& P, const Dims& d, const int32_t* X, const int32_t* Y, int64_t N,
                         const MutParams& grads, const float* dropout_mask, Exec& ex) {
  const Layout L = layout_of(d);
  const PaddedCopy M(P, L);  // only read: step_team writes weights only when G is null
  PaddedCopy G(L);
  StepWork ws;
  ws.prepare(L, N);
  Dropout dr;
  dr.mask = dropout_mask;
  dr.mask_stride = N * d.H;
  double loss = 0.0;
#ifdef _OPENMP
#pragma omp parallel num_threads(ex.threads) if (use_team(L, N, ex))
#endif
  {
    gather_share(M.w, L, N, X, ws, ex);  // the rows this thread's forward pass reads (none through the tables)
    const double l = step_team(M.w, &G.w, 0.f, L, N, X, Y, ws, dr, ex);
    if (__builtin_isfinite(l)) embedding_grad_share(L, N, X, ws, G.w.C, ex, nullptr, 0.f);
    if (team_rank() == 0) loss = l;
  }
  G.copy_out(L, grads);
  return loss;
}

// Runs a.steps steps in place on P. Returns the number completed: fewer when a loss
// became NaN/inf (a.losses[done] holds it; the parameters are those before that step),
// when *a.stop became nonzero (ex.stopped) or an index was out of range (ex.bad_index).
int64_t train_steps(const MutParams& P, const Dims& d, const TrainArgs& a, Exec& ex) {
  const Layout L = layout_of(d);
  PaddedCopy M(params_of(P), L);  // C (and C's optimizer state below) is updated in place
  // With an optimizer the gradients go to G, then its update runs with state S0
  // (momentum buffers or exp_avg) and S1 (exp_avg_sq). Plain SGD needs neither: its
  // update is fused into the gradient products.
  const Optimizer* o = a.opt;
  PaddedCopy* G = nullptr;
  PaddedCopy* S0 = nullptr;
  PaddedCopy* S1 = nullptr;
  struct Owner {  // frees them on every way out, an exception included
    PaddedCopy** p[3];
    ~Owner() {
      for (auto q : p) delete *q;
    }
  } owner{{&G, &S0, &S1}};
  if (o) {
    G = new PaddedCopy(L);
    S0 = new PaddedCopy(params_of(o->slot[0]), L);
    if (o->kind == kAdamW) S1 = new PaddedCopy(params_of(o->slot[1]), L);
  }
  StepWork ws;
  const int64_t B = a.batch_size;
  ws.prepare(L, B);
  ws.bn_update = true;
  ws.bar.profile = ex.profile;
  StepDiag diag;  // the diagnostic steps' buffers, if asked
  if (a.diag) diag.prepare(a.diag, L, B, /*fused=*/G == nullptr, use_team(L, B, ex) ? ex.threads : 1);
  int64_t recorded = 0;  // written by thread 0 before a barrier, read by every thread after it
  int64_t done = 0;
  int quit[2] = {0, 0};  // written by one thread in step s (slot s & 1), read by all after its barrier
  if (a.steps <= 0) return 0;
  draw_batch(a, L, 0, ws.ix, ex);
  copy_batch(a, L, ws.ix, ws.Xb[0], ws.Yb[0], ex);
  if (ex.bad_index) return 0;
  // Drawn ahead (kDrawAheadFloats), the next batch's indices are drawn, and its rows
  // prefetched, when a step starts (thread 0); its rows are copied when it ends. A run that
  // stops or diverges before it uses them gives the RNG back its state from before the
  // draw, so rng_state is the same as if they had never been drawn. (An index out of range
  // is flagged when it is drawn: the call then raises, as it would have a step later.)
  const bool ahead = step_floats(L, B) <= kDrawAheadFloats;
  uint64_t rng_before[4] = {0, 0, 0, 0};
#ifdef _OPENMP
#pragma omp parallel num_threads(ex.threads) if (use_team(L, B, ex))
#endif
  {
    const double t_start = ex.profile ? now_seconds() : 0.0;
    FASTMLP_PHASE(kPhOther);  // (the set-up above)
    gather_share(M.w, L, B, ws.Xb[0], ws, ex);
    FASTMLP_PHASE(kPhGather);
    for (int64_t s = 0; s < a.steps; ++s) {
      const bool drew_ahead = ahead && team_rank() == 0 && s + 1 < a.steps;  // (thread 0's)
      if (drew_ahead) {
        if (!a.batches) memcpy(rng_before, a.rng_state, sizeof rng_before);
        draw_batch(a, L, s + 1, ws.ix, ex);
      }
      FASTMLP_PHASE(kPhBatch);
      const float lr = a.lrs[s];
      // every step that did not finish left the loop, and only the fused update writes W[n]
      // here: after a fused step, its transposed copy is current (step_team)
      const bool out_t_current = !G && s > 0;
      const int cur = (int)(s & 1), nxt = cur ^ 1;
      // every thread takes the same decision: `recorded` changes only after the step's last barrier
      StepDiag* dg = a.diag && (a.step0 + s) % a.diag->every == 0 && recorded < a.diag->capacity ? &diag : nullptr;
      const double loss =
          step_team(M.w, G ? &G->w : nullptr, lr, L, B, ws.Xb[cur], ws.Yb[cur], ws, step_dropout(a, s), ex, dg,
                    out_t_current);
      if (!__builtin_isfinite(loss)) {  // every thread sees the same loss: all leave together
        if (team_rank() == 0) {
          a.losses[s] = (float)loss;
          done = s;
          if (drew_ahead && !a.batches) memcpy(a.rng_state, rng_before, sizeof rng_before);
        }
        break;
      }
      // the embedding table: dC on this thread's rows of C, and its SGD update there
      embedding_grad_share(L, B, ws.Xb[cur], ws, G ? G->w.C : ws.dC, ex, G ? nullptr : M.w.C, lr);
      FASTMLP_PHASE(kPhEmbBackward);
      if (G) {  // the optimizer needs every gradient
        team_barrier(ws.bar);
        optimizer_share(*o, M.w, G->w, S0->w, S1 ? &S1->w : nullptr, L, lr, o->step + s + 1);
        FASTMLP_PHASE(kPhOther);
      }
      // one thread: the bookkeeping and the next batch; the barrier ends the step
      if (team_rank() == 0) {
        a.losses[s] = (float)loss;
        done = s + 1;
        int q = (a.stop && *a.stop) ? 1 : 0;
        if (q) ex.stopped = 1;
        if (q && drew_ahead && !a.batches) memcpy(a.rng_state, rng_before, sizeof rng_before);
        if (!q && s + 1 < a.steps) {
          if (!ahead) draw_batch(a, L, s + 1, ws.ix, ex);
          copy_batch(a, L, ws.ix, ws.Xb[nxt], ws.Yb[nxt], ex);
          q = ex.bad_index;
        }
        quit[cur] = q;
      }
      FASTMLP_PHASE(kPhBatch);
      team_barrier(ws.bar);
      if (dg) {  // every update of the step is done; nothing of the next one has started
        if (team_rank() == 0) {
          PadWeights g = G ? G->w : diag.grad->w;
          if (!G) g.C = ws.dC;  // the fused step's embedding gradient
          diag_record(diag, L, B, loss, ws.h, M.w, g, recorded);
          ++recorded;
        }
        team_barrier(ws.bar);
      }
      if (quit[cur] || s + 1 == a.steps) break;
      FASTMLP_PHASE(kPhOther);
      // the only rows this thread's next forward reads; or none, and the next step's tables read
      // all of C and W[0], which the barrier above leaves updated
      gather_share(M.w, L, B, ws.Xb[nxt], ws, ex);
      FASTMLP_PHASE(kPhGather);
    }
    if (ex.profile) ex.profile[2 * team_rank() + 1] += now_seconds() - t_start;
  }
  M.copy_out(L, P);
  if (S0) S0->copy_out(L, o->slot[0]);
  if (S1) S1->copy_out(L, o->slot[1]);
  FASTMLP_PHASE(kPhOther);  // (and the copies out)
  return done;
}
