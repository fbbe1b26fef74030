// SIMD vocabulary of one ISA build: the vector type, loads and stores, horizontal
// folds, exp and tanh, and the 8x8 transpose. Included by kernels.cpp inside the
// build's own namespace (fastmlp::<isa>), so every function here is compiled once per
// instruction set under its own name.
//
// Vectors use the GCC/Clang vector extension: one source, lowered to SSE2, AVX2+FMA,
// AVX-512 or NEON by the flags the build passes.

// A register tile of the product is up to GEMM_MR rows x GEMM_NV vectors of accumulators;
// with its GEMM_NV vectors of B and one broadcast of A it must fit in the ISA's registers
// (gemm-inl.h sizes each tile by that rule). Each product's column blocks are capped at
// GEMM_NV_MIN..GEMM_NV vectors, whichever keeps its tiles' FMAs busiest (gemm-inl.h's
// column_cap); FMA_ACC accumulators hide the FMA's latency (latency x 2 ports).
#if defined(__AVX512F__)
constexpr int VW = 16;          // floats per register
constexpr int GEMM_MR = 8;      // most rows of a register tile
constexpr int GEMM_NV = 4;      // most registers per tile row
constexpr int GEMM_NV_MIN = 4;  // 4 only: the tiles measured on Intel and Zen 4
constexpr int FMA_ACC = 8;      // latency 4
constexpr int VREGS = 32;       // zmm0-31
#elif defined(__AVX2__)
constexpr int VW = 8;
constexpr int GEMM_MR = 6;
constexpr int GEMM_NV = 3;      // 4 x 3 tiles: the lecture's 32 rows in 8 full tiles
constexpr int GEMM_NV_MIN = 2;  // 6 x 2 tiles: the large configuration's
constexpr int FMA_ACC = 10;     // latency 5 on Zen 2 (4 on Zen 3, 4-5 on Intel's AVX2 cores)
constexpr int VREGS = 16;
#else
constexpr int VW = 4;
constexpr int GEMM_MR = 4;
constexpr int GEMM_NV = 3;
constexpr int GEMM_NV_MIN = 3;
constexpr int FMA_ACC = 8;
#if defined(__aarch64__)
constexpr int VREGS = 32;
#else
constexpr int VREGS = 16;  // SSE2: xmm0-15
#endif
#endif

typedef float vf __attribute__((vector_size(VW * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(VW * sizeof(int32_t))));

// Every lane = a. Not `vf{} + a`: without -ffast-math that is a scalar add (0 + -0 is +0)
// and a register broadcast, two FP-port instructions per use where a broadcast load is
// one; in the GEMM's inner loop they held the product to ~30% of the FMA peak on Zen 3.
// (A loop filling the lanes is not reliably recognised either: GCC 12 built it from
// eight vinsertps inside the GEMM. An initializer of VW copies is a broadcast.)
inline vf splat(float a) {
#if defined(__AVX512F__)
  return (vf){a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a};
#elif defined(__AVX2__)
  return (vf){a, a, a, a, a, a, a, a};
#else
  return (vf){a, a, a, a};
#endif
}
inline vf loadu(const float* p) {
  vf v;
  memcpy(&v, p, sizeof v);
  return v;
}
inline void storeu(float* p, vf v) { memcpy(p, &v, sizeof v); }
// First n (<= VW) lanes from p, the rest zero; and the store of the first n lanes. Masked
// loads and stores on AVX-512 and AVX2: a memcpy of a variable length would put the vector
// on the stack, and GCC then kept a whole register tile there (the products' epilogues).
#if defined(__AVX512F__)
inline __mmask16 first_lanes(int n) { return (__mmask16)(n >= VW ? 0xffff : (1u << (n > 0 ? n : 0)) - 1u); }
inline vf load_part(const float* p, int n) { return (vf)_mm512_maskz_loadu_ps(first_lanes(n), p); }
inline void store_part(float* p, vf v, int n) { _mm512_mask_storeu_ps(p, first_lanes(n), (__m512)v); }
#elif defined(__AVX2__)
inline __m256i first_lanes(int n) { return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); }
inline vf load_part(const float* p, int n) { return n >= VW ? loadu(p) : (vf)_mm256_maskload_ps(p, first_lanes(n)); }
inline void store_part(float* p, vf v, int n) {
  if (n >= VW)
    storeu(p, v);
  else
    _mm256_maskstore_ps(p, first_lanes(n), (__m256)v);
}
#else
inline vf load_part(const float* p, int n) {
  if (n >= VW) return loadu(p);
  vf v = {};
  memcpy(&v, p, (size_t)(n > 0 ? n : 0) * sizeof(float));
  return v;
}
inline void store_part(float* p, vf v, int n) {
  if (n >= VW)
    storeu(p, v);
  else
    memcpy(p, &v, (size_t)(n > 0 ? n : 0) * sizeof(float));
}
#endif
inline vf select(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }
inline vf vmax(vf a, vf b) { return select(a > b, a, b); }  // NaN in a is skipped

