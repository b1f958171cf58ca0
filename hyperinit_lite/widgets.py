"""Variance explorers: per-layer variance profiles, measured and predicted, their plots, and an ipywidgets
front end (Chapters 2-6).

``variance_profile`` measures one configuration (in float64, so that a blow-up of ``width^depth`` stays
finite), ``mean_variance_profile`` averages it over seeds, ``predicted_variance_profile`` gives the prediction
(:mod:`~hyperinit_lite.predict`); ``explorer_figure`` draws both, ``variance_small_multiples`` is the static
companion figure that teaches without a kernel, and ``variance_explorer`` puts sliders on ``explorer_figure``
for a live kernel (core ipywidgets only; 7.6+ and 8.x, Jupyter and Colab).
"""
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

from .classical import MODES, NONLINEARITIES, init_variance, relu_factor
from .hypernet import Hypernet, classical_mainnet, layer_nonlinearities, layer_shapes
from .init_methods import METHODS, get_method
from .predict import predicted_profile
from .stats import mainnet_statistics
from .validate import check_choice, check_positive_int

CLASSICAL_INITS = ("xavier", "kaiming")
M1_PREFIX = "hypernet_"
HYPERNET_INITS = (tuple(M1_PREFIX + name for name in CLASSICAL_INITS)
                  + tuple(name for name, method in METHODS.items() if method.family == "hyperfan"))
INITS = CLASSICAL_INITS + HYPERNET_INITS
KEYS = ("activation", "input_grad")
LABELS = {"activation": "Var(y[t])  (forward)", "input_grad": "Var(dL/dx[t])  (backward)"}
SNAPSHOT = ("<i>Saved with the page, this view is a snapshot of the default settings: run the notebook to "
            "move the sliders.</i>")


def _check(init, depth, width, activation, mode):
    check_choice("init", init, INITS)
    check_choice("mode", mode, MODES)
    check_choice("activation", activation, NONLINEARITIES)
    return [check_positive_int("width", width)] * (check_positive_int("depth", depth) + 1)


def hypernet_method(init, mode="fan_in"):
    """The :class:`~hyperinit_lite.init_methods.InitMethod` behind the explorer's hypernet init ``init``:
    ``'hypernet_xavier'`` / ``'hypernet_kaiming'`` are M1 with the explorer's ``mode`` (the registry's
    ``'xavier_<mode>'`` / ``'kaiming_<mode>'``), ``'hyperfan_*'`` are the registry's methods of that name."""
    check_choice("init", init, HYPERNET_INITS)
    check_choice("mode", mode, MODES)
    if init.startswith(M1_PREFIX):
        return get_method(f"{init[len(M1_PREFIX):]}_{mode}")
    return get_method(init)


def variance_profile(init, depth=8, width=256, activation="tanh", mode="fan_in", embedding_dim=50,
                     generates_bias=False, batch=512, seed=0):
    """Per-layer statistics (see :func:`~hyperinit_lite.stats.mainnet_statistics`) of a ``depth``-layer,
    ``width``-wide mainnet initialized by ``init``: a classical init (``'xavier'``, ``'kaiming'``, with
    ``mode``) or a hypernet init of the registry (:func:`hypernet_method`: ``'hypernet_xavier'`` /
    ``'hypernet_kaiming'`` = M1 with ``mode``, ``'hyperfan_*'``).

    The input batch is standard normal, as after data standardization. Hypernet layers of one shape and
    nonlinearity share an output head (Appendix A.1, Chapter 7), which keeps a wide, deep explorer fast and
    small. The mainnet runs in float64: M1 at depth 30 and width 512 reaches ``512^30``, beyond float32.
    """
    sizes = _check(init, depth, width, activation, mode)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    if init in CLASSICAL_INITS:
        weights, biases = classical_mainnet(sizes, init, mode, activation, generator=gen)
        weights = [w.detach().double() for w in weights]
        biases = [b.detach().double() for b in biases]
    else:
        hn = Hypernet(sizes, embedding_dim, generates_bias=generates_bias, share_heads=True,
                      activation=activation, generator=gen)
        hypernet_method(init, mode).apply_(hn, generator=gen)
        weights, biases = hn.double()()
    return mainnet_statistics(weights, biases, x, activation, generator=gen)


