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
#if defined(__AVX2__)
#include <immintrin.h>  // only for the 8x8 transpose; intrinsics are always inlined
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
constexpr int GEMM_MR = 6;  // rows of a register tile
constexpr int GEMM_NV = 4;  // registers per tile row
#elif defined(__AVX2__)
constexpr int VW = 8;
constexpr int GEMM_MR = 6;
constexpr int GEMM_NV = 2;
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
inline vf vmax(vf a, vf b) { return select(a > b, a, b); }  // NaN in a is skipped

// Horizontal sum and max: a tree of shuffles where the compiler has
// __builtin_shufflevector (GCC >= 12, Clang), lane by lane elsewhere.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#if defined(__AVX512F__)
#define FASTMLP_FOLD(v, OP)                                                                      \
  v = OP(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7)); \
  v = OP(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11)); \
  v = OP(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13)); \
  v = OP(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14));
#elif defined(__AVX2__)
#define FASTMLP_FOLD(v, OP)                                                 \
  v = OP(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3));        \
  v = OP(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5));        \
  v = OP(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6));
#else
#define FASTMLP_FOLD(v, OP)                                 \
  v = OP(v, __builtin_shufflevector(v, v, 2, 3, 0, 1));    \
  v = OP(v, __builtin_shufflevector(v, v, 1, 0, 3, 2));
#endif
inline vf vadd(vf a, vf b) { return a + b; }
inline float hsum(vf v) {
  FASTMLP_FOLD(v, vadd)
  return v[0];
}
inline float hmax(vf v) {
  FASTMLP_FOLD(v, vmax)
  return v[0];
}
#undef FASTMLP_FOLD
#else
inline float hsum(vf v) {
  float s = 0.f;
  for (int i = 0; i < VW; ++i) s += v[i];
  return s;
}
inline float hmax(vf v) {
  float m = v[0];
  for (int i = 1; i < VW; ++i) m = v[i] > m ? v[i] : m;
  return m;
}
#endif
inline vi lane_index() {
  vi l;
  for (int i = 0; i < VW; ++i) l[i] = i;
  return l;
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

// A contiguous share of [0, n) for this thread of the team (all of it outside a team).
inline void my_share(int64_t n, int64_t* begin, int64_t* end) {
#ifdef _OPENMP
  const int64_t nt = omp_get_num_threads(), id = omp_get_thread_num();
#else
  const int64_t nt = 1, id = 0;
#endif
  *begin = n * id / nt;
  *end = n * (id + 1) / nt;
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
  kTanhGrad,     // C = (A B) * (1 - Hm^2), Hm a matrix laid out like C (tanh backward)
  kMul,          // C = (A B) * Hm (tanh backward through a dropout mask, Hm = mask * (1 - h^2))
};

// ep: the epilogue's operand (the bias row for kBias/kBiasTanh, the matrix Hm for kTanhGrad).
template <int MR, int NV, int EPI>
inline void gemm_tile(int K, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb,
                      float* C, int64_t ldc, int ncols, const float* ep, float alpha) {
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
    if (EPI == kBias || EPI == kBiasTanh) bv = load_part(ep + v * VW, n);
    for (int r = 0; r < MR; ++r) {
      float* c = C + r * ldc + v * VW;
      vf x = acc[r][v];
      if (EPI == kBias) x += bv;
      if (EPI == kBiasTanh) x = tanh_v(x + bv);
      if (EPI == kAccumScaled) x = load_part(c, n) + splat(alpha) * x;
      if (EPI == kTanhGrad) {
        const vf hv = load_part(ep + r * ldc + v * VW, n);
        x = x * (splat(1.f) - hv * hv);
      }
      if (EPI == kMul) x = x * load_part(ep + r * ldc + v * VW, n);
      store_part(c, x, n);
    }
  }
}

template <int EPI, int MR>
inline void gemm_tile_nv(int nv, int K, const float* A, int64_t sai, int64_t sap, const float* B,
                         int64_t ldb, float* C, int64_t ldc, int ncols, const float* ep, float alpha) {
  switch (nv) {
    case 1: gemm_tile<MR, 1, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha); break;
    case 2: gemm_tile<MR, 2, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha); break;
    case 3: gemm_tile<MR, 3, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha); break;
    default:
      if constexpr (GEMM_NV >= 4) gemm_tile<MR, 4, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha);
      break;
  }
}

template <int EPI>
inline void gemm_tile_any(int mr, int nv, int K, const float* A, int64_t sai, int64_t sap,
                          const float* B, int64_t ldb, float* C, int64_t ldc, int ncols,
                          const float* ep, float alpha) {
  static_assert(GEMM_MR >= 4 && GEMM_MR <= 6, "tile dispatch below handles 4 to 6 rows");
  switch (mr) {
    case 1: gemm_tile_nv<EPI, 1>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha); break;
    case 2: gemm_tile_nv<EPI, 2>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha); break;
    case 3: gemm_tile_nv<EPI, 3>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha); break;
    case 4: gemm_tile_nv<EPI, 4>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha); break;
    case 5:
      if constexpr (GEMM_MR >= 5) gemm_tile_nv<EPI, 5>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha);
      break;
    default:
      if constexpr (GEMM_MR >= 6) gemm_tile_nv<EPI, 6>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha);
      break;
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

// One product's operands. Every output element is computed by one register tile,
// accumulating over K in order, whatever the tiling: results do not depend on how
// rows are shared out.
struct GemmPlan {
  int64_t M;
  int N, K;
  const float* A;
  int64_t sai, sap;
  const float* B;  // readable (zero) columns up to round_up(N, VW) in each row
  int64_t ldb;
  float* C;
  int64_t ldc;
  const float* ep;
  float alpha;
};

inline GemmPlan plan(int64_t M, int N, int K, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb,
                     float* C, int64_t ldc, const float* ep, float alpha) {
  return {M, N, K, A, sai, sap, B, ldb, C, ldc, ep, alpha};
}

