// Diagnostics of a training step (makemore part 3, "Activations & Gradients"): what each
// hidden layer's rows and the step's gradients and updates look like. The training step
// fills the buffers as it goes (step_team, with a StepDiag): the pre-activations by the
// same row-range product as the forward pass, d loss / d(layer output) by the same
// backward-input product, the gradients of a fused-SGD step by the same weight-gradient
// products. Each thread then takes its own rows through the statistics epilogues
// (diag_rows, diag_grad_rows: per-row sums, integer counts), and diag_record adds them up
// in row order, so a record is the same for any thread count. The layout: kernels.h.

constexpr int kLanes = 4;  // sub-histograms per histogram (histogram_row)

// What a diagnostic step keeps, for each hidden layer l; allocated before the parallel region.
struct StepDiag {
  const DiagArgs* a = nullptr;
  Buf b_pre, b_dh, b_counts, b_rows, b_rowmax;
  float *pre = nullptr, *dh = nullptr;  // (L, B, Hp): tanh's input, and d loss / d(layer output)
  int64_t* counts = nullptr;            // per thread and layer, per_thread(bins, H): 3 histograms in 4 lanes,
                                        // then each unit's saturated rows
  double* rows = nullptr;               // (L, B, 6): per row, sum and sum of squares of pre, h, dh
  float* rowmax = nullptr;              // (L, B): per row, max |dh|
  int threads = 1, layers = 1;
  int64_t B = 0, Hp = 0;
  static int64_t per_thread(int bins, int H) { return 3 * kLanes * (int64_t)bins + H; }
  float* pre_of(int l) const { return pre + l * B * Hp; }
  float* dh_of(int l) const { return dh + l * B * Hp; }
  PaddedCopy* before = nullptr;         // the parameters before the step
  PaddedCopy* grad = nullptr;           // the gradients, when the SGD update is fused (no G)
  StepDiag() = default;
  StepDiag(const StepDiag&) = delete;
  StepDiag& operator=(const StepDiag&) = delete;
  ~StepDiag() {
    delete before;
    delete grad;
  }
  void prepare(const DiagArgs* args, const Layout& L, int64_t batch, bool fused, int max_threads) {
    a = args;
    threads = max_threads;
    layers = L.L;
    B = batch;
    Hp = L.Hp;
    pre = b_pre.get((size_t)(L.L * B * L.Hp));
    dh = b_dh.get((size_t)(L.L * B * L.Hp));
    const size_t n = (size_t)(max_threads * L.L * per_thread(args->bins, L.H));
    counts = b_counts.get_as<int64_t>(n);
    memset(counts, 0, sizeof(int64_t) * n);  // (a smaller team leaves some untouched)
    rows = b_rows.get_as<double>((size_t)(6 * B * L.L));
    rowmax = b_rowmax.get((size_t)(B * L.L));
    before = new PaddedCopy(L);
    if (fused) grad = new PaddedCopy(L);
  }
  int64_t* counts_of(int thread, int l, const Layout& L) const {
    return counts + ((int64_t)thread * layers + l) * per_thread(a->bins, L.H);
  }
};

inline void copy_weights(const PadWeights& src, const PadWeights& dst, const Layout& L) {
  PadWeights s = src, d = dst;
  float **ps[kMaxTensors], **pd[kMaxTensors];
  Tensor sh[kMaxTensors];
  const int n = param_tensors(s, L, ps, sh);
  param_tensors(d, L, pd, sh);
  for (int k = 0; k < n; ++k) memcpy(*pd[k], *ps[k], sizeof(float) * (size_t)(sh[k].rows * sh[k].ld));
}

