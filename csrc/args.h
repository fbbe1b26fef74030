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
inline void require_disjoint(std::initializer_list<Named> written, std::initializer_list<Named> all) {
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

// The model's five parameters, checked against each other.
struct Model {
  py::array_t<float> C, W1, b1, W2, b2;
  Dims d;
  Params view() const { return {C.data(), W1.data(), b1.data(), W2.data(), b2.data()}; }
  MutParams mut() {
    return {C.mutable_data(), W1.mutable_data(), b1.mutable_data(), W2.mutable_data(), b2.mutable_data()};
  }
};

// params: a sequence (C, W1, b1, W2, b2). names: what to call them in messages.
inline Model check_model(py::handle params, bool writable, const char* what = "params",
                         const char* const names[5] = nullptr) {
  static const char* const kNames[5] = {"C", "W1", "b1", "W2", "b2"};
  if (!names) names = kNames;
  if (!py::isinstance<py::sequence>(params) || py::isinstance<py::str>(params) || py::len(params) != 5)
    throw py::type_error(std::string(what) + " must be a sequence of the five arrays (C, W1, b1, W2, b2)");
  py::sequence seq = py::reinterpret_borrow<py::sequence>(params);
  Model m;
  m.C = typed<float>(seq[0], names[0], {-1, -1}, "(V, E)", writable);
  const int64_t V = m.C.shape(0), E = m.C.shape(1);
  if (V < 1 || E < 1)
    throw py::value_error(std::string(names[0]) + " must have V >= 1 rows and E >= 1 columns, got " +
                          shape_str(m.C));
  m.W1 = typed<float>(seq[1], names[1], {-1, -1}, "(T*E, H)", writable);
  const int64_t TE = m.W1.shape(0), H = m.W1.shape(1);
  if (TE < E || TE % E != 0)
    throw py::value_error(std::string(names[1]) + " must have T*E rows, a multiple of E = " + std::to_string(E) +
                          ", got " + shape_str(m.W1));
  if (H < 1) throw py::value_error(std::string(names[1]) + " must have H >= 1 columns, got " + shape_str(m.W1));
  m.b1 = typed<float>(seq[2], names[2], {H}, "(H,)", writable);
  m.W2 = typed<float>(seq[3], names[3], {H, V}, "(H, V)", writable);
  m.b2 = typed<float>(seq[4], names[4], {V}, "(V,)", writable);
  m.d = Dims{(int)V, (int)(TE / E), (int)E, (int)H};
  require_finite(m.C, names[0]);
  require_finite(m.W1, names[1]);
  require_finite(m.b1, names[2]);
  require_finite(m.W2, names[3]);
  require_finite(m.b2, names[4]);
  return m;
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

inline py::tuple as_tuple(const py::array_t<float> (&a)[5]) { return py::make_tuple(a[0], a[1], a[2], a[3], a[4]); }

}  // namespace fastmlp
