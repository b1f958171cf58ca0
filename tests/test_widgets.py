"""The explorers, driven through their controls: what they plot is the package's measurement and prediction
for the setting on the controls (issue 15, item 11), and the slider maxima stay finite (issue 12, item 8)."""
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import hyperinit_lite.widgets as W  # noqa: E402


def _plotted(fig):
    """{(panel, label): y-data} of the solid (measured) lines and the dashed (predicted) ones."""
    lines = {}
    for panel, ax in enumerate(fig.axes):
        solid = [line for line in ax.lines if line.get_linestyle() == "-" and line.get_marker() == "o"]
        dashed = [line for line in ax.lines if line.get_linestyle() == "--"]
        for line, pred in zip(solid, dashed):
            lines[panel, line.get_label()] = (np.asarray(line.get_ydata()), np.asarray(pred.get_ydata()))
    return lines


def _drive(explorer, **values):
    interactive = explorer.children[1]
    by_name = {getattr(c, "description", None): c for c in interactive.children}
    for name, value in values.items():
        by_name[{"embedding_dim": "embedding"}.get(name, name)].value = value
    interactive.update()
    return interactive.result


@pytest.mark.parametrize("settings", [
    dict(init="hyperfan_in", depth=3, width=32, activation="relu", generates_bias=True),
    dict(init="hypernet_xavier", depth=4, width=48, activation="tanh", mode="fan_out"),
    dict(init="kaiming", depth=2, width=16, activation="relu")])
def test_explorer_plots_the_package_measurement_and_prediction(settings):
    explorer = W.variance_explorer(inits=W.INITS, depth=2, width=16, n_seeds=2, embedding_dim=20)
    assert "snapshot" in explorer.children[0].value
    fig = _drive(explorer, **settings)
    init = settings.pop("init")
    measured = W.mean_variance_profile(init, 2, embedding_dim=20, **settings)
    predicted = W.predicted_variance_profile(init, embedding_dim=20, **settings)
    lines = _plotted(fig)
    for panel, key in enumerate(W.KEYS):
        y, y_pred = lines[panel, init]
        assert np.allclose(y, measured[key], rtol=1e-12)
        assert np.allclose(y_pred, predicted[key], rtol=1e-12)
    plt.close("all")


def test_compare_explorer_draws_every_init():
    explorer = W.variance_explorer(inits=("hyperfan_in", "hyperfan_out"), compare=True, depth=2, width=16,
                                   n_seeds=1)
    fig = _drive(explorer, depth=2, width=16, generates_bias=True, activation="linear")
    assert {label for _, label in _plotted(fig)} == {"hyperfan_in", "hyperfan_out"}
    plt.close("all")


@pytest.mark.parametrize("init, mode, registry_name", [("hypernet_xavier", "fan_out", "xavier_fan_out"),
                                                        ("hypernet_kaiming", "harmonic", "kaiming_harmonic"),
                                                        ("hyperfan_harmonic", "fan_in", "hyperfan_harmonic")])
def test_hypernet_inits_come_from_the_registry(init, mode, registry_name):
    """The explorer draws and predicts a hypernet init exactly as the registry (init_methods) does."""
    import torch
    from hyperinit_lite import Hypernet
    from hyperinit_lite.init_methods import METHODS, init_
    from hyperinit_lite.predict import predicted_profile
    from hyperinit_lite.stats import mainnet_statistics

    assert W.hypernet_method(init, mode) is METHODS[registry_name]
    sizes = [24] * 4
    settings = dict(depth=3, width=24, activation="relu", mode=mode, embedding_dim=10, generates_bias=True)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(64, 24, generator=gen, dtype=torch.float64)
    hn = Hypernet(sizes, 10, generates_bias=True, share_heads=True, activation="relu", generator=gen)
    weights, biases = init_(hn, registry_name, generator=gen).double()()
    expected = mainnet_statistics(weights, biases, x, "relu", generator=gen)
    measured = W.variance_profile(init, batch=64, seed=5, **settings)
    assert all(np.array_equal(measured[key], expected[key]) for key in W.KEYS)
    variances = METHODS[registry_name].generated_variances(sizes, 10, "relu", True)
    prediction = predicted_profile(sizes, *variances, "relu")
    assert W.predicted_variance_profile(init, **settings) == prediction


def test_every_hyperfan_method_of_the_registry_is_offered():
    from hyperinit_lite.init_methods import METHODS
    assert {m for m in METHODS if m.startswith("hyperfan")} < set(W.HYPERNET_INITS)
    with pytest.raises(ValueError, match="init must be one of"):
        W.hypernet_method("xavier")


def test_a_blow_up_beyond_float32_stays_finite():
    """M1 at depth 30: 64^30 ~ 1e54 overflows float32 but not the float64 the explorer computes in."""
    profile = W.variance_profile("hypernet_xavier", depth=30, width=64, activation="linear", batch=64)
    assert np.isfinite(profile["activation"]).all() and profile["activation"][-1] > 1e45
    assert np.isfinite(profile["input_grad"]).all()


def test_non_finite_values_are_named_not_dropped():
    axes = W.plot_variance_profiles({"a": {"activation": [1.0, float("inf")], "input_grad": [1.0, 2.0]}})
    assert "not finite" in " ".join(t.get_text() for t in axes[0].texts)
    plt.close("all")


def test_saved_views_use_fixed_log_limits():
    axes = W.plot_variance_profiles({"flat": {"activation": [1.2, 1.5, 1.8], "input_grad": [1.0, 1.0, 1.0]}})
    low, high = axes[0].get_ylim()
    assert low <= 1e-2 and high >= 1e2
    plt.close("all")


def test_check_prediction(capsys):
    assert W.check_prediction("grows", "grows", ("grows", "shrinks"))
    assert not W.check_prediction("shrinks", "grows", ("grows", "shrinks"))
    assert not W.check_prediction(None, "grows", ("grows", "shrinks"))
    assert "right" in capsys.readouterr().out
    with pytest.raises(ValueError, match="my_prediction"):
        W.check_prediction("explodes", "grows", ("grows", "shrinks"))