def mean_variance_profile(init, n_seeds=3, **settings):
    """``{key: per-layer mean over seeds 0..n_seeds-1}`` of :func:`variance_profile`, ``key`` in ``KEYS``."""
    seeds = range(check_positive_int("n_seeds", n_seeds))
    runs = [variance_profile(init, seed=seed, **settings) for seed in seeds]
    return {key: np.mean([run[key] for run in runs], axis=0).tolist() for key in KEYS}


def predicted_variance_profile(init, depth=8, width=256, activation="tanh", mode="fan_in", embedding_dim=50,
                               generates_bias=False):
    """The package's prediction for :func:`variance_profile`
    (:func:`~hyperinit_lite.predict.predicted_profile`) with the weight (and bias) variances that ``init``
    gives, on average over embeddings (Chapters 2-6)."""
    sizes = _check(init, depth, width, activation, mode)
    biases = None
    if init in CLASSICAL_INITS:
        gains = [relu_factor(nl) if init == "kaiming" else 1.0
                 for nl in layer_nonlinearities(depth, activation)]
        weights = [init_variance(d_j, d_i, mode, gain)
                   for (d_i, d_j), gain in zip(layer_shapes(sizes), gains)]
    else:
        weights, biases = hypernet_method(init, mode).generated_variances(sizes, embedding_dim, activation,
                                                                          generates_bias)
    return predicted_profile(sizes, weights, biases, activation)


def _log_limits(values):
    """Log-axis limits that show at least 1e-2..1e2, so a flat profile never looks like a blow-up."""
    finite = [v for v in values if math.isfinite(v) and v > 0]
    low, high = min(finite + [1e-2]), max(finite + [1e2])
    return low / 3, high * 3


def plot_variance_profiles(profiles, keys=KEYS, axes=None, title=None, predictions=None):
    """Draw ``{label: profile}`` as per-layer variances on a log scale, one panel per key; ``predictions``
    (``{label: predicted profile}``) adds dashed lines. Layers whose value is not finite are named on the
    panel, never dropped silently."""
    if axes is None:
        _, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4), squeeze=False)
        axes = axes[0]
    predictions = predictions or {}
    for ax, key in zip(axes, keys):
        shown, missing = [], []
        for n, (label, profile) in enumerate(profiles.items()):
            values = np.asarray(profile[key], dtype=float)
            layers = np.arange(1, len(values) + 1)
            ok = np.isfinite(values) & (values > 0)
            line, = ax.semilogy(layers[ok], values[ok], marker="o", ms=3, label=label, color=f"C{n}")
            missing += [f"{label}: layers {layers[~ok].min()}-{layers[~ok].max()}"] if (~ok).any() else []
            if label in predictions:
                ax.semilogy(layers, predictions[label][key], ls="--", lw=1, color=line.get_color())
            shown += list(values) + list(predictions.get(label, {}).get(key, []))
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_ylim(*_log_limits(shown))
        ax.set_xlabel("mainnet layer t")
        ax.set_ylabel(LABELS.get(key, key))
        if missing:
            ax.text(0.02, 0.02, "not finite, not drawn: " + "; ".join(missing), transform=ax.transAxes,
                    fontsize=7, color="red")
    title = "measured (o), predicted (--)" if predictions else None
    axes[0].legend(fontsize=8, title=title, title_fontsize=8)
    if title:
        axes[0].figure.suptitle(title)
    axes[0].figure.tight_layout()
    return axes


def explorer_figure(inits, n_seeds=3, **settings):
    """The explorer's figure for ``settings``: for each init the mean over ``n_seeds`` seeds of the measured
    forward and backward variances (markers) and the prediction (dashed). Returns the figure."""
    measured = {init: mean_variance_profile(init, n_seeds, **settings) for init in inits}
    predicted = {init: predicted_variance_profile(init, **settings) for init in inits}
    axes = plot_variance_profiles(measured, predictions=predicted)
    return axes[0].figure


