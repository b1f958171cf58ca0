"""Hypernet modules, initializers and the statistics helpers, including statistical checks of the formulas."""
import math

import pytest
import torch

import hyperinit_lite as hl
from conftest import sample_variance_tolerance


def test_generated_shapes_and_parameter_sharing():
    hn = hl.Hypernet([20, 30, 30, 30, 5], 8, hidden_sizes=(16,), generates_bias=True, share_heads=True)
    weights, biases = hn()
    assert [tuple(w.shape) for w in weights] == [(30, 20), (30, 30), (30, 30), (5, 30)]
    assert [tuple(b.shape) for b in biases] == [(30,), (30,), (30,), (5,)]
    assert len(hn.weight_heads) == 3 and hn.head_of_layer == [0, 1, 1, 2]
    assert not hn.weight_embeddings.requires_grad
    relu = hl.Hypernet([8, 8, 8, 8], 4, share_heads=True, activation="relu")  # the linear last layer: own head
    assert relu.head_of_layer == [0, 0, 1]
    hl.hyperfan_in_(relu)
    assert relu.weight_heads[0].weight.var().item() == pytest.approx(2 * relu.weight_heads[1].weight.var().item(),
                                                                    rel=0.3)
    assert hl.Hypernet([4, 4], 2, learn_embeddings=True).weight_embeddings.requires_grad


def test_weights_only_hypernet_keeps_zero_mainnet_biases():
    hn = hl.Hypernet([6, 7, 3], 4)
    _, biases = hn()
    assert all(torch.equal(b, torch.zeros_like(b)) and b.requires_grad for b in biases)


@pytest.mark.parametrize("kwargs,name", [
    (dict(layer_sizes=[5]), "layer_sizes"), (dict(layer_sizes=[5, 0]), "layer_sizes"),
    (dict(embedding_dim=0), "embedding_dim"), (dict(hidden_sizes=(4, -1)), "hidden_sizes"),
    (dict(activation="gelu"), "activation"), (dict(body_activation="swish"), "body_activation")])
