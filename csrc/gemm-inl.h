// The one matrix product of the model: C (M, N) = A (M, K) @ B (K, N), then an epilogue,
// in register tiles of GEMM_MR rows x GEMM_NV vectors.
//
// A is addressed by strides, A(i, p) = A[i*sai + p*sap], so A^T costs nothing. B and C
// are row-major with leading dimensions ldb, ldc; B must have readable (zero) columns up
// to round_up(N, VW) in each row (the padded layout, see layers-inl.h). Every output
// element is computed by one register tile accumulating over K in order, whatever the
// tiling, so results do not depend on how rows are shared out.

enum Epilogue {
  kStore,        // C = A B
  kBias,         // C = A B + bias
  kBiasTanh,     // C = tanh(A B + bias)
  kAccumScaled,  // C += alpha * A B   (fused SGD update: alpha = -lr)
  kTanhGrad,     // C = tanh_grad(A B, Hm), Hm a matrix laid out like C (tanh backward)
  kMul,          // C = (A B) * Hm (tanh backward through a dropout mask, Hm = mask * (1 - h^2))
};

// A product whose K is split into blocks (so B's block of rows stays in L1) runs the
// tile once per block: the first starts from zero, the later ones from the partial sums
// stored in C, and only the last applies the epilogue. The additions are the same, in
// the same order, as one pass over K: results are bit-identical.
enum KPart { kWhole = 0, kFirst = 1, kMiddle = 2, kLast = 3 };

// ep: the epilogue's operand (the bias row for kBias/kBiasTanh, the matrix Hm for kTanhGrad/kMul).
template <int MR, int NV, int EPI>
inline void gemm_tile(int K, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb, float* C,
                      int64_t ldc, int ncols, const float* ep, float alpha, int kpart) {
  vf acc[MR][NV];
  const bool from_c = kpart == kMiddle || kpart == kLast;
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = from_c ? load_part(C + r * ldc + v * VW, ncols - v * VW) : vf{};
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
  if (kpart == kFirst || kpart == kMiddle) {  // a partial sum: stored as it is
    for (int v = 0; v < NV; ++v)
      for (int r = 0; r < MR; ++r) store_part(C + r * ldc + v * VW, acc[r][v], ncols - v * VW);
    return;
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
      if (EPI == kTanhGrad) x = tanh_grad(x, load_part(ep + r * ldc + v * VW, n));
      if (EPI == kMul) x = x * load_part(ep + r * ldc + v * VW, n);
      store_part(c, x, n);
    }
  }
}

template <int EPI, int MR>
inline void gemm_tile_nv(int nv, int K, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb,
                         float* C, int64_t ldc, int ncols, const float* ep, float alpha, int kpart) {
  switch (nv) {
    case 1: gemm_tile<MR, 1, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    case 2: gemm_tile<MR, 2, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    case 3: gemm_tile<MR, 3, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    default:
      if constexpr (GEMM_NV >= 4) gemm_tile<MR, 4, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart);
      break;
  }
}

template <int EPI>
inline void gemm_tile_any(int mr, int nv, int K, const float* A, int64_t sai, int64_t sap, const float* B,
                          int64_t ldb, float* C, int64_t ldc, int ncols, const float* ep, float alpha, int kpart) {
  static_assert(GEMM_MR >= 4 && GEMM_MR <= 6, "tile dispatch below handles 4 to 6 rows");
  switch (mr) {
    case 1: gemm_tile_nv<EPI, 1>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    case 2: gemm_tile_nv<EPI, 2>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    case 3: gemm_tile_nv<EPI, 3>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    case 4: gemm_tile_nv<EPI, 4>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    case 5:
      if constexpr (GEMM_MR >= 5) gemm_tile_nv<EPI, 5>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart);
      break;
    default:
      if constexpr (GEMM_MR >= 6) gemm_tile_nv<EPI, 6>(nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart);
      break;
  }
}

