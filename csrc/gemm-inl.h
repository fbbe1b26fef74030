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

// ep: the epilogue's operand (the bias row for kBias/kBiasTanh, the matrix Hm for kTanhGrad/kMul).
template <int MR, int NV, int EPI>
inline void gemm_tile(int K, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb, float* C,
                      int64_t ldc, int ncols, const float* ep, float alpha) {
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
      if (EPI == kTanhGrad) x = tanh_grad(x, load_part(ep + r * ldc + v * VW, n));
      if (EPI == kMul) x = x * load_part(ep + r * ldc + v * VW, n);
      store_part(c, x, n);
    }
  }
}

template <int EPI, int MR>
inline void gemm_tile_nv(int nv, int K, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb,
                         float* C, int64_t ldc, int ncols, const float* ep, float alpha) {
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
inline void gemm_tile_any(int mr, int nv, int K, const float* A, int64_t sai, int64_t sap, const float* B,
                          int64_t ldb, float* C, int64_t ldc, int ncols, const float* ep, float alpha) {
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

// This thread's equal, contiguous share of the product's rows (all of them outside a
// team). No barrier: a thread goes on with the same rows of the next product.
template <int EPI>
inline void gemm_share(const GemmPlan& g) {
  int64_t r0, r1;
  my_share(g.M, &r0, &r1);
  gemm_rows<EPI>(g, r0, r1);
}
