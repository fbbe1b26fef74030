// pybind11 glue for fastmlp._core: argument checks, array allocation, GIL
// release. The arithmetic lives in kernels.cpp; this file only makes sure the
// kernels are never handed memory they could read or write out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kernels.h"
#include "rng.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using namespace fastmlp;

namespace {

// ---------------------------------------------------------------------------
// Threads: one process-wide setting, applied on the calling thread before each
// kernel (omp_set_num_threads alone would only affect the thread that set it).
// ---------------------------------------------------------------------------
std::atomic<int> g_threads{0};

int default_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

const KernelTable& kernels() {
#ifdef _OPENMP
  omp_set_num_threads(g_threads.load());
#endif
  return active_kernels();
}

// ---------------------------------------------------------------------------
// Argument checks. Every message names the argument and what was expected.
// ---------------------------------------------------------------------------
constexpr int64_t kMaxDim = int64_t(1) << 30;  // keeps every index product inside int64 and int

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

py::array as_array(py::handle obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  return py::reinterpret_borrow<py::array>(obj);
}

// dims: expected sizes, -1 = any. dims_doc: how the shape is described, e.g. "(V, E)".
void check_layout(const py::array& a, const char* name, const std::vector<int64_t>& dims, const char* dims_doc,
                  bool writable) {
  if ((py::ssize_t)dims.size() != a.ndim())
    throw py::value_error(std::string(name) + " must be " + std::to_string(dims.size()) + "-D with shape " +
                          dims_doc + ", got shape " + shape_str(a));
  for (size_t i = 0; i < dims.size(); ++i) {
    if (a.shape(i) > kMaxDim)
      throw py::value_error(std::string(name) + " is too large: dimension " + std::to_string(i) + " is " +
                            std::to_string(a.shape(i)));
    if (dims[i] >= 0 && a.shape(i) != dims[i])
      throw py::value_error(std::string(name) + " must have shape " + dims_doc + " = " + [&] {
        std::string s = "(";
        for (size_t j = 0; j < dims.size(); ++j) {
          if (j) s += ", ";
          s += dims[j] >= 0 ? std::to_string(dims[j]) : std::string("*");
        }
        return s + (dims.size() == 1 ? ",)" : ")");
      }() + ", got " + shape_str(a));
  }
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + " must be C-contiguous (numpy.ascontiguousarray(" + name + "))");
  if (!(a.flags() & 0x0100 /* NPY_ARRAY_ALIGNED */))
    throw py::value_error(std::string(name) + " must be aligned (numpy.ascontiguousarray(" + name + "))");
  if (writable && !a.writeable()) throw py::value_error(std::string(name) + " must be writable (it is updated in place)");
}

template <typename T>
const char* dtype_name();
template <>
const char* dtype_name<float>() { return "float32"; }
template <>
const char* dtype_name<int32_t>() { return "int32"; }
template <>
const char* dtype_name<int64_t>() { return "int64"; }
template <>
const char* dtype_name<uint64_t>() { return "uint64"; }

template <typename T>
py::array_t<T> typed(py::handle obj, const char* name, const std::vector<int64_t>& dims, const char* dims_doc,
                     bool writable = false) {
  py::array a = as_array(obj, name);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " must have dtype " + dtype_name<T>() + ", got " + dtype_str(a));
  check_layout(a, name, dims, dims_doc, writable);
  return py::reinterpret_borrow<py::array_t<T>>(a);
}

bool all_finite(const float* p, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, p + i, 4);
    bad |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

void require_finite(const py::array_t<float>& a, const char* name) {
  if (!all_finite(a.data(), a.size()))
    throw py::value_error(std::string(name) + " contains NaN or inf");
}

float checked_lr(double lr, const char* name = "lr") {
  if (!std::isfinite(lr) || lr < 0)
    throw py::value_error(std::string(name) + " must be a finite number >= 0, got " + std::to_string(lr));
  return (float)lr;
}

