// The one matrix product of the model: C (M, N) = A (M, K) @ B (K, N), then an epilogue,
// in register tiles of GEMM_MR rows x GEMM_NV vectors.
//
// A is addressed by strides, A(i, p) = A[i*sai + p*sap], one of them 1 (A row-major, or
// A^T of a row-major matrix: the model reads no other), so A^T costs nothing. B and C
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

// The k-loop of a tile: acc += A(rows, k) B(k, :) for k in [0, K), B's rows read as NV
// vectors. AT(r, p) gives A's element of tile row r at k = p; the caller picks the
// addressing that needs fewest registers (see gemm_tile).
template <int MR, int NV, typename AT>
inline void tile_k_loop(vf (&acc)[MR][NV], int K, const AT& at, const float* B, int64_t ldb) {
#pragma GCC unroll 2
  for (int p = 0; p < K; ++p) {
    const float* bp = B + (int64_t)p * ldb;
    vf b[NV];
    for (int v = 0; v < NV; ++v) b[v] = loadu(bp + v * VW);
    for (int r = 0; r < MR; ++r) {
      const vf a = splat(at(r, p));
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
}

// One register tile: C's MR rows x NV vectors at C. ep: the epilogue's operand (the bias
// row for kBias/kBiasTanh, the matrix Hm for kTanhGrad/kMul). The loops over rows and
// vectors are unrolled by pragma: a loop GCC left rolled (the tanh epilogue's is long)
// indexes acc at run time, which kept the whole array on the stack, zeroed and reloaded
// around the k-loop.
template <int MR, int NV, int EPI>
__attribute__((always_inline)) inline void gemm_tile(int K, const float* A, int64_t sai, int64_t sap, const float* B,
                                                     int64_t ldb, float* C, int64_t ldc, int ncols, const float* ep,
                                                     float alpha, int kpart) {
  vf acc[MR][NV];
  const bool from_c = kpart == kMiddle || kpart == kLast;
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = from_c ? load_part(C + r * ldc + v * VW, ncols - v * VW) : vf{};
  // The model's products read A row-major (sap == 1: x W, g W^T) or transposed (sai == 1:
  // x^T g). Row-major rows get a pointer each, indexed by k; with A(r, p) = A[r sai + p
  // sap] instead, 8 rows need 7 index registers beside the loop's own, GCC spilled one
  // to an xmm register, and its reload every k took an FMA port (78% of the peak where a
  // tile alone reached 84-88%).
  if (sap == 1) {
    const float* row[MR];
    for (int r = 0; r < MR; ++r) {
      row[r] = A + r * sai;
      __asm__("" : "+r"(row[r]));  // opaque: GCC would fold them back into base + r * sai
    }
    tile_k_loop<MR, NV>(acc, K, [&](int r, int p) { return row[r][p]; }, B, ldb);
  } else if (sai == 1) {
    tile_k_loop<MR, NV>(acc, K, [&](int r, int p) { return A[(int64_t)p * sap + r]; }, B, ldb);
  } else {
    __builtin_trap();  // no caller reads A any other way (see the top): loud if one ever does
  }
  if (kpart == kFirst || kpart == kMiddle) {  // a partial sum: stored as it is
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
#pragma GCC unroll 8
      for (int r = 0; r < MR; ++r) store_part(C + r * ldc + v * VW, acc[r][v], ncols - v * VW);
    return;
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const int n = ncols - v * VW < VW ? ncols - v * VW : VW;
    vf bv = {};
    if (EPI == kBias || EPI == kBiasTanh) bv = load_part(ep + v * VW, n);
#pragma GCC unroll 8
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

// `count` tiles of MR rows, one below the other, in one call. A call per tile (12
// arguments, the callee-saved registers, the edge masks set up again) was
// felt where tiles are short: with one call per run of tiles the lecture's fused step
// (K = 27-32 in four products) took 0.966-0.986x the time on Zen 3 (minima of alternated
// runs); the large configuration's, whose time is in products with K = 192-512, 0.996-0.998x.
template <int MR, int NV, int EPI>
__attribute__((noinline)) void gemm_tiles(int count, int K, const float* A, int64_t sai, int64_t sap, const float* B,
                                          int64_t ldb, float* C, int64_t ldc, int ncols, const float* ep, float alpha,
                                          int kpart) {
  for (int c = 0; c < count; ++c) {
    gemm_tile<MR, NV, EPI>(K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart);
    A += MR * sai;
    C += MR * ldc;
    if (EPI == kTanhGrad || EPI == kMul) ep += MR * ldc;
  }
}

template <int EPI, int MR>
inline void gemm_tile_nv(int count, int nv, int K, const float* A, int64_t sai, int64_t sap, const float* B, int64_t ldb,
                         float* C, int64_t ldc, int ncols, const float* ep, float alpha, int kpart) {
  // only the shapes that fit in the registers are built (tile_rows below picks no other)
  switch (nv) {
    case 1: gemm_tiles<MR, 1, EPI>(count, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    case 2:
      if constexpr (MR * 2 + 3 <= VREGS) gemm_tiles<MR, 2, EPI>(count, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart);
      else __builtin_trap();  // tile_rows() never picks it: loud if that ever changes
      break;
    case 3:
      if constexpr (MR * 3 + 4 <= VREGS) gemm_tiles<MR, 3, EPI>(count, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart);
      else __builtin_trap();
      break;
    default:
      if constexpr (GEMM_NV >= 4 && MR * 4 + 5 <= VREGS)
        gemm_tiles<MR, 4, EPI>(count, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart);
      else
        __builtin_trap();
      break;
  }
}

template <int EPI>
inline void gemm_tile_any(int count, int mr, int nv, int K, const float* A, int64_t sai, int64_t sap, const float* B,
                          int64_t ldb, float* C, int64_t ldc, int ncols, const float* ep, float alpha, int kpart) {
  static_assert(GEMM_MR >= 4 && GEMM_MR <= 8, "tile dispatch below handles 4 to 8 rows");
  switch (mr) {
    case 1: gemm_tile_nv<EPI, 1>(count, nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    case 2: gemm_tile_nv<EPI, 2>(count, nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    case 3: gemm_tile_nv<EPI, 3>(count, nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    case 4: gemm_tile_nv<EPI, 4>(count, nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart); break;
    case 5:
      if constexpr (GEMM_MR >= 5) gemm_tile_nv<EPI, 5>(count, nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart);
      break;
    case 6:
      if constexpr (GEMM_MR >= 6) gemm_tile_nv<EPI, 6>(count, nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart);
      break;
    case 7:
      if constexpr (GEMM_MR >= 7) gemm_tile_nv<EPI, 7>(count, nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart);
      break;
    default:
      if constexpr (GEMM_MR >= 8) gemm_tile_nv<EPI, 8>(count, nv, K, A, sai, sap, B, ldb, C, ldc, ncols, ep, alpha, kpart);
      break;
  }
}

// The most rows a tile of nv vectors may have: its accumulators, nv B vectors and one
// broadcast in the registers (6 x 4 and 8 x 3 on AVX-512, 6 x 2 on AVX2).
constexpr int tile_rows(int nv) { return (VREGS - 1 - nv) / nv < GEMM_MR ? (VREGS - 1 - nv) / nv : GEMM_MR; }

// Piece i of n equal parts of [0, total): the parts' sizes differ by at most one.
inline int64_t part_begin(int64_t total, int64_t n, int64_t i) { return total * i / n; }

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

// B's block (kc rows of one column block) is kept to half the L1 data cache, so it stays
// there beside the rows of A a tile reads: 16 KB on Zen 3/4 (32 KB L1), 24 KB on Intel's
// Golden Cove (48 KB; the large configuration's products ran 3-5% faster than with 16 KB:
// K = 192 in two blocks instead of three). A longer K is cut into equal blocks: a short
// last block would store and reload every accumulator for a few FMAs (the lecture's K =
// 200 in blocks of 64 ran at 76% of a whole pass's speed).
constexpr int kMaxBlockFloats = 32768 / (int)sizeof(float);  // the pack buffer's size
inline int block_floats() {
  static const int n = [] {
    long l1 = 0;
#if defined(__linux__) && defined(_SC_LEVEL1_DCACHE_SIZE)
    l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE);  // 0 or -1 where unknown
#endif
    const long half = l1 >= 32768 ? l1 / 2 : 16384;
    return (int)((half < 32768 ? half : 32768) / (long)sizeof(float));
  }();
  return n;
}
inline int k_blocks(int K, int nv) {
  const int kc_max = block_floats() / (nv * VW);
  return K <= kc_max ? 1 : (K + kc_max - 1) / kc_max;
}

// B's block (kc rows, one column block) copied into contiguous memory. Rows of the
// model's matrices are often a power-of-two number of bytes apart (H = 1024 floats:
// 4 KB), so a block read in place maps every row to the same few L1 sets and is fetched
// again from L2 by each row tile; packed, it stays in L1. The values are the same:
// results are bit-identical.
inline void pack_block(const float* B, int64_t ldb, int kc, int ncols, int w, float* out) {
  for (int p = 0; p < kc; ++p) {
    const float* src = B + (int64_t)p * ldb;
    float* dst = out + p * w;
    for (int j = 0; j < ncols; ++j) dst[j] = src[j];
    for (int j = ncols; j < w; ++j) dst[j] = 0.f;
  }
}

// The modeled cost of one k step over `rows` rows and nvec column vectors, cut into
// balanced blocks of at most cap vectors and tiles of at most tile_rows(nv) rows: a tile
// of a accumulators takes max(a, FMA_ACC) FMA slots (fewer accumulators than the FMA's
// latency x ports leave slots idle). The blocks (part_begin's) and the tiles (gemm_rows')
// have two sizes each.
inline int64_t tiling_cost(int64_t rows, int nvec, int cap) {
  const int nb = (nvec + cap - 1) / cap, q = nvec / nb, nbig = nvec % nb;
  int64_t cost = 0;
  for (int big = 0; big < 2; ++big) {
    const int nv = q + big, count = big ? nbig : nb - nbig;
    if (count == 0) continue;
    const int64_t mr = tile_rows(nv), nt = (rows + mr - 1) / mr, r = rows / nt, nlong = rows % nt;
    const int64_t a = r * nv, b = (r + 1) * nv;
    cost += count * ((nt - nlong) * (a > FMA_ACC ? a : FMA_ACC) + nlong * (b > FMA_ACC ? b : FMA_ACC));
  }
  return cost;
}

// The column-block cap for this product: the cheapest by tiling_cost in
// [GEMM_NV_MIN, GEMM_NV], never one whose wider B block cuts K into more blocks (each
// extra block stores and reloads every accumulator). The lecture's 32 x 200 products on
// AVX2 take 4 x 3 tiles (8 full tiles a block; 0.93x and 0.87x the time on Zen 2) where
// 6 x 2 left 6 tiles of 5-6 rows and a 1-vector block; the large configuration's
// 256-row shares keep 6 x 2. The weight updates (read-modify-write epilogue, K = the
// batch) keep GEMM_NV_MIN: the model gave the lecture's W1 update 0.8% and it measured
// 3.5% slower. The tiling changes no result (see above), only the speed.
inline int column_cap(int64_t rows, int nvec, int K, bool weight_update) {
  int best = GEMM_NV_MIN;
  if constexpr (GEMM_NV > GEMM_NV_MIN) {
    if (weight_update) return best;
    int64_t best_cost = tiling_cost(rows, nvec, best);
    for (int cap = GEMM_NV_MIN + 1; cap <= GEMM_NV; ++cap) {
      if (k_blocks(K, cap) > k_blocks(K, GEMM_NV_MIN)) continue;
      const int64_t c = tiling_cost(rows, nvec, cap);
      if (c < best_cost) best = cap, best_cost = c;
    }
  }
  return best;
}

// Rows [r0, r1) of the product, all column blocks, in register tiles. The N / VW column
// vectors are cut into equal blocks of at most column_cap(), the rows into equal tiles of at
// most tile_rows(nv): an FMA has a latency of ~4 cycles on two ports, so a tile needs ~8
// independent accumulators to keep them busy, and a remainder tile of 2 rows x 1 vector
// (what fixed 6 x 4 tiles left of the lecture's 32 x 208) runs at an eighth of the peak.
// kAccumScaled adds into C (the weights) and is never split over K; its K is the batch.
template <int EPI>
inline void gemm_rows(const GemmPlan& g, int64_t r0, int64_t r1) {
  alignas(64) float packed[kMaxBlockFloats];  // 32 KB of this thread's stack
  const int nvec = (g.N + VW - 1) / VW;
  if (r1 <= r0 || nvec == 0) return;  // (an empty share; tiling_cost divides by both)
  const int cap = column_cap(r1 - r0, nvec, g.K, EPI == kAccumScaled);
  const int nblocks = (nvec + cap - 1) / cap;
  for (int jb = 0; jb < nblocks; ++jb) {  // column block outer: B block stays in cache
    const int v0 = (int)part_begin(nvec, nblocks, jb), nv = (int)part_begin(nvec, nblocks, jb + 1) - v0;
    const int j0 = v0 * VW;
    const int ncols = g.N - j0 < nv * VW ? g.N - j0 : nv * VW;
    const int mr_max = tile_rows(nv);
    const int64_t ntiles = (r1 - r0 + mr_max - 1) / mr_max;
    const int nk = EPI == kAccumScaled ? 1 : k_blocks(g.K, nv);
    for (int kb = 0; kb < nk; ++kb) {
      const int k0 = (int)part_begin(g.K, nk, kb), k1 = (int)part_begin(g.K, nk, kb + 1);
      const int kpart = nk == 1 ? kWhole : kb == 0 ? kFirst : kb == nk - 1 ? kLast : kMiddle;
      const float* Bk = g.B + (int64_t)k0 * g.ldb + j0;
      int64_t ldb = g.ldb;
      // worth it where B's rows alias in L1 (1 KB apart or a multiple) and row tiles reuse the block
      if (g.ldb % 256 == 0 && k1 - k0 >= 64 && r1 - r0 >= 24 && k1 - k0 <= kMaxBlockFloats / (nv * VW)) {
        pack_block(Bk, g.ldb, k1 - k0, ncols, nv * VW, packed);
        Bk = packed;
        ldb = nv * VW;
      }
      // the rows in ntiles tiles of two sizes, the nbig tiles of q + 1 rows first, then those
      // of q: each run of equal tiles is one call (the order of the tiles changes no result)
      const int64_t q = (r1 - r0) / ntiles, nbig = (r1 - r0) % ntiles;
      for (int part = 0; part < 2; ++part) {
        const int64_t i0 = part ? r0 + nbig * (q + 1) : r0;
        const int mr = (int)(part ? q : q + 1);
        const int count = (int)(part ? ntiles - nbig : nbig);
        if (count == 0) continue;
        const float* ept = EPI == kTanhGrad || EPI == kMul ? g.ep + i0 * g.ldc + j0 : (g.ep ? g.ep + j0 : nullptr);
        gemm_tile_any<EPI>(count, mr, nv, k1 - k0, g.A + i0 * g.sai + k0 * g.sap, g.sai, g.sap, Bk, ldb,
                           g.C + i0 * g.ldc + j0, g.ldc, ncols, ept, g.alpha, kpart);
      }
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
