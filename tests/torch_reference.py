"""PyTorch twins of every fastmlp kernel: the code a user of the lecture would write.

Each function takes numpy arrays and returns numpy arrays; dtype=torch.float64
gives the high-precision reference the tolerances are measured against.
"""
import numpy as np
import torch
import torch.nn.functional as F


def t(a, dtype=torch.float32, grad=False):
    x = torch.tensor(np.asarray(a), dtype=dtype)
    return x.requires_grad_(grad)


def embedding(C, X, dtype=torch.float64):
    Ct = t(C, dtype)
    Xt = torch.tensor(X, dtype=torch.long)
    return Ct[Xt].reshape(len(X), -1).numpy()


def embedding_backward(d_emb, X, V, dtype=torch.float64):
    N, T = X.shape
    E = d_emb.shape[1] // T
    C = torch.zeros(V, E, dtype=dtype, requires_grad=True)
    emb = C[torch.tensor(X, dtype=torch.long)].reshape(N, T * E)
    emb.backward(t(d_emb, dtype))
    return C.grad.numpy()


def linear(x, W, b, tanh, dtype=torch.float64):
    y = t(x, dtype) @ t(W, dtype) + t(b, dtype)
    return (torch.tanh(y) if tanh else y).numpy()


def linear_backward(dy, x, W, b, tanh, dtype=torch.float64):
    xt, Wt, bt = t(x, dtype, True), t(W, dtype, True), t(b, dtype, True)
    y = xt @ Wt + bt
    if tanh:
        y = torch.tanh(y)
    y.backward(t(dy, dtype))
    return xt.grad.numpy(), Wt.grad.numpy(), bt.grad.numpy()


def cross_entropy(logits, Y, dtype=torch.float64):
    z = t(logits, dtype, True)
    loss = F.cross_entropy(z, torch.tensor(Y, dtype=torch.long))
    loss.backward()
    return loss.item(), z.grad.numpy()


def mlp_params(params, dtype=torch.float64):
    return {k: t(v, dtype, True) for k, v in params.items()}


def mlp_logits(P, X, mask=None):
    """The model as the lecture writes it: the one PyTorch twin every test uses.
    mask: optional (N, H) multipliers on the hidden layer (dropout)."""
    emb = P["C"][torch.as_tensor(np.asarray(X), dtype=torch.long)]
    h = torch.tanh(emb.reshape(emb.shape[0], -1) @ P["W1"] + P["b1"])
    if mask is not None:
        h = h * torch.as_tensor(np.asarray(mask), dtype=h.dtype)
    return h @ P["W2"] + P["b2"]


def mlp_loss_and_grad(params, X, Y, dtype=torch.float64, mask=None):
    P = mlp_params(params, dtype)
    loss = F.cross_entropy(mlp_logits(P, X, mask), torch.tensor(Y, dtype=torch.long))
    loss.backward()
    return loss.item(), {k: v.grad.numpy() for k, v in P.items()}


def sgd_trajectory(params, X, Y, batches, lr, dtype=torch.float32, make_opt=None, masks=None):
    """The lecture's training loop on given batch indices: its manual SGD update
    (p.data += -lr * p.grad), or a torch.optim optimizer from make_opt(params).
    masks: optional per-step dropout multipliers. Returns the per-step losses and the
    final parameters."""
    P = mlp_params(params, dtype)
    opt = make_opt(list(P.values())) if make_opt else None
    Xt, Yt = torch.tensor(X, dtype=torch.long), torch.tensor(Y, dtype=torch.long)
    losses = []
    for s, ix in enumerate(batches):
        ix = torch.tensor(ix, dtype=torch.long)
        loss = F.cross_entropy(mlp_logits(P, Xt[ix], None if masks is None else masks[s]), Yt[ix])
        for p in P.values():
            p.grad = None
        loss.backward()
        if opt:
            opt.step()
        else:
            for p in P.values():
                p.data += -lr * p.grad
        losses.append(loss.item())
    return np.array(losses), {k: v.detach().numpy() for k, v in P.items()}