// Indices (any shape) must lie in [0, n).
void require_indices(const int32_t* p, int64_t count, int64_t n, const char* name, const char* what) {
  for (int64_t i = 0; i < count; ++i)
    if (p[i] < 0 || p[i] >= n)
      throw py::index_error(std::string(name) + " contains " + std::to_string(p[i]) + " at flat position " +
                            std::to_string(i) + ", outside [0, " + std::to_string(n) + ") (" + what + ")");
}

void require_nonempty(int64_t n, const char* name) {
  if (n == 0) throw py::value_error(std::string(name) + " is empty: need at least one example");
}

// The five parameters of the model, checked against each other.
struct Model {
  py::array_t<float> C, W1, b1, W2, b2;
  Dims d;
  Params view() const { return {C.data(), W1.data(), b1.data(), W2.data(), b2.data()}; }
  MutParams mut() {
    return {C.mutable_data(), W1.mutable_data(), b1.mutable_data(), W2.mutable_data(), b2.mutable_data()};
  }
};

Model check_model(py::handle C, py::handle W1, py::handle b1, py::handle W2, py::handle b2, bool writable = false,
                  bool finite = true) {
  Model m;
  m.C = typed<float>(C, "C", {-1, -1}, "(V, E)", writable);
  const int64_t V = m.C.shape(0), E = m.C.shape(1);
  if (V < 1 || E < 1) throw py::value_error("C must have V >= 1 rows and E >= 1 columns, got " + shape_str(m.C));
  m.W1 = typed<float>(W1, "W1", {-1, -1}, "(T*E, H)", writable);
  const int64_t TE = m.W1.shape(0), H = m.W1.shape(1);
  if (TE < E || TE % E != 0)
    throw py::value_error("W1 must have T*E rows, a multiple of E = " + std::to_string(E) + ", got " +
                          shape_str(m.W1));
  if (H < 1) throw py::value_error("W1 must have H >= 1 columns, got " + shape_str(m.W1));
  m.b1 = typed<float>(b1, "b1", {H}, "(H,)", writable);
  m.W2 = typed<float>(W2, "W2", {H, V}, "(H, V)", writable);
  m.b2 = typed<float>(b2, "b2", {V}, "(V,)", writable);
  m.d = Dims{(int)V, (int)(TE / E), (int)E, (int)H};
  if (finite) {
    require_finite(m.C, "C");
    require_finite(m.W1, "W1");
    require_finite(m.b1, "b1");
    require_finite(m.W2, "W2");
    require_finite(m.b2, "b2");
  }
  return m;
}

py::array_t<int32_t> check_X(py::handle X, const Dims& d, const char* name = "X") {
  auto x = typed<int32_t>(X, name, {-1, d.T}, "(N, block_size)");
  require_nonempty(x.shape(0), name);
  require_indices(x.data(), x.size(), d.V, name, "character indices must be in the vocabulary");
  return x;
}

py::array_t<int32_t> check_Y(py::handle Y, int64_t N, int64_t V, const char* name = "Y") {
  auto y = typed<int32_t>(Y, name, {N}, "(N,)");
  require_indices(y.data(), y.size(), V, name, "targets must be in the vocabulary");
  return y;
}

template <typename T>
py::array_t<T> empty(std::vector<py::ssize_t> shape) {
  return py::array_t<T>(shape);
}

// ---------------------------------------------------------------------------
// Single kernels
// ---------------------------------------------------------------------------
py::array_t<float> embedding_forward(py::handle C_, py::handle X_) {
  auto C = typed<float>(C_, "C", {-1, -1}, "(V, E)");
  require_finite(C, "C");
  auto X = typed<int32_t>(X_, "X", {-1, -1}, "(N, T)");
  require_nonempty(X.shape(0), "X");
  require_indices(X.data(), X.size(), C.shape(0), "X", "indices into the rows of C");
  const int64_t N = X.shape(0), T = X.shape(1), E = C.shape(1);
  auto out = empty<float>({N, T * E});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    kernels().embedding_forward(C.data(), X.data(), o, N, (int)T, (int)E);
  }
  return out;
}

