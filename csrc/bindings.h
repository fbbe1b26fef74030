// The functions behind fastmlp._core's names (module.cpp binds them; bindings.cpp and
// bind_train.cpp define them). Arguments arrive as Python objects and are checked by
// the definitions (args.h) before any kernel runs; `threads` is None (the process
// default) or a count for this call only.
#pragma once
#include "args.h"
#include "rng.h"

namespace fastmlp {
namespace bind {

// layers (bindings.cpp)
py::array_t<float> embedding_forward(py::handle C, py::handle X, py::handle threads);
py::array_t<float> embedding_backward(py::handle d_emb, py::handle X, py::handle num_embeddings, py::handle threads);
py::array_t<float> linear_forward(py::handle x, py::handle W, py::handle b, bool tanh, py::handle threads);
py::tuple linear_backward(py::handle dy, py::handle y, py::handle x, py::handle W, bool tanh, py::handle threads);
py::object cross_entropy(py::handle logits, py::handle Y, bool with_grad, py::handle threads);
py::tuple batchnorm_tanh_forward(py::handle pre, py::handle gamma, py::handle beta, double eps, py::handle threads);
py::tuple batchnorm_tanh_backward(py::handle dh, py::handle h, py::handle xhat, py::handle stats, py::handle gamma,
                                  py::handle threads);

// optimizers (bindings.cpp): every hyperparameter's one bound is in check_optimizer
Optimizer check_optimizer(const std::string& kind, double momentum, bool nesterov, double beta1, double beta2,
                          double eps, double weight_decay);
float check_dropout(double p);
void sgd_update(py::handle p, py::handle g, double lr, py::handle threads);
void optimizer_update(const Optimizer& o, py::handle p, py::handle g, py::handle s0, py::handle s1, double lr,
                      py::handle threads, const char* s0_name);

// whole model (bindings.cpp); params is the sequence (C, W1, b1, ..., W{L+1}, b{L+1}) and
// batchnorm None or (running_mean, running_var, eps, momentum) (args.h, check_model)
py::array_t<float> mlp_forward(py::handle params, py::handle X, py::handle batchnorm, py::handle threads);
double mlp_loss(py::handle params, py::handle X, py::handle Y, py::handle batchnorm, py::handle threads);
py::tuple mlp_loss_and_grad(py::handle params, py::handle X, py::handle Y, py::handle mask, py::handle batchnorm,
                            py::handle threads);

// training and sampling (bind_train.cpp)
py::array_t<float> train_steps(py::handle params, py::handle X, py::handle Y, py::handle lrs, py::handle batch_size,
                               py::handle rng_state, py::handle batches, py::handle optimizer, double dropout,
                               py::handle dropout_seed, py::handle step0, py::handle threads, py::handle stop,
                               py::handle profile, py::handle diag, py::handle batchnorm);
py::array_t<int32_t> sample(py::handle params, py::handle n, py::handle max_len, py::handle seed, double temperature,
                            py::handle top_k, py::handle batchnorm, py::handle threads);
py::array_t<float> dropout_mask(py::handle seed, py::handle step, py::handle B, py::handle H, double p,
                                py::handle layer, py::handle n_layers);
py::array_t<uint64_t> rng_state(py::handle seed);

}  // namespace bind
}  // namespace fastmlp