// x clamped to [lo, hi]; NaN stays NaN and -0 stays -0. x86's min/max return their second
// operand when either is NaN (and when both are zeros), so x goes second: two instructions
// where two compare-and-blend pairs took four, in a serial chain (tanh's clamp; on Zen 3
// the tanh of a vector took 0.8 ns less).
inline vf clamp_v(vf x, float lo, float hi) {
#if defined(__AVX512F__)
  return (vf)_mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), (__m512)x));
#elif defined(__AVX2__)
  return (vf)_mm256_min_ps(_mm256_set1_ps(hi), _mm256_max_ps(_mm256_set1_ps(lo), (__m256)x));
#elif defined(__SSE2__)
  return (vf)_mm_min_ps(_mm_set1_ps(hi), _mm_max_ps(_mm_set1_ps(lo), (__m128)x));
#else
  x = select(x > splat(hi), splat(hi), x);
  return select(x < splat(lo), splat(lo), x);
#endif
}

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
#define FASTMLP_FOLD(v, OP)                                          \
  v = OP(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3)); \
  v = OP(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5)); \
  v = OP(v, __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6));
#else
#define FASTMLP_FOLD(v, OP)                              \
  v = OP(v, __builtin_shufflevector(v, v, 2, 3, 0, 1)); \
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

// tanh(x) for float32: x P(x^2) / Q(x^2), P and Q of degree 4 (a 9/8 rational function),
// fitted for the least relative error on |x| <= 9.1 (2.4e-8 in exact arithmetic, 5.0e-8 with
// the coefficients rounded to float32), x clamped to +-9. About 16 vector operations and no exp:
// half the cost of Cephes' tanhf (exp, a division and two branches' worth of work), which
// took as long as the lecture's first product it followed. The price is accuracy: float32
// rounding in P, Q and the quotient leaves up to 5.6 U relative error with FMA, 6.4 U
// without (U = 2^-24; Cephes: 2.4 U), measured over every float32 on each build; the
// tests allow 7 U (tests/test_kernels.py checks it on each ISA). NaN propagates (clamp_v
// keeps it). On AVX2 a 12-bit reciprocal with corrections in place of the division measured
// 1.35x slower on Zen 3 (the division overlaps the FMAs there; the FMA ports are the limit).
inline vf tanh_v(vf x) {
  x = clamp_v(x, -9.0f, 9.0f);  // tanh(9) is 1 - 3e-8: P / Q gives 1 or 1 - 2^-24
  const vf z = x * x;
  vf p = splat(1.3242915e-08f);
  p = p * z + splat(2.0534135e-05f);
  p = p * z + splat(0.0034912932f);
  p = p * z + splat(0.13377503f);
  p = p * z + splat(1.0f);
  vf q = splat(7.7324876e-07f);
  q = q * z + splat(0.00032784254f);
  q = q * z + splat(0.025860924f);
  q = q * z + splat(0.46710822f);
  q = q * z + splat(1.0f);
  const vf xp = x * p;
#if defined(__AVX512F__)
  // a 14-bit reciprocal and one correction of the quotient: within 1 ulp of xp / q, and
  // cheaper than a 512-bit division (on one port, ~10 cycles each)
  const vf r = (vf)_mm512_rcp14_ps((__m512)q);
  const vf y = xp * r;
  return y - (y * q - xp) * r;  // this order keeps tanh(-0) = -0
#else
  return xp / q;
#endif
}

// d(loss)/d(pre) = dy * (1 - y^2) for y = tanh(pre): the one formula of tanh's
// backward pass, used by the standalone kernel and the fused products' epilogues alike.
inline vf tanh_grad(vf dy, vf y) { return dy * (splat(1.f) - y * y); }

#if defined(__AVX2__)
// out rows 0..nc-1 = columns 0..nc-1 of the block of nr rows at in (leading dimensions ldi,
// ldo; nr, nc <= 8), each out row 8 floats long: zeros past the block's nr rows. Only the
// block's own elements are read (masked loads where nc < 8).
__attribute__((always_inline)) inline void transpose8x8(const float* in, int64_t ldi, float* out, int64_t ldo, int nr = 8,
                                                      int nc = 8) {
  const __m256i cols = _mm256_cmpgt_epi32(_mm256_set1_epi32(nc), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  auto row = [&](int r) {
    if (r >= nr) return _mm256_setzero_ps();
    return nc == 8 ? _mm256_loadu_ps(in + r * ldi) : _mm256_maskload_ps(in + r * ldi, cols);
  };
  const __m256 r0 = row(0), r1 = row(1), r2 = row(2), r3 = row(3), r4 = row(4), r5 = row(5), r6 = row(6),
               r7 = row(7);
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
  const __m256 o[8] = {_mm256_permute2f128_ps(s0, s4, 0x20), _mm256_permute2f128_ps(s1, s5, 0x20),
                       _mm256_permute2f128_ps(s2, s6, 0x20), _mm256_permute2f128_ps(s3, s7, 0x20),
                       _mm256_permute2f128_ps(s0, s4, 0x31), _mm256_permute2f128_ps(s1, s5, 0x31),
                       _mm256_permute2f128_ps(s2, s6, 0x31), _mm256_permute2f128_ps(s3, s7, 0x31)};
  for (int c = 0; c < nc; ++c) _mm256_storeu_ps(out + c * ldo, o[c]);
}
#endif
