// Diagnostics of a training step (makemore part 3, "Activations & Gradients"): what the
// hidden layer's rows and the step's gradients and updates look like. The training step
// fills the buffers as it goes (step_team, with a StepDiag): the pre-activations by the
// same row-range product as the forward pass, d loss / d(layer output) by the same
// backward-input product, the gradients of a fused-SGD step by the same weight-gradient
// products; diag_record then makes one pass over them. The record's layout: kernels.h.

// What a diagnostic step keeps; allocated before the parallel region.
struct StepDiag {
  const DiagArgs* a = nullptr;
  Buf b_pre, b_dh;
  float *pre = nullptr, *dh = nullptr;  // (B, Hp): emb W1 + b1, and d loss / d(hout)
  PaddedCopy* before = nullptr;         // the parameters before the step
  PaddedCopy* grad = nullptr;           // the gradients, when the SGD update is fused (no G)
  StepDiag() = default;
  StepDiag(const StepDiag&) = delete;
  StepDiag& operator=(const StepDiag&) = delete;
  ~StepDiag() {
    delete before;
    delete grad;
  }
  void prepare(const DiagArgs* args, const Layout& L, int64_t B, bool fused) {
    a = args;
    pre = b_pre.get((size_t)(B * L.Hp));
    dh = b_dh.get((size_t)(B * L.Hp));
    before = new PaddedCopy(L);
    if (fused) grad = new PaddedCopy(L);
  }
};

inline void copy_weights(const PadWeights& src, const PadWeights& dst, const Layout& L) {
  memcpy(dst.C, src.C, sizeof(float) * L.V * L.E);
  memcpy(dst.W1, src.W1, sizeof(float) * L.TE * L.Hp);
  memcpy(dst.b1, src.b1, sizeof(float) * L.Hp);
  memcpy(dst.W2, src.W2, sizeof(float) * L.H * L.Vp);
  memcpy(dst.b2, src.b2, sizeof(float) * L.Vp);
}

// Mean and unbiased standard deviation of x (rows, cols; leading dimension ld), minus
// `sub` (laid out alike) if given; two passes in double.
inline void moments(const float* x, const float* sub, int64_t rows, int cols, int64_t ld, double* mean, double* sd) {
  const double n = (double)rows * cols;
  double s = 0.0;
  for (int64_t i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) s += (double)x[i * ld + j] - (sub ? (double)sub[i * ld + j] : 0.0);
  const double m = s / n;
  double q = 0.0;
  for (int64_t i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) {
      const double d = (double)x[i * ld + j] - (sub ? (double)sub[i * ld + j] : 0.0) - m;
      q += d * d;
    }
  *mean = m;
  *sd = n > 1 ? sqrt(q / (n - 1)) : NAN;  // torch.std of one element is nan too
}

// counts[bins] += the histogram of x (rows, cols; ld) over [lo, hi); outside: the end bins
inline void histogram(const float* x, int64_t rows, int cols, int64_t ld, double lo, double hi, int bins,
                      double* counts) {
  const double scale = bins / (hi - lo);
  for (int64_t i = 0; i < rows; ++i)
    for (int j = 0; j < cols; ++j) {
      const double k = floor(((double)x[i * ld + j] - lo) * scale);
      counts[k < 0 ? 0 : k >= bins ? bins - 1 : (int64_t)k] += 1.0;
    }
}

// One pass over a diagnostic step's buffers: the record of kernels.h's DiagArgs. h is the
// batch's tanh output (B, Hp); after the parameters once the step is done; grad its gradients.
inline void diag_record(const StepDiag& dg, const Layout& L, int64_t B, double loss, const float* h,
                        const PadWeights& after, const PadWeights& grad) {
  const DiagArgs& a = *dg.a;
  const int H = L.H, Hp = L.Hp, bins = a.bins;
  double* out = a.out;
  for (int i = 0; i < kDiagFixed + 3 * bins; ++i) out[i] = 0.0;
  out[0] = loss;
  double* hist = out + 1;
  double* st = hist + 3 * bins;  // the layer's scalars, then the parameters'
  histogram(dg.pre, B, H, Hp, -a.pre_range, a.pre_range, bins, hist);
  histogram(h, B, H, Hp, -1.0, 1.0, bins, hist + bins);
  moments(dg.pre, nullptr, B, H, Hp, &st[0], &st[1]);
  moments(h, nullptr, B, H, Hp, &st[2], &st[3]);
  int64_t saturated = 0, dead = 0;
  for (int j = 0; j < H; ++j) {
    int64_t col = 0;
    for (int64_t i = 0; i < B; ++i) col += fabsf(h[i * Hp + j]) > a.sat;
    saturated += col;
    dead += col == B;
  }
  st[4] = (double)saturated / ((double)B * H);
  st[5] = (double)dead;
  float gmax = 0.f;
  for (int64_t i = 0; i < B; ++i)
    for (int j = 0; j < H; ++j) gmax = fmaxf(gmax, fabsf(dg.dh[i * Hp + j]));
  const double g_range = gmax > 0.f ? (double)gmax : 1.0;
  histogram(dg.dh, B, H, Hp, -g_range, g_range, bins, hist + 2 * bins);
  moments(dg.dh, nullptr, B, H, Hp, &st[6], &st[7]);
  st[8] = g_range;
  // C, W1, b1, W2, b2: their real (unpadded) entries
  const PadWeights& p = dg.before->w;
  const float* P[5] = {p.C, p.W1, p.b1, p.W2, p.b2};
  const float* Pn[5] = {after.C, after.W1, after.b1, after.W2, after.b2};
  const float* G[5] = {grad.C, grad.W1, grad.b1, grad.W2, grad.b2};
  const int64_t rows[5] = {L.V, L.TE, 1, L.H, 1};
  const int cols[5] = {L.E, H, H, L.V, L.V};
  const int64_t ld[5] = {L.E, Hp, Hp, L.Vp, L.Vp};
  double* ps = st + 9;
  for (int k = 0; k < 5; ++k) {
    double m;
    moments(P[k], nullptr, rows[k], cols[k], ld[k], &m, &ps[3 * k]);
    moments(G[k], nullptr, rows[k], cols[k], ld[k], &m, &ps[3 * k + 1]);
    moments(Pn[k], P[k], rows[k], cols[k], ld[k], &m, &ps[3 * k + 2]);
  }
  if (a.act)
    for (int64_t i = 0; i < B; ++i) memcpy(a.act + i * H, h + i * Hp, sizeof(float) * H);
}