def variance_small_multiples(inits, widths=(32, 128, 512), key="activation", n_seeds=3, **settings):
    """Static companion of the explorer: one panel per width, one line per init (mean over ``n_seeds``
    seeds, prediction dashed), log-scale variances on a shared y-axis."""
    fig, axes = plt.subplots(1, len(widths), figsize=(3.3 * len(widths), 3.4), sharey=True, squeeze=False)
    for ax, width in zip(axes[0], widths):
        measured = {init: mean_variance_profile(init, n_seeds, width=width, **settings) for init in inits}
        predicted = {init: predicted_variance_profile(init, width=width, **settings) for init in inits}
        plot_variance_profiles(measured, keys=(key,), axes=[ax], predictions=predicted)
        ax.set_title(f"width {width}")
    low = min(ax.get_ylim()[0] for ax in axes[0])
    high = max(ax.get_ylim()[1] for ax in axes[0])
    for ax in axes[0]:
        ax.set_ylim(low, high)
    for ax in axes[0][1:]:
        ax.set_ylabel("")
        ax.get_legend().remove()
    fig.tight_layout()
    return fig


def variance_explorer(inits=INITS, depth=8, width=256, activation="tanh", embedding_dim=50, mode="fan_in",
                      generates_bias=False, compare=False, n_seeds=3):
    """Sliders for depth, width, embedding size, activation, mode, bias generation and init; each redraw
    shows :func:`explorer_figure` (measured mean over ``n_seeds`` seeds and predicted) and returns it.

    ``compare=True`` draws all ``inits`` at once instead of offering a menu. Uses core ipywidgets only
    (``interactive``, ``Dropdown``, ``IntSlider``, ``Checkbox``, ``HTML``, ``VBox``) and ends each redraw with
    ``plt.show()``, so it behaves the same on ipywidgets 7.6+ and 8, in Jupyter and on Colab. The returned
    ``VBox`` holds a snapshot notice and the ``interactive`` (``.children[1]``, whose ``.result`` is the
    figure).
    """
    import ipywidgets as w

    inits = tuple(inits)
    controls = dict(
        depth=w.IntSlider(value=depth, min=1, max=30, description="depth"),
        width=w.IntSlider(value=width, min=16, max=512, step=16, description="width"),
        embedding_dim=w.IntSlider(value=embedding_dim, min=2, max=200, description="embedding"),
        activation=w.Dropdown(options=list(NONLINEARITIES), value=activation, description="activation"),
        mode=w.Dropdown(options=list(MODES), value=mode, description="mode"),
        generates_bias=w.Checkbox(value=generates_bias, description="generates_bias"),
    )
    menu = w.fixed(None) if compare else w.Dropdown(options=list(inits), value=inits[0], description="init")
    controls = dict(init=menu, **controls)

    def draw(init=None, **settings):
        fig = explorer_figure(inits if init is None else (init,), n_seeds, **settings)
        plt.show()
        return fig

    return w.VBox([w.HTML(SNAPSHOT), w.interactive(draw, **controls)])


def check_prediction(prediction, outcome, choices):
    """Print whether the reader's ``prediction`` (one of ``choices``, or None before predicting) matches the
    ``outcome`` a "predict, then change" cell measured (Chapters 2-6); return the verdict."""
    check_choice("outcome", outcome, tuple(choices))
    if prediction is None:
        print(f"measured: {outcome!r}.\nSet my_prediction to one of {', '.join(map(repr, choices))} "
              "and run the cell again.")
        return False
    check_choice("my_prediction", prediction, tuple(choices))
    right = prediction == outcome
    print(f"you predicted {prediction!r}, measured {outcome!r}: "
          + ("your prediction was right." if right else "not this time; the text below explains why."))
    return right
