"""Variance predictions (hyperinit_lite.predict) against hand-derived values and an independent integration."""
import math

import numpy as np
import pytest

from hyperinit_lite import predict


def test_linear_net_profile_by_hand():
    # forward: 4 * 0.5 * 1 = 2, then 8 * 0.25 * 2 = 4; backward: 2 * 0.25 * 1 = 0.5, then 8 * 0.5 * 0.5 = 2
    p = predict.predicted_profile([4, 8, 2], [0.5, 0.25])
    assert p["activation"] == pytest.approx([2.0, 4.0])
    assert p["input_grad"] == pytest.approx([2.0, 0.5])


def test_relu_net_profile_by_hand():
    # forward: 10 * 0.2 = 2, ReLU halves it to 1, then 20 * 0.1 * 1 = 2;
    # backward: 5 * 0.1 = 0.5 at the linear last layer, ReLU halves it, then 20 * 0.2 * 0.25 = 1
    p = predict.predicted_profile([10, 20, 5], [0.2, 0.1], activation="relu")
    assert p["activation"] == pytest.approx([2.0, 2.0])
    assert p["input_grad"] == pytest.approx([1.0, 0.5])


def test_bias_variance_adds_to_the_forward_pass_only():
    p = predict.predicted_profile([4, 4, 4], [0.125, 0.125], [0.5, 0.5])
    assert p["activation"] == pytest.approx([1.0, 1.0])        # 4 * 0.125 * 1 + 0.5, twice
    assert p["input_grad"] == pytest.approx([0.25, 0.5])       # 4 * 0.125 per layer, biases invisible


def _integrate(f, q):
    """E[f(u)], u ~ N(0, q), by the trapezoid rule on a fine grid: independent of the Hermite quadrature."""
    u = np.linspace(-12, 12, 200_001) * math.sqrt(q)
    density = np.exp(-u ** 2 / (2 * q)) / math.sqrt(2 * math.pi * q)
    return float(np.trapezoid(f(u) * density, u))


@pytest.mark.parametrize("q", [0.01, 0.5, 1.0, 4.0, 100.0])
def test_tanh_moments_match_an_independent_integral(q):
    assert predict.next_second_moment("tanh", q) == pytest.approx(_integrate(lambda u: np.tanh(u) ** 2, q),
                                                                  rel=1e-4)
    assert predict.derivative_second_moment("tanh", q) == pytest.approx(
        _integrate(lambda u: (1 - np.tanh(u) ** 2) ** 2, q), rel=1e-3)


def test_gaussian_mean_is_exact_for_moments():
    assert predict.gaussian_mean(lambda u: u ** 2, 3.0) == pytest.approx(3.0)
    assert predict.gaussian_mean(lambda u: u ** 4, 3.0) == pytest.approx(27.0)
    assert predict.next_second_moment("tanh", 1.0) == pytest.approx(0.394294, abs=1e-6)


def test_hyperfan_generated_variances_by_hand():
    sizes = [64, 192, 96]                                       # relu after layer 1, last layer linear
    w, b = predict.hyperfan_generated_variances("in", sizes, 50, "relu")
    assert w == pytest.approx([2 / 64, 1 / 192]) and b == [0.0, 0.0]
    w, b = predict.hyperfan_generated_variances("in", sizes, 50, "relu", generates_bias=True)
    assert w == pytest.approx([1 / 64, 1 / (2 * 192)]) and b == pytest.approx([1.0, 0.5])
    w, b = predict.hyperfan_generated_variances("out", sizes, 50, "relu", generates_bias=True,
                                                embedding_variance=4.0)
    assert w == pytest.approx([2 / 192, 1 / 96]) and b == pytest.approx([2 * (1 - 64 / 192), 0.0])


def test_m1_generated_variances_by_hand():
    w, b = predict.m1_generated_variances([30, 40, 50], 20, "fan_in", 2.0, generates_bias=True)
    assert w == pytest.approx([2.0, 2.0]) and b == pytest.approx([2.0, 2.0])   # gain Var(e): Eq. (1)
    w, _ = predict.m1_generated_variances([30, 40], 20, "fan_out")
    assert w == pytest.approx([20 / 1200])


@pytest.mark.parametrize("kwargs, name", [(dict(weight_variances=[1.0]), "weight_variances"),
                                          (dict(bias_variances=[1.0, -1.0]), "bias_variances"),
                                          (dict(activation="gelu"), "activation"),
                                          (dict(input_second_moment=0.0), "input_second_moment")])
def test_bad_input_names_the_parameter(kwargs, name):
    args = dict(layer_sizes=[3, 4, 5], weight_variances=[1.0, 1.0])
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        predict.predicted_profile(**args)
