// fastmlp kernels, compiled once per instruction set (see CMakeLists.txt).
//
// Layers are forward/backward pairs of plain functions; the whole-model passes
// (forward, chunked loss, loss+grad, the fused training loop, the sampler) are
// built from them at the bottom of the file.
//
// Everything lives in an anonymous namespace so that the copies compiled for
// different ISAs never meet at link time; the only exported symbol is the
// KernelTable `kernels_<isa>`. For the same reason this file uses no std::
// templates (their out-of-line copies are shared across translation units).
//
// Vectors use the GCC/Clang vector extension: one source, lowered to SSE2,
// AVX2+FMA, AVX-512 or NEON by the flags the build passes.
//
// Determinism: every output element is computed by one thread, in a fixed
// order, so results do not depend on the number of OpenMP threads.
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "rng.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#ifndef FASTMLP_ISA
#error "FASTMLP_ISA must name the build (generic, avx2, avx512)"
#endif
#define FASTMLP_CAT2(a, b) a##b
#define FASTMLP_CAT(a, b) FASTMLP_CAT2(a, b)
#define FASTMLP_STR2(a) #a
#define FASTMLP_STR(a) FASTMLP_STR2(a)

namespace fastmlp {
namespace {

// ---------------------------------------------------------------------------
// SIMD vocabulary
// ---------------------------------------------------------------------------
#if defined(__AVX512F__)
constexpr int VW = 16;     // floats per register
constexpr int GEMM_MR = 4;  // rows of a register tile
constexpr int GEMM_NV = 4;  // registers per tile row
#elif defined(__AVX2__)
constexpr int VW = 8;
constexpr int GEMM_MR = 4;
constexpr int GEMM_NV = 3;
#else
constexpr int VW = 4;
constexpr int GEMM_MR = 4;
constexpr int GEMM_NV = 3;
#endif

typedef float vf __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VW * sizeof(int32_t))));

inline vf splat(float a) { return vf{} + a; }
inline vf loadu(const float* p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}
inline void storeu(float* p, vf v) { memcpy(p, &v, sizeof v); }
// First n (<= VW) lanes from p, the rest zero.
inline vf load_part(const float* p, int n) {
  if (n >= VW) return loadu(p);
  vf v = {};
  memcpy(&v, p, (size_t)n * sizeof(float));
  return v;
}
inline void store_part(float* p, vf v, int n) {
  if (n >= VW)
    storeu(p, v);
  else
    memcpy(p, &v, (size_t)n * sizeof(float));
}
inline vf select(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < VW; ++i) s += v[i];
  return s;
}
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int round_up(int n, int m) { return (n + m - 1) / m * m; }

// exp(x) for float32, Cephes' expf: Cody-Waite reduction by ln 2 and a degree-5
// polynomial, ~1 ulp over the range. Inputs above 88.37 are clamped (the result
// stays finite); results below the smallest normal float (x < -87.33) are flushed
// to 0, an absolute error below 1.2e-38; NaN propagates.
inline vf exp_v(vf x) {
  const vf hi = splat(88.3762626647949f), lo = splat(-87.3365447504019f);
  const vi underflow = x < lo;
  x = select(x > hi, hi, x);
  x = select(underflow, lo, x);
  // round(x / ln2) by the 1.5 * 2^23 trick (exact for |x / ln2| < 2^22)
  const vf magic = splat(12582912.0f);
  vf fx = (x * splat(1.44269504088896341f) + magic) - magic;
  x = x - fx * splat(0.693359375f);
  x = x - fx * splat(-2.12194440e-4f);
  vf z = x * x;
  vf y = splat(1.9875691500E-4f);
  y = y * x + splat(1.3981999507E-3f);
  y = y * x + splat(8.3334519073E-3f);
  y = y * x + splat(4.1665795894E-2f);
  y = y * x + splat(1.6666665459E-1f);
  y = y * x + splat(5.0000001201E-1f);
  y = y * z + x + splat(1.0f);
  vi n = __builtin_convertvector(fx, vi);
  vf pow2n = (vf)((n + 127) << 23);
  return select(underflow, vf{}, y * pow2n);
}

