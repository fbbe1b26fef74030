// Optimizer updates, element-wise, with the rules of torch.optim: SGD (plain, with
// momentum / Nesterov / weight decay) and AdamW. Element-wise work splits any way
// without changing a result.

// p (n,) += alpha * g
inline void axpy(float* p, const float* g, int64_t n, float alpha) {
  const vf a = splat(alpha);
  int64_t i = 0;
  for (; i + VW <= n; i += VW) storeu(p + i, loadu(p + i) + a * loadu(g + i));
  for (; i < n; ++i) p[i] = p[i] + alpha * g[i];
}

// torch.optim.SGD with momentum: g += wd * p; buf = momentum * buf + g;
// p -= lr * (nesterov ? g + momentum * buf : buf). A zero buffer makes the first
// step buf = g, as torch's clone does. Plain loops: the compiler vectorises them.
// The bindings refuse overlapping arrays, so __restrict holds.
inline void momentum_rule(float* __restrict p, const float* __restrict g, float* __restrict buf, int64_t n, float lr,
                          float momentum, bool nesterov, float weight_decay) {
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i] + weight_decay * p[i];
    const float b = momentum * buf[i] + gi;
    buf[i] = b;
    p[i] = p[i] - lr * (nesterov ? gi + momentum * b : b);
  }
}

// torch.optim.AdamW step t (1-based): p *= 1 - lr*wd; m = lerp(m, g, 1 - beta1);
// v = beta2*v + (1 - beta2)*g^2; p -= lr/(1 - beta1^t) * m / (sqrt(v)/sqrt(1 - beta2^t) + eps).
inline void adamw_rule(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v,
                       int64_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t) {
  const float step_size = (float)((double)lr / (1.0 - pow((double)beta1, (double)t)));
  const float bc2_sqrt = (float)sqrt(1.0 - pow((double)beta2, (double)t));
  const float decay = (float)(1.0 - (double)lr * (double)weight_decay);
  const float w1 = 1.f - beta1, w2 = 1.f - beta2;
  for (int64_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = m[i] + w1 * (gi - m[i]);
    const float vi = v[i] * beta2 + w2 * gi * gi;
    const float denom = sqrtf(vi) / bc2_sqrt + eps;
    p[i] = p[i] * decay - step_size * (mi / denom);
    m[i] = mi;
    v[i] = vi;
  }
}

// One update of n elements at learning rate lr, step number t (1-based, AdamW's bias
// correction): o.slot[0]/[1] point at the same elements of the state arrays.
inline void optimizer_rule(const Optimizer& o, float* p, const float* g, float* s0, float* s1, int64_t n, float lr,
                           int64_t t) {
  if (o.kind == kAdamW)
    adamw_rule(p, g, s0, s1, n, lr, o.beta1, o.beta2, o.eps, o.weight_decay, t);
  else
    momentum_rule(p, g, s0, n, lr, o.momentum, o.nesterov, o.weight_decay);
}

// This thread's share of n elements, in blocks of 64 floats.
inline void block_share(int64_t n, int64_t* i0, int64_t* i1) {
  int64_t b, e;
  my_share((n + 63) / 64, &b, &e);
  *i0 = b * 64;
  *i1 = min64(e * 64, n);
}

// ---------------------------------------------------------------------------
// Standalone kernels (one tensor)
// ---------------------------------------------------------------------------

// p -= lr * g
void sgd_update(float* p, const float* g, int64_t n, float lr, Exec& ex) {
#ifdef _OPENMP
#pragma omp parallel num_threads(ex.threads) if (ex.threads > 1 && n >= (1 << 20))
#endif
  {
    int64_t i0, i1;
    block_share(n, &i0, &i1);
    if (i1 > i0) axpy(p + i0, g + i0, i1 - i0, -lr);
  }
}

// One optimizer step (o.kind kMomentum or kAdamW, step number o.step + 1) on one
// tensor p (n,) with gradient g and state s0 (momentum buffer / exp_avg), s1 (exp_avg_sq).
void optimizer_update(const Optimizer& o, float* p, const float* g, float* s0, float* s1, int64_t n, float lr,
                      Exec& ex) {
#ifdef _OPENMP
#pragma omp parallel num_threads(ex.threads) if (ex.threads > 1 && n >= (1 << 18))
#endif
  {
    int64_t i0, i1;
    block_share(n, &i0, &i1);
    if (i1 > i0) optimizer_rule(o, p + i0, g + i0, s0 + i0, s1 ? s1 + i0 : nullptr, i1 - i0, lr, o.step + 1);
  }
}
