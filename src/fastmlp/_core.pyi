"""Type stubs for the C++ extension fastmlp._core (csrc/module.cpp).

All arrays are numpy, float32 or int32 as named, C-contiguous and aligned;
shapes: N examples, T block_size, E n_embd, H n_hidden, V vocab size.
`params` is the sequence MLP.arrays(): (C, W1, b1, ..., W{L+1}, b{L+1}) for L hidden layers
(the lecture's (C, W1, b1, W2, b2)), or under BatchNorm (C, W1, gamma1, beta1, ...,
W{L+1}, b{L+1}) with `batchnorm` = MLP.bn_args() = (running means, running vars, eps,
momentum); None without BatchNorm.
`threads`: the OpenMP threads for this call only; None uses the process default
(set_num_threads). Bad arguments raise TypeError / ValueError / IndexError naming the
argument; an index array changed by another thread during a call raises IndexError;
running out of memory raises MemoryError.
"""
from typing import Optional, Protocol, Sequence, Tuple

import numpy as np
import numpy.typing as npt

F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]
Params = Sequence[F32]  # (C, W1, b1, ..., W{L+1}, b{L+1})
BatchNorm = Optional[Tuple[Sequence[F32], Sequence[F32], float, float]]  # (running_mean, running_var, eps, momentum)

class _Optimizer(Protocol):  # fastmlp.optim.SGD / AdamW
    step: int
    def _core_args(self) -> tuple: ...

def build_info() -> dict: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def max_threads() -> int: ...
def set_isa(name: str) -> None: ...
def get_isa() -> str: ...
def first_layer_tables(V: int, T: int, E: int, H: int, batch: int) -> bool:
    """Whether a step of this batch takes the first layer through the embedding table."""
    ...

# layers (forward / backward pairs)
def embedding_forward(C: F32, X: I32, *, threads: Optional[int] = None) -> F32: ...  # (V,E), (N,T) -> (N, T*E)
def embedding_backward(d_emb: F32, X: I32, num_embeddings: int, *, threads: Optional[int] = None) -> F32: ...
def linear_tanh_forward(x: F32, W: F32, b: F32, *, threads: Optional[int] = None) -> F32: ...  # tanh(x W + b)
def linear_tanh_backward(dh: F32, h: F32, x: F32, W: F32, *, threads: Optional[int] = None
                         ) -> Tuple[F32, F32, F32]: ...  # dx, dW, db
def linear_forward(x: F32, W: F32, b: F32, *, threads: Optional[int] = None) -> F32: ...
def linear_backward(dy: F32, x: F32, W: F32, *, threads: Optional[int] = None) -> Tuple[F32, F32, F32]: ...
def cross_entropy(logits: F32, Y: I32, *, threads: Optional[int] = None) -> Tuple[float, F32]: ...  # loss, dlogits
def batchnorm_tanh_forward(pre: F32, gamma: F32, beta: F32, eps: float = 1e-5, *,
                           threads: Optional[int] = None) -> Tuple[F32, F32, F32]: ...  # (h, xhat, stats (3, H))
def batchnorm_tanh_backward(dh: F32, h: F32, xhat: F32, stats: F32, gamma: F32, *,
                            threads: Optional[int] = None) -> Tuple[F32, F32, F32]: ...  # (dpre, dgamma, dbeta)
def cross_entropy_loss(logits: F32, Y: I32, *, threads: Optional[int] = None) -> float: ...

# optimizers: check_optimizer holds every hyperparameter's one bound
def check_optimizer(kind: str, momentum: float = 0.0, nesterov: bool = False, beta1: float = 0.9,
                    beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0) -> None: ...
def check_dropout(p: float) -> float: ...
def sgd_update(p: F32, g: F32, lr: float, *, threads: Optional[int] = None) -> None: ...  # in place
def momentum_update(p: F32, g: F32, buf: F32, lr: float, momentum: float, nesterov: bool = False,
                    weight_decay: float = 0.0, *, threads: Optional[int] = None) -> None: ...
def adamw_update(p: F32, g: F32, m: F32, v: F32, step: int, lr: float, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8, weight_decay: float = 0.01, *, threads: Optional[int] = None) -> None: ...

# whole model
def mlp_forward(params: Params, X: I32, *, batchnorm: BatchNorm = None, threads: Optional[int] = None) -> F32: ...
def mlp_loss(params: Params, X: I32, Y: I32, *, batchnorm: BatchNorm = None,
             threads: Optional[int] = None) -> float: ...
def mlp_loss_and_grad(params: Params, X: I32, Y: I32, dropout_mask: Optional[F32] = None, *,
                      batchnorm: BatchNorm = None, threads: Optional[int] = None) -> Tuple[float, Tuple[F32, ...]]: ...
def train_steps(
    params: Params, X: I32, Y: I32, lrs: F32, *,
    batch_size: Optional[int] = None, rng_state: Optional[npt.NDArray[np.uint64]] = None,
    batches: Optional[npt.NDArray[np.int64]] = None, optimizer: Optional[_Optimizer] = None,
    dropout: float = 0.0, dropout_seed: int = 0, step0: int = 0,
    threads: Optional[int] = None, stop: Optional[I32] = None,
    profile: Optional[npt.NDArray[np.float64]] = None,  # (threads, 2): seconds in barriers, in all
    diag: Optional[tuple] = None,  # (out float64 (n, record length), bins, pre_range, sat, act (L, B, H) | None, every)
    batchnorm: BatchNorm = None,   # its running statistics are updated in place
) -> F32: ...
def dropout_mask(seed: int, step: int, B: int, H: int, p: float, layer: int = 1, n_layers: int = 1) -> F32: ...
def sample(params: Params, n: int, max_len: int, seed: int, temperature: float = 1.0, top_k: int = 0, *,
           batchnorm: BatchNorm = None, threads: Optional[int] = None) -> I32: ...
MAX_LAYERS: int  # hidden layers at most
DIAG_FIXED: int  # the lecture's model's diagnostics record is DIAG_FIXED + 3 * bins doubles; a model of L
                 # hidden layers and P parameter tensors: 1 + L (9 + 3 bins) + 3 P
def rng_state(seed: int) -> npt.NDArray[np.uint64]: ...
def fma_peak_gflops(threads: int = 1, seconds: float = 0.2) -> float: ...