// tanh(x) for float32 (Cephes' tanhf): an odd polynomial for |x| < 0.625,
// 1 - 2 / (exp(2|x|) + 1) above, sign restored. A few ulp; NaN propagates.
inline vf tanh_v(vf x) {
  const vi sign_mask = (vi){} + (int32_t)0x80000000;
  vi sign = (vi)x & sign_mask;
  vf ax = (vf)((vi)x & ~sign_mask);
  vf z = x * x;
  vf p = splat(-5.70498872745E-3f);
  p = p * z + splat(2.06390887954E-2f);
  p = p * z + splat(-5.37397155531E-2f);
  p = p * z + splat(1.33314422036E-1f);
  p = p * z + splat(-3.33332819422E-1f);
  vf small = p * z * ax + ax;
  vf e = exp_v(ax + ax);
  vf big = splat(1.0f) - splat(2.0f) / (e + splat(1.0f));
  vf r = select(ax < splat(0.625f), small, big);
  return (vf)((vi)r | sign);
}

// Growable, 64-byte aligned float buffer (malloc based: see the note on templates above).
struct Buf {
  float* p = nullptr;
  size_t cap = 0;
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { free(p); }
  float* get(size_t n) {
    if (n > cap) {
      free(p);
      size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
      p = (float*)aligned_alloc(64, bytes);
      if (!p) abort();  // the bindings cap sizes well below what a machine can hold
      cap = n;
    }
    return p;
  }
};

inline int max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// Threads pay off only above this many multiply-adds per product: below it the
// fork/join costs more than the arithmetic (measured: benchmarks/bench_kernels.py).
constexpr int64_t kParallelMacs = 1 << 20;

// ---------------------------------------------------------------------------
// GEMM: C (M, N) = A (M, K) @ B (K, N), then an epilogue.
// A is addressed by strides, A(i, p) = A[i*sai + p*sap], so A^T costs nothing.
// B and C are row-major with leading dimensions ldb, ldc.
// ---------------------------------------------------------------------------
enum Epilogue {
  kStore,        // C = A B
  kBias,         // C = A B + bias
  kBiasTanh,     // C = tanh(A B + bias)
  kAccumScaled,  // C += alpha * A B   (fused SGD update: alpha = -lr)
};

template <int MR, int NV, int EPI>
inline void gemm_tile(int K, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb,
                      float* C, int64_t ldc, int ncols, const float* bias, float alpha) {
  vf acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = vf{};
  for (int p = 0; p < K; ++p) {
    const float* bp = B + (int64_t)p * ldb;
    vf b[NV];
    for (int v = 0; v < NV; ++v) b[v] = loadu(bp + v * VW);
    const float* ap = A + (int64_t)p * sap;
    for (int r = 0; r < MR; ++r) {
      const vf a = splat(ap[r * sai]);
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int v = 0; v < NV; ++v) {
    const int n = ncols - v * VW < VW ? ncols - v * VW : VW;
    vf bv = {};
    if (EPI == kBias || EPI == kBiasTanh) bv = load_part(bias + v * VW, n);
    for (int r = 0; r < MR; ++r) {
      float* c = C + r * ldc + v * VW;
      vf x = acc[r][v];
      if (EPI == kBias) x += bv;
      if (EPI == kBiasTanh) x = tanh_v(x + bv);
      if (EPI == kAccumScaled) x = load_part(c, n) + splat(alpha) * x;
      store_part(c, x, n);
    }
  }
}

template <int EPI, int MR>
inline void gemm_tile_nv(int nv, int K, const float* A, int64_t sai, int64_t sap, const float* B,
                         int64_t ldb, float* C, int64_t ldc, int ncols, const float* bias, float alpha) {
  switch (nv) {
    case 1: gemm_tile<MR, 1, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, bias, alpha); break;
    case 2: gemm_tile<MR, 2, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, bias, alpha); break;
    case 3: gemm_tile<MR, 3, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, bias, alpha); break;
    default:
      if constexpr (GEMM_NV >= 4) gemm_tile<MR, 4, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, bias, alpha);
      break;
  }
}

