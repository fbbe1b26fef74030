// One instruction-set build of fastmlp's kernels (see CMakeLists.txt, which compiles this
// file once per ISA with its flags and -DFASTMLP_ISA=<name>).
//
// The kernels live in headers by family; this file includes them inside the build's own
// namespace, fastmlp::<isa> (Highway's -inl.h pattern), so the copies compiled for
// different ISAs never share a symbol, and exports them in one KernelTable,
// fastmlp::kernels_<isa>, for dispatch.cpp to pick at run time.
//
// No std:: templates inside the namespace: their out-of-line copies would be shared by
// every ISA build (the linker keeps one, possibly with instructions the CPU lacks).
#include <limits.h>
#include <math.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <new>        // std::bad_alloc
#include <stdexcept>  // std::domain_error (a BatchNorm that cannot be evaluated)

#include "kernels.h"
#include "rng.h"

#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__SSE2__)
#include <immintrin.h>  // min/max, the 8x8 transpose, masked loads and stores; intrinsics are always inlined
#endif

#ifndef FASTMLP_ISA
#error "FASTMLP_ISA must name the build (generic, avx2, avx512)"
#endif
#define FASTMLP_CAT2(a, b) a##b
#define FASTMLP_CAT(a, b) FASTMLP_CAT2(a, b)
#define FASTMLP_STR2(a) #a
#define FASTMLP_STR(a) FASTMLP_STR2(a)

namespace fastmlp {
namespace FASTMLP_ISA {

#include "simd-inl.h"        // vectors, exp, tanh
#include "team-inl.h"        // buffers, thread shares, barriers
#include "gemm-inl.h"        // the register-tiled product and its epilogues
#include "optim-inl.h"       // SGD, momentum, AdamW
#include "layers-inl.h"      // embedding, linear, dropout, cross-entropy: forward/backward pairs
#include "table-inl.h"       // the first layer through the embedding table (large batches)
#include "standalone-inl.h"  // the same layers on all rows, in the caller's layout
#include "model-inl.h"       // padded parameters, forward and loss of many rows
#include "diag-inl.h"        // a step's diagnostics: activations, gradients, updates
#include "step-inl.h"        // the training step, loss and gradients, the fused loop
#include "sample-inl.h"      // the batched sampler
#include "peak-inl.h"        // the FMA peak (benchmark support)

}  // namespace FASTMLP_ISA

extern const KernelTable FASTMLP_CAT(kernels_, FASTMLP_ISA) = {
    FASTMLP_STR(FASTMLP_ISA),
    FASTMLP_ISA::VW,
    FASTMLP_ISA::embedding_forward,
    FASTMLP_ISA::embedding_backward,
    FASTMLP_ISA::linear_forward,
    FASTMLP_ISA::linear_backward,
    FASTMLP_ISA::cross_entropy,
    FASTMLP_ISA::batchnorm_tanh_forward,
    FASTMLP_ISA::batchnorm_tanh_backward,
    FASTMLP_ISA::sgd_update,
    FASTMLP_ISA::optimizer_update,
    FASTMLP_ISA::mlp_forward,
    FASTMLP_ISA::mlp_loss_sum,
    FASTMLP_ISA::mlp_loss_and_grad,
    FASTMLP_ISA::train_steps,
    FASTMLP_ISA::sample,
    FASTMLP_ISA::fma_loop,
};

}  // namespace fastmlp
