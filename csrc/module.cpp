// fastmlp._core: the names, argument lists and docstrings of the extension module
// (typed in src/fastmlp/_core.pyi), plus build information and the benchmark's FMA peak.
#include <chrono>

#include "bindings.h"

namespace py = pybind11;
using namespace fastmlp;
using namespace fastmlp::bind;

namespace {

// Measured FMA throughput of the active kernel build on `threads` threads, in GFLOP/s.
double fma_peak_gflops(py::handle threads_, double seconds) {
  const int threads = checked_threads(threads_, "threads");
  const KernelTable& k = active_kernels();
  const int64_t flops_per_iter = 12 * (int64_t)k.vector_width * 2;
  int64_t iters = 1 << 16;
  float sink = 0.f;
  py::gil_scoped_release nogil;
  for (;;) {
    const auto t0 = std::chrono::steady_clock::now();
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
      float s;
      k.fma_loop(iters, &s);
#ifdef _OPENMP
#pragma omp atomic
#endif
      sink += s;
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (dt >= seconds) return (double)flops_per_iter * iters * threads / dt / 1e9 + 0.0 * sink;
    iters *= 2;
  }
}

// ---------------------------------------------------------------------------
// Build information and settings
// ---------------------------------------------------------------------------
py::dict build_info() {
  py::dict d;
  d["version"] = FASTMLP_VERSION;
  d["compiler"] = FASTMLP_COMPILER;
  d["flags"] = FASTMLP_FLAGS;
#ifdef FASTMLP_HAVE_OPENMP
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  d["num_threads"] = g_default_threads.load();
  d["max_threads"] = max_threads();
  d["cpus"] = cpu_count();
  d["isa"] = active_kernels().isa;
  d["vector_width"] = active_kernels().vector_width;
  const char* names[8];
  const int n = available_kernels(names, 8);
  py::list isas;
  for (int i = 0; i < n; ++i) isas.append(names[i]);
  d["isas_available"] = isas;
  d["sanitized"] = (bool)FASTMLP_SANITIZED;
  return d;
}

void set_isa(const std::string& name) {
  if (!select_kernels(name.c_str())) {
    const char* names[8];
    const int n = available_kernels(names, 8);
    std::string avail;
    for (int i = 0; i < n; ++i) avail += std::string(i ? ", " : "") + names[i];
    throw py::value_error("isa '" + name + "' is not available on this CPU/build; choose one of: auto, " + avail);
  }
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastmlp C++ kernels (float32, row-major). Shapes: N examples, T block_size, E n_embd, H n_hidden, V vocab.";
  g_default_threads.store(cpu_count() < max_threads() ? cpu_count() : max_threads());
  const auto T = py::arg("threads") = py::none();  // every kernel: threads for this call (None: the default)

  m.def("build_info", &build_info, "Version, compiler, flags, OpenMP, threads and kernel ISA of this build.");
  m.def("set_num_threads", [](py::handle n) { g_default_threads.store(checked_threads(n)); }, py::arg("n"),
        "Threads for kernel calls that do not name a count (the process default).");
  m.def("get_num_threads", [] { return g_default_threads.load(); });
  m.def("max_threads", &max_threads, "The largest thread count a call accepts.");
  m.def("set_isa", &set_isa, py::arg("name"), "Select a kernel build: 'auto', 'generic', 'avx2', 'avx512'.");
  m.def("get_isa", [] { return std::string(active_kernels().isa); });
  m.def("first_layer_tables",
        [](int V, int T, int E, int H, int64_t batch) {
          Dims d{};
          d.V = V, d.T = T, d.E = E, d.H = H;
          return first_layer_tables(d, batch);
        },
        py::arg("V"), py::arg("T"), py::arg("E"), py::arg("H"), py::arg("batch"),
        "Whether a training step of this batch size takes the first layer through the embedding table "
        "(C W1's rows summed, instead of emb W1): where that is at most half the work.");

  m.def("embedding_forward", &embedding_forward, py::arg("C"), py::arg("X"), py::kw_only(), T,
        "emb (N, T*E) = C[X] for C (V, E) float32, X (N, T) int32.");
  m.def("embedding_backward", &embedding_backward, py::arg("d_emb"), py::arg("X"), py::arg("num_embeddings"),
        py::kw_only(), T, "dC (V, E): scatter-add of d_emb (N, T*E) into the rows X (N, T); V = num_embeddings.");
  m.def("linear_tanh_forward",
        [](py::handle x, py::handle W, py::handle b, py::handle t) { return linear_forward(x, W, b, true, t); },
        py::arg("x"), py::arg("W"), py::arg("b"), py::kw_only(), T, "h (N, M) = tanh(x (N, K) @ W (K, M) + b (M,)).");
  m.def("linear_tanh_backward",
        [](py::handle dh, py::handle h, py::handle x, py::handle W, py::handle t) {
          return linear_backward(dh, h, x, W, true, t);
        },
        py::arg("dh"), py::arg("h"), py::arg("x"), py::arg("W"), py::kw_only(), T,
        "(dx, dW, db) of h = tanh(x W + b), from dh and the stored h (uses 1 - h^2).");
  m.def("linear_forward",
        [](py::handle x, py::handle W, py::handle b, py::handle t) { return linear_forward(x, W, b, false, t); },
        py::arg("x"), py::arg("W"), py::arg("b"), py::kw_only(), T, "y (N, M) = x (N, K) @ W (K, M) + b (M,).");
  m.def("linear_backward",
        [](py::handle dy, py::handle x, py::handle W, py::handle t) {
          return linear_backward(dy, py::none(), x, W, false, t);
        },
        py::arg("dy"), py::arg("x"), py::arg("W"), py::kw_only(), T, "(dx, dW, db) of y = x W + b, from dy.");
  m.def("cross_entropy", [](py::handle z, py::handle Y, py::handle t) { return cross_entropy(z, Y, true, t); },
        py::arg("logits"), py::arg("Y"), py::kw_only(), T,
        "(mean loss, dlogits) of softmax cross-entropy in one pass; logits (N, V), Y (N,) int32.");
  m.def("cross_entropy_loss", [](py::handle z, py::handle Y, py::handle t) { return cross_entropy(z, Y, false, t); },
        py::arg("logits"), py::arg("Y"), py::kw_only(), T, "Mean softmax cross-entropy (no gradient).");

  m.def("batchnorm_tanh_forward", &batchnorm_tanh_forward, py::arg("pre"), py::arg("gamma"), py::arg("beta"),
        py::arg("eps") = 1e-5, py::kw_only(), T,
        "(h, xhat, stats): h (N, H) = tanh(gamma (pre - mean) / sqrt(var + eps) + beta), BatchNorm1d in training "
        "mode (the batch's mean and biased variance); stats (3, H) = mean, var, 1 / sqrt(var + eps).");
  m.def("batchnorm_tanh_backward", &batchnorm_tanh_backward, py::arg("dh"), py::arg("h"), py::arg("xhat"),
        py::arg("stats"), py::arg("gamma"), py::kw_only(), T,
        "(dpre, dgamma, dbeta) of batchnorm_tanh_forward, from dh (N, H).");
  m.def("check_optimizer",
        [](const std::string& kind, double momentum, bool nesterov, double beta1, double beta2, double eps,
           double weight_decay) { check_optimizer(kind, momentum, nesterov, beta1, beta2, eps, weight_decay); },
        py::arg("kind"), py::arg("momentum") = 0.0, py::arg("nesterov") = false, py::arg("beta1") = 0.9,
        py::arg("beta2") = 0.999, py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.0,
        "Raises ValueError naming the first hyperparameter out of its range (the bounds every kernel uses).");
  m.def("check_dropout", &check_dropout, py::arg("p"), "Raises ValueError unless 0 <= p < 1.");
  m.def("sgd_update", &sgd_update, py::arg("p"), py::arg("g"), py::arg("lr"), py::kw_only(), T,
        "p -= lr * g, in place.");
  m.def("momentum_update",
        [](py::handle p, py::handle g, py::handle buf, double lr, double momentum, bool nesterov, double wd,
           py::handle t) {
          optimizer_update(check_optimizer("sgd", momentum, nesterov, 0.9, 0.999, 1e-8, wd), p, g, buf, py::none(), lr,
                           t, "buf");
        },
        py::arg("p"), py::arg("g"), py::arg("buf"), py::arg("lr"), py::arg("momentum"), py::arg("nesterov") = false,
        py::arg("weight_decay") = 0.0, py::kw_only(), T,
        "One torch.optim.SGD step with momentum on p, in place (buf: the momentum buffer, zeros at first).");
  m.def("adamw_update",
        [](py::handle p, py::handle g, py::handle m_, py::handle v, py::handle step, double lr, double beta1,
           double beta2, double eps, double wd, py::handle t) {
          Optimizer o = check_optimizer("adamw", 0.0, false, beta1, beta2, eps, wd);
          o.step = int_arg(step, "step", 1, INT64_MAX / 2) - 1;
          optimizer_update(o, p, g, m_, v, lr, t, "m");
        },
        py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("step"), py::arg("lr"), py::arg("beta1") = 0.9,
        py::arg("beta2") = 0.999, py::arg("eps") = 1e-8, py::arg("weight_decay") = 0.01, py::kw_only(), T,
        "One torch.optim.AdamW step (1-based number `step`) on p, in place.");

  const auto BN = py::arg("batchnorm") = py::none();
  m.def("mlp_forward", &mlp_forward, py::arg("params"), py::arg("X"), py::kw_only(), BN, T,
        "logits (N, V) of the whole model in evaluation mode; params = (C, W1, b1, ..., W{L+1}, b{L+1}) (the "
        "lecture's (C, W1, b1, W2, b2)), or under BatchNorm (C, W1, gamma1, beta1, ..., W{L+1}, b{L+1}) with "
        "batchnorm = (running_mean, running_var, eps, momentum), two sequences of L arrays (H,).");
  m.def("mlp_loss", &mlp_loss, py::arg("params"), py::arg("X"), py::arg("Y"), py::kw_only(), BN, T,
        "Mean loss over all N examples in evaluation mode, evaluated in chunks.");
  m.def("mlp_loss_and_grad", &mlp_loss_and_grad, py::arg("params"), py::arg("X"), py::arg("Y"),
        py::arg("dropout_mask") = py::none(), py::kw_only(), BN, T,
        "(loss, gradients in the parameters' order) for one batch in training mode (BatchNorm with the batch's "
        "statistics; the running ones untouched); dropout_mask: optional multipliers of every hidden layer's output, "
        "(N, H) for one layer, (n_layers, N, H) for more.");
  m.def("train_steps", &train_steps, py::arg("params"), py::arg("X"), py::arg("Y"), py::arg("lrs"), py::kw_only(),
        py::arg("batch_size") = py::none(), py::arg("rng_state") = py::none(), py::arg("batches") = py::none(),
        py::arg("optimizer") = py::none(), py::arg("dropout") = 0.0, py::arg("dropout_seed") = 0,
        py::arg("step0") = 0, T, py::arg("stop") = py::none(), py::arg("profile") = py::none(),
        py::arg("diag") = py::none(), BN,
        "Runs len(lrs) steps in place on params (GIL released). Minibatches of batch_size are drawn with rng_state "
        "(advanced in place), or given as batches (steps, B) int64. optimizer: None (SGD fused into the products) or "
        "a fastmlp.optim optimizer, whose state and step are updated. batchnorm: as mlp_forward's; its running "
        "statistics are updated in place. dropout: inverted dropout on every hidden layer's output, masks from "
        "(dropout_seed, step0 + step, layer) (dropout_mask). stop: an int32 array (1,) polled between steps; nonzero "
        "returns early. profile: a float64 array (threads, 2) that receives, per thread, the seconds spent in the "
        "team's barriers and in the whole loop. diag: (out, bins, pre_range, sat, act, every) records the diagnostics of "
        "every step whose global index step0 + s is a multiple of every, the k-th in row k of out (float64, "
        "(n, 1 + n_layers (9 + 3 bins) + 3 n_params); layout: kernels.h, fastmlp.diagnostics; rows not reached are "
        "NaN). Returns the per-step losses; shorter than lrs if stopped, or if a "
        "loss became NaN/inf (then it is the last entry and that step was not applied).");
  m.def("dropout_mask", &dropout_mask, py::arg("seed"), py::arg("step"), py::arg("B"), py::arg("H"), py::arg("p"),
        py::arg("layer") = 1, py::arg("n_layers") = 1,
        "The (B, H) dropout multipliers train_steps uses at global step `step` on hidden layer `layer` (1..n_layers) "
        "of a model with n_layers hidden layers.");
  m.def("sample", &sample, py::arg("params"), py::arg("n"), py::arg("max_len"), py::arg("seed"),
        py::arg("temperature") = 1.0, py::arg("top_k") = 0, py::kw_only(), BN, T,
        "n words as int32 (n, max_len) character indices, each ended by 0 ('.') unless max_len was reached.");
  m.def("fma_peak_gflops", &fma_peak_gflops, py::arg("threads") = 1, py::arg("seconds") = 0.2,
        "Measured FMA peak of the active kernel build on this many threads (GFLOP/s), for benchmarks.");
  m.attr("MAX_LAYERS") = (int)kMaxLayers;  // hidden layers at most
  m.attr("DIAG_FIXED") = (int)kDiagFixed;  // the lecture's model's diagnostics record: DIAG_FIXED + 3 * bins doubles
  m.def("rng_state", &rng_state, py::arg("seed"), "A fresh xoshiro256** state (4,) uint64 for train_steps.");
}
