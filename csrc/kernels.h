// fastmlp kernels: the interface shared by every instruction-set build.
//
// csrc/kernels.cpp is compiled once per ISA (generic, avx2, avx512) and each
// copy exports one KernelTable of plain function pointers; dispatch.cpp picks
// the table at run time. Everything here is plain C data: no inline functions
// or templates that two ISA builds could both emit (the linker would keep one
// copy, possibly with instructions the CPU lacks). The kernels themselves are in
// the *-inl.h headers, by family (see kernels.cpp).
//
// Conventions: float32, row-major, contiguous. Shapes use
//   N examples, T = block_size, E = n_embd, H = n_hidden, V = vocab size, L hidden layers.
// The kernels trust their arguments: bindings.cpp validates every shape,
// dtype and index before calling them.
#pragma once
#include <cstdint>

namespace fastmlp {

// Hidden layers at most (MLP n_layers).
enum { kMaxLayers = 16 };

struct Dims {
  int V, T, E, H;     // vocab, block_size, n_embd, n_hidden
  int L;              // hidden layers, 1..kMaxLayers (the lecture's model: 1)
  int bn;             // nonzero: BatchNorm1d after each hidden Linear (which then has no bias)
  float bn_eps;       // BatchNorm's eps (torch: 1e-5)
  float bn_momentum;  // running = (1 - m) running + m batch (torch's convention)
};

// Whether a batch of N rows takes the first layer through the embedding tables (table-inl.h):
// where that is at most half the operations, V T E + N T multiply-adds and additions a
// hidden unit against N T E. On Zen 3 the large configuration's forward product (batch
// 256, V 27, T 8, E 24, H 512) took 182 µs that way against 593; the lecture's (batch 32,
// tables of K = E = 10) would take 8.1 against 6.6, and keeps emb W[0]. And where the
// tables P and S (T V (H + 64) floats each, at most) stay within 16 MB each: a vocabulary
// of thousands would trade a few MB of rows for hundreds of MB of tables, out of cache.
inline bool first_layer_tables(const Dims& d, int64_t N) {
  const int64_t te = (int64_t)d.T * d.E, t_hp = (int64_t)d.T * (d.H + 64);
  const bool fits = t_hp <= INT32_MAX / 2 && d.V * t_hp <= ((int64_t)4 << 20);  // (dC's K = T Hp is an int)
  return fits && 2 * ((int64_t)d.V * te + N * d.T) <= N * te;
}

// Read-only view of the model parameters. Layer l = 0..L-1 is hidden (W[l] (K_l, H),
// K_0 = T*E, K_l = H), layer L the output (W[L] (H, V), b[L] (V,)). Without BatchNorm
// b[l] (H,) and gamma, beta, run_mean, run_var are null; with it b[l] is null for the
// hidden layers and gamma[l], beta[l] (H,) are parameters, run_mean[l], run_var[l] (H,)
// the running statistics (buffers: train_steps updates them, evaluation reads them).
// The parameters' one order (the bindings' sequence, the optimizers' state): C, then per
// hidden layer W[l] and b[l] (or gamma[l], beta[l]), then W[L], b[L].
struct Params {
  const float* C;  // (V, E)
  const float* W[kMaxLayers + 1];
  const float* b[kMaxLayers + 1];
  const float* gamma[kMaxLayers];
  const float* beta[kMaxLayers];
  const float* run_mean[kMaxLayers];
  const float* run_var[kMaxLayers];
};

// Writable parameters (or gradients, or optimizer state, with the same shapes).
struct MutParams {
  float* C;
  float* W[kMaxLayers + 1];
  float* b[kMaxLayers + 1];
  float* gamma[kMaxLayers];
  float* beta[kMaxLayers];
  float* run_mean[kMaxLayers];
  float* run_var[kMaxLayers];
};

// How one kernel call runs, and what it reports back. (No default member initializers:
// they would make an inline constructor that every ISA build emits; write Exec{n, 0, 0, nullptr}.)
struct Exec {
  int threads;      // OpenMP threads this call may use (a per-call setting, never process-wide)
  int bad_index;    // out: an index read during the call was out of range (another thread
                    // changed an array after the bindings checked it); the call's results are void
  int stopped;      // out: train_steps returned early because *stop became nonzero
  double* profile;  // train_steps, if not null: (threads, 2) out, per thread the seconds spent
                    // in the team's barriers and in the whole loop (how a team shares its work)
};

// Optimizers beyond plain SGD, with the update rules of torch.optim.SGD (momentum,
// Nesterov, weight decay) and torch.optim.AdamW. The bindings check every field.
enum OptimizerKind : int { kMomentum = 1, kAdamW = 2 };
struct Optimizer {
  int kind;             // OptimizerKind (kMomentum with momentum 0: SGD with weight decay)
  float momentum;       // kMomentum
  bool nesterov;        // kMomentum
  float beta1, beta2;   // kAdamW
  float eps;            // kAdamW
  float weight_decay;   // kMomentum: g += wd * p; kAdamW: p *= 1 - lr * wd
  int64_t step;         // optimizer steps taken before this call (AdamW's bias correction)
  MutParams slot[2];    // state in the parameters' layout: momentum_buffer | exp_avg, exp_avg_sq
};

// The diagnostics of a training step, makemore part 3's look inside (diag-inl.h): when
// TrainArgs::diag is set, train_steps records every step whose global index (step0 + s)
// is a multiple of `every`, the k-th such step in row k of out (at most `capacity`
// rows; the bindings fill out with NaN first, so rows not reached are NaN). A record is
// FASTMLP_DIAG_RECORD_LENGTH(bins, L, P) doubles:
//   [0] the loss; then for each hidden layer l = 1..L, 3 * bins + 9 numbers:
//   pre_hist[bins] over [-pre_range, pre_range] (tanh's input: x W + b, or BatchNorm's output),
//   act_hist[bins] over [-1, 1] (tanh output),
//   grad_hist[bins] over [-grad_absmax, grad_absmax] (d loss / d layer output, after dropout;
//   over [-1, 1] if every gradient is 0),
//   pre_mean, pre_std, act_mean, act_std, saturated fraction (|act| > sat), dead units
//   (saturated on every row), grad_mean, grad_std, grad_absmax;
//   then for each of the P parameter tensors in the parameters' order (C, W1, b1, W2, b2 for
//   the lecture's model): std(before the step), std(gradient), std(after - before: the
//   update really applied). Every std is unbiased (torch's).
// Histogram values outside their range count in the first or last bin. The lecture's model
// (L = 1, P = 5): kDiagFixed + 3 * bins.
enum { kDiagFixed = 1 + 9 + 15 };
// (a macro: an inline function here would be emitted by every ISA build, see the top)
#define FASTMLP_DIAG_RECORD_LENGTH(bins, L, P) (1 + (int64_t)(L) * (3 * (int64_t)(bins) + 9) + 3 * (int64_t)(P))
struct DiagArgs {
  int bins;
  float pre_range;
  float sat;         // the saturation threshold (the lecture's 0.97)
  int64_t every;     // record the steps whose global index is a multiple of this
  int64_t capacity;  // rows of out
  double* out;       // (capacity, FASTMLP_DIAG_RECORD_LENGTH(bins, L, P))
  float* act;        // (L, B, H) out, or null: the first recorded batch's tanh outputs (the saturation maps)
};

// Arguments of the fused training loop (train_steps).
struct TrainArgs {
  const int32_t* X;           // (N, T) training contexts
  const int32_t* Y;           // (N,)   training targets
  int64_t n_examples;         // N
  int batch_size;             // B
  int64_t steps;              // number of steps to run
  const float* lrs;           // (steps,) learning rate of each step
  const int64_t* batches;     // (steps, B) explicit example indices, or nullptr to sample
  uint64_t* rng_state;        // (4,) xoshiro256** state, never all zero; advanced when sampling
  float* losses;              // (steps,) out: minibatch loss before each update
  const Optimizer* opt;       // nullptr: plain SGD, fused into the gradient products
  float dropout;              // probability of dropping each unit of every hidden layer (inverted); 0 = off
  uint64_t dropout_seed;      // masks depend on (dropout_seed, step0 + step, layer, unit) only
  int64_t step0;              // global index of the first step of this call
  const volatile int32_t* stop;  // polled between steps: nonzero returns early (Ctrl-C); may be null
  const DiagArgs* diag;       // not null: record the diagnostics of every diag->every-th step
};

// Arguments of the batched sampler.
struct SampleArgs {
  int64_t n_samples;       // how many words
  int max_len;             // characters per word at most (without the final '.')
  float temperature;       // > 0
  int top_k;               // 0 = all
  uint64_t seed;           // word i uses its own stream (seed, i): results do not depend on batching
  int32_t* out;            // (n_samples, max_len) out: character indices, 0-terminated
};

// Every entry takes an Exec: its thread count, and where it reports an index that went
// out of range during the call. Entries throw std::bad_alloc when memory runs out, and the
// evaluating ones std::domain_error for a BatchNorm whose folded weights overflow (never
// from inside a parallel region).
struct KernelTable {
  const char* isa;
  int vector_width;  // floats per SIMD register in this build