// One product's operands.
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
                     float* C, int64_t ldc, const float* ep = nullptr, float alpha = 1.f) {
  return {M, N, K, A, sai, sap, B, ldb, C, ldc, ep, alpha};
}

// Rows of K per block: B's block (KC rows of one column block) then fits in L1.
constexpr int GEMM_KC = 16384 / (GEMM_NV * VW * (int)sizeof(float)) < 64 ? 64
                        : 16384 / (GEMM_NV * VW * (int)sizeof(float));

// B's block (kc rows, one column block) copied into contiguous memory. Rows of the
// model's matrices are often a power-of-two number of bytes apart (H = 1024 floats:
// 4 KB), so a block read in place maps every row to the same few L1 sets and is fetched
// again from L2 by each row tile; packed, it stays in L1. The values are the same:
// results are bit-identical.
inline void pack_block(const float* B, int64_t ldb, int kc, int ncols, float* out) {
  const int w = GEMM_NV * VW;
  for (int p = 0; p < kc; ++p) {
    const float* src = B + (int64_t)p * ldb;
    float* dst = out + p * w;
    for (int j = 0; j < ncols; ++j) dst[j] = src[j];
    for (int j = ncols; j < w; ++j) dst[j] = 0.f;
  }
}

// Rows [r0, r1) of the product, all column blocks, in tiles of GEMM_MR rows. kAccumScaled
// adds into C (the weights) and is never split over K; its K is the batch, small anyway.
template <int EPI>
inline void gemm_rows(const GemmPlan& g, int64_t r0, int64_t r1) {
  const int cols_per_block = GEMM_NV * VW;
  const int kc = EPI == kAccumScaled ? g.K : GEMM_KC;
  alignas(64) float packed[GEMM_KC * GEMM_NV * VW];  // 16 KB of this thread's stack
  // worth it where B's rows alias in L1 (1 KB apart or a multiple) and row tiles reuse the block
  const bool pack = g.ldb % 256 == 0 && g.K >= 64 && r1 - r0 >= 4 * GEMM_MR && kc <= GEMM_KC;
  for (int j0 = 0; j0 < g.N; j0 += cols_per_block) {  // column block outer: B block stays in cache
    const int ncols = g.N - j0 < cols_per_block ? g.N - j0 : cols_per_block;
    const int nv = (ncols + VW - 1) / VW;
    for (int k0 = 0; k0 < g.K || k0 == 0; k0 += kc) {
      const int k1 = g.K - k0 > kc ? k0 + kc : g.K;
      const int kpart = k1 == g.K ? (k0 == 0 ? kWhole : kLast) : (k0 == 0 ? kFirst : kMiddle);
      const float* Bk = g.B + (int64_t)k0 * g.ldb + j0;
      int64_t ldb = g.ldb;
      if (pack) {
        pack_block(Bk, g.ldb, k1 - k0, ncols, packed);
        Bk = packed;
        ldb = cols_per_block;
      }
      for (int64_t i0 = r0; i0 < r1; i0 += GEMM_MR) {
        const int mr = (int)min64(GEMM_MR, r1 - i0);
        const float* ept = EPI == kTanhGrad || EPI == kMul ? g.ep + i0 * g.ldc + j0 : (g.ep ? g.ep + j0 : nullptr);
        gemm_tile_any<EPI>(mr, nv, k1 - k0, g.A + i0 * g.sai + k0 * g.sap, g.sai, g.sap, Bk, ldb,
                           g.C + i0 * g.ldc + j0, g.ldc, ncols, ept, g.alpha, kpart);
      }
      if (k1 == g.K) break;
    }
  }
}

// This thread's equal, contiguous share of the product's rows (all of them outside a
// team). No barrier: a thread goes on with the same rows of the next product.
template <int EPI>
inline void gemm_share(const GemmPlan& g) {
  int64_t r0, r1;
  my_share(g.M, &r0, &r1);
  gemm_rows<EPI>(g, r0, r1);
}