template <int EPI>
inline void gemm_tile_any(int mr, int nv, int K, const float* A, int64_t sai, int64_t sap,
                          const float* B, int64_t ldb, float* C, int64_t ldc, int ncols,
                          const float* bias, float alpha) {
  static_assert(GEMM_MR == 4, "tile dispatch below assumes 4 rows");
  switch (mr) {
    case 1: gemm_tile_nv<EPI, 1>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, bias, alpha); break;
    case 2: gemm_tile_nv<EPI, 2>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, bias, alpha); break;
    case 3: gemm_tile_nv<EPI, 3>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, bias, alpha); break;
    default: gemm_tile_nv<EPI, 4>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, bias, alpha); break;
  }
}

// Copies B (K, N) into a zero-padded (K, round_up(N, VW)) buffer so every tile
// can load whole vectors without reading past the end of B.
inline const float* pad_columns(const float* B, int64_t ldb, int K, int N, Buf& pack, int64_t* ld_out) {
  const int np = round_up(N, VW);
  if (np == N) {
    *ld_out = ldb;
    return B;
  }
  float* P = pack.get((size_t)K * np);
  for (int p = 0; p < K; ++p) {
    memcpy(P + (int64_t)p * np, B + (int64_t)p * ldb, (size_t)N * sizeof(float));
    memset(P + (int64_t)p * np + N, 0, (size_t)(np - N) * sizeof(float));
  }
  *ld_out = np;
  return P;
}

// b_padded: B already has readable (zero) columns up to round_up(N, VW) in each row.
template <int EPI>
void gemm(int64_t M, int N, int K, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb,
          bool b_padded, float* C, int64_t ldc, const float* bias, float alpha, Buf& pack) {
  if (M <= 0 || N <= 0) return;
  int64_t ld = ldb;
  const float* Bp = b_padded ? B : pad_columns(B, ldb, K, N, pack, &ld);
  const int cols_per_block = GEMM_NV * VW;
  const int64_t row_blocks = (M + GEMM_MR - 1) / GEMM_MR;
  const int64_t col_blocks = (N + cols_per_block - 1) / cols_per_block;
  const int64_t tasks = row_blocks * col_blocks;
  const bool parallel = max_threads() > 1 && M * (int64_t)N * K >= kParallelMacs && tasks > 1;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (parallel)
#endif
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t cb = t / row_blocks, rb = t % row_blocks;  // column block outer: B block stays in cache
    const int64_t i0 = rb * GEMM_MR;
    const int j0 = (int)(cb * cols_per_block);
    const int mr = (int)min64(GEMM_MR, M - i0);
    const int ncols = N - j0 < cols_per_block ? N - j0 : cols_per_block;
    const int nv = (ncols + VW - 1) / VW;
    gemm_tile_any<EPI>(mr, nv, K, A + i0 * sai, sai, sap, Bp + j0, ld, C + i0 * ldc + j0, ldc, ncols,
                       bias ? bias + j0 : nullptr, alpha);
  }
  (void)parallel;
}

// WT (N, ldt) = W (K, N)^T, rows zero-padded from K to ldt = round_up(K, VW) columns.
inline float* transpose_padded(const float* W, int K, int N, Buf& out, int64_t* ldt) {
  const int kp = round_up(K, VW);
  float* T = out.get((size_t)N * kp);
  for (int j = 0; j < N; ++j) {
    float* row = T + (int64_t)j * kp;
    for (int k = 0; k < K; ++k) row[k] = W[(int64_t)k * N + j];
    for (int k = K; k < kp; ++k) row[k] = 0.f;
  }
  *ldt = kp;
  return T;
}