  // emb (N, T*E) = C[X]                         C (V, E), X (N, T)
  void (*embedding_forward)(const float* C, const int32_t* X, float* emb, int64_t N, int T, int E, int V, Exec& ex);
  // dC (V, E) = scatter-add of d_emb (N, T*E) by X, in example order (repeats accumulate deterministically)
  void (*embedding_backward)(const float* d_emb, const int32_t* X, float* dC, int64_t N, int T, int E, int V,
                             Exec& ex);
  // y (N, M) = x (N, K) @ W (K, M) + b (M,), then tanh if apply_tanh
  void (*linear_forward)(const float* x, const float* W, const float* b, float* y, int64_t N, int K, int M,
                         bool apply_tanh, Exec& ex);
  // From dy (N, M): dx (N, K), dW (K, M), db (M,), all overwritten. If y_tanh is given,
  // y = tanh(pre) was the forward output and dy is first multiplied by 1 - y^2.
  void (*linear_backward)(const float* dy, const float* x, const float* W, const float* y_tanh, float* dx,
                          float* dW, float* db, int64_t N, int K, int M, Exec& ex);
  // Sum of the softmax cross-entropy of logits (N, V) against Y (N,), in double; if
  // dlogits is not null it receives d(mean loss)/d(logits) (N, V).
  double (*cross_entropy)(const float* logits, const int32_t* Y, float* dlogits, int64_t N, int V, Exec& ex);
  // BatchNorm1d in training mode, then tanh: h (N, H) = tanh(gamma (pre - mean) / sqrt(var + eps) + beta)
  // with the batch's mean and biased var; xhat (N, H) and stats (3, H) = mean, var, 1 / sqrt(var + eps) out.
  void (*batchnorm_tanh_forward)(const float* pre, const float* gamma, const float* beta, float eps, float* h,
                                 float* xhat, float* stats, int64_t N, int H, Exec& ex);
  // Its backward from dh (N, H) (the tanh output's gradient): dpre (N, H), dgamma, dbeta (H,).
  void (*batchnorm_tanh_backward)(const float* dh, const float* h, const float* xhat, const float* stats,
                                  const float* gamma, float* dpre, float* dgamma, float* dbeta, int64_t N, int H,
                                  Exec& ex);