// Rows [r0, r1) of the product, all column blocks, in tiles of GEMM_MR rows.
template <int EPI>
inline void gemm_rows(const GemmPlan& g, int64_t r0, int64_t r1) {
  const int cols_per_block = GEMM_NV * VW;
  for (int j0 = 0; j0 < g.N; j0 += cols_per_block) {  // column block outer: B block stays in cache
    const int ncols = g.N - j0 < cols_per_block ? g.N - j0 : cols_per_block;
    const int nv = (ncols + VW - 1) / VW;
    for (int64_t i0 = r0; i0 < r1; i0 += GEMM_MR) {
      const int mr = (int)min64(GEMM_MR, r1 - i0);
      const float* ept = EPI == kTanhGrad || EPI == kMul ? g.ep + i0 * g.ldc + j0 : (g.ep ? g.ep + j0 : nullptr);
      gemm_tile_any<EPI>(mr, nv, g.K, g.A + i0 * g.sai, g.sai, g.sap, g.B + j0, g.ldb, g.C + i0 * g.ldc + j0, g.ldc,
                         ncols, ept, g.alpha);
    }
  }
}

// The rows of the product shared out over the current OpenMP team, in equal
// contiguous ranges (serial outside a team). NOWAIT skips the barrier at the end.
// Row ranges keep the work balanced and let a thread go on with the same rows of
// the next product without waiting for the others.
template <int EPI, bool NOWAIT = false>
inline void gemm_team(const GemmPlan& g) {
  int64_t r0, r1;
  my_share(g.M, &r0, &r1);
  gemm_rows<EPI>(g, r0, r1);
#ifdef _OPENMP
  if constexpr (!NOWAIT) {
#pragma omp barrier
  }
#endif
}

// A standalone product: pads B if needed (b_padded: it already has readable zero
// columns up to round_up(N, VW)), and uses all threads when it is big enough.
template <int EPI>
void gemm(int64_t M, int N, int K, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb,
          bool b_padded, float* C, int64_t ldc, const float* ep, float alpha, Buf& pack) {
  if (M <= 0 || N <= 0) return;
  int64_t ld = ldb;
  const float* Bp = b_padded ? B : pad_columns(B, ldb, K, N, pack, &ld);
  const GemmPlan g = plan(M, N, K, A, sai, sap, Bp, ld, C, ldc, ep, alpha);
  const bool parallel = max_threads() > 1 && M * (int64_t)N * K >= kParallelMacs && M > GEMM_MR;
#ifdef _OPENMP
#pragma omp parallel if (parallel)
#endif
  gemm_team<EPI>(g);
  (void)parallel;
}

// out (rows, E) = C[X] for rows = N * T indices. A plain loop: for rows of a few
// floats a memcpy call costs more than the copy.
inline void gather(const float* C, int E, const int32_t* X, int64_t rows, float* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = C + (int64_t)X[r] * E;
    float* dst = out + r * E;
    for (int e = 0; e < E; ++e) dst[e] = src[e];
  }
}

// dC (V, E) += rows of g (N*T rows of E floats, row n*T+t at n*ldg + t*E), in order
inline void scatter_add(const float* g, int64_t ldg, const int32_t* X, int64_t N, int T, int E, float* dC) {
  for (int64_t n = 0; n < N; ++n)
    for (int t = 0; t < T; ++t) {
      float* dst = dC + (int64_t)X[n * T + t] * E;
      const float* src = g + n * ldg + (int64_t)t * E;
      for (int e = 0; e < E; ++e) dst[e] += src[e];
    }
}

// out (cols, ldo) = W (rows, ldw)^T restricted to `rows` x `cols`, zero in columns [rows, ldo)
inline void transpose_pad(const float* W, int rows, int cols, int64_t ldw, float* out, int ldo) {
  for (int j = 0; j < cols; ++j) {
    float* o = out + (int64_t)j * ldo;
    for (int k = 0; k < rows; ++k) o[k] = W[(int64_t)k * ldw + j];
    for (int k = rows; k < ldo; ++k) o[k] = 0.f;
  }
}