def test_hypernet_bad_input(kwargs, name):
    args = dict(layer_sizes=[5, 5], embedding_dim=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        hl.Hypernet(**args)


def test_unknown_initializer_and_bad_embedding_variance():
    hn = hl.Hypernet([5, 5], 3)
    with pytest.raises(ValueError, match="method must be one of .*'hyperfan_in'"):
        hl.init_(hn, "hyperfan")
    with pytest.raises(ValueError, match="embedding_variance"):
        hl.hyperfan_in_(hn, embedding_variance=-1.0)
    with pytest.raises(TypeError, match="hypernet"):
        hl.hyperfan_in_(torch.nn.Linear(3, 3))


def test_mainnet_forward_rejects_mismatched_shapes():
    """The second layer is named "layer 2": readers count layers from 1."""
    with pytest.raises(ValueError, match="layer 2:"):
        hl.mainnet_forward(torch.randn(2, 3), [torch.randn(4, 3), torch.randn(2, 5)], [torch.zeros(4), torch.zeros(2)])


def _conditional_weight_variance(hn, t, var_h):
    """Given the sampled embedding, entries of W[t] are iid with variance Var(H) * sum_k h(e)_k^2."""
    with torch.no_grad():
        h = hn.features(hn.weight_embeddings)[t]
    return var_h * (h ** 2).sum().item()


@pytest.mark.parametrize("method", ["in", "out", "harmonic"])
@pytest.mark.parametrize("hidden", [(), (40, 30)])
def test_generated_weight_variance_matches_table_1(method, hidden):
    gen = torch.Generator().manual_seed(7)
    sizes = [int(s) for s in torch.randint(20, 200, (4,), generator=gen)]
    hn = hl.Hypernet(sizes, 25, hidden_sizes=hidden, activation="relu", generator=gen)
    hl.hyperfan_(hn, method, generator=gen)
    weights, _ = hn()
    d_k = hn.head_dim
    for t, w in enumerate(weights):
        d_out, d_in = w.shape
        nl = "relu" if t < len(weights) - 1 else "linear"
        var_h, _ = hl.hyperfan_variances(method, d_in, d_out, d_k, nonlinearity=nl)
        predicted = _conditional_weight_variance(hn, t, var_h)
        tol = sample_variance_tolerance(w.numel(), kurtosis=3.0)
        assert w.var().item() == pytest.approx(predicted, rel=tol)


def test_body_fan_in_init_keeps_the_second_moment_of_embeddings():
    """Averaged over many embeddings, E[h(e)^2] = Var(e) = 1 through a fan-in initialized ReLU body."""
    gen = torch.Generator().manual_seed(3)
    hn = hl.Hypernet([4, 4], 64, hidden_sizes=(512, 512), generator=gen)
    hl.fan_in_body_(hn, generator=gen)
    e = hl.uniform_embeddings(4000, 64, gen)
    second_moment = (hn.features(e) ** 2).mean().item()
    assert second_moment == pytest.approx(1.0, rel=0.1)


@pytest.mark.parametrize("method,key", [("hyperfan_in", "activation"), ("hyperfan_out", "input_grad")])
def test_hyperfan_preserves_variance_through_a_deep_linear_mainnet(method, key):
    """Linear mainnet, fresh embeddings per layer: variance stays O(1) after 8 layers; Xavier multiplies it."""
    gen = torch.Generator().manual_seed(11)
    sizes = [200, 300, 150, 250, 200, 300, 150, 250, 200]
    ratios = []
    for _ in range(8):
        hn = hl.Hypernet(sizes, 50, activation="linear", generator=gen)
        hl.init_(hn, method, generator=gen)
        s = hl.hypernet_statistics(hn, torch.randn(1000, sizes[0], generator=gen), generator=gen)
        values = s[key] if key == "activation" else s[key][::-1]
        ratios.append(values[-1] / (1.0 if key == "activation" else values[0]))
    mean_ratio = sum(ratios) / len(ratios)
    assert 0.5 < mean_ratio < 2.0


def test_xavier_hypernet_reproduces_the_blow_up_of_eq_1():
    """M1 (fan-in Xavier on the head): Var(W) = Var(e) = 1, so Var(x[T+1]) = prod_t d_{i_t}, Eq. (1)."""
    gen = torch.Generator().manual_seed(5)
    sizes = [30, 40, 20, 50, 10]
    logs = []
    for _ in range(20):
        hn = hl.Hypernet(sizes, 50, activation="linear", generator=gen)
        hl.xavier_(hn, generator=gen)
        s = hl.hypernet_statistics(hn, torch.randn(500, sizes[0], generator=gen), generator=gen)
        logs.append(math.log(s["activation"][-1]))
    predicted = math.log(math.prod(sizes[:-1]))
    measured = sum(logs) / len(logs)
    assert measured == pytest.approx(predicted, abs=1.0), (measured, predicted)
    assert measured > math.log(1e5)


def test_classical_mainnet_statistics_match_fan_in_and_fan_out(gen):
    sizes = [400] * 6
    fwd = hl.mainnet_statistics(*hl.classical_mainnet(sizes, "xavier", "fan_in", "linear", generator=gen),
                                torch.randn(2000, 400, generator=gen), "linear", generator=gen)
    bwd = hl.mainnet_statistics(*hl.classical_mainnet(sizes, "xavier", "fan_out", "linear", generator=gen),
                                torch.randn(2000, 400, generator=gen), "linear", generator=gen)
    for v in fwd["activation"]:
        assert v == pytest.approx(1.0, rel=0.25)
    for v in bwd["input_grad"]:
        assert v == pytest.approx(1.0, rel=0.25)


def test_kaiming_keeps_relu_activations_and_xavier_halves_them(gen):
    sizes = [500] * 9
    x = torch.randn(1000, 500, generator=gen)
    k = hl.mainnet_statistics(*hl.classical_mainnet(sizes, "kaiming", activation="relu", generator=gen), x, "relu")
    xv = hl.mainnet_statistics(*hl.classical_mainnet(sizes, "xavier", activation="relu", generator=gen), x, "relu")
    assert k["activation"][-2] == pytest.approx(k["activation"][1], rel=0.3)
    assert xv["activation"][-2] / xv["activation"][1] == pytest.approx(0.5 ** 5, rel=0.3)


def test_statistics_leave_grads_untouched(gen):
    """Measuring must not train: two calls leave every .grad of the hypernet None (issue 12, item 8)."""
    hn = hl.hyperfan_in_(hl.Hypernet([8, 16, 4], 10, hidden_sizes=(12,), generates_bias=True, generator=gen),
                         generator=gen)
    x = torch.randn(32, 8, generator=gen)
    first = hl.hypernet_statistics(hn, x, generator=torch.Generator().manual_seed(0))
    second = hl.hypernet_statistics(hn, x, generator=torch.Generator().manual_seed(0))
    assert all(p.grad is None for p in hn.parameters())
    assert first == second
    weights, biases = hl.classical_mainnet([8, 16, 4], generator=gen)
    hl.mainnet_statistics(weights, biases, x)
    assert all(w.grad is None for w in weights)


def test_tiny_embedding_variance_and_wrong_dtype_are_clear_errors(gen):
    hn = hl.Hypernet([8, 16, 4], 10, generator=gen)
    with pytest.raises(ValueError, match="variance .* too large .*embedding_variance"):
        hl.hyperfan_in_(hn, embedding_variance=1e-300)
    with pytest.raises(ValueError, match="dtype torch.float64 .* torch.float32"):
        hl.hypernet_statistics(hn, torch.randn(4, 8, dtype=torch.float64))
    hl.hypernet_statistics(hn.double(), torch.randn(4, 8, dtype=torch.float64))  # a cast model works