// db (M,) = column sums of g (N, M), in row order.
inline void column_sums(const float* g, int64_t N, int M, float* db) {
  int j = 0;
  for (; j + VW <= M; j += VW) {
    vf s = {};
    for (int64_t i = 0; i < N; ++i) s += loadu(g + i * M + j);
    storeu(db + j, s);
  }
  for (; j < M; ++j) {
    float s = 0.f;
    for (int64_t i = 0; i < N; ++i) s += g[i * M + j];
    db[j] = s;
  }
}

// p (n,) += alpha * g
inline void axpy(float* p, const float* g, int64_t n, float alpha) {
  const vf a = splat(alpha);
  int64_t i = 0;
  for (; i + VW <= n; i += VW) storeu(p + i, loadu(p + i) + a * loadu(g + i));
  for (; i < n; ++i) p[i] = p[i] + alpha * g[i];
}

// ---------------------------------------------------------------------------
// Layers: forward / backward pairs
// ---------------------------------------------------------------------------

// emb (N, T*E) = C[X]                 C (V, E), X (N, T)
void embedding_forward(const float* C, const int32_t* X, float* emb, int64_t N, int T, int E) {
  const int64_t rows = N * T;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (max_threads() > 1 && rows * E >= (1 << 18))
#endif
  for (int64_t r = 0; r < rows; ++r) memcpy(emb + r * E, C + (int64_t)X[r] * E, (size_t)E * sizeof(float));
}

// dC (V, E) += scatter(d_emb (N, T*E)) by X (N, T): one pass in example order, so
// repeated indices accumulate in the same order on every run.
void embedding_backward(const float* d_emb, const int32_t* X, float* dC, int64_t N, int T, int E) {
  const int64_t rows = N * T;
  for (int64_t r = 0; r < rows; ++r) {
    float* dst = dC + (int64_t)X[r] * E;
    const float* src = d_emb + r * E;
    for (int e = 0; e < E; ++e) dst[e] += src[e];
  }
}

// y (N, M) = x (N, K) @ W (K, M) + b (M,), optionally tanh'd.
void linear_forward(const float* x, const float* W, const float* b, float* y, int64_t N, int K, int M,
                    bool apply_tanh) {
  Buf pack;
  if (apply_tanh)
    gemm<kBiasTanh>(N, M, K, x, K, 1, W, M, false, y, M, b, 1.f, pack);
  else
    gemm<kBias>(N, M, K, x, K, 1, W, M, false, y, M, b, 1.f, pack);
}

// dpre (n,) = dy * (1 - y^2): the tanh derivative from the stored output.
inline void tanh_backward(const float* dy, const float* y, float* dpre, int64_t n) {
  const vf one = splat(1.f);
  int64_t i = 0;
  for (; i + VW <= n; i += VW) {
    const vf yv = loadu(y + i);
    storeu(dpre + i, loadu(dy + i) * (one - yv * yv));
  }
  for (; i < n; ++i) dpre[i] = dy[i] * (1.f - y[i] * y[i]);
}

// From dy (N, M): dx (N, K) = g W^T, dW (K, M) = x^T g, db = sum_rows g,
// where g = dy, or dy * (1 - y^2) when y_tanh (the forward's tanh output) is given.
struct LinearBackwardWork {
  Buf dpre, wt, pack;
};
void linear_backward_ws(const float* dy, const float* x, const float* W, const float* y_tanh, float* dx,
                        float* dW, float* db, int64_t N, int K, int M, LinearBackwardWork& ws) {
  const float* g = dy;
  if (y_tanh) {
    float* d = ws.dpre.get((size_t)(N * M));
    tanh_backward(dy, y_tanh, d, N * M);
    g = d;
  }
  column_sums(g, N, M, db);
  gemm<kStore>(K, M, (int)N, x, 1, K, g, M, false, dW, M, nullptr, 1.f, ws.pack);
  if (dx) {
    int64_t ldt;
    const float* WT = transpose_padded(W, K, M, ws.wt, &ldt);
    gemm<kStore>(N, K, M, g, M, 1, WT, ldt, true, dx, K, nullptr, 1.f, ws.pack);
  }
}
void linear_backward(const float* dy, const float* x, const float* W, const float* y_tanh, float* dx,
                     float* dW, float* db, int64_t N, int K, int M) {
  LinearBackwardWork ws;
  linear_backward_ws(dy, x, W, y_tanh, dx, dW, db, N, K, M, ws);
}

