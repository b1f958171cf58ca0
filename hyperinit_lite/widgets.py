"""Variance explorers: per-layer variance profiles, their plots, and an ipywidgets front end (Chapters 2-6).

``variance_profile`` measures one configuration; ``plot_variance_profiles`` draws several on a log scale;
``variance_small_multiples`` is the static companion figure that teaches without a kernel; and
``variance_explorer`` puts sliders on the same function for a live kernel (Jupyter, Colab).
"""
import matplotlib.pyplot as plt
import torch

from .classical import MODES, NONLINEARITIES, check_choice
from .fans import check_positive_int
from .hypernet import Hypernet, classical_mainnet
from .initializers import classical_, hyperfan_
from .stats import mainnet_statistics

CLASSICAL_INITS = ("xavier", "kaiming")
HYPERNET_INITS = ("hypernet_xavier", "hypernet_kaiming", "hyperfan_in", "hyperfan_out", "hyperfan_harmonic")
INITS = CLASSICAL_INITS + HYPERNET_INITS
LABELS = {"activation": "Var(y[t])  (forward)", "input_grad": "Var(dL/dx[t])  (backward)"}


def variance_profile(init, depth=8, width=256, activation="tanh", mode="fan_in", embedding_dim=50,
                     generates_bias=False, batch=512, seed=0):
    """Per-layer statistics (see :func:`~hyperinit_lite.stats.mainnet_statistics`) of a ``depth``-layer,
    ``width``-wide mainnet initialized by ``init``: a classical init (``'xavier'``, ``'kaiming'``, with
    ``mode``) or a hypernet init (``'hypernet_xavier'``/``'hypernet_kaiming'`` = M1, ``'hyperfan_*'``).

    The input batch is standard normal, as after data standardization. Hypernet layers of one shape share
    an output head (Appendix A.1, Chapter 7), which keeps a wide, deep explorer fast and small.
    """
    check_choice("init", init, INITS)
    check_choice("mode", mode, MODES)
    check_choice("activation", activation, NONLINEARITIES)
    sizes = [check_positive_int("width", width)] * (check_positive_int("depth", depth) + 1)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=gen)
    if init in CLASSICAL_INITS:
        weights, biases = classical_mainnet(sizes, init, mode, activation, generator=gen)
    else:
        hn = Hypernet(sizes, embedding_dim, generates_bias=generates_bias, share_heads=True, activation=activation,
                      generator=gen)
        if init.startswith("hyperfan"):
            hyperfan_(hn, init.split("_")[1], generator=gen)
        else:
            classical_(hn, mode, 2.0 if init == "hypernet_kaiming" else 1.0, generator=gen)
        weights, biases = hn()
    return mainnet_statistics(weights, biases, x, activation, generator=gen)


def plot_variance_profiles(profiles, keys=("activation", "input_grad"), axes=None, title=None):
    """Draw ``{label: profile}`` as per-layer variances on a log scale, one panel per key."""
    if axes is None:
        _, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4), squeeze=False)
        axes = axes[0]
    for ax, key in zip(axes, keys):
        for label, profile in profiles.items():
            values = profile[key]
            ax.semilogy(range(1, len(values) + 1), values, marker="o", ms=3, label=label)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xlabel("layer t")
        ax.set_ylabel(LABELS.get(key, key))
    axes[0].legend(fontsize=8)
    if title:
        axes[0].figure.suptitle(title)
    axes[0].figure.tight_layout()
    return axes


def variance_small_multiples(inits, widths=(32, 128, 512), key="activation", **kwargs):
    """Static companion of the explorer: one panel per width, one line per init, log-scale variances."""
    fig, axes = plt.subplots(1, len(widths), figsize=(4.2 * len(widths), 3.3), sharey=True, squeeze=False)
    for ax, width in zip(axes[0], widths):
        profiles = {init: variance_profile(init, width=width, **kwargs) for init in inits}
        plot_variance_profiles(profiles, keys=(key,), axes=[ax])
        ax.set_title(f"width {width}")
    for ax in axes[0][1:]:
        ax.set_ylabel("")
        ax.get_legend().remove()
    fig.tight_layout()
    return fig


def variance_explorer(inits=INITS, depth=8, width=256, activation="tanh", embedding_dim=50):
    """Sliders for depth, width, embedding size, activation and init; redraws the per-layer variances.

    Uses core ipywidgets only and ends each redraw with ``plt.show()``, so it behaves the same on Colab.
    """
    import ipywidgets as w

    controls = dict(
        init=w.Dropdown(options=list(inits), value=inits[0], description="init"),
        depth=w.IntSlider(value=depth, min=1, max=30, description="depth"),
        width=w.IntSlider(value=width, min=16, max=512, step=16, description="width"),
        embedding_dim=w.IntSlider(value=embedding_dim, min=2, max=200, description="embedding"),
        activation=w.Dropdown(options=list(NONLINEARITIES), value=activation, description="activation"),
        mode=w.Dropdown(options=list(MODES), value="fan_in", description="mode"),
    )

    def draw(**kwargs):
        profile = variance_profile(**kwargs)
        plot_variance_profiles({kwargs["init"]: profile})
        plt.show()

    return w.interactive(draw, **controls)