// Mean and unbiased standard deviation of x (rows, cols; leading dimension ld), minus
// `sub` (laid out alike) if given. One pass in double, shifted by the first value (no
// cancellation when the mean is large against the spread), four accumulators a row.
inline void moments(const float* x, const float* sub, int64_t rows, int cols, int64_t ld, double* mean, double* sd) {
  const double n = (double)rows * cols;
  const double k = (double)x[0] - (sub ? (double)sub[0] : 0.0);
  double s[4] = {0, 0, 0, 0}, q[4] = {0, 0, 0, 0};
  for (int64_t i = 0; i < rows; ++i) {
    const float* xi = x + i * ld;
    const float* si = sub ? sub + i * ld : nullptr;
    int j = 0;
    for (; j + 4 <= cols; j += 4)
      for (int u = 0; u < 4; ++u) {
        const double d = (double)xi[j + u] - (si ? (double)si[j + u] : 0.0) - k;
        s[u] += d;
        q[u] += d * d;
      }
    for (; j < cols; ++j) {
      const double d = (double)xi[j] - (si ? (double)si[j] : 0.0) - k;
      s[0] += d;
      q[0] += d * d;
    }
  }
  const double S = (s[0] + s[1]) + (s[2] + s[3]), Q = (q[0] + q[1]) + (q[2] + q[3]);
  *mean = k + S / n;
  *sd = n > 1 ? sqrt(fmax(0.0, (Q - S * S / n) / (n - 1))) : NAN;  // torch.std of one element is nan too
}

// Mean and unbiased std from a sum and a sum of squares over n values.
inline void from_sums(double S, double Q, double n, double* mean, double* sd) {
  *mean = S / n;
  *sd = n > 1 ? sqrt(fmax(0.0, (Q - S * S / n) / (n - 1))) : NAN;
}

// counts (kLanes, bins) += the histogram of row x (cols) over [lo, lo + bins / scale);
// outside: the end bins. Value j counts in lane j % kLanes: runs of one bin (a saturated
// layer's) do not wait on each other's increments. (A cast truncates: below 0 is bin 0.)
inline void histogram_row(const float* x, int cols, double lo, double scale, int bins, int64_t* counts) {
  for (int j = 0; j < cols; ++j) {
    const double t = ((double)x[j] - lo) * scale;
    counts[(j % kLanes) * bins + (t <= 0.0 ? 0 : t >= bins ? bins - 1 : (int)t)] += 1;
  }
}

inline void row_sums(const float* x, int cols, double* sum, double* sumsq) {
  double s[4] = {0, 0, 0, 0}, q[4] = {0, 0, 0, 0};
  int j = 0;
  for (; j + 4 <= cols; j += 4)
    for (int u = 0; u < 4; ++u) {
      const double d = x[j + u];
      s[u] += d;
      q[u] += d * d;
    }
  for (; j < cols; ++j) {
    s[0] += x[j];
    q[0] += (double)x[j] * x[j];
  }
  *sum = (s[0] + s[1]) + (s[2] + s[3]);
  *sumsq = (q[0] + q[1]) + (q[2] + q[3]);
}

// Layer l, this thread's rows [r0, r1), once pre, h and dh hold them: per-row sums, the
// pre and tanh histograms and the per-unit saturation counts in this thread's counters.
inline void diag_rows(StepDiag& dg, const Layout& L, int l, const float* h, int64_t r0, int64_t r1) {
  const int H = L.H, Hp = L.Hp, bins = dg.a->bins;
  int64_t* c = dg.counts_of(team_rank(), l, L);
  for (int64_t i = 0; i < StepDiag::per_thread(bins, H); ++i) c[i] = 0;
  int64_t* sat = c + 3 * kLanes * bins;
  const float thr = dg.a->sat;
  const float *pre = dg.pre_of(l), *dh = dg.dh_of(l);
  for (int64_t i = r0; i < r1; ++i) {
    const float *p = pre + i * Hp, *t = h + i * Hp, *g = dh + i * Hp;
    double* r = dg.rows + 6 * (l * dg.B + i);
    row_sums(p, H, &r[0], &r[1]);
    row_sums(t, H, &r[2], &r[3]);
    row_sums(g, H, &r[4], &r[5]);
    histogram_row(p, H, -dg.a->pre_range, bins / (2.0 * dg.a->pre_range), bins, c);
    histogram_row(t, H, -1.0, bins / 2.0, bins, c + kLanes * bins);
    float m = 0.f;
    for (int j = 0; j < H; ++j) {
      sat[j] += fabsf(t[j]) > thr;
      m = fmaxf(m, fabsf(g[j]));
    }
    dg.rowmax[l * dg.B + i] = m;
  }
}

// max |dh| of layer l over every row (once every thread's diag_rows is done)
inline double grad_absmax(const StepDiag& dg, int l) {
  float m = 0.f;
  for (int64_t i = 0; i < dg.B; ++i) m = fmaxf(m, dg.rowmax[l * dg.B + i]);
  return (double)m;
}