// Softmax cross-entropy of one row z (V,) with target y: returns the loss; if
// d is given, writes d(loss)/dz * scale. Subtracting the row max keeps exp finite.
inline float xent_row(const float* z, int32_t y, int V, float* d, float scale) {
  float m = z[0];
  for (int v = 1; v < V; ++v) m = z[v] > m ? z[v] : m;
  const vf mv = splat(m);
  vf sumv = {};
  const vi lane = []() {
    vi l;
    for (int i = 0; i < VW; ++i) l[i] = i;
    return l;
  }();
  for (int v = 0; v < V; v += VW) {
    const int n = V - v < VW ? V - v : VW;
    vf e = exp_v(load_part(z + v, n) - mv);
    e = select(lane < n, e, vf{});
    sumv += e;
    if (d) store_part(d + v, e, n);
  }
  const float sum = hsum(sumv);
  // NaN anywhere in the row makes the max comparisons skip it, but not the sum.
  const float loss = logf(sum) - (z[y] - m);
  if (d) {
    const vf k = splat(scale / sum);
    for (int v = 0; v < V; v += VW) {
      const int n = V - v < VW ? V - v : VW;
      store_part(d + v, load_part(d + v, n) * k, n);
    }
    d[y] -= scale;
  }
  return loss;
}

constexpr int64_t kXentBlock = 256;  // rows per partial sum: fixed, so sums do not depend on threads

double cross_entropy(const float* logits, const int32_t* Y, float* dlogits, int64_t N, int V) {
  if (N <= 0) return 0.0;
  const float scale = 1.0f / (float)N;
  const int64_t blocks = (N + kXentBlock - 1) / kXentBlock;
  if (blocks == 1) {
    double s = 0.0;
    for (int64_t i = 0; i < N; ++i)
      s += xent_row(logits + i * V, Y[i], V, dlogits ? dlogits + i * V : nullptr, scale);
    return s;
  }
  double* partial = (double*)malloc((size_t)blocks * sizeof(double));
  if (!partial) abort();
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (max_threads() > 1 && N * V >= (1 << 16))
#endif
  for (int64_t b = 0; b < blocks; ++b) {
    double s = 0.0;
    const int64_t end = min64(N, (b + 1) * kXentBlock);
    for (int64_t i = b * kXentBlock; i < end; ++i)
      s += xent_row(logits + i * V, Y[i], V, dlogits ? dlogits + i * V : nullptr, scale);
    partial[b] = s;
  }
  double total = 0.0;
  for (int64_t b = 0; b < blocks; ++b) total += partial[b];
  free(partial);
  return total;
}

// p -= lr * g
void sgd_update(float* p, const float* g, int64_t n, float lr) {
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (max_threads() > 1 && n >= (1 << 20))
#endif
  for (int64_t b = 0; b < (n + 4095) / 4096; ++b) {
    const int64_t i0 = b * 4096;
    axpy(p + i0, g + i0, min64(4096, n - i0), -lr);
  }
}

// ---------------------------------------------------------------------------
// Whole-model passes
// ---------------------------------------------------------------------------

// Rows per chunk for inference: emb, h and logits of a chunk stay in L2.
constexpr int64_t kChunk = 256;

struct ForwardWork {
  Buf emb, h, logits, pack;
};