py::array_t<float> embedding_backward(py::handle d_emb_, py::handle X_, int64_t num_embeddings) {
  if (num_embeddings < 1 || num_embeddings > kMaxDim)
    throw py::value_error("num_embeddings must be >= 1, got " + std::to_string(num_embeddings));
  auto X = typed<int32_t>(X_, "X", {-1, -1}, "(N, T)");
  require_nonempty(X.shape(0), "X");
  require_indices(X.data(), X.size(), num_embeddings, "X", "indices into the rows of C");
  const int64_t N = X.shape(0), T = X.shape(1);
  auto d_emb = typed<float>(d_emb_, "d_emb", {N, -1}, "(N, T*E)");
  if (d_emb.shape(1) % T != 0 || d_emb.shape(1) == 0)
    throw py::value_error("d_emb must have T*E columns, a multiple of T = " + std::to_string(T) + ", got " +
                          shape_str(d_emb));
  const int64_t E = d_emb.shape(1) / T;
  auto dC = empty<float>({num_embeddings, E});
  float* g = dC.mutable_data();
  {
    py::gil_scoped_release nogil;
    std::memset(g, 0, sizeof(float) * num_embeddings * E);
    kernels().embedding_backward(d_emb.data(), X.data(), g, N, (int)T, (int)E);
  }
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

py::array_t<float> linear_forward_impl(py::handle x_, py::handle W_, py::handle b_, bool tanh) {
  LinearArgs a = check_linear(x_, W_);
  auto b = typed<float>(b_, "b", {a.M}, "(M,)");
  require_finite(b, "b");
  auto y = empty<float>({a.N, a.M});
  float* o = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    kernels().linear_forward(a.x.data(), a.W.data(), b.data(), o, a.N, (int)a.K, (int)a.M, tanh);
  }
  return y;
}

py::tuple linear_backward_impl(py::handle dy_, py::handle y_, py::handle x_, py::handle W_, bool tanh) {
  LinearArgs a = check_linear(x_, W_);
  const char* dname = tanh ? "dh" : "dy";
  auto dy = typed<float>(dy_, dname, {a.N, a.M}, "(N, M)");
  py::array_t<float> y;
  if (tanh) y = typed<float>(y_, "h", {a.N, a.M}, "(N, M)");
  auto dx = empty<float>({a.N, a.K});
  auto dW = empty<float>({a.K, a.M});
  auto db = empty<float>({a.M});
  float *pdx = dx.mutable_data(), *pdW = dW.mutable_data(), *pdb = db.mutable_data();
  {
    py::gil_scoped_release nogil;
    kernels().linear_backward(dy.data(), a.x.data(), a.W.data(), tanh ? y.data() : nullptr, pdx, pdW, pdb, a.N,
                              (int)a.K, (int)a.M);
  }
  return py::make_tuple(dx, dW, db);
}

struct XentArgs {
  py::array_t<float> logits;
  py::array_t<int32_t> Y;
  int64_t N, V;
};

XentArgs check_xent(py::handle logits_, py::handle Y_) {
  XentArgs a;
  a.logits = typed<float>(logits_, "logits", {-1, -1}, "(N, V)");
  a.N = a.logits.shape(0);
  a.V = a.logits.shape(1);
  require_nonempty(a.N, "logits");
  if (a.V < 1) throw py::value_error("logits must have V >= 1 columns, got " + shape_str(a.logits));
  a.Y = check_Y(Y_, a.N, a.V);
  return a;
}

py::tuple cross_entropy(py::handle logits_, py::handle Y_) {
  XentArgs a = check_xent(logits_, Y_);
  auto d = empty<float>({a.N, a.V});
  float* pd = d.mutable_data();
  double s;
  {
    py::gil_scoped_release nogil;
    s = kernels().cross_entropy(a.logits.data(), a.Y.data(), pd, a.N, (int)a.V);
  }
  return py::make_tuple(s / (double)a.N, d);
}

double cross_entropy_loss(py::handle logits_, py::handle Y_) {
  XentArgs a = check_xent(logits_, Y_);
  py::gil_scoped_release nogil;
  return kernels().cross_entropy(a.logits.data(), a.Y.data(), nullptr, a.N, (int)a.V) / (double)a.N;
}