// db (M,) = column sums of g (N, M) with leading dimension ld, in row order
inline void column_sums_ld(const float* g, int64_t N, int M, int64_t ld, float* db) {
  int j = 0;
  for (; j + VW <= M; j += VW) {
    vf s = {};
    for (int64_t i = 0; i < N; ++i) s += loadu(g + i * ld + j);
    storeu(db + j, s);
  }
  for (; j < M; ++j) {
    float s = 0.f;
    for (int64_t i = 0; i < N; ++i) s += g[i * ld + j];
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
  const int64_t rows = N * T, block = 4096;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (max_threads() > 1 && rows * E >= (1 << 18))
#endif
  for (int64_t r0 = 0; r0 < rows; r0 += block) gather(C, E, X + r0, min64(block, rows - r0), emb + r0 * E);
}

// dC (V, E) += scatter(d_emb (N, T*E)) by X (N, T): one pass in example order, so
// repeated indices accumulate in the same order on every run.
void embedding_backward(const float* d_emb, const int32_t* X, float* dC, int64_t N, int T, int E) {
  scatter_add(d_emb, (int64_t)T * E, X, N, T, E, dC);
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
  column_sums_ld(g, N, M, M, db);
  gemm<kStore>(K, M, (int)N, x, 1, K, g, M, false, dW, M, nullptr, 1.f, ws.pack);
  if (dx) {
    const int kp = round_up(K, VW);
    float* WT = ws.wt.get((size_t)M * kp);
    transpose_pad(W, K, M, M, WT, kp);  // (M, kp)
    gemm<kStore>(N, K, M, g, M, 1, WT, kp, true, dx, K, nullptr, 1.f, ws.pack);
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
  const vi lane = lane_index();
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

// The same for a row padded to whole vectors: z and d hold round_up(V, VW) floats;
// the pad lanes of z are ignored and those of d set to 0. No partial loads.
inline float xent_row_padded(const float* z, int32_t y, int V, float* d, float scale) {
  const vi lane = lane_index();
  const vf neg_inf = splat(-INFINITY);
  vf mv = neg_inf;
  for (int v = 0; v < V; v += VW) mv = vmax(select(lane < V - v, loadu(z + v), neg_inf), mv);
  const float m = hmax(mv);
  const vf msplat = splat(m);
  vf sumv = {};
  for (int v = 0; v < V; v += VW) {
    const vf e = select(lane < V - v, exp_v(loadu(z + v) - msplat), vf{});
    sumv += e;
    if (d) storeu(d + v, e);
  }
  const float sum = hsum(sumv);
  const float loss = logf(sum) - (z[y] - m);
  if (d) {
    const vf k = splat(scale / sum);
    for (int v = 0; v < V; v += VW) storeu(d + v, loadu(d + v) * k);
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

// torch.optim.SGD with momentum: g += wd * p; buf = momentum * buf + g;
// p -= lr * (nesterov ? g + momentum * buf : buf). A zero buffer makes the first
// step buf = g, as torch's clone does. Plain loops: the compiler vectorises them.
void momentum_update(float* __restrict p, const float* __restrict g, float* __restrict buf, int64_t n, float lr,
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
void adamw_update(float* __restrict p, const float* __restrict g, float* __restrict m, float* __restrict v, int64_t n,
                  float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t) {
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

// ---------------------------------------------------------------------------
// Whole-model passes
//
// They work on a padded copy of the weights: every row of W1, W2 and the biases
// is zero-padded to whole vectors (H -> Hp, V -> Vp), so no product has to pad or
// mask an operand. The pad columns stay exactly zero through training, since
// their gradients are zero. C is never padded: a gather reads E floats.
// ---------------------------------------------------------------------------
struct Layout {
  int V, T, E, H, TE, Hp, Vp, TEp;
};
inline Layout layout_of(const Dims& d) {
  return {d.V, d.T, d.E, d.H, d.T * d.E, round_up(d.H, VW), round_up(d.V, VW), round_up(d.T * d.E, VW)};
}

struct PadWeights {
  float* C;   // (V, E)
  float* W1;  // (TE, Hp)
  float* b1;  // (Hp,)
  float* W2;  // (H, Vp)
  float* b2;  // (Vp,)
};

// dst (rows, ldd) = src (rows, cols), zero in columns [cols, ldd)
inline void copy_pad(const float* src, int rows, int cols, float* dst, int ldd) {
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) dst[(int64_t)r * ldd + c] = src[(int64_t)r * cols + c];
    for (int c = cols; c < ldd; ++c) dst[(int64_t)r * ldd + c] = 0.f;
  }
}
inline void copy_unpad(const float* src, int rows, int lds, float* dst, int cols) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[(int64_t)r * cols + c] = src[(int64_t)r * lds + c];
}

// Owns the padded W1, b1, W2, b2 (and, if asked, a zeroed C).
struct PaddedCopy {
  Buf c, w1, b1, w2, b2;
  PadWeights w;
  // from the caller's parameters; C is used in place unless own_C
  PaddedCopy(const Params& P, const Layout& L) {
    w.C = const_cast<float*>(P.C);  // written only by train_steps, whose caller passed it writable
    w.W1 = w1.get((size_t)L.TE * L.Hp);
    w.b1 = b1.get(L.Hp);
    w.W2 = w2.get((size_t)L.H * L.Vp);
    w.b2 = b2.get(L.Vp);
    copy_pad(P.W1, L.TE, L.H, w.W1, L.Hp);
    copy_pad(P.b1, 1, L.H, w.b1, L.Hp);
    copy_pad(P.W2, L.H, L.V, w.W2, L.Vp);
    copy_pad(P.b2, 1, L.V, w.b2, L.Vp);
  }
  // all zero, C included (for gradients)
  explicit PaddedCopy(const Layout& L) {
    w.C = c.get((size_t)L.V * L.E);
    w.W1 = w1.get((size_t)L.TE * L.Hp);
    w.b1 = b1.get(L.Hp);
    w.W2 = w2.get((size_t)L.H * L.Vp);
    w.b2 = b2.get(L.Vp);
    memset(w.C, 0, sizeof(float) * L.V * L.E);
    memset(w.W1, 0, sizeof(float) * L.TE * L.Hp);
    memset(w.b1, 0, sizeof(float) * L.Hp);
    memset(w.W2, 0, sizeof(float) * L.H * L.Vp);
    memset(w.b2, 0, sizeof(float) * L.Vp);
  }
  // W1, b1, W2, b2 (and C if it is our own) back into the caller's layout
  void copy_out(const Layout& L, const MutParams& out) const {
    copy_unpad(w.W1, L.TE, L.Hp, out.W1, L.H);
    copy_unpad(w.b1, 1, L.Hp, out.b1, L.H);
    copy_unpad(w.W2, L.H, L.Vp, out.W2, L.V);
    copy_unpad(w.b2, 1, L.Vp, out.b2, L.V);
    if (w.C != out.C) memcpy(out.C, w.C, sizeof(float) * L.V * L.E);
  }
};

// out[j][k] = in[k][j] for output rows j in [j0, j1) and k in [0, rows).
// Columns of out past `rows` are left alone (the callers zero them once).
#if defined(__AVX2__)
inline void transpose8x8(const float* in, int64_t ldi, float* out, int64_t ldo) {
  const __m256 r0 = _mm256_loadu_ps(in), r1 = _mm256_loadu_ps(in + ldi), r2 = _mm256_loadu_ps(in + 2 * ldi),
               r3 = _mm256_loadu_ps(in + 3 * ldi), r4 = _mm256_loadu_ps(in + 4 * ldi),
               r5 = _mm256_loadu_ps(in + 5 * ldi), r6 = _mm256_loadu_ps(in + 6 * ldi),
               r7 = _mm256_loadu_ps(in + 7 * ldi);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  const __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  const __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  _mm256_storeu_ps(out, _mm256_permute2f128_ps(s0, s4, 0x20));
  _mm256_storeu_ps(out + ldo, _mm256_permute2f128_ps(s1, s5, 0x20));
  _mm256_storeu_ps(out + 2 * ldo, _mm256_permute2f128_ps(s2, s6, 0x20));
  _mm256_storeu_ps(out + 3 * ldo, _mm256_permute2f128_ps(s3, s7, 0x20));
  _mm256_storeu_ps(out + 4 * ldo, _mm256_permute2f128_ps(s0, s4, 0x31));
  _mm256_storeu_ps(out + 5 * ldo, _mm256_permute2f128_ps(s1, s5, 0x31));
  _mm256_storeu_ps(out + 6 * ldo, _mm256_permute2f128_ps(s2, s6, 0x31));
  _mm256_storeu_ps(out + 7 * ldo, _mm256_permute2f128_ps(s3, s7, 0x31));
}
#endif

inline void transpose_rows(const float* in, int64_t ldi, int rows, float* out, int64_t ldo, int64_t j0,
                           int64_t j1) {
  int64_t j = j0;
#if defined(__AVX2__)
  for (; j + 8 <= j1; j += 8) {
    int k = 0;
    for (; k + 8 <= rows; k += 8) transpose8x8(in + (int64_t)k * ldi + j, ldi, out + j * ldo + k, ldo);
    for (; k < rows; ++k)
      for (int jj = 0; jj < 8; ++jj) out[(j + jj) * ldo + k] = in[(int64_t)k * ldi + j + jj];
  }
#endif
  for (; j < j1; ++j)
    for (int k = 0; k < rows; ++k) out[j * ldo + k] = in[(int64_t)k * ldi + j];
}

// This thread's share of `transpose_rows` over output rows [0, cols), in blocks of 8.
inline void transpose_share(const float* in, int64_t ldi, int rows, float* out, int64_t ldo, int cols);

// Rows per chunk for inference: emb, h and logits of a chunk stay in L2.
constexpr int64_t kChunk = 256;

struct ForwardWork {
  Buf emb, h, logits;
};

// Padded logits (n, Vp) of rows X (n, T), single-threaded; returns the buffer.
inline float* forward_rows(const PadWeights& W, const Layout& L, const int32_t* X, int64_t n, ForwardWork& ws) {
  float* emb = ws.emb.get((size_t)(n * L.TE));
  float* h = ws.h.get((size_t)(n * L.Hp));
  float* logits = ws.logits.get((size_t)(n * L.Vp));
  gather(W.C, L.E, X, n * L.T, emb);
  gemm_rows<kBiasTanh>(plan(n, L.Hp, L.TE, emb, L.TE, 1, W.W1, L.Hp, h, L.Hp, W.b1, 1.f), 0, n);
  gemm_rows<kBias>(plan(n, L.Vp, L.H, h, L.Hp, 1, W.W2, L.Vp, logits, L.Vp, W.b2, 1.f), 0, n);
  return logits;
}

inline bool parallel_rows(int64_t N, const Layout& L) {
  const int64_t macs_per_row = (int64_t)L.TE * L.H + (int64_t)L.H * L.V;
  return max_threads() > 1 && N > kChunk && N * macs_per_row >= kParallelMacs;
}

void mlp_forward(const Params& P, const Dims& d, const int32_t* X, int64_t N, float* logits) {
  const Layout L = layout_of(d);
  const PaddedCopy M(P, L);
  const int64_t chunks = (N + kChunk - 1) / kChunk;
#ifdef _OPENMP
#pragma omp parallel if (parallel_rows(N, L))
#endif
  {
    ForwardWork ws;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t i0 = c * kChunk, n = min64(kChunk, N - i0);
      const float* lp = forward_rows(M.w, L, X + i0 * L.T, n, ws);
      copy_unpad(lp, (int)n, L.Vp, logits + i0 * L.V, L.V);
    }
  }
}

double mlp_loss_sum(const Params& P, const Dims& d, const int32_t* X, const int32_t* Y, int64_t N) {
  const Layout L = layout_of(d);
  const PaddedCopy M(P, L);
  const int64_t chunks = (N + kChunk - 1) / kChunk;
  if (chunks <= 0) return 0.0;
  double* partial = (double*)malloc((size_t)chunks * sizeof(double));
  if (!partial) abort();
#ifdef _OPENMP
#pragma omp parallel if (parallel_rows(N, L))
#endif
  {
    ForwardWork ws;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t i0 = c * kChunk, n = min64(kChunk, N - i0);
      const float* logits = forward_rows(M.w, L, X + i0 * L.T, n, ws);
      double s = 0.0;
      for (int64_t i = 0; i < n; ++i) s += xent_row_padded(logits + i * L.Vp, Y[i0 + i], L.V, nullptr, 0.f);
      partial[c] = s;  // per fixed chunk, summed in order below: independent of the thread count
    }
  }
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += partial[c];
  free(partial);
  return total;
}

// Workspace of one training step (or one loss_and_grad call), reused across steps.
// Allocated before any parallel region: inside one, threads only use the pointers.
struct StepWork {
  Buf b_emb, b_h, b_logits, b_dlogits, b_dpre, b_demb, b_w1t, b_w2t, b_dC, b_loss, b_X[2], b_Y[2], b_ix, b_hd, b_dt,
      b_colsum;
  float *emb, *h, *logits, *dlogits, *dpre, *demb, *w1t, *w2t, *dC, *row_loss;
  float* colsum;  // the bias gradients' column sums, (Vp + Hp)
  float *hd, *dt;  // dropout: h * mask and mask * (1 - h^2), (B, Hp)
  int32_t *Xb[2], *Yb[2];  // two batches: the next one is drawn while the current one is finished
  int64_t* ix;              // the example indices of a batch
  void prepare(const Layout& L, int64_t B) {
    emb = b_emb.get((size_t)(B * L.TE));         // (B, TE)
    h = b_h.get((size_t)(B * L.Hp));             // (B, Hp)
    logits = b_logits.get((size_t)(B * L.Vp));   // (B, Vp)
    dlogits = b_dlogits.get((size_t)(B * L.Vp)); // (B, Vp)
    dpre = b_dpre.get((size_t)(B * L.Hp));       // d(loss)/d(pre-activation), (B, Hp)
    demb = b_demb.get((size_t)(B * L.TEp));      // (B, TEp)
    w1t = b_w1t.get((size_t)L.H * L.TEp);        // W1^T (H, TEp)
    w2t = b_w2t.get((size_t)L.V * L.Hp);         // W2^T (V, Hp)
    memset(w1t, 0, sizeof(float) * L.H * L.TEp);  // pad columns: zero for good, transposes skip them
    memset(w2t, 0, sizeof(float) * L.V * L.Hp);
    dC = b_dC.get((size_t)L.V * L.E);
    row_loss = b_loss.get((size_t)B);
    colsum = b_colsum.get((size_t)(L.Vp + L.Hp));
    hd = b_hd.get((size_t)(B * L.Hp));
    dt = b_dt.get((size_t)(B * L.Hp));
    ix = (int64_t*)b_ix.get((size_t)(2 * B));  // int64 = two floats
    for (int i = 0; i < 2; ++i) {
      Xb[i] = (int32_t*)b_X[i].get((size_t)(B * L.T));  // int32 and float have the same size
      Yb[i] = (int32_t*)b_Y[i].get((size_t)B);
    }
  }
};

inline void transpose_share(const float* in, int64_t ldi, int rows, float* out, int64_t ldo, int cols) {
  int64_t b, e;
  my_share((cols + 7) / 8, &b, &e);
  transpose_rows(in, ldi, rows, out, ldo, b * 8, min64(e * 8, cols));
}

// p (n,) += alpha * g over this thread's share, in whole vectors where possible.
inline void axpy_share(float* p, const float* g, int64_t n, float alpha) {
  const int64_t vecs = (n + VW - 1) / VW;
  int64_t b, e;
  my_share(vecs, &b, &e);
  const int64_t i0 = b * VW, i1 = min64(e * VW, n);
  if (i1 > i0) axpy(p + i0, g + i0, i1 - i0, alpha);
}

// db (M,) = column sums of g (N, ld) over this thread's share of the column vectors;
// then, if W is given, W[j] -= lr * db[j] (the fused bias update).
inline void column_sums_share(const float* g, int64_t N, int M, int64_t ld, float* db, float* bias, float lr) {
  const int64_t vecs = (M + VW - 1) / VW;
  int64_t b, e;
  my_share(vecs, &b, &e);
  for (int64_t v = b; v < e; ++v) {
    const int j = (int)(v * VW), n = M - j < VW ? M - j : VW;
    vf s = {};
    for (int64_t i = 0; i < N; ++i) s += load_part(g + i * ld + j, n);
    store_part(db + j, s, n);
    if (bias) store_part(bias + j, load_part(bias + j, n) - splat(lr) * s, n);
  }
}

// The contexts X (B, T) and targets Y (B,) of a step: explicit indices, or drawn with the RNG.
// Indices are drawn first and their rows prefetched, so the (cache-missing) loads overlap.
inline void sample_batch(const TrainArgs& a, const Layout& L, int64_t step, int32_t* X, int32_t* Y, int64_t* ix) {
  const int B = a.batch_size;
  for (int b = 0; b < B; ++b) {
    ix[b] = a.batches ? a.batches[step * B + b] : (int64_t)rng_below(a.rng_state, (uint64_t)a.n_examples);
    __builtin_prefetch(a.X + ix[b] * L.T);
    __builtin_prefetch(a.Y + ix[b]);
  }
  for (int b = 0; b < B; ++b) {
    const int32_t* src = a.X + ix[b] * L.T;
    for (int t = 0; t < L.T; ++t) X[(int64_t)b * L.T + t] = src[t];
    Y[b] = a.Y[ix[b]];
  }
}

// Forward and backward of one batch (Xb, Yb, with ws.emb gathered), run by
// every thread of the current OpenMP team (or by one thread outside a team); each
// stage is shared out, so every output element is computed by one thread in a
// fixed order and results do not depend on the number of threads.
// G given: gradients are written to G (padded layout). G null: the SGD update
// W -= lr * grad is applied in place, fused into the weight-gradient products.
// Returns the mean loss (the same value on every thread); if it is not finite,
// nothing is updated. The caller must make C final (G: dC) by `finish_step`.
struct Dropout {
  float p = 0.f;                 // probability of dropping a hidden unit; 0 = off
  uint32_t key = 0;              // this step's mask key (dropout_key)
  const float* mask = nullptr;   // explicit (B, H) multipliers instead of drawn ones
  bool on() const { return p > 0.f || mask != nullptr; }
};

// hd = h * s and dt = s * (1 - h^2) for rows [r0, r1), s the mask multiplier:
// 1/(1-p) for a kept unit, 0 for a dropped one (and for the pad columns).
inline void apply_dropout(const Dropout& dr, const Layout& L, int64_t r0, int64_t r1, StepWork& ws) {
  const int H = L.H, Hp = L.Hp;
  const uint32_t threshold = (uint32_t)((double)dr.p * 4294967296.0);
  const float keep_scale = 1.f / (1.f - dr.p);
  for (int64_t i = r0; i < r1; ++i) {
    const float* h = ws.h + i * Hp;
    float* hd = ws.hd + i * Hp;
    float* dt = ws.dt + i * Hp;
    // branch-free loops, so the compiler vectorises the hash
    if (dr.mask) {
      for (int j = 0; j < H; ++j) dt[j] = dr.mask[i * H + j];
    } else {
      const uint32_t base = (uint32_t)(i * H);
      for (int j = 0; j < H; ++j) dt[j] = mix32((base + (uint32_t)j) ^ dr.key) >= threshold ? keep_scale : 0.f;
    }
    for (int j = H; j < Hp; ++j) dt[j] = 0.f;
    for (int j = 0; j < Hp; ++j) {
      const float s = dt[j];
      hd[j] = h[j] * s;
      dt[j] = s * (1.f - h[j] * h[j]);
    }
  }
}

// Forward and backward of one batch (Yb, with ws.emb gathered), run by every thread
// of the current OpenMP team (or by one thread outside a team). Each thread owns a
// contiguous range of the batch's rows and takes them through the forward pass, the
// loss and the row-wise part of the backward pass without waiting for the others;
// the weight gradients, which sum over all rows, are shared out by weight rows.
// Every output element is computed by one thread in a fixed order, so results do not
// depend on the number of threads. Two barriers a step.
// G given: gradients are written to G (padded layout). G null: the SGD update
// W -= lr * grad is applied in place, fused into the weight-gradient products.
// Returns the mean loss (the same value on every thread); if it is not finite,
// nothing is updated. On return this thread's share of the weight products is done,
// but not necessarily the other threads': callers synchronise before reusing ws.emb
// or reading the new weights. demb is complete (all rows) on return.
double step_team(const PadWeights& W, const PadWeights* G, float lr, const Layout& L, int64_t B, const int32_t* Yb,
                 StepWork& ws, const Dropout& dr = Dropout()) {
  const int TE = L.TE, H = L.H, V = L.V, Hp = L.Hp, Vp = L.Vp, TEp = L.TEp;
  int64_t r0, r1;
  my_share(B, &r0, &r1);

  // this thread's rows: h = tanh(emb W1 + b1); [hd = h * mask]; logits = hd W2 + b2; loss rows
  const GemmPlan fwd1 = plan(B, Hp, TE, ws.emb, TE, 1, W.W1, Hp, ws.h, Hp, W.b1, 1.f);
  gemm_rows<kBiasTanh>(fwd1, r0, r1);
  const float* hout = ws.h;  // what the output layer sees
  if (dr.on()) {
    apply_dropout(dr, L, r0, r1, ws);
    hout = ws.hd;
  }
  gemm_rows<kBias>(plan(B, Vp, H, hout, Hp, 1, W.W2, Vp, ws.logits, Vp, W.b2, 1.f), r0, r1);
  const float scale = 1.0f / (float)B;
  for (int64_t i = r0; i < r1; ++i)  // pads of dlogits: 0 (they take part in products below)
    ws.row_loss[i] = xent_row_padded(ws.logits + i * Vp, Yb[i], V, ws.dlogits + i * Vp, scale);
  // and a share of the transposed weights the backward pass reads
  transpose_share(W.W2, Vp, H, ws.w2t, Hp, V);   // W2T (V, Hp) = W2 (H, Vp)^T
  transpose_share(W.W1, Hp, TE, ws.w1t, TEp, H);  // W1T (H, TEp) = W1 (TE, Hp)^T
#ifdef _OPENMP
#pragma omp barrier
#endif
  double loss = 0.0;  // every thread sums the same numbers in the same order
  for (int64_t i = 0; i < B; ++i) loss += ws.row_loss[i];
  loss /= (double)B;
  if (!__builtin_isfinite(loss)) return loss;

  // backward, this thread's rows: dpre = (dlogits W2^T) * tanh'; demb = dpre W1^T
  // (both read the transposed copies, made before any weight changes)
  const GemmPlan back1 = plan(B, Hp, V, ws.dlogits, Vp, 1, ws.w2t, Hp, ws.dpre, Hp, dr.on() ? ws.dt : ws.h, 1.f);
  if (dr.on())
    gemm_rows<kMul>(back1, r0, r1);
  else
    gemm_rows<kTanhGrad>(back1, r0, r1);
  gemm_rows<kStore>(plan(B, TEp, H, ws.dpre, Hp, 1, ws.w1t, TEp, ws.demb, TEp, nullptr, 1.f), r0, r1);
  // W2's gradient sums over all rows: shared out by W2's rows
  if (G) {
    gemm_team<kStore, true>(plan(H, Vp, (int)B, hout, 1, Hp, ws.dlogits, Vp, G->W2, Vp, nullptr, 1.f));
    column_sums_share(ws.dlogits, B, Vp, Vp, G->b2, nullptr, 0.f);
  } else {
    gemm_team<kAccumScaled, true>(plan(H, Vp, (int)B, hout, 1, Hp, ws.dlogits, Vp, W.W2, Vp, nullptr, -lr));
    column_sums_share(ws.dlogits, B, Vp, Vp, ws.colsum, W.b2, lr);
  }
#ifdef _OPENMP
#pragma omp barrier
#endif
  // W1's gradient needs every row of dpre
  if (G) {
    gemm_team<kStore, true>(plan(TE, Hp, (int)B, ws.emb, 1, TE, ws.dpre, Hp, G->W1, Hp, nullptr, 1.f));
    column_sums_share(ws.dpre, B, Hp, Hp, G->b1, nullptr, 0.f);
  } else {
    gemm_team<kAccumScaled, true>(plan(TE, Hp, (int)B, ws.emb, 1, TE, ws.dpre, Hp, W.W1, Hp, nullptr, -lr));
    column_sums_share(ws.dpre, B, Hp, Hp, ws.colsum + Vp, W.b1, lr);
  }
  return loss;
}

// This thread's rows of the batch's embeddings, gathered from C.
inline void gather_share(const PadWeights& W, const Layout& L, int64_t B, const int32_t* Xb, StepWork& ws) {
  int64_t r0, r1;
  my_share(B, &r0, &r1);
  gather(W.C, L.E, Xb + r0 * L.T, (r1 - r0) * L.T, ws.emb + r0 * L.TE);
}

// The embedding table's part of the backward pass, on one thread: dC = scatter(demb),
// accumulated in full first as autograd does, then C -= lr * dC (or G->C = dC).
inline void finish_step(const PadWeights& W, const PadWeights* G, float lr, const Layout& L, int64_t B,
                        const int32_t* Xb, StepWork& ws) {
  float* dC = G ? G->C : ws.dC;
  memset(dC, 0, sizeof(float) * L.V * L.E);
  scatter_add(ws.demb, L.TEp, Xb, B, L.T, L.E, dC);
  if (!G) axpy(W.C, dC, (int64_t)L.V * L.E, -lr);
}

// The same for a team: each thread owns a range of vocabulary rows, scans the whole
// batch in order and adds only into its rows, so each row still sums in example order.
inline void finish_step_share(const PadWeights& W, float lr, const Layout& L, int64_t B, const int32_t* Xb,
                              StepWork& ws) {
  int64_t v0, v1;
  my_share(L.V, &v0, &v1);
  if (v1 <= v0) return;
  memset(ws.dC + v0 * L.E, 0, sizeof(float) * (v1 - v0) * L.E);
  for (int64_t n = 0; n < B; ++n)
    for (int t = 0; t < L.T; ++t) {
      const int64_t v = Xb[n * L.T + t];
      if (v < v0 || v >= v1) continue;
      float* dst = ws.dC + v * L.E;
      const float* src = ws.demb + n * L.TEp + (int64_t)t * L.E;
      for (int e = 0; e < L.E; ++e) dst[e] += src[e];
    }
  axpy(W.C + v0 * L.E, ws.dC + v0 * L.E, (v1 - v0) * L.E, -lr);
}

// Batches with at least this many embedding floats finish the step on the whole team.
constexpr int64_t kWideBatch = 1 << 14;

// Use a team of threads for a step of this many multiply-adds. Measured on 2 cores
// (benchmarks/bench_train.py --threads): the lecture's 1.1M already gains.
constexpr int64_t kTeamMacs = 1 << 19;

inline bool use_team(const Layout& L, int64_t B) {
  const int64_t macs = 3 * B * ((int64_t)L.TE * L.H + (int64_t)L.H * L.V);
  return max_threads() > 1 && macs >= kTeamMacs;
}

double mlp_loss_and_grad(const Params& P, const Dims& d, const int32_t* X, const int32_t* Y, int64_t N,
                         const MutParams& grads, const float* dropout_mask) {
  const Layout L = layout_of(d);
  const PaddedCopy M(P, L);  // only read: step_team writes weights only when G is null
  PaddedCopy G(L);
  StepWork ws;
  ws.prepare(L, N);
  gather(M.w.C, L.E, X, N * L.T, ws.emb);
  double loss = 0.0;
#ifdef _OPENMP
#pragma omp parallel if (use_team(L, N))
#endif
  {
    Dropout dr;
    dr.mask = dropout_mask;
    const double l = step_team(M.w, &G.w, 0.f, L, N, Y, ws, dr);
#ifdef _OPENMP
#pragma omp single
#endif
    {
      loss = l;
      if (__builtin_isfinite(l)) finish_step(M.w, &G.w, 0.f, L, N, X, ws);
    }
  }
  G.copy_out(L, grads);
  return loss;
}

inline Dropout step_dropout(const TrainArgs& a, int64_t s) {
  Dropout dr;
  dr.p = a.dropout;
  if (a.dropout > 0.f) dr.key = dropout_key(a.dropout_seed, a.step0 + s);
  return dr;
}

// One optimizer step on every parameter tensor (padded layout), shared out over the
// team. Element-wise, so any split gives the same result.
inline void optimizer_share(const PadWeights& W, const PadWeights& G, const PadWeights& S1, const PadWeights& S2,
                            const Layout& L, const OptimArgs& o, float lr, int64_t t) {
  float* const p[5] = {W.C, W.W1, W.b1, W.W2, W.b2};
  float* const g[5] = {G.C, G.W1, G.b1, G.W2, G.b2};
  float* const m[5] = {S1.C, S1.W1, S1.b1, S1.W2, S1.b2};
  float* const v[5] = {S2.C, S2.W1, S2.b1, S2.W2, S2.b2};
  const int64_t n[5] = {(int64_t)L.V * L.E, (int64_t)L.TE * L.Hp, L.Hp, (int64_t)L.H * L.Vp, L.Vp};
  for (int k = 0; k < 5; ++k) {
    int64_t b, e;
    my_share((n[k] + 63) / 64, &b, &e);
    const int64_t i0 = b * 64, i1 = min64(e * 64, n[k]);
    if (i1 <= i0) continue;
    if (o.kind == kAdamW)
      adamw_update(p[k] + i0, g[k] + i0, m[k] + i0, v[k] + i0, i1 - i0, lr, o.beta1, o.beta2, o.eps, o.weight_decay, t);
    else
      momentum_update(p[k] + i0, g[k] + i0, m[k] + i0, i1 - i0, lr, o.momentum, o.nesterov, o.weight_decay);
  }
}

inline Params params_of(const MutParams& p) { return {p.C, p.W1, p.b1, p.W2, p.b2}; }

int64_t train_steps(const MutParams& P, const Dims& d, const TrainArgs& a) {
  const Layout L = layout_of(d);
  PaddedCopy M(params_of(P), L);  // C (and C's optimizer state below) is updated in place
  // With an optimizer the gradients go to G, then its update runs with state S1
  // (momentum buffers or AdamW's m) and S2 (AdamW's v). Plain SGD needs neither:
  // its update is fused into the gradient products.
  const OptimArgs* o = a.opt;
  PaddedCopy* G = o ? new PaddedCopy(L) : nullptr;
  PaddedCopy* S1 = o ? new PaddedCopy(params_of(o->m), L) : nullptr;
  PaddedCopy* S2 = o && o->kind == kAdamW ? new PaddedCopy(params_of(o->v), L) : nullptr;
  StepWork ws;
  const int64_t B = a.batch_size;
  ws.prepare(L, B);
  const bool wide = B * L.T * L.E >= kWideBatch;
  int64_t done = 0;
  if (a.steps > 0) {
    sample_batch(a, L, 0, ws.Xb[0], ws.Yb[0], ws.ix);
    gather(M.w.C, L.E, ws.Xb[0], B * L.T, ws.emb);
  }
#ifdef _OPENMP
#pragma omp parallel if (use_team(L, B))
#endif
  for (int64_t s = 0; s < a.steps; ++s) {
    const float lr = a.lrs[s];
    const int cur = (int)(s & 1), nxt = cur ^ 1;
    const bool more = s + 1 < a.steps;
    const double loss = step_team(M.w, G ? &G->w : nullptr, lr, L, B, ws.Yb[cur], ws, step_dropout(a, s));
    if (!__builtin_isfinite(loss)) {  // every thread sees the same loss: all leave together
#ifdef _OPENMP
#pragma omp single
#endif
      {
        a.losses[s] = (float)loss;
        done = s;
      }
      break;
    }
    // then the embedding update and the next batch; each thread gathers its own rows
    // of the next batch, the only rows its next forward pass reads
    if (G) {
      // dC on one thread while the others finish their share of G, then the update
#ifdef _OPENMP
#pragma omp single
#endif
      {
        a.losses[s] = (float)loss;
        finish_step(M.w, &G->w, 0.f, L, B, ws.Xb[cur], ws);  // G.C = dC
        if (more) sample_batch(a, L, s + 1, ws.Xb[nxt], ws.Yb[nxt], ws.ix);
        done = s + 1;
      }
      optimizer_share(M.w, G->w, S1->w, (S2 ? S2 : S1)->w, L, *o, lr, o->step + s + 1);
#ifdef _OPENMP
#pragma omp barrier
#endif
    } else if (wide) {
      // the embedding update on the whole team while one thread draws the next batch
      finish_step_share(M.w, lr, L, B, ws.Xb[cur], ws);
#ifdef _OPENMP
#pragma omp single
#endif
      {
        a.losses[s] = (float)loss;
        done = s + 1;
        if (more) sample_batch(a, L, s + 1, ws.Xb[nxt], ws.Yb[nxt], ws.ix);
      }
    } else {
      // one thread: the embedding update and the next batch, while the others finish
      // their share of W1's update; the single's barrier ends the step
#ifdef _OPENMP
#pragma omp single
#endif
      {
        a.losses[s] = (float)loss;
        finish_step(M.w, nullptr, lr, L, B, ws.Xb[cur], ws);
        if (more) sample_batch(a, L, s + 1, ws.Xb[nxt], ws.Yb[nxt], ws.ix);
        done = s + 1;
      }
    }
    if (more) gather_share(M.w, L, B, ws.Xb[nxt], ws);
  }
  M.copy_out(L, P);
  if (S1) S1->copy_out(L, o->m);
  if (S2) S2->copy_out(L, o->v);
  delete G;
  delete S1;
  delete S2;
  return done;
}

// Samples words in batches: all words of a batch advance one character per
// forward pass. Word i draws from its own stream seeded by (seed, i).
void sample(const Params& P, const Dims& d, const SampleArgs& a) {
  constexpr int64_t kBatch = 256;
  const Layout L = layout_of(d);
  const PaddedCopy M(P, L);
  const int64_t batches = (a.n_samples + kBatch - 1) / kBatch;
#ifdef _OPENMP
#pragma omp parallel if (max_threads() > 1 && batches > 1)
#endif
  {
    ForwardWork ws;
    Buf prob_buf;
    int32_t* ctx = (int32_t*)malloc((size_t)kBatch * L.T * sizeof(int32_t));
    uint64_t(*rng)[4] = (uint64_t(*)[4])malloc((size_t)kBatch * sizeof(uint64_t[4]));
    unsigned char* alive = (unsigned char*)malloc(kBatch);
    if (!ctx || !rng || !alive) abort();
    float* prob = prob_buf.get((size_t)L.V);
#ifdef _OPENMP
#pragma omp for schedule(dynamic)
#endif
    for (int64_t bi = 0; bi < batches; ++bi) {
      const int64_t w0 = bi * kBatch, n = min64(kBatch, a.n_samples - w0);
      memset(ctx, 0, (size_t)n * L.T * sizeof(int32_t));
      memset(alive, 1, (size_t)n);
      memset(a.out + w0 * a.max_len, 0, (size_t)(n * a.max_len) * sizeof(int32_t));
      for (int64_t i = 0; i < n; ++i) rng_seed(rng[i], a.seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(w0 + i + 1)));
      int64_t n_alive = n;
      for (int pos = 0; pos < a.max_len && n_alive > 0; ++pos) {
        const float* logits = forward_rows(M.w, L, ctx, n, ws);
        for (int64_t i = 0; i < n; ++i) {
          if (!alive[i]) continue;
          const float* z = logits + i * L.Vp;
          // keep the top_k largest logits: threshold = k-th largest value
          float thresh = -INFINITY;
          if (a.top_k > 0 && a.top_k < L.V) {
            for (int v = 0; v < L.V; ++v) prob[v] = z[v];
            for (int k = 0; k < a.top_k; ++k) {  // partial selection sort, descending
              int best = k;
              for (int v = k + 1; v < L.V; ++v)
                if (prob[v] > prob[best]) best = v;
              const float t = prob[k];
              prob[k] = prob[best];
              prob[best] = t;
            }
            thresh = prob[a.top_k - 1];
          }
          float m = -INFINITY;
          for (int v = 0; v < L.V; ++v) m = z[v] > m ? z[v] : m;
          double total = 0.0;
          for (int v = 0; v < L.V; ++v) {
            const float p = z[v] >= thresh ? expf((z[v] - m) / a.temperature) : 0.f;
            prob[v] = p;
            total += p;
          }
          const double u = (double)rng_uniform(rng[i]) * total;
          double c = 0.0;
          int32_t ix = 0;
          for (int v = 0; v < L.V; ++v) {
            if (prob[v] <= 0.f) continue;
            c += prob[v];
            ix = v;
            if (u < c) break;
          }
          a.out[(w0 + i) * a.max_len + pos] = ix;
          int32_t* row = ctx + i * L.T;
          for (int t = 0; t + 1 < L.T; ++t) row[t] = row[t + 1];
          row[L.T - 1] = ix;
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
    momentum_update,
    adamw_update,
    mlp_forward,
    mlp_loss_sum,
    mlp_loss_and_grad,
    train_steps,
    sample,
    fma_loop,
};

}  // namespace fastmlp
