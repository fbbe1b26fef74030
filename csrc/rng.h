// Small, seedable random numbers shared by the kernels and the bindings.
// Every function is `static inline`: each translation unit (and so each ISA
// build of kernels.cpp) gets its own private copy.
#pragma once
#include <cstdint>

namespace fastmlp {

// splitmix64: turns any 64-bit seed into well-mixed words (used to seed xoshiro).
static inline uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static inline void rng_seed(uint64_t s[4], uint64_t seed) {
  for (int i = 0; i < 4; ++i) s[i] = splitmix64(seed);
}

static inline uint64_t rotl64(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// xoshiro256** (Blackman & Vigna): fast, 256-bit state, passes BigCrush.
static inline uint64_t rng_next(uint64_t s[4]) {
  const uint64_t result = rotl64(s[1] * 5, 7) * 9;
  const uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl64(s[3], 45);
  return result;
}

// Unbiased integer in [0, n) (Lemire's multiply-shift with rejection), n >= 1.
static inline uint64_t rng_below(uint64_t s[4], uint64_t n) {
  uint64_t x = rng_next(s);
  __uint128_t m = (__uint128_t)x * n;
  uint64_t low = (uint64_t)m;
  if (low < n) {
    const uint64_t threshold = (0 - n) % n;
    while (low < threshold) {
      x = rng_next(s);
      m = (__uint128_t)x * n;
      low = (uint64_t)m;
    }
  }
  return (uint64_t)(m >> 64);
}

// A 32-bit mixer (Wellons' lowbias32): counter-based random bits, for dropout masks
// that depend only on (seed, step, element), never on threads or call boundaries.
static inline uint32_t mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// The key of step `step`'s dropout mask; element e of the mask keeps its unit when
// mix32(e ^ key) >= p * 2^32.
static inline uint32_t dropout_key(uint64_t seed, int64_t step) {
  return mix32((uint32_t)seed ^ mix32((uint32_t)(seed >> 32) ^ mix32((uint32_t)step ^ mix32((uint32_t)(step >> 32)))));
}

// The key of hidden layer `layer` (1..n_layers) of a step whose key is `key`: the last
// hidden layer (the lecture's only one) uses the step's key itself.
static inline uint32_t dropout_layer_key(uint32_t key, int layer, int n_layers) {
  const uint32_t from_top = (uint32_t)(n_layers - layer);
  return from_top == 0 ? key : mix32(key ^ (0x9E3779B9u * from_top));
}

// Uniform float in [0, 1) with 24 random bits.
static inline float rng_uniform(uint64_t s[4]) {
  return (float)(rng_next(s) >> 40) * (1.0f / 16777216.0f);
}

}  // namespace fastmlp