void sgd_update(py::handle p_, py::handle g_, double lr) {
  const py::ssize_t ndim = as_array(p_, "p").ndim();
  auto p = typed<float>(p_, "p", std::vector<int64_t>(ndim, -1), "(any shape)", true);
  auto g = typed<float>(g_, "g", std::vector<int64_t>(p.shape(), p.shape() + ndim), "equal to p's");
  const float l = checked_lr(lr);
  float* pp = p.mutable_data();
  py::gil_scoped_release nogil;
  kernels().sgd_update(pp, g.data(), p.size(), l);
}

// p and the tensors that must match it (gradient, optimizer state).
py::array_t<float> check_like(py::handle obj, const char* name, const py::array_t<float>& p, bool writable) {
  return typed<float>(obj, name, std::vector<int64_t>(p.shape(), p.shape() + p.ndim()), "equal to p's", writable);
}

float checked_param(double x, const char* name, double lo, double hi) {
  if (!std::isfinite(x) || x < lo || x > hi)
    throw py::value_error(std::string(name) + " must be a finite number in [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "], got " + std::to_string(x));
  return (float)x;
}

void momentum_update(py::handle p_, py::handle g_, py::handle buf_, double lr, double momentum, bool nesterov,
                     double weight_decay) {
  const py::ssize_t ndim = as_array(p_, "p").ndim();
  auto p = typed<float>(p_, "p", std::vector<int64_t>(ndim, -1), "(any shape)", true);
  auto g = check_like(g_, "g", p, false);
  auto buf = check_like(buf_, "buf", p, true);
  const float l = checked_lr(lr);
  const float mu = checked_param(momentum, "momentum", 0, 1);
  const float wd = checked_param(weight_decay, "weight_decay", 0, 1e6);
  if (nesterov && mu == 0) throw py::value_error("nesterov needs momentum > 0");
  float *pp = p.mutable_data(), *pb = buf.mutable_data();
  py::gil_scoped_release nogil;
  kernels().momentum_update(pp, g.data(), pb, p.size(), l, mu, nesterov, wd);
}

void adamw_update(py::handle p_, py::handle g_, py::handle m_, py::handle v_, int64_t step, double lr, double beta1,
                  double beta2, double eps, double weight_decay) {
  const py::ssize_t ndim = as_array(p_, "p").ndim();
  auto p = typed<float>(p_, "p", std::vector<int64_t>(ndim, -1), "(any shape)", true);
  auto g = check_like(g_, "g", p, false);
  auto m = check_like(m_, "m", p, true);
  auto v = check_like(v_, "v", p, true);
  if (step < 1) throw py::value_error("step must be >= 1 (the 1-based number of this update), got " + std::to_string(step));
  const float l = checked_lr(lr);
  const float b1 = checked_param(beta1, "beta1", 0, 0.999999), b2 = checked_param(beta2, "beta2", 0, 0.999999);
  const float e = checked_param(eps, "eps", 0, 1), wd = checked_param(weight_decay, "weight_decay", 0, 1e6);
  float *pp = p.mutable_data(), *pm = m.mutable_data(), *pv = v.mutable_data();
  py::gil_scoped_release nogil;
  kernels().adamw_update(pp, g.data(), pm, pv, p.size(), l, b1, b2, e, wd, step);
}

// ---------------------------------------------------------------------------
// Whole-model passes
// ---------------------------------------------------------------------------
py::array_t<float> mlp_forward(py::handle C, py::handle W1, py::handle b1, py::handle W2, py::handle b2,
                               py::handle X_) {
  Model m = check_model(C, W1, b1, W2, b2);
  auto X = check_X(X_, m.d);
  const int64_t N = X.shape(0);
  auto logits = empty<float>({N, (int64_t)m.d.V});
  float* o = logits.mutable_data();
  {
    py::gil_scoped_release nogil;
    kernels().mlp_forward(m.view(), m.d, X.data(), N, o);
  }
  return logits;
}

