// Benchmark support, not a model kernel: the machine's FMA peak, for the benchmark's
// "achieved vs peak" column. 12 independent chains of `iters` vector FMAs each
// (12 * VW * 2 * iters flops).
void fma_loop(int64_t iters, float* sink) {
  vf a[12];
  for (int i = 0; i < 12; ++i) a[i] = splat(1e-3f * (float)i);
  const vf m = splat(1.0000001f), b = splat(0.9999999f);
  for (int64_t it = 0; it < iters; ++it) {
    for (int i = 0; i < 12; ++i) a[i] = a[i] * m + b;  // without -ffast-math nothing folds this
  }
  vf t = {};
  for (int i = 0; i < 12; ++i) t += a[i];
  *sink = hsum(t);
}