// The range of the gradient's histogram: [-max |dh|, max |dh|], or [-1, 1] if all are zero.
inline double grad_range(const StepDiag& dg, int l) {
  const double m = grad_absmax(dg, l);
  return m > 0.0 ? m : 1.0;
}

// This thread's rows of every layer's dh into its gradient histograms (after a barrier
// that follows diag_rows).
inline void diag_grad_rows(StepDiag& dg, const Layout& L, int64_t r0, int64_t r1) {
  const int bins = dg.a->bins;
  for (int l = 0; l < L.L; ++l) {
    int64_t* c = dg.counts_of(team_rank(), l, L) + 2 * kLanes * bins;
    const double g = grad_range(dg, l);
    for (int64_t i = r0; i < r1; ++i) histogram_row(dg.dh_of(l) + i * L.Hp, L.H, -g, bins / (2.0 * g), bins, c);
  }
}

// The record (layout: kernels.h), by thread 0 once the step is done: the threads' counts
// and the rows' sums added up (in row order), and the parameters' moments. h: the layers'
// outputs; after: the parameters now; grad: the step's gradients.
inline void diag_record(const StepDiag& dg, const Layout& L, int64_t B, double loss, float* const* h,
                        const PadWeights& after, const PadWeights& grad, int64_t row) {
  const DiagArgs& a = *dg.a;
  const int H = L.H, Hp = L.Hp, bins = a.bins;
  PadWeights p = dg.before->w, pn = after, pg = grad;
  float **P[kMaxTensors], **Pn[kMaxTensors], **G[kMaxTensors];
  Tensor sh[kMaxTensors];
  const int count = param_tensors(p, L, P, sh);
  param_tensors(pn, L, Pn, sh);
  param_tensors(pg, L, G, sh);
  const int64_t len = FASTMLP_DIAG_RECORD_LENGTH(bins, L.L, count);
  double* out = a.out + row * len;
  for (int64_t i = 0; i < len; ++i) out[i] = 0.0;
  out[0] = loss;
  for (int l = 0; l < L.L; ++l) {
    double* hist = out + 1 + (int64_t)l * (3 * bins + 9);
    double* st = hist + 3 * bins;  // the layer's scalars
    int64_t saturated = 0, dead = 0;
    for (int j = 0; j < H; ++j) {
      int64_t col = 0;
      for (int t = 0; t < dg.threads; ++t) col += dg.counts_of(t, l, L)[3 * kLanes * bins + j];
      saturated += col;
      dead += col == B;
    }
    for (int k = 0; k < 3; ++k)
      for (int b = 0; b < bins; ++b) {
        int64_t n = 0;
        for (int t = 0; t < dg.threads; ++t)
          for (int u = 0; u < kLanes; ++u) n += dg.counts_of(t, l, L)[(k * kLanes + u) * bins + b];
        hist[k * bins + b] = (double)n;
      }
    double S[6] = {0, 0, 0, 0, 0, 0};
    for (int64_t i = 0; i < B; ++i)
      for (int k = 0; k < 6; ++k) S[k] += dg.rows[6 * (l * B + i) + k];
    const double n = (double)B * H;
    from_sums(S[0], S[1], n, &st[0], &st[1]);
    from_sums(S[2], S[3], n, &st[2], &st[3]);
    st[4] = (double)saturated / n;
    st[5] = (double)dead;
    from_sums(S[4], S[5], n, &st[6], &st[7]);
    st[8] = grad_absmax(dg, l);
    if (a.act && row == 0)
      for (int64_t i = 0; i < B; ++i) memcpy(a.act + (l * B + i) * H, h[l] + i * Hp, sizeof(float) * H);
  }
  // every parameter tensor, in the parameters' order: their real (unpadded) entries
  double* ps = out + 1 + (int64_t)L.L * (3 * bins + 9);
  for (int k = 0; k < count; ++k) {
    double m;
    moments(*P[k], nullptr, sh[k].rows, sh[k].cols, sh[k].ld, &m, &ps[3 * k]);
    moments(*G[k], nullptr, sh[k].rows, sh[k].cols, sh[k].ld, &m, &ps[3 * k + 1]);
    moments(*Pn[k], *P[k], sh[k].rows, sh[k].cols, sh[k].ld, &m, &ps[3 * k + 2]);
  }
}