double mlp_loss(py::handle C, py::handle W1, py::handle b1, py::handle W2, py::handle b2, py::handle X_,
                py::handle Y_) {
  Model m = check_model(C, W1, b1, W2, b2);
  auto X = check_X(X_, m.d);
  const int64_t N = X.shape(0);
  auto Y = check_Y(Y_, N, m.d.V);
  py::gil_scoped_release nogil;
  return kernels().mlp_loss_sum(m.view(), m.d, X.data(), Y.data(), N) / (double)N;
}

py::tuple mlp_loss_and_grad(py::handle C, py::handle W1, py::handle b1, py::handle W2, py::handle b2, py::handle X_,
                            py::handle Y_, py::object mask_) {
  Model m = check_model(C, W1, b1, W2, b2);
  auto X = check_X(X_, m.d);
  const int64_t N = X.shape(0);
  auto Y = check_Y(Y_, N, m.d.V);
  const Dims& d = m.d;
  auto gC = empty<float>({d.V, d.E});
  auto gW1 = empty<float>({(int64_t)d.T * d.E, (int64_t)d.H});
  auto gb1 = empty<float>({d.H});
  auto gW2 = empty<float>({d.H, d.V});
  auto gb2 = empty<float>({d.V});
  MutParams g{gC.mutable_data(), gW1.mutable_data(), gb1.mutable_data(), gW2.mutable_data(), gb2.mutable_data()};
  py::array_t<float> mask;
  if (!mask_.is_none()) {
    mask = typed<float>(mask_, "dropout_mask", {N, (int64_t)d.H}, "(N, H)");
    require_finite(mask, "dropout_mask");
  }
  double loss;
  {
    py::gil_scoped_release nogil;
    loss = kernels().mlp_loss_and_grad(m.view(), d, X.data(), Y.data(), N, g, mask_.is_none() ? nullptr : mask.data());
  }
  return py::make_tuple(loss, gC, gW1, gb1, gW2, gb2);
}

