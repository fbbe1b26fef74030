// pybind11 glue for the layer, optimizer and whole-model kernels: checks (args.h),
// array allocation, GIL release. The arithmetic lives in the *-inl.h kernels; this file
// only converts, and makes sure the kernels are never handed memory they could read or
// write out of bounds. train_steps and sample are in bind_train.cpp, the module's names
// and docstrings in module.cpp.
#include "bindings.h"

namespace fastmlp {
namespace bind {

// ---------------------------------------------------------------------------
// Layers, one kernel each
// ---------------------------------------------------------------------------
py::array_t<float> embedding_forward(py::handle C_, py::handle X_, py::handle threads) {
  Exec ex = exec_for(threads);
  auto C = typed<float>(C_, "C", {-1, -1}, "(V, E)");
  require_finite(C, "C");
  auto X = typed<int32_t>(X_, "X", {-1, -1}, "(N, T)");
  require_nonempty(X.shape(0), "X");
  require_indices(X.data(), X.size(), C.shape(0), "X", "indices into the rows of C");
  const int64_t N = X.shape(0), T = X.shape(1), E = C.shape(1), V = C.shape(0);
  auto out = empty<float>({N, T * E});
  float* o = out.mutable_data();
  {
    const KernelTable& k = active_kernels();
    py::gil_scoped_release nogil;
    k.embedding_forward(C.data(), X.data(), o, N, (int)T, (int)E, (int)V, ex);
  }
  raise_if_bad_index(ex);
  return out;
}

py::array_t<float> embedding_backward(py::handle d_emb_, py::handle X_, py::handle num_embeddings, py::handle threads) {
  Exec ex = exec_for(threads);
  const int64_t V = int_arg(num_embeddings, "num_embeddings", 1, kMaxDim);
  auto X = typed<int32_t>(X_, "X", {-1, -1}, "(N, T)");
  require_nonempty(X.shape(0), "X");
  require_indices(X.data(), X.size(), V, "X", "indices into the rows of C");
  const int64_t N = X.shape(0), T = X.shape(1);
  auto d_emb = typed<float>(d_emb_, "d_emb", {N, -1}, "(N, T*E)");
  if (d_emb.shape(1) % T != 0 || d_emb.shape(1) == 0)
    throw py::value_error("d_emb must have T*E columns, a multiple of T = " + std::to_string(T) + ", got " +
                          shape_str(d_emb));
  const int64_t E = d_emb.shape(1) / T;
  auto dC = empty<float>({V, E});
  float* g = dC.mutable_data();
  {
    const KernelTable& k = active_kernels();
    py::gil_scoped_release nogil;
    k.embedding_backward(d_emb.data(), X.data(), g, N, (int)T, (int)E, (int)V, ex);
  }
  raise_if_bad_index(ex);
  return dC;
}

struct LinearArgs {
  py::array_t<float> x, W;
  int64_t N, K, M;
};

LinearArgs check_linear(py::handle x_, py::handle W_) {
  LinearArgs a;
  a.W = typed<float>(W_, "W", {-1, -1}, "(K, M)");
  require_finite(a.W, "W");
  a.K = a.W.shape(0);
  a.M = a.W.shape(1);
  if (a.K < 1 || a.M < 1) throw py::value_error("W must not be empty, got shape " + shape_str(a.W));
  a.x = typed<float>(x_, "x", {-1, a.K}, "(N, K)");
  a.N = a.x.shape(0);
  require_nonempty(a.N, "x");
  return a;
}

py::array_t<float> linear_forward(py::handle x_, py::handle W_, py::handle b_, bool tanh, py::handle threads) {
  Exec ex = exec_for(threads);
  LinearArgs a = check_linear(x_, W_);
  auto b = typed<float>(b_, "b", {a.M}, "(M,)");
  require_finite(b, "b");
  auto y = empty<float>({a.N, a.M});
  float* o = y.mutable_data();
  const KernelTable& k = active_kernels();
  py::gil_scoped_release nogil;
  k.linear_forward(a.x.data(), a.W.data(), b.data(), o, a.N, (int)a.K, (int)a.M, tanh, ex);
  return y;
}

py::tuple linear_backward(py::handle dy_, py::handle y_, py::handle x_, py::handle W_, bool tanh, py::handle threads) {
  Exec ex = exec_for(threads);
  LinearArgs a = check_linear(x_, W_);
  auto dy = typed<float>(dy_, tanh ? "dh" : "dy", {a.N, a.M}, "(N, M)");
  py::array_t<float> y;
  if (tanh) y = typed<float>(y_, "h", {a.N, a.M}, "(N, M)");
  auto dx = empty<float>({a.N, a.K});
  auto dW = empty<float>({a.K, a.M});
  auto db = empty<float>({a.M});
  float *pdx = dx.mutable_data(), *pdW = dW.mutable_data(), *pdb = db.mutable_data();
  {
    const KernelTable& k = active_kernels();
    py::gil_scoped_release nogil;
    k.linear_backward(dy.data(), a.x.data(), a.W.data(), tanh ? y.data() : nullptr, pdx, pdW, pdb, a.N, (int)a.K,
                      (int)a.M, ex);
  }
  return py::make_tuple(dx, dW, db);
}

py::object cross_entropy(py::handle logits_, py::handle Y_, bool with_grad, py::handle threads) {
  Exec ex = exec_for(threads);
  auto logits = typed<float>(logits_, "logits", {-1, -1}, "(N, V)");
  const int64_t N = logits.shape(0), V = logits.shape(1);
  require_nonempty(N, "logits");
  if (V < 1) throw py::value_error("logits must have V >= 1 columns, got " + shape_str(logits));
  auto Y = check_Y(Y_, N, V);
  py::array_t<float> d;
  float* pd = nullptr;
  if (with_grad) {
    d = empty<float>({N, V});
    pd = d.mutable_data();
  }
  double s;
  {
    const KernelTable& k = active_kernels();
    py::gil_scoped_release nogil;
    s = k.cross_entropy(logits.data(), Y.data(), pd, N, (int)V, ex);
  }
  raise_if_bad_index(ex);
  if (!with_grad) return py::float_(s / (double)N);
  return py::make_tuple(s / (double)N, d);
}

py::tuple batchnorm_tanh_forward(py::handle pre_, py::handle gamma_, py::handle beta_, double eps,
                                 py::handle threads) {
  Exec ex = exec_for(threads);
  auto pre = typed<float>(pre_, "pre", {-1, -1}, "(N, H)");
  const int64_t N = pre.shape(0), H = pre.shape(1);
  if (N < 2) throw py::value_error("BatchNorm needs at least 2 rows in training (the batch's variance), got N = " +
                                   std::to_string(N));
  if (H < 1) throw py::value_error("pre must have H >= 1 columns, got " + shape_str(pre));
  auto gamma = typed<float>(gamma_, "gamma", {H}, "(H,)");
  auto beta = typed<float>(beta_, "beta", {H}, "(H,)");
  require_finite(pre, "pre");
  require_finite(gamma, "gamma");
  require_finite(beta, "beta");
  if (!(eps > 0) || !std::isfinite((float)eps) || (float)eps <= 0.f)
    throw py::value_error("eps must be a finite number > 0, got " + fmt(eps));
  auto h = empty<float>({N, H}), xhat = empty<float>({N, H}), stats = empty<float>({3, H});
  float *ph = h.mutable_data(), *px = xhat.mutable_data(), *ps = stats.mutable_data();
  {
    const KernelTable& k = active_kernels();
    py::gil_scoped_release nogil;
    k.batchnorm_tanh_forward(pre.data(), gamma.data(), beta.data(), (float)eps, ph, px, ps, N, (int)H, ex);
  }
  return py::make_tuple(h, xhat, stats);
}

py::tuple batchnorm_tanh_backward(py::handle dh_, py::handle h_, py::handle xhat_, py::handle stats_,
                                  py::handle gamma_, py::handle threads) {
  Exec ex = exec_for(threads);
  auto dh = typed<float>(dh_, "dh", {-1, -1}, "(N, H)");
  const int64_t N = dh.shape(0), H = dh.shape(1);
  if (N < 2) throw py::value_error("BatchNorm needs at least 2 rows in training, got N = " + std::to_string(N));
  auto h = typed<float>(h_, "h", {N, H}, "(N, H)");
  auto xhat = typed<float>(xhat_, "xhat", {N, H}, "(N, H)");
  auto stats = typed<float>(stats_, "stats", {3, H}, "(3, H)");
  auto gamma = typed<float>(gamma_, "gamma", {H}, "(H,)");
  auto dpre = empty<float>({N, H}), dgamma = empty<float>({H}), dbeta = empty<float>({H});
  float *pd = dpre.mutable_data(), *pg = dgamma.mutable_data(), *pb = dbeta.mutable_data();
  {
    const KernelTable& k = active_kernels();
    py::gil_scoped_release nogil;
    k.batchnorm_tanh_backward(dh.data(), h.data(), xhat.data(), stats.data(), gamma.data(), pd, pg, pb, N, (int)H,
                              ex);
  }
  return py::make_tuple(dpre, dgamma, dbeta);
}

// ---------------------------------------------------------------------------
// Optimizers. check_optimizer holds every hyperparameter's one bound; fastmlp.optim
// calls it when an optimizer is made, and train_steps when it runs one.
// ---------------------------------------------------------------------------
Optimizer check_optimizer(const std::string& kind, double momentum, bool nesterov, double beta1, double beta2,
                          double eps, double weight_decay) {
  Optimizer o{};
  if (kind == "sgd") {
    o.kind = kMomentum;
  } else if (kind == "adamw") {
    o.kind = kAdamW;
  } else {
    throw py::value_error("optimizer must be 'sgd' or 'adamw', got '" + kind + "'");
  }
  o.momentum = in_range(momentum, "momentum", 0, 1);
  o.nesterov = nesterov;
  if (nesterov && (o.kind != kMomentum || o.momentum == 0))
    throw py::value_error("nesterov needs the sgd optimizer with momentum > 0");
  o.beta1 = in_range(beta1, "beta1", 0, 1);
  o.beta2 = in_range(beta2, "beta2", 0, 1);
  if (!(eps > 0) || eps > 1) throw py::value_error("eps must be a number in (0, 1], got " + fmt(eps));
  o.eps = (float)eps;
  o.weight_decay = in_range(weight_decay, "weight_decay", 0, 1e6, true);
  return o;
}

float check_dropout(double p) { return in_range(p, "dropout", 0, 1); }

void sgd_update(py::handle p_, py::handle g_, double lr, py::handle threads) {
  Exec ex = exec_for(threads);
  const py::ssize_t ndim = as_array(p_, "p").ndim();
  auto p = typed<float>(p_, "p", std::vector<int64_t>(ndim, -1), "(any shape)", true);
  auto g = typed_like<float>(g_, "g", p, false);
  require_disjoint({{"p", &p}}, {{"g", &g}});
  const float l = checked_lr(lr);
  float* pp = p.mutable_data();
  const KernelTable& k = active_kernels();
  py::gil_scoped_release nogil;
  k.sgd_update(pp, g.data(), p.size(), l, ex);
}

void optimizer_update(const Optimizer& o, py::handle p_, py::handle g_, py::handle s0_, py::handle s1_, double lr,
                      py::handle threads, const char* s0_name) {
  Exec ex = exec_for(threads);
  const py::ssize_t ndim = as_array(p_, "p").ndim();
  auto p = typed<float>(p_, "p", std::vector<int64_t>(ndim, -1), "(any shape)", true);
  auto g = typed_like<float>(g_, "g", p, false);
  auto s0 = typed_like<float>(s0_, s0_name, p, true);
  py::array_t<float> s1 = s1_.is_none() ? py::array_t<float>(0) : typed_like<float>(s1_, "v", p, true);
  require_disjoint({{"p", &p}, {s0_name, &s0}, {"v", &s1}}, {{"p", &p}, {"g", &g}, {s0_name, &s0}, {"v", &s1}});
  const float l = checked_lr(lr);
  float *pp = p.mutable_data(), *ps0 = s0.mutable_data(), *ps1 = s1_.is_none() ? nullptr : s1.mutable_data();
  const KernelTable& k = active_kernels();
  py::gil_scoped_release nogil;
  k.optimizer_update(o, pp, g.data(), ps0, ps1, p.size(), l, ex);
}

// ---------------------------------------------------------------------------
// Whole-model passes
// ---------------------------------------------------------------------------
py::array_t<float> mlp_forward(py::handle params, py::handle X_, py::handle batchnorm, py::handle threads) {
  Exec ex = exec_for(threads);
  Model m = check_model(params, false, batchnorm);
  auto X = check_X(X_, m.d);
  const int64_t N = X.shape(0);
  auto logits = empty<float>({N, (int64_t)m.d.V});
  float* o = logits.mutable_data();
  {
    const KernelTable& k = active_kernels();
    py::gil_scoped_release nogil;
    k.mlp_forward(m.view(), m.d, X.data(), N, o, ex);
  }
  raise_if_bad_index(ex);
  return logits;
}

double mlp_loss(py::handle params, py::handle X_, py::handle Y_, py::handle batchnorm, py::handle threads) {
  Exec ex = exec_for(threads);
  Model m = check_model(params, false, batchnorm);
  auto X = check_X(X_, m.d);
  const int64_t N = X.shape(0);
  auto Y = check_Y(Y_, N, m.d.V);
  double s;
  {
    const KernelTable& k = active_kernels();
    py::gil_scoped_release nogil;
    s = k.mlp_loss_sum(m.view(), m.d, X.data(), Y.data(), N, ex);
  }
  raise_if_bad_index(ex);
  return s / (double)N;
}

py::tuple mlp_loss_and_grad(py::handle params, py::handle X_, py::handle Y_, py::handle mask_, py::handle batchnorm,
                            py::handle threads) {
  Exec ex = exec_for(threads);
  Model m = check_model(params, false, batchnorm);
  auto X = check_X(X_, m.d);
  const int64_t N = X.shape(0);
  auto Y = check_Y(Y_, N, m.d.V);
  require_batch_for_batchnorm(m.d, N, "N");
  const Dims& d = m.d;
  // the gradients: arrays shaped like the parameters, in their order
  std::vector<py::array_t<float>> g;
  for (const auto& a : m.arrays) g.push_back(empty<float>(std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim())));
  MutParams gp = in_order(data_of(g), d.L, d.bn != 0);
  py::array_t<float> mask;
  if (!mask_.is_none()) {
    mask = d.L == 1 ? typed<float>(mask_, "dropout_mask", {N, (int64_t)d.H}, "(N, H)")
                    : typed<float>(mask_, "dropout_mask", {d.L, N, (int64_t)d.H}, "(n_layers, N, H)");
    require_finite(mask, "dropout_mask");
  }
  double loss;
  {
    const KernelTable& k = active_kernels();
    py::gil_scoped_release nogil;
    loss = k.mlp_loss_and_grad(m.view(), d, X.data(), Y.data(), N, gp, mask_.is_none() ? nullptr : mask.data(), ex);
  }
  raise_if_bad_index(ex);
  return py::make_tuple(loss, as_tuple(g));
}

}  // namespace bind
}  // namespace fastmlp