// logits (n, V) for rows X (n, T), n <= kChunk, single-threaded.
inline void forward_rows(const Params& P, const Dims& d, const int32_t* X, int64_t n, float* logits,
                         ForwardWork& ws) {
  const int TE = d.T * d.E;
  float* emb = ws.emb.get((size_t)(n * TE));
  float* h = ws.h.get((size_t)(n * d.H));
  for (int64_t r = 0; r < n * d.T; ++r) memcpy(emb + r * d.E, P.C + (int64_t)X[r] * d.E, (size_t)d.E * 4);
  gemm<kBiasTanh>(n, d.H, TE, emb, TE, 1, P.W1, d.H, false, h, d.H, P.b1, 1.f, ws.pack);
  gemm<kBias>(n, d.V, d.H, h, d.H, 1, P.W2, d.V, false, logits, d.V, P.b2, 1.f, ws.pack);
}

void mlp_forward(const Params& P, const Dims& d, const int32_t* X, int64_t N, float* logits) {
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  const int64_t macs_per_row = (int64_t)d.T * d.E * d.H + (int64_t)d.H * d.V;
#ifdef _OPENMP
#pragma omp parallel if (max_threads() > 1 && chunks > 1 && N * macs_per_row >= kParallelMacs)
#endif
  {
    ForwardWork ws;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t i0 = c * kChunk, n = min64(kChunk, N - i0);
      forward_rows(P, d, X + i0 * d.T, n, logits + i0 * d.V, ws);
    }
  }
  (void)macs_per_row;
}

double mlp_loss_sum(const Params& P, const Dims& d, const int32_t* X, const int32_t* Y, int64_t N) {
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  if (chunks <= 0) return 0.0;
  double* partial = (double*)malloc((size_t)chunks * sizeof(double));
  if (!partial) abort();
  const int64_t macs_per_row = (int64_t)d.T * d.E * d.H + (int64_t)d.H * d.V;
#ifdef _OPENMP
#pragma omp parallel if (max_threads() > 1 && chunks > 1 && N * macs_per_row >= kParallelMacs)
#endif
  {
    ForwardWork ws;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t i0 = c * kChunk, n = min64(kChunk, N - i0);
      float* logits = ws.logits.get((size_t)(n * d.V));
      forward_rows(P, d, X + i0 * d.T, n, logits, ws);
      double s = 0.0;
      for (int64_t i = 0; i < n; ++i) s += xent_row(logits + i * d.V, Y[i0 + i], d.V, nullptr, 0.f);
      partial[c] = s;
    }
  }
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  free(partial);
  (void)macs_per_row;
  return total;
}

// Workspace of one training step with batch B (or one loss_and_grad call).
struct StepWork {
  Buf emb, h, logits, dlogits, dh, dpre, demb, wt1, wt2, pack, colsum, dC;
};

