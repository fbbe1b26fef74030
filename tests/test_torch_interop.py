"""PyTorch in and out: MLP.to_torch(), MLP.from_torch(), MLP.from_params()."""
import numpy as np
import pytest
import torch

from fastmlp import MLP
from fastmlp.model import PARAM_NAMES
import torch_reference as ref
from conftest import normwise_close


@pytest.fixture
def model():
    return MLP(27, 4, 6, 33, seed=2, init="scaled")


def test_to_torch_computes_the_same_logits(model, rng):
    X = rng.integers(0, 27, (300, 4))
    module = model.to_torch()
    assert isinstance(module, torch.nn.Module)
    assert sorted(n for n, _ in module.named_parameters()) == sorted(PARAM_NAMES)
    with torch.no_grad():
        theirs = module(torch.tensor(X)).numpy()
    ours = model.forward(X)
    # the whole-model bound the suite uses (test_model.py): 1e-5 of the largest logit,
    # both against the float64 twin
    r64 = ref.mlp_logits(ref.mlp_params(model.params), X).detach().numpy()
    normwise_close(ours, r64, 1e-5, "fastmlp logits")
    normwise_close(theirs, r64, 1e-5, "torch module logits")


def test_round_trip_is_bit_exact_and_independent(model):
    module = model.to_torch()
    back = MLP.from_torch(module)
    same = MLP.from_torch(module.state_dict())
    for k in PARAM_NAMES:
        np.testing.assert_array_equal(back.params[k], model.params[k])
        np.testing.assert_array_equal(same.params[k], model.params[k])
        assert back.params[k].dtype == np.float32 and back.params[k].flags.c_contiguous
    # copies, not views: training either side leaves the other alone
    with torch.no_grad():
        module.W1.add_(1.0)
    assert not np.array_equal(model.params["W1"], module.W1.detach().numpy())
    np.testing.assert_array_equal(back.params["W1"], model.params["W1"])
    assert (back.vocab_size, back.block_size, back.n_embd, back.n_hidden) == (27, 4, 6, 33)


def test_a_model_trained_in_torch_comes_back(model, rng):
    module = model.to_torch()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    X, Y = rng.integers(0, 27, (64, 4)), rng.integers(0, 27, 64)
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(module(torch.tensor(X)), torch.tensor(Y))
        opt.zero_grad()
        loss.backward()
        opt.step()
    back = MLP.from_torch(module)
    with torch.no_grad():
        final = torch.nn.functional.cross_entropy(module(torch.tensor(X)), torch.tensor(Y)).item()
    assert back.loss(X, Y) == pytest.approx(final, rel=1e-5)


def test_from_params_reads_sizes_and_checks_them(model):
    m = MLP.from_params(model.params)
    assert m.config == model.config and m.init is None
    m64 = MLP.from_params({k: v.astype(np.float64) for k, v in model.params.items()})
    assert all(m64.params[k].dtype == np.float32 for k in PARAM_NAMES)
    shared = MLP.from_params(model.params, copy=False)
    assert shared.params["C"] is model.params["C"]
    bad = dict(model.params, W2=np.zeros((33, 26), np.float32))
    with pytest.raises(ValueError, match=r"W2 must have shape \(33, 27\)"):
        MLP.from_params(bad)
    with pytest.raises(KeyError, match="b1"):
        MLP.from_params({k: v for k, v in model.params.items() if k != "b1"})
    with pytest.raises(ValueError, match="multiple of E"):
        MLP.from_params(dict(model.params, W1=np.zeros((25, 33), np.float32)))
    with pytest.raises(TypeError, match="floating-point"):
        MLP.from_params(dict(model.params, C=np.zeros((27, 6), np.int32)))
    with pytest.raises(ValueError, match="NaN"):
        MLP.from_params(dict(model.params, b2=np.full(27, np.nan, np.float32)))


def test_from_torch_names_what_is_missing():
    with pytest.raises(KeyError, match="W2"):
        MLP.from_torch({"C": torch.zeros(3, 2)})