  // p -= lr * g
  void (*sgd_update)(float* p, const float* g, int64_t n, float lr, Exec& ex);
  // one step (number o.step + 1) of o on one tensor p (n,); s0, s1: its state (s1 AdamW's second moment)
  void (*optimizer_update)(const Optimizer& o, float* p, const float* g, float* s0, float* s1, int64_t n, float lr,
                           Exec& ex);

  // Whole-model passes. mlp_forward, mlp_loss_sum and sample evaluate (BatchNorm with the
  // running statistics); train_steps trains with the batch's and updates the running ones.
  void (*mlp_forward)(const Params& P, const Dims& d, const int32_t* X, int64_t N, float* logits, Exec& ex);
  // Sum of the per-example losses over N examples, evaluated in chunks (no (N, V) buffer).
  double (*mlp_loss_sum)(const Params& P, const Dims& d, const int32_t* X, const int32_t* Y, int64_t N, Exec& ex);
  // Mean loss and its gradients (overwritten) for one batch, in training mode (BatchNorm
  // with the batch's statistics; the running ones are not touched). dropout_mask: null,
  // or (L, N, H) multipliers applied to each hidden layer's output (0 or 1/(1-p), inverted dropout).
  double (*mlp_loss_and_grad)(const Params& P, const Dims& d, const int32_t* X, const int32_t* Y, int64_t N,
                              const MutParams& grads, const float* dropout_mask, Exec& ex);
  // Runs args.steps steps in place on P. Returns the number completed: fewer when a loss
  // became NaN/inf (args.losses[done] holds it; the parameters are those before that step),
  // when *args.stop became nonzero (ex.stopped), or when an index was out of range (ex.bad_index).
  int64_t (*train_steps)(const MutParams& P, const Dims& d, const TrainArgs& args, Exec& ex);
  void (*sample)(const Params& P, const Dims& d, const SampleArgs& args, Exec& ex);

  // Benchmark support: 12 independent chains of `iters` vector FMAs each
  // (12 * vector_width * 2 * iters flops), the machine's FMA peak.
  void (*fma_loop)(int64_t iters, float* sink);
};

// Defined in kernels.cpp, one per ISA build that CMake compiled.
extern const KernelTable kernels_generic;
extern const KernelTable kernels_avx2;
extern const KernelTable kernels_avx512;

// dispatch.cpp
const KernelTable& active_kernels();
// Select by name ("generic", "avx2", "avx512", or "auto"); returns false if unavailable.
bool select_kernels(const char* name);
// Names of the builds compiled in and supported by this CPU.
int available_kernels(const char** names, int max_names);

}  // namespace fastmlp
