"""Fans, classical variances and Table 1 against hand-computed values, plus the error messages."""
import math

import pytest
import torch

import hyperinit_lite as hl


def test_fans_of_linear_and_conv_weights():
    assert hl.fan_in_and_fan_out((500, 784)) == (784, 500)
    assert hl.fan_in_and_fan_out((96, 3, 3, 3)) == (27, 864)
    assert hl.receptive_field((8, 4, 5, 7)) == 35


@pytest.mark.parametrize("shape", [(3,), (0, 4), (3, -1), (2, 2.5)])
def test_bad_shapes_are_rejected(shape):
    with pytest.raises(ValueError, match="shape"):
        hl.fan_in_and_fan_out(shape)


def test_classical_variances():
    assert hl.init_variance(100, 400, "fan_in") == pytest.approx(1 / 100)
    assert hl.init_variance(100, 400, "fan_out") == pytest.approx(1 / 400)
    assert hl.init_variance(100, 400, "harmonic") == pytest.approx(2 / 500)
    assert hl.kaiming_variance((64, 32, 3, 3)) == pytest.approx(2 / (32 * 9))
    assert hl.kaiming_variance((64, 32, 3, 3), mode="fan_out") == pytest.approx(2 / (64 * 9))
    assert hl.xavier_variance((30, 10)) == pytest.approx(2 / 40)


def test_xavier_uniform_matches_torch_nn_init(gen):
    """Our harmonic Xavier with the uniform sampler has the same bound as torch.nn.init.xavier_uniform_."""
    w = torch.empty(300, 200)
    torch.nn.init.xavier_uniform_(w)
    bound = math.sqrt(3 * hl.xavier_variance(w.shape))
    assert w.abs().max().item() <= bound
    assert w.abs().max().item() > 0.99 * bound


def test_harmonic_mean_is_the_true_one():
    assert hl.harmonic_mean(1.0, 3.0) == pytest.approx(1.5)
    assert hl.harmonic_mean(0.0, 3.0) == 0.0
    with pytest.raises(ValueError):
        hl.harmonic_mean(-1.0, 1.0)


@pytest.mark.parametrize("bad", [("mode", dict(mode="fanin")), ("nonlinearity", dict(nonlinearity="gelu"))])
def test_unknown_names_list_the_valid_ones(bad):
    name, kwargs = bad
    with pytest.raises(ValueError, match=f"{name} must be one of .*'fan_in'|{name} must be one of .*'relu'"):
        hl.kaiming_variance((4, 4), **kwargs)


@pytest.mark.parametrize("relu,c", [("linear", 1.0), ("relu", 2.0)])
def test_table_1_hyperfan_in(relu, c):
    d_j, d_i, d_k, d_l, v = 784, 500, 50, 40, 1.5
    assert hl.hyperfan_in_weight_variance(d_j, d_k, v, relu) == pytest.approx(c / (d_j * d_k * v))
    assert hl.hyperfan_in_weight_variance(d_j, d_k, v, relu, generates_bias=True) == pytest.approx(
        c / (2 * d_j * d_k * v))
    assert hl.hyperfan_in_bias_variance(d_l, v, relu) == pytest.approx(c / (2 * d_l * v))


@pytest.mark.parametrize("relu,c", [("linear", 1.0), ("relu", 2.0)])
def test_table_1_hyperfan_out(relu, c):
    d_k, d_l, v = 50, 40, 0.5
    assert hl.hyperfan_out_weight_variance(500, d_k, v, relu) == pytest.approx(c / (500 * d_k * v))
    assert hl.hyperfan_out_bias_variance(100, 400, d_l, v, relu) == pytest.approx(c * (1 - 100 / 400) / (d_l * v))
    assert hl.hyperfan_out_bias_variance(784, 500, d_l, v, relu) == 0.0
    assert hl.hyperfan_out_bias_variance(500, 500, d_l, v, relu) == 0.0


def test_hyperfan_out_bias_is_zero_on_every_layer_of_the_mnist_net():
    sizes = [784] + [500] * 5 + [10]
    for d_in, d_out in zip(sizes[:-1], sizes[1:]):
        assert hl.hyperfan_variances("out", d_in, d_out, 50, generates_bias=True)[1] == 0.0


def test_harmonic_hyperfan_is_the_harmonic_mean_and_handles_zero():
    w_in, b_in = hl.hyperfan_variances("in", 100, 400, 50, generates_bias=True)
    w_out, b_out = hl.hyperfan_variances("out", 100, 400, 50, generates_bias=True)
    w_h, b_h = hl.hyperfan_variances("harmonic", 100, 400, 50, generates_bias=True)
    assert w_h == pytest.approx(2 / (1 / w_in + 1 / w_out))
    assert b_h == pytest.approx(2 / (1 / b_in + 1 / b_out))
    assert min(w_in, w_out) <= w_h <= max(w_in, w_out)
    assert hl.hyperfan_variances("harmonic", 400, 100, 50, generates_bias=True)[1] == 0.0


def test_conv_receptive_field_enters_through_the_fans():
    fan_in, fan_out = hl.fan_in_and_fan_out((96, 96, 3, 3))
    assert hl.hyperfan_variances("in", fan_in, fan_out, 50)[0] == pytest.approx(1 / (96 * 9 * 50))


@pytest.mark.parametrize("kwargs,name", [
    (dict(fan_in=0), "fan_in"), (dict(d_k=-3), "d_k"), (dict(embedding_variance=0.0), "embedding_variance"),
    (dict(embedding_variance=float("nan")), "embedding_variance"), (dict(method="mean"), "method")])
def test_hyperfan_bad_input(kwargs, name):
    args = dict(method="in", fan_in=10, fan_out=10, d_k=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        hl.hyperfan_variances(**args)
