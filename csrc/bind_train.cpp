// pybind11 glue for the fused training loop and the sampler: the two kernels with the
// most arguments, so each argument is checked and grouped here into the structs of
// kernels.h (TrainArgs, Optimizer, SampleArgs).
#include "bindings.h"

namespace fastmlp {
namespace bind {
namespace {

// An optimizer object (fastmlp.optim.SGD / AdamW, or anything with the same method):
// optimizer._core_args() -> (kind, momentum, nesterov, beta1, beta2, eps, weight_decay,
// step, state), state the list of its state arrays, 5 per slot in parameter order.
struct OptimizerArgs {
  Optimizer o{};
  bool plain = true;          // plain SGD: no state, the update fused into the products
  std::vector<Model> state;   // keeps the state arrays referenced while the GIL is released
};

OptimizerArgs check_optimizer_object(py::handle obj, const Model& m) {
  OptimizerArgs r;
  if (obj.is_none()) return r;
  if (!py::hasattr(obj, "_core_args"))
    throw py::type_error("optimizer must be a fastmlp.optim optimizer (SGD or AdamW), got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  py::tuple t = obj.attr("_core_args")();
  if (t.size() != 9) throw py::type_error("optimizer._core_args() must return 9 values");
  r.o = check_optimizer(t[0].cast<std::string>(), t[1].cast<double>(), t[2].cast<bool>(), t[3].cast<double>(),
                        t[4].cast<double>(), t[5].cast<double>(), t[6].cast<double>());
  r.o.step = int_arg(t[7], "optimizer.step", 0, INT64_MAX / 2);
  r.plain = r.o.kind == kMomentum && r.o.momentum == 0 && r.o.weight_decay == 0;
  const size_t per = m.arrays.size();
  const size_t want = r.plain ? 0 : r.o.kind == kAdamW ? 2 * per : per;
  py::sequence seq = py::reinterpret_borrow<py::sequence>(t[8]);
  if (py::len(seq) != want)
    throw py::value_error("optimizer state must hold " + std::to_string(want) + " arrays shaped like the " +
                          std::to_string(per) + " parameters, got " + std::to_string(py::len(seq)));
  for (size_t k = 0; k < want; k += per) {
    py::tuple slot(per);
    for (size_t i = 0; i < per; ++i) slot[i] = seq[k + i];
    Model sm = check_arrays(slot, /*writable=*/true, m.d.bn != 0, "optimizer state",
                            "state[" + std::to_string(k / per) + "].");
    for (size_t i = 0; i < per; ++i)
      if (sm.arrays[i].size() != m.arrays[i].size() || sm.arrays[i].ndim() != m.arrays[i].ndim() ||
          !std::equal(sm.arrays[i].shape(), sm.arrays[i].shape() + sm.arrays[i].ndim(), m.arrays[i].shape()))
        throw py::value_error("optimizer state " + sm.names[i] + " must have " + m.names[i] + "'s shape " +
                              shape_str(m.arrays[i]) + ", got " + shape_str(sm.arrays[i]));
    r.state.push_back(sm);
  }
  if (!r.state.empty()) r.o.slot[0] = r.state[0].mut();
  if (r.state.size() > 1) r.o.slot[1] = r.state[1].mut();
  return r;
}

}  // namespace

py::array_t<float> train_steps(py::handle params, py::handle X_, py::handle Y_, py::handle lrs_,
                               py::handle batch_size_, py::handle rng_state_, py::handle batches_,
                               py::handle optimizer, double dropout, py::handle dropout_seed_, py::handle step0_,
                               py::handle threads, py::handle stop_, py::handle profile_, py::handle diag_,
                               py::handle batchnorm) {
  Exec ex = exec_for(threads);
  Model m = check_model(params, /*writable=*/true, batchnorm, /*buffers_writable=*/true);
  auto X = check_X(X_, m.d);
  const int64_t N = X.shape(0);
  auto Y = check_Y(Y_, N, m.d.V);
  auto lrs = typed<float>(lrs_, "lrs", {-1}, "(steps,)");
  const int64_t steps = lrs.shape(0);
  for (int64_t i = 0; i < steps; ++i) checked_lr(lrs.data()[i], "every learning rate in lrs");

  // the minibatches: drawn with rng_state, or given as indices
  py::array_t<uint64_t> rng;
  py::array_t<int64_t> batches;
  int64_t B;
  if (!batches_.is_none()) {
    batches = typed<int64_t>(batches_, "batches", {steps, -1}, "(steps, batch_size)");
    B = batches.shape(1);
    if (!batch_size_.is_none() && int_arg(batch_size_, "batch_size", 1, kMaxDim) != B)
      throw py::value_error("batch_size must equal batches.shape[1] = " + std::to_string(B));
    require_indices(batches.data(), batches.size(), N, "batches", "indices into X");
  } else {
    if (batch_size_.is_none() || rng_state_.is_none())
      throw py::type_error("train_steps needs batch_size and rng_state to draw minibatches (or batches)");
    B = int_arg(batch_size_, "batch_size", 1, kMaxDim);
    rng = typed<uint64_t>(rng_state_, "rng_state", {4}, "(4,)", true);
    const uint64_t* r = rng.data();
    if ((r[0] | r[1] | r[2] | r[3]) == 0)
      throw py::value_error("rng_state is all zero, which the sampler never leaves: use _core.rng_state(seed)");
  }
  if (B < 1) throw py::value_error("batch_size must be >= 1");
  require_batch_for_batchnorm(m.d, B, "batch_size");

  OptimizerArgs opt = check_optimizer_object(optimizer, m);
  const float p_drop = check_dropout(dropout);
  py::array_t<int32_t> stop;
  if (!stop_.is_none()) stop = typed<int32_t>(stop_, "stop", {1}, "(1,)");
  py::array_t<double> profile;
  if (!profile_.is_none()) {  // filled by the loop: per thread, seconds in barriers and in all
    profile = typed<double>(profile_, "profile", {ex.threads, 2}, "(threads, 2)", true);
    ex.profile = profile.mutable_data();  // (zeroed once it is known to share nothing)
  }

  // diag: (out float64 (n, len) or (len,), bins, pre_range, sat, act float32 (L, B, H) (or (B, H)
  //        for one layer) or None, every): the steps step0 + s that are multiples of every;
  //        len = FASTMLP_DIAG_RECORD_LENGTH(bins, L, number of parameter tensors) (kernels.h)
  DiagArgs diag{};
  py::array_t<double> diag_out;
  py::array_t<float> diag_act;
  if (!diag_.is_none()) {
    if (!py::isinstance<py::tuple>(diag_) || py::len(diag_) != 6)
      throw py::type_error("diag must be a tuple (out, bins, pre_range, sat, act, every)");
    py::tuple t = py::reinterpret_borrow<py::tuple>(diag_);
    diag.bins = (int)int_arg(t[1], "diag bins", 1, 1 << 16);
    diag.pre_range = (float)number_arg(t[2], "diag pre_range");
    diag.sat = (float)number_arg(t[3], "diag sat");
    diag.every = int_arg(t[5], "diag every", 1, INT64_MAX / 2);
    if (!(diag.pre_range > 0.f) || !std::isfinite(diag.pre_range) || !(diag.sat > 0.f && diag.sat < 1.f))
      throw py::value_error("diag pre_range must be finite and > 0, and sat in (0, 1)");
    const int64_t len = FASTMLP_DIAG_RECORD_LENGTH(diag.bins, m.d.L, m.arrays.size());
    const std::string doc = "1 + n_layers (9 + 3 bins) + 3 * (number of parameters) = " + std::to_string(len);
    const bool one = py::isinstance<py::array>(t[0]) && py::reinterpret_borrow<py::array>(t[0]).ndim() == 1;
    diag_out = one ? typed<double>(t[0], "diag out", {len}, ("(" + doc + ",)").c_str(), true)
                   : typed<double>(t[0], "diag out", {-1, len}, ("(n, " + doc + ")").c_str(), true);
    diag.out = diag_out.mutable_data();  // (filled with NaN once it is known to share nothing)
    diag.capacity = one ? 1 : diag_out.shape(0);
    if (!t[4].is_none()) {
      const bool flat = m.d.L == 1 && py::isinstance<py::array>(t[4]) &&
                        py::reinterpret_borrow<py::array>(t[4]).ndim() == 2;
      diag_act = flat ? typed<float>(t[4], "diag act", {B, m.d.H}, "(batch_size, H)", true)
                      : typed<float>(t[4], "diag act", {m.d.L, B, m.d.H}, "(n_layers, batch_size, H)", true);
      diag.act = diag_act.mutable_data();
    }
  }

  // nothing written may share memory with anything else of the call
  std::vector<Named> written, all;
  for (size_t i = 0; i < m.arrays.size(); ++i) written.push_back({m.names[i].c_str(), &m.arrays[i]});
  for (size_t i = 0; i < m.buffers.size(); ++i) written.push_back({"a BatchNorm running statistic", &m.buffers[i]});
  for (const Model& sm : opt.state)
    for (size_t i = 0; i < sm.arrays.size(); ++i) written.push_back({"optimizer state", &sm.arrays[i]});
  written.push_back({"rng_state", &rng});
  written.push_back({"profile", &profile});
  written.push_back({"diag out", &diag_out});
  written.push_back({"diag act", &diag_act});
  all = written;
  all.push_back({"X", &X});
  all.push_back({"Y", &Y});
  all.push_back({"lrs", &lrs});
  all.push_back({"batches", &batches});
  require_disjoint(written, all);

  // written before the loop only now that they are known not to alias anything
  if (ex.profile) std::fill(profile.mutable_data(), profile.mutable_data() + profile.size(), 0.0);
  if (diag.out) std::fill(diag_out.mutable_data(), diag_out.mutable_data() + diag_out.size(), NAN);
  auto losses = empty<float>({steps});
  const TrainArgs a{X.data(), Y.data(), N, (int)B, steps, lrs.data(), batches_.is_none() ? nullptr : batches.data(),
                    batches_.is_none() ? rng.mutable_data() : nullptr, losses.mutable_data(),
                    opt.plain ? nullptr : &opt.o, p_drop, seed_arg(dropout_seed_, "dropout_seed"),
                    int_arg(step0_, "step0", 0, INT64_MAX / 2),
                    stop_.is_none() ? nullptr : (const volatile int32_t*)stop.data(),
                    diag_.is_none() ? nullptr : &diag};
  MutParams p = m.mut();
  int64_t done;
  {
    const KernelTable& k = active_kernels();
    py::gil_scoped_release nogil;
    done = k.train_steps(p, m.d, a, ex);
  }
  if (!optimizer.is_none()) optimizer.attr("step") = py::int_(opt.o.step + done);
  raise_if_bad_index(ex);
  // on divergence the last entry is the non-finite loss of the step that was not applied
  const bool diverged = done < steps && !ex.stopped;
  losses.resize({diverged ? done + 1 : done});
  return losses;
}

py::array_t<int32_t> sample(py::handle params, py::handle n_, py::handle max_len_, py::handle seed_,
                            double temperature, py::handle top_k_, py::handle batchnorm, py::handle threads) {
  Exec ex = exec_for(threads);
  Model m = check_model(params, false, batchnorm);
  const int64_t n = int_arg(n_, "n", 0, kMaxDim);
  const int64_t max_len = int_arg(max_len_, "max_len", 1, 1 << 20);
  if (!std::isfinite(temperature) || temperature <= 0 || !std::isfinite((float)temperature) || (float)temperature == 0)
    throw py::value_error("temperature must be a finite number > 0, got " + fmt(temperature));
  const int64_t top_k = int_arg(top_k_, "top_k", 0, INT32_MAX);
  if (n * max_len > (int64_t(1) << 31))
    throw py::value_error("n * max_len must be at most 2**31 (the output array), got " + std::to_string(n * max_len));
  auto out = empty<int32_t>({n, max_len});
  SampleArgs a{n, (int)max_len, (float)temperature, (int)(top_k < m.d.V ? top_k : 0), seed_arg(seed_),
               out.mutable_data()};
  {
    const KernelTable& k = active_kernels();
    py::gil_scoped_release nogil;
    if (n > 0) k.sample(m.view(), m.d, a, ex);
  }
  return out;
}

// The multipliers (0 or 1/(1-p)) that train_steps applies to the hidden layer at
// global step `step`: the same function of (seed, step, unit) the C++ loop uses.
py::array_t<float> dropout_mask(py::handle seed_, py::handle step_, py::handle B_, py::handle H_, double p,
                                py::handle layer_, py::handle n_layers_) {
  const float pf = check_dropout(p);
  const uint64_t seed = seed_arg(seed_);
  const int64_t step = int_arg(step_, "step", 0, INT64_MAX), B = int_arg(B_, "B", 1, kMaxDim),
                H = int_arg(H_, "H", 1, kMaxDim);
  const int n_layers = (int)int_arg(n_layers_, "n_layers", 1, kMaxLayers);
  const int layer = (int)int_arg(layer_, "layer", 1, n_layers);
  if (B * H > (int64_t(1) << 31)) throw py::value_error("B * H must be at most 2**31");
  auto out = empty<float>({B, H});
  float* o = out.mutable_data();
  const uint32_t key = dropout_layer_key(dropout_key(seed, step), layer, n_layers),
                 threshold = (uint32_t)((double)pf * 4294967296.0);
  for (int64_t e = 0; e < B * H; ++e) o[e] = mix32((uint32_t)e ^ key) >= threshold ? 1.f / (1.f - pf) : 0.f;
  return out;
}

py::array_t<uint64_t> rng_state(py::handle seed) {
  auto s = empty<uint64_t>({4});
  rng_seed(s.mutable_data(), seed_arg(seed));
  return s;
}

}  // namespace bind
}  // namespace fastmlp