// Forward and backward of one batch. If lr is 0 the gradients are written to G;
// otherwise the SGD update p -= lr * grad is applied to P in place (fused into
// the weight-gradient products) and G is not touched.
// Returns the mean loss, or NaN/inf (without updating) when the loss is not finite.
double step(const MutParams& P, const MutParams* G, float lr, const Dims& d, const int32_t* X, const int32_t* Y,
            int64_t B, StepWork& ws) {
  const int TE = d.T * d.E, H = d.H, V = d.V;
  float* emb = ws.emb.get((size_t)(B * TE));
  float* h = ws.h.get((size_t)(B * H));
  float* logits = ws.logits.get((size_t)(B * V));
  float* dlogits = ws.dlogits.get((size_t)(B * V));
  float* dh = ws.dh.get((size_t)(B * H));
  float* dpre = ws.dpre.get((size_t)(B * H));
  float* demb = ws.demb.get((size_t)(B * TE));

  // forward
  embedding_forward(P.C, X, emb, B, d.T, d.E);
  gemm<kBiasTanh>(B, H, TE, emb, TE, 1, P.W1, H, false, h, H, P.b1, 1.f, ws.pack);
  gemm<kBias>(B, V, H, h, H, 1, P.W2, V, false, logits, V, P.b2, 1.f, ws.pack);
  const double loss = cross_entropy(logits, Y, dlogits, B, V) / (double)B;
  if (!__builtin_isfinite(loss)) return loss;

  // backward; every product reads the parameters before their update
  int64_t ld;
  const float* W2T = transpose_padded(P.W2, H, V, ws.wt2, &ld);
  gemm<kStore>(B, H, V, dlogits, V, 1, W2T, ld, true, dh, H, nullptr, 1.f, ws.pack);  // dh = dlogits W2^T
  tanh_backward(dh, h, dpre, B * H);
  const float* W1T = transpose_padded(P.W1, TE, H, ws.wt1, &ld);
  gemm<kStore>(B, TE, H, dpre, H, 1, W1T, ld, true, demb, TE, nullptr, 1.f, ws.pack);  // demb = dpre W1^T

  if (G) {
    column_sums(dlogits, B, V, G->b2);
    gemm<kStore>(H, V, (int)B, h, 1, H, dlogits, V, false, G->W2, V, nullptr, 1.f, ws.pack);
    column_sums(dpre, B, H, G->b1);
    gemm<kStore>(TE, H, (int)B, emb, 1, TE, dpre, H, false, G->W1, H, nullptr, 1.f, ws.pack);
    memset(G->C, 0, (size_t)d.V * d.E * sizeof(float));
    embedding_backward(demb, X, G->C, B, d.T, d.E);
  } else {
    float* colsum = ws.colsum.get((size_t)(H > V ? H : V));
    column_sums(dlogits, B, V, colsum);
    axpy(P.b2, colsum, V, -lr);
    gemm<kAccumScaled>(H, V, (int)B, h, 1, H, dlogits, V, false, P.W2, V, nullptr, -lr, ws.pack);
    column_sums(dpre, B, H, colsum);
    axpy(P.b1, colsum, H, -lr);
    gemm<kAccumScaled>(TE, H, (int)B, emb, 1, TE, dpre, H, false, P.W1, H, nullptr, -lr, ws.pack);
    // dC is accumulated in full first, as autograd does, then applied once per row
    float* dC = ws.dC.get((size_t)d.V * d.E);
    memset(dC, 0, (size_t)d.V * d.E * sizeof(float));
    embedding_backward(demb, X, dC, B, d.T, d.E);
    axpy(P.C, dC, (int64_t)d.V * d.E, -lr);
  }
  return loss;
}

double mlp_loss_and_grad(const Params& P, const Dims& d, const int32_t* X, const int32_t* Y, int64_t N,
                         const MutParams& G) {
  StepWork ws;
  // step() only writes P when lr != 0; here it is only read
  const MutParams mp{const_cast<float*>(P.C), const_cast<float*>(P.W1), const_cast<float*>(P.b1),
                     const_cast<float*>(P.W2), const_cast<float*>(P.b2)};
  return step(mp, &G, 0.f, d, X, Y, N, ws);
}

int64_t train_steps(const MutParams& P, const Dims& d, const TrainArgs& a) {
  StepWork ws;
  const int B = a.batch_size;
  int32_t* Xb = (int32_t*)malloc((size_t)B * d.T * sizeof(int32_t));
  int32_t* Yb = (int32_t*)malloc((size_t)B * sizeof(int32_t));
  if (!Xb || !Yb) abort();
  int64_t done = 0;
  for (; done < a.steps; ++done) {
    for (int b = 0; b < B; ++b) {
      const int64_t ix = a.batches ? a.batches[done * B + b] : (int64_t)rng_below(a.rng_state, (uint64_t)a.n_examples);
      memcpy(Xb + (int64_t)b * d.T, a.X + ix * d.T, (size_t)d.T * sizeof(int32_t));
      Yb[b] = a.Y[ix];
    }
    const double loss = step(P, nullptr, a.lrs[done], d, Xb, Yb, B, ws);
    a.losses[done] = (float)loss;
    if (!__builtin_isfinite(loss)) break;
  }
  free(Xb);
  free(Yb);
  return done;
}