py::array_t<float> train_steps(py::handle C, py::handle W1, py::handle b1, py::handle W2, py::handle b2,
                               py::handle X_, py::handle Y_, int64_t batch_size, py::handle lrs_,
                               py::handle rng_state_, py::object batches_, const std::string& optimizer,
                               double momentum, bool nesterov, double beta1, double beta2, double eps,
                               double weight_decay, py::object state_, int64_t opt_step, double dropout,
                               uint64_t dropout_seed, int64_t step0) {
  Model m = check_model(C, W1, b1, W2, b2, /*writable=*/true);
  auto X = check_X(X_, m.d);
  const int64_t N = X.shape(0);
  auto Y = check_Y(Y_, N, m.d.V);
  if (batch_size < 1 || batch_size > kMaxDim)
    throw py::value_error("batch_size must be >= 1, got " + std::to_string(batch_size));
  auto lrs = typed<float>(lrs_, "lrs", {-1}, "(steps,)");
  const int64_t steps = lrs.shape(0);
  for (int64_t i = 0; i < steps; ++i)
    if (!std::isfinite(lrs.data()[i]) || lrs.data()[i] < 0)
      throw py::value_error("lrs[" + std::to_string(i) + "] must be a finite number >= 0, got " +
                            std::to_string(lrs.data()[i]));
  auto rng = typed<uint64_t>(rng_state_, "rng_state", {4}, "(4,)", true);
  py::array_t<int64_t> batches;
  if (!batches_.is_none()) {
    batches = typed<int64_t>(batches_, "batches", {steps, batch_size}, "(steps, batch_size)");
    const int64_t* b = batches.data();
    for (int64_t i = 0; i < batches.size(); ++i)
      if (b[i] < 0 || b[i] >= N)
        throw py::index_error("batches contains " + std::to_string(b[i]) + " at flat position " + std::to_string(i) +
                              ", outside [0, " + std::to_string(N) + ") (indices into X)");
  }
  // optimizer: plain SGD is fused into the products; anything else keeps state
  OptimArgs opt{};
  std::vector<Model> state;  // keeps the state arrays referenced while the GIL is released
  const bool plain = optimizer == "sgd" && momentum == 0 && weight_decay == 0 && !nesterov;
  if (optimizer != "sgd" && optimizer != "adamw")
    throw py::value_error("optimizer must be 'sgd' or 'adamw', got '" + optimizer + "'");
  if (!plain) {
    opt.kind = optimizer == "adamw" ? kAdamW : kMomentum;
    opt.momentum = checked_param(momentum, "momentum", 0, 1);
    opt.nesterov = nesterov;
    if (nesterov && opt.momentum == 0) throw py::value_error("nesterov needs momentum > 0");
    opt.beta1 = checked_param(beta1, "beta1", 0, 0.999999);
    opt.beta2 = checked_param(beta2, "beta2", 0, 0.999999);
    opt.eps = checked_param(eps, "eps", 0, 1);
    opt.weight_decay = checked_param(weight_decay, "weight_decay", 0, 1e6);
    if (opt_step < 0) throw py::value_error("opt_step must be >= 0");
    opt.step = opt_step;
    const size_t want = opt.kind == kAdamW ? 10 : 5;
    if (state_.is_none() || !py::isinstance<py::sequence>(state_) || py::len(state_) != want)
      throw py::value_error(std::string("state must be a sequence of ") + std::to_string(want) +
                            " float32 arrays shaped like (C, W1, b1, W2, b2)" +
                            (opt.kind == kAdamW ? " for m, then for v" : " (momentum buffers)"));
    py::sequence seq = py::reinterpret_borrow<py::sequence>(state_);
    for (size_t k = 0; k < want; k += 5) {
      Model sm = check_model(seq[k], seq[k + 1], seq[k + 2], seq[k + 3], seq[k + 4], /*writable=*/true);
      if (sm.d.V != m.d.V || sm.d.T != m.d.T || sm.d.E != m.d.E || sm.d.H != m.d.H)
        throw py::value_error("state arrays must have the parameters' shapes");
      state.push_back(sm);
    }
    opt.m = state[0].mut();
    opt.v = state.size() > 1 ? state[1].mut() : state[0].mut();
  } else if (!state_.is_none()) {
    throw py::value_error("plain SGD keeps no state: pass state=None");
  }
  auto losses = empty<float>({steps});
  TrainArgs a{X.data(), Y.data(), N, (int)batch_size, steps, lrs.data(),
              batches_.is_none() ? nullptr : batches.data(), rng.mutable_data(), losses.mutable_data(),
              plain ? nullptr : &opt, checked_param(dropout, "dropout", 0, 0.99), dropout_seed, step0};
  MutParams p = m.mut();
  int64_t done;
  {
    py::gil_scoped_release nogil;
    done = kernels().train_steps(p, m.d, a);
  }
  // on divergence the last entry is the non-finite loss of the step that was not applied
  const int64_t n_out = done < steps ? done + 1 : steps;
  losses.resize({n_out});
  return losses;
}

py::array_t<int32_t> sample(py::handle C, py::handle W1, py::handle b1, py::handle W2, py::handle b2, int64_t n,
                            int64_t max_len, uint64_t seed, double temperature, int64_t top_k) {
  Model m = check_model(C, W1, b1, W2, b2);
  if (n < 0 || n > kMaxDim) throw py::value_error("n must be >= 0, got " + std::to_string(n));
  if (max_len < 1 || max_len > 1 << 20) throw py::value_error("max_len must be in [1, 2^20], got " + std::to_string(max_len));
  if (!std::isfinite(temperature) || temperature <= 0)
    throw py::value_error("temperature must be a finite number > 0, got " + std::to_string(temperature));
  if (top_k < 0) throw py::value_error("top_k must be >= 0 (0 = no limit), got " + std::to_string(top_k));
  if (n * max_len > (int64_t(1) << 31)) throw py::value_error("n * max_len is too large");
  auto out = empty<int32_t>({n, max_len});
  SampleArgs a{n, (int)max_len, (float)temperature, (int)(top_k < m.d.V ? top_k : 0), seed, out.mutable_data()};
  {
    py::gil_scoped_release nogil;
    if (n > 0) kernels().sample(m.view(), m.d, a);
  }
  return out;
}

