// Argument checks for the bindings: every numpy array and number the kernels receive is
// checked here first, with a message that names the argument and what was expected.
// Included by bindings.cpp only.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

#include "kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastmlp {
namespace py = pybind11;

constexpr int64_t kMaxDim = int64_t(1) << 30;  // keeps every index product inside int64 and int

// A number as Python prints it (0.9999999, not 1.000000).
inline std::string fmt(double x) { return py::repr(py::float_(x)).cast<std::string>(); }

inline std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    if (i) s += ", ";
    s += std::to_string(a.shape(i));
  }
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

inline py::array as_array(py::handle obj, const char* name) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  return py::reinterpret_borrow<py::array>(obj);
}

// dims: expected sizes, -1 = any. dims_doc: how the shape is described, e.g. "(V, E)".
inline void check_layout(const py::array& a, const char* name, const std::vector<int64_t>& dims, const char* dims_doc,
                         bool writable) {
  if ((py::ssize_t)dims.size() != a.ndim())
    throw py::value_error(std::string(name) + " must be " + std::to_string(dims.size()) + "-D with shape " +
                          dims_doc + ", got shape " + shape_str(a));
  for (size_t i = 0; i < dims.size(); ++i) {
    if (a.shape(i) > kMaxDim)
      throw py::value_error(std::string(name) + " is too large: dimension " + std::to_string(i) + " is " +
                            std::to_string(a.shape(i)));
    if (dims[i] >= 0 && a.shape(i) != dims[i]) {
      std::string want = "(";
      for (size_t j = 0; j < dims.size(); ++j)
        want += (j ? ", " : "") + (dims[j] >= 0 ? std::to_string(dims[j]) : std::string("*"));
      throw py::value_error(std::string(name) + " must have shape " + dims_doc + " = " + want +
                            (dims.size() == 1 ? ",)" : ")") + ", got " + shape_str(a));
    }
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
inline const char* dtype_name<float>() { return "float32"; }
template <>
inline const char* dtype_name<int32_t>() { return "int32"; }
template <>
inline const char* dtype_name<int64_t>() { return "int64"; }
template <>
inline const char* dtype_name<uint64_t>() { return "uint64"; }
template <>
inline const char* dtype_name<double>() { return "float64"; }

template <typename T>
py::array_t<T> typed(py::handle obj, const char* name, const std::vector<int64_t>& dims, const char* dims_doc,
                     bool writable = false) {
  py::array a = as_array(obj, name);
  if (!a.dtype().is(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + " must have dtype " + dtype_name<T>() + ", got " +
                         py::str(a.dtype()).cast<std::string>());
  check_layout(a, name, dims, dims_doc, writable);
  return py::reinterpret_borrow<py::array_t<T>>(a);
}

// p, and an array that must have exactly p's shape (a gradient, optimizer state).
template <typename T>
py::array_t<T> typed_like(py::handle obj, const char* name, const py::array& p, bool writable) {
  return typed<T>(obj, name, std::vector<int64_t>(p.shape(), p.shape() + p.ndim()), "equal to p's", writable);
}

inline void require_finite(const py::array_t<float>& a, const char* name) {
  const float* p = a.data();
  uint32_t bad = 0;
  for (int64_t i = 0; i < a.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, p + i, 4);
    bad |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
  }
  if (bad) throw py::value_error(std::string(name) + " contains NaN or inf");
}

// A number in [lo, hi) (or [lo, hi] when closed), finite. One bound for every caller.
// The check is made on the float32 value the kernels will use: 0.9999999999 rounds to 1.
inline float in_range(double x, const char* name, double lo, double hi, bool closed = false) {
  const float f = (float)x;
  if (!std::isfinite(x) || !std::isfinite(f) || f < lo || (closed ? f > hi : f >= hi))
    throw py::value_error(std::string(name) + " must be a finite number in [" + fmt(lo) + ", " + fmt(hi) +
                          (closed ? "]" : ")") + ", got " + fmt(x) +
                          ((double)f != x && std::isfinite(x) ? " (" + fmt(f) + " in float32)" : ""));
  return f;
}

inline float checked_lr(double lr, const char* name = "lr") {
  if (!std::isfinite(lr) || lr < 0 || !std::isfinite((float)lr))
    throw py::value_error(std::string(name) + " must be a finite float32 number >= 0, got " + fmt(lr));
  return (float)lr;
}

// Indices (any shape) must lie in [0, n).
template <typename I>
void require_indices(const I* p, int64_t count, int64_t n, const char* name, const char* what) {
  for (int64_t i = 0; i < count; ++i)
    if (p[i] < 0 || (int64_t)p[i] >= n)
      throw py::index_error(std::string(name) + " contains " + std::to_string(p[i]) + " at flat position " +
                            std::to_string(i) + ", outside [0, " + std::to_string(n) + ") (" + what + ")");
}

inline void require_nonempty(int64_t n, const char* name) {
  if (n == 0) throw py::value_error(std::string(name) + " is empty: need at least one example");
}

// Arrays a kernel writes must not share memory with any other array of the call: the
// kernels read and write them as distinct (and element-wise updates would give
// different answers per ISA).
struct Named {
  const char* name;
  const py::array* a;
};
inline void require_disjoint(const std::vector<Named>& written, const std::vector<Named>& all) {
  for (const Named& w : written) {
    const char* w0 = (const char*)w.a->data();
    const char* w1 = w0 + w.a->nbytes();
    for (const Named& o : all) {
      if (o.a == w.a || o.a->nbytes() == 0 || w.a->nbytes() == 0) continue;
      const char* o0 = (const char*)o.a->data();
      const char* o1 = o0 + o.a->nbytes();
      if (w0 < o1 && o0 < w1)
        throw py::value_error(std::string(w.name) + " and " + o.name +
                              " share memory: pass separate arrays (the kernel updates " + w.name + " in place)");
    }
  }
}

// A real number from Python (an int or a float, not a bool or a string).
inline double number_arg(py::handle obj, const char* name) {
  if (py::isinstance<py::bool_>(obj) || !(py::isinstance<py::float_>(obj) || PyIndex_Check(obj.ptr()) ||
                                          PyFloat_Check(obj.ptr()) || py::hasattr(obj, "__float__")))
    throw py::type_error(std::string(name) + " must be a number, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  return py::float_(py::reinterpret_borrow<py::object>(obj)).cast<double>();
}

// The model's parameters, checked against each other, and (BatchNorm) its running statistics.
struct Model {
  std::vector<py::array_t<float>> arrays;   // the parameters, in their order (kernels.h)
  std::vector<std::string> names;           // what messages call them
  std::vector<py::array_t<float>> buffers;  // BatchNorm: running_mean1..L, running_var1..L
  Dims d;
  MutParams p;
  Params view() const {
    Params q;
    std::memcpy(&q, &p, sizeof q);
    return q;
  }
  MutParams mut() const { return p; }
};

// The sequence's layout: no BatchNorm, 2 L + 3 arrays (C, W1, b1, ..., WL, bL, W{L+1},
// b{L+1}); with it, 3 L + 3 (C, W1, gamma1, beta1, ..., W{L+1}, b{L+1}).
inline std::string model_doc(bool bn) {
  return bn ? "(C, W1, gamma1, beta1, ..., WL, gammaL, betaL, W{L+1}, b{L+1}), 3 L + 3 arrays"
            : "(C, W1, b1, ..., WL, bL, W{L+1}, b{L+1}), 2 L + 3 arrays (the lecture's (C, W1, b1, W2, b2))";
}

// The pointers of L hidden layers' arrays given in the parameters' order.
inline MutParams in_order(const std::vector<float*>& a, int L, bool bn) {
  MutParams p;
  std::memset(&p, 0, sizeof p);
  size_t i = 0;
  p.C = a[i++];
  for (int l = 0; l < L; ++l) {
    p.W[l] = a[i++];
    if (bn) {
      p.gamma[l] = a[i++];
      p.beta[l] = a[i++];
    } else {
      p.b[l] = a[i++];
    }
  }
  p.W[L] = a[i++];
  p.b[L] = a[i++];
  return p;
}
inline std::vector<float*> data_of(const std::vector<py::array_t<float>>& arrays) {
  std::vector<float*> v;
  for (const auto& a : arrays) v.push_back(const_cast<float*>(a.data()));  // written only when checked writable
  return v;
}

// params: a sequence in the parameters' order; bn: BatchNorm's layout. prefix: put before
// every name in messages (the optimizer state's "state[0].").
inline Model check_arrays(py::handle params, bool writable, bool bn, const char* what = "params",
                          const std::string& prefix = "") {
  if (!py::isinstance<py::sequence>(params) || py::isinstance<py::str>(params))
    throw py::type_error(std::string(what) + " must be a sequence of arrays " + model_doc(bn));
  const int64_t n = (int64_t)py::len(params);
  const int per = bn ? 3 : 2;
  if (n < 3 + per || (n - 3) % per != 0 || (n - 3) / per > kMaxLayers)
    throw py::value_error(std::string(what) + " must be " + model_doc(bn) + " with 1 <= L <= " +
                          std::to_string(kMaxLayers) + ", got " + std::to_string(n) + " arrays");
  const int L = (int)((n - 3) / per);
  py::sequence seq = py::reinterpret_borrow<py::sequence>(params);
  Model m;
  auto name = [&](const char* base, int layer) {
    return prefix + base + (layer > 0 ? std::to_string(layer) : std::string());
  };
  auto take = [&](int i, const std::string& nm, const std::vector<int64_t>& dims, const char* doc) {
    m.names.push_back(nm);
    m.arrays.push_back(typed<float>(seq[i], m.names.back().c_str(), dims, doc, writable));
    return m.arrays.back();
  };
  auto C = take(0, name("C", 0), {-1, -1}, "(V, E)");
  const int64_t V = C.shape(0), E = C.shape(1);
  if (V < 1 || E < 1)
    throw py::value_error(m.names[0] + " must have V >= 1 rows and E >= 1 columns, got " + shape_str(C));
  auto W1 = take(1, name("W", 1), {-1, -1}, "(T*E, H)");
  const int64_t TE = W1.shape(0), H = W1.shape(1);
  if (TE < E || TE % E != 0)
    throw py::value_error(m.names[1] + " must have T*E rows, a multiple of E = " + std::to_string(E) + ", got " +
                          shape_str(W1));
  if (H < 1) throw py::value_error(m.names[1] + " must have H >= 1 columns, got " + shape_str(W1));
  int i = 1;
  for (int l = 0; l < L; ++l) {
    if (l > 0) take(i, name("W", l + 1), {H, H}, "(H, H)");
    ++i;
    if (bn) {
      take(i++, name("gamma", l + 1), {H}, "(H,)");
      take(i++, name("beta", l + 1), {H}, "(H,)");
    } else {
      take(i++, name("b", l + 1), {H}, "(H,)");
    }
  }
  take(i++, name("W", L + 1), {H, V}, "(H, V)");
  take(i++, name("b", L + 1), {V}, "(V,)");
  m.p = in_order(data_of(m.arrays), L, bn);
  m.d = Dims{(int)V, (int)(TE / E), (int)E, (int)H, L, bn ? 1 : 0, 1e-5f, 0.1f};
  for (size_t k = 0; k < m.arrays.size(); ++k) require_finite(m.arrays[k], m.names[k].c_str());
  return m;
}

// params, and batchnorm: None (no BatchNorm), or (running_mean, running_var, eps,
// momentum): two sequences of L arrays (H,), eps > 0 and momentum in [0, 1].
inline Model check_model(py::handle params, bool writable, py::handle batchnorm = py::none(),
                         bool buffers_writable = false, const char* what = "params") {
  const bool bn = !batchnorm.is_none();
  Model m = check_arrays(params, writable, bn, what);
  if (!bn) return m;
  if (!py::isinstance<py::tuple>(batchnorm) || py::len(batchnorm) != 4)
    throw py::type_error("batchnorm must be None or a tuple (running_mean, running_var, eps, momentum)");
  py::tuple t = py::reinterpret_borrow<py::tuple>(batchnorm);
  const int L = m.d.L;
  const int64_t H = m.d.H;
  const char* kind[2] = {"running_mean", "running_var"};
  for (int k = 0; k < 2; ++k) {
    if (!py::isinstance<py::sequence>(t[k]) || py::isinstance<py::str>(t[k]) || (int)py::len(t[k]) != L)
      throw py::value_error(std::string("batchnorm ") + kind[k] + " must be a sequence of the " + std::to_string(L) +
                            " hidden layers' arrays (H,)");
    py::sequence seq = py::reinterpret_borrow<py::sequence>(t[k]);
    for (int l = 0; l < L; ++l) {
      const std::string nm = std::string(kind[k]) + std::to_string(l + 1);
      m.buffers.push_back(typed<float>(seq[l], nm.c_str(), {H}, "(H,)", buffers_writable));
      require_finite(m.buffers.back(), nm.c_str());
      float* p = const_cast<float*>(m.buffers.back().data());  // written only if buffers_writable
      if (k == 0) {
        m.p.run_mean[l] = p;
      } else {
        m.p.run_var[l] = p;
        for (int64_t j = 0; j < H; ++j)
          if (p[j] < 0.f) throw py::value_error(nm + " must not be negative (a variance), got " + fmt(p[j]));
      }
    }
  }
  const double eps = number_arg(t[2], "batchnorm eps"), momentum = number_arg(t[3], "batchnorm momentum");
  if (!(eps > 0) || !std::isfinite((float)eps) || (float)eps <= 0.f)
    throw py::value_error("batchnorm eps must be a finite number > 0, got " + fmt(eps));
  m.d.bn_eps = (float)eps;
  m.d.bn_momentum = in_range(momentum, "batchnorm momentum", 0, 1, true);
  return m;
}

// BatchNorm in training mode needs at least two rows (the batch's variance), as torch's.
inline void require_batch_for_batchnorm(const Dims& d, int64_t B, const char* what) {
  if (d.bn && B < 2)
    throw py::value_error(std::string("BatchNorm needs at least 2 rows per batch in training (the batch's "
                                      "variance), got ") + what + " = " + std::to_string(B));
}

inline py::array_t<int32_t> check_X(py::handle X, const Dims& d, const char* name = "X") {
  auto x = typed<int32_t>(X, name, {-1, d.T}, "(N, block_size)");
  require_nonempty(x.shape(0), name);
  require_indices(x.data(), x.size(), d.V, name, "character indices must be in the vocabulary");
  return x;
}

inline py::array_t<int32_t> check_Y(py::handle Y, int64_t N, int64_t V, const char* name = "Y") {
  auto y = typed<int32_t>(Y, name, {N}, "(N,)");
  require_indices(y.data(), y.size(), V, name, "targets must be in the vocabulary");
  return y;
}

// ---------------------------------------------------------------------------
// Integers from Python: any int-like, checked against its range before any C type
// could wrap it (no raw pybind signature for 2**70).
// ---------------------------------------------------------------------------
inline int64_t int_arg(py::handle obj, const char* name, int64_t lo, int64_t hi) {
  if (py::isinstance<py::bool_>(obj) || !PyIndex_Check(obj.ptr()))
    throw py::type_error(std::string(name) + " must be an integer, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  py::int_ v = py::reinterpret_steal<py::int_>(PyNumber_Index(obj.ptr()));
  int overflow = 0;
  const long long x = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
  if (overflow || x < lo || x > hi)
    throw py::value_error(std::string(name) + " must be an integer in [" + std::to_string(lo) + ", " +
                          std::to_string(hi) + "], got " + py::str(v).cast<std::string>());
  return x;
}

inline uint64_t seed_arg(py::handle obj, const char* name = "seed") {
  if (py::isinstance<py::bool_>(obj) || !PyIndex_Check(obj.ptr()))
    throw py::type_error(std::string(name) + " must be an integer");
  py::int_ v = py::reinterpret_steal<py::int_>(PyNumber_Index(obj.ptr()));
  if (v < py::int_(0) || v > py::int_(UINT64_MAX))
    throw py::value_error(std::string(name) + " must be an integer in [0, 2**64), got " + py::str(v).cast<std::string>());
  return v.cast<uint64_t>();
}

// ---------------------------------------------------------------------------
// Threads: the process default only fills in for a call that names no count; every
// kernel call runs with its own count (Exec.threads), so concurrent calls never
// interfere.
// ---------------------------------------------------------------------------
inline int cpu_count() {
#ifdef _OPENMP
  return omp_get_num_procs();
#else
  return 1;
#endif
}
inline int max_threads() {
#ifdef _OPENMP
  return cpu_count() * 2 > 64 ? cpu_count() * 2 : 64;  // more than this only ever slows down
#else
  return 1;
#endif
}
inline std::atomic<int> g_default_threads{1};

inline int checked_threads(py::handle n, const char* name = "num_threads") {
#ifndef _OPENMP
  if (int_arg(n, name, 1, INT_MAX) != 1)
    throw py::value_error("fastmlp was built without OpenMP: only 1 thread is available");
#endif
  return (int)int_arg(n, name, 1, max_threads());
}

inline Exec exec_for(py::handle threads) {
  return Exec{threads.is_none() ? g_default_threads.load() : checked_threads(threads, "threads"), 0, 0, nullptr};
}

inline void raise_if_bad_index(const Exec& ex) {
  if (ex.bad_index)
    throw py::index_error("an index array was changed while the kernel was reading it (another thread wrote to "
                          "it): an index went out of range and the results were discarded");
}

template <typename T>
py::array_t<T> empty(std::vector<py::ssize_t> shape) {
  return py::array_t<T>(shape);
}

inline py::tuple as_tuple(const std::vector<py::array_t<float>>& a) {
  py::tuple t(a.size());
  for (size_t i = 0; i < a.size(); ++i) t[i] = a[i];
  return t;
}

}  // namespace fastmlp