// Samples words in batches: all words of a batch advance one character per
// forward pass. Word i draws from its own stream seeded by (seed, i).
void sample(const Params& P, const Dims& d, const SampleArgs& a) {
  constexpr int64_t kBatch = 256;
  const int64_t batches = (a.n_samples + kBatch - 1) / kBatch;
#ifdef _OPENMP
#pragma omp parallel if (max_threads() > 1 && batches > 1)
#endif
  {
    ForwardWork ws;
    Buf logits_buf, prob_buf;
    int32_t* ctx = (int32_t*)malloc((size_t)kBatch * d.T * sizeof(int32_t));
    uint64_t(*rng)[4] = (uint64_t(*)[4])malloc((size_t)kBatch * sizeof(uint64_t[4]));
    unsigned char* alive = (unsigned char*)malloc(kBatch);
    if (!ctx || !rng || !alive) abort();
#ifdef _OPENMP
#pragma omp for schedule(dynamic)
#endif
    for (int64_t bi = 0; bi < batches; ++bi) {
      const int64_t w0 = bi * kBatch, n = min64(kBatch, a.n_samples - w0);
      memset(ctx, 0, (size_t)n * d.T * sizeof(int32_t));
      memset(alive, 1, (size_t)n);
      memset(a.out + w0 * a.max_len, 0, (size_t)(n * a.max_len) * sizeof(int32_t));
      for (int64_t i = 0; i < n; ++i) rng_seed(rng[i], a.seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(w0 + i + 1)));
      float* logits = logits_buf.get((size_t)(n * d.V));
      float* prob = prob_buf.get((size_t)d.V);
      int64_t n_alive = n;
      for (int pos = 0; pos < a.max_len && n_alive > 0; ++pos) {
        forward_rows(P, d, ctx, n, logits, ws);
        for (int64_t i = 0; i < n; ++i) {
          if (!alive[i]) continue;
          const float* z = logits + i * d.V;
          // keep the top_k largest logits: threshold = k-th largest value
          float thresh = -INFINITY;
          if (a.top_k > 0 && a.top_k < d.V) {
            for (int v = 0; v < d.V; ++v) prob[v] = z[v];
            for (int k = 0; k < a.top_k; ++k) {  // partial selection sort, descending
              int best = k;
              for (int v = k + 1; v < d.V; ++v)
                if (prob[v] > prob[best]) best = v;
              const float t = prob[k];
              prob[k] = prob[best];
              prob[best] = t;
            }
            thresh = prob[a.top_k - 1];
          }
          float m = -INFINITY;
          for (int v = 0; v < d.V; ++v) m = z[v] > m ? z[v] : m;
          double total = 0.0;
          for (int v = 0; v < d.V; ++v) {
            const float p = z[v] >= thresh ? expf((z[v] - m) / a.temperature) : 0.f;
            prob[v] = p;
            total += p;
          }
          const double u = (double)rng_uniform(rng[i]) * total;
          double c = 0.0;
          int32_t ix = 0;
          for (int v = 0; v < d.V; ++v) {
            if (prob[v] <= 0.f) continue;
            c += prob[v];
            ix = v;
            if (u < c) break;
          }
          a.out[(w0 + i) * a.max_len + pos] = ix;
          int32_t* row = ctx + i * d.T;
          memmove(row, row + 1, (size_t)(d.T - 1) * sizeof(int32_t));
          row[d.T - 1] = ix;
          if (ix == 0) {
            alive[i] = 0;
            --n_alive;
          }
        }
      }
    }
    free(ctx);
    free(rng);
    free(alive);
  }
}

}  // namespace

extern const KernelTable FASTMLP_CAT(kernels_, FASTMLP_ISA) = {
    FASTMLP_STR(FASTMLP_ISA),
    VW,
    embedding_forward,
    embedding_backward,
    linear_forward,
    linear_backward,
    cross_entropy,
    sgd_update,
    mlp_forward,
    mlp_loss_sum,
    mlp_loss_and_grad,
    train_steps,
    sample,
};

}  // namespace fastmlp