// Measured FMA throughput of the active kernel build on `threads` threads, in GFLOP/s.
double fma_peak_gflops(int threads, double seconds) {
  if (threads < 1) throw py::value_error("threads must be >= 1");
  const KernelTable& k = kernels();
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

// The multipliers (0 or 1/(1-p)) that train_steps applies to the hidden layer at
// global step `step`: the same function of (seed, step, unit) the C++ loop uses.
py::array_t<float> dropout_mask(uint64_t seed, int64_t step, int64_t B, int64_t H, double p) {
  const float pf = checked_param(p, "p", 0, 0.99);
  if (B < 1 || H < 1 || B * H > (int64_t(1) << 31)) throw py::value_error("B and H must be >= 1");
  auto out = empty<float>({B, H});
  float* o = out.mutable_data();
  const uint32_t key = dropout_key(seed, step), threshold = (uint32_t)((double)pf * 4294967296.0);
  for (int64_t e = 0; e < B * H; ++e) o[e] = mix32((uint32_t)e ^ key) >= threshold ? 1.f / (1.f - pf) : 0.f;
  return out;
}

py::array_t<uint64_t> rng_state(uint64_t seed) {
  auto s = empty<uint64_t>({4});
  rng_seed(s.mutable_data(), seed);
  return s;
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
  d["num_threads"] = g_threads.load();
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

void set_num_threads(int n) {
  if (n < 1) throw py::value_error("num_threads must be >= 1, got " + std::to_string(n));
#ifndef _OPENMP
  if (n != 1) throw py::value_error("fastmlp was built without OpenMP: only 1 thread is available");
#endif
  g_threads.store(n);
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
  g_threads.store(default_threads());

  m.def("build_info", &build_info, "Version, compiler, flags, OpenMP, threads and kernel ISA of this build.");
  m.def("set_num_threads", &set_num_threads, py::arg("n"), "Number of OpenMP threads the kernels may use.");
  m.def("get_num_threads", [] { return g_threads.load(); });
  m.def("set_isa", &set_isa, py::arg("name"), "Select a kernel build: 'auto', 'generic', 'avx2', 'avx512'.");
  m.def("get_isa", [] { return std::string(active_kernels().isa); });

  m.def("embedding_forward", &embedding_forward, py::arg("C"), py::arg("X"),
        "emb (N, T*E) = C[X] for C (V, E) float32, X (N, T) int32.");
  m.def("embedding_backward", &embedding_backward, py::arg("d_emb"), py::arg("X"), py::arg("num_embeddings"),
        "dC (V, E): scatter-add of d_emb (N, T*E) into the rows X (N, T); V = num_embeddings.");
  m.def("linear_tanh_forward", [](py::handle x, py::handle W, py::handle b) { return linear_forward_impl(x, W, b, true); },
        py::arg("x"), py::arg("W"), py::arg("b"), "h (N, M) = tanh(x (N, K) @ W (K, M) + b (M,)).");
  m.def("linear_tanh_backward",
        [](py::handle dh, py::handle h, py::handle x, py::handle W) { return linear_backward_impl(dh, h, x, W, true); },
        py::arg("dh"), py::arg("h"), py::arg("x"), py::arg("W"),
        "(dx, dW, db) of h = tanh(x W + b), from dh and the stored h (uses 1 - h^2).");
  m.def("linear_forward", [](py::handle x, py::handle W, py::handle b) { return linear_forward_impl(x, W, b, false); },
        py::arg("x"), py::arg("W"), py::arg("b"), "y (N, M) = x (N, K) @ W (K, M) + b (M,).");
  m.def("linear_backward",
        [](py::handle dy, py::handle x, py::handle W) { return linear_backward_impl(dy, py::none(), x, W, false); },
        py::arg("dy"), py::arg("x"), py::arg("W"), "(dx, dW, db) of y = x W + b, from dy.");
  m.def("cross_entropy", &cross_entropy, py::arg("logits"), py::arg("Y"),
        "(mean loss, dlogits) of softmax cross-entropy in one pass; logits (N, V), Y (N,) int32.");
  m.def("cross_entropy_loss", &cross_entropy_loss, py::arg("logits"), py::arg("Y"),
        "Mean softmax cross-entropy (no gradient).");
  m.def("sgd_update", &sgd_update, py::arg("p"), py::arg("g"), py::arg("lr"), "p -= lr * g, in place.");

  m.def("mlp_forward", &mlp_forward, py::arg("C"), py::arg("W1"), py::arg("b1"), py::arg("W2"), py::arg("b2"),
        py::arg("X"), "logits (N, V) of the whole model.");
  m.def("mlp_loss", &mlp_loss, py::arg("C"), py::arg("W1"), py::arg("b1"), py::arg("W2"), py::arg("b2"),
        py::arg("X"), py::arg("Y"), "Mean loss over all N examples, evaluated in chunks.");
  m.def("mlp_loss_and_grad", &mlp_loss_and_grad, py::arg("C"), py::arg("W1"), py::arg("b1"), py::arg("W2"),
        py::arg("b2"), py::arg("X"), py::arg("Y"), py::arg("dropout_mask") = py::none(),
        "(loss, dC, dW1, db1, dW2, db2) for one batch; dropout_mask: optional (N, H) multipliers on the hidden "
        "layer.");
  m.def("train_steps", &train_steps, py::arg("C"), py::arg("W1"), py::arg("b1"), py::arg("W2"), py::arg("b2"),
        py::arg("X"), py::arg("Y"), py::arg("batch_size"), py::arg("lrs"), py::arg("rng_state"),
        py::arg("batches") = py::none(), py::arg("optimizer") = "sgd", py::arg("momentum") = 0.0,
        py::arg("nesterov") = false, py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-8,
        py::arg("weight_decay") = 0.0, py::arg("state") = py::none(), py::arg("opt_step") = 0,
        py::arg("dropout") = 0.0, py::arg("dropout_seed") = 0, py::arg("step0") = 0,
        "Runs len(lrs) optimizer steps in place (GIL released). Minibatches are drawn with rng_state (advanced "
        "in place) unless batches (steps, batch_size) int64 is given. optimizer 'sgd' (momentum, nesterov, "
        "weight_decay as torch.optim.SGD; state = 5 momentum buffers unless plain) or 'adamw' (as "
        "torch.optim.AdamW; state = 5 first then 5 second moments, opt_step = steps already taken). "
        "dropout: inverted dropout on the hidden layer, masks from (dropout_seed, step0 + step). "
        "Returns the per-step losses; shorter than lrs if a loss became NaN/inf (its last entry; that step "
        "was not applied).");
  m.def("dropout_mask", &dropout_mask, py::arg("seed"), py::arg("step"), py::arg("B"), py::arg("H"), py::arg("p"),
        "The (B, H) dropout multipliers train_steps uses at global step `step`.");
  m.def("momentum_update", &momentum_update, py::arg("p"), py::arg("g"), py::arg("buf"), py::arg("lr"),
        py::arg("momentum"), py::arg("nesterov") = false, py::arg("weight_decay") = 0.0,
        "One torch.optim.SGD step with momentum on p, in place (buf: the momentum buffer, zeros at first).");
  m.def("adamw_update", &adamw_update, py::arg("p"), py::arg("g"), py::arg("m"), py::arg("v"), py::arg("step"),
        py::arg("lr"), py::arg("beta1") = 0.9, py::arg("beta2") = 0.999, py::arg("eps") = 1e-8,
        py::arg("weight_decay") = 0.01, "One torch.optim.AdamW step (1-based number `step`) on p, in place.");
  m.def("sample", &sample, py::arg("C"), py::arg("W1"), py::arg("b1"), py::arg("W2"), py::arg("b2"), py::arg("n"),
        py::arg("max_len"), py::arg("seed"), py::arg("temperature") = 1.0, py::arg("top_k") = 0,
        "n words as int32 (n, max_len) character indices, each ended by 0 ('.') unless max_len was reached.");
  m.def("fma_peak_gflops", &fma_peak_gflops, py::arg("threads") = 1, py::arg("seconds") = 0.2,
        "Measured FMA peak of the active kernel build on this many threads (GFLOP/s), for benchmarks.");
  m.def("rng_state", &rng_state, py::arg("seed"), "A fresh xoshiro256** state (4,) uint64 for train_steps.");
}
