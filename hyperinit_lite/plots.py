"""Figures of the experiment chapters (Chapter 8 onwards): per-layer histograms, their evolution, curves.

The experiment runners store, per run, a *record* (a dict) with at least:

* ``steps``: the training batches seen at each measurement (``0`` = before training);
* ``stats[q]["mean"]`` and ``stats[q]["var"]``: one list per measurement with one number per mainnet layer,
  for each measured quantity ``q`` (``"activation"``, ``"input_grad"``, ``"weight"``, ``"weight_grad"``, ...);
* ``hist["before"][q]`` and ``hist["after"][q]``: per layer ``{"lo", "hi", "counts"}``, ``counts`` over equal
  bins spanning ``[lo, hi]``;
* ``train_loss`` (one value per measurement after the first), ``test_loss``, ``test_accuracy``,
  ``diverged_at`` (the batch at which the run's loss became non-finite, or ``None``); a run that diverged
  has ``hist["after"] = None`` and its panels say so.

Figures take ``{label: [record per seed]}`` and draw one panel per label (setting), side by side, as the paper
does. Histograms and evolutions show the first seed (the title says so when there are several); curves and
variance profiles show the mean over seeds with a min-max band.
Stored JSON writes non-finite numbers as strings; :func:`~hyperinit_lite.results.as_array` turns them back into floats.
"""
import matplotlib.pyplot as plt
import numpy as np

from .results import as_array

QUANTITY_LABELS = {
    "activation": "mainnet activations $y[t]$",
    "input_grad": r"mainnet gradients $\partial L/\partial x[t]$",
    "weight": "generated weights $W[t]$",
    "weight_grad": r"weight gradients $\partial L/\partial W[t]$",
    "bias": "generated biases $b[t]$",
}
WHEN_LABELS = {"before": "before training", "after": "at the end of training", "during": "during training"}


def layer_colors(n, cmap="viridis"):
    """``n`` colors from ``cmap``, first layer dark, last layer light."""
    return [plt.get_cmap(cmap)(v) for v in np.linspace(0.0, 0.9, n)]


def _check_when(when):
    if when not in ("before", "after"):
        raise ValueError(f"when must be 'before' or 'after', got {when!r}")


def _diverged_panel(ax, rec, title=None):
    """An empty panel saying that the run ``rec`` diverged (it has no histogram to show)."""
    ax.text(0.5, 0.5, f"diverged at batch {rec.get('diverged_at')}", ha="center", va="center",
            transform=ax.transAxes, fontsize=8, color="0.3")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return ax


def plot_layer_histograms(ax, hists, title=None, legend=True):
    """Density of each layer's values as a step line (``hists``: per layer ``{"lo", "hi", "counts"}``)."""
    colors = layer_colors(len(hists))
    for t, (h, color) in enumerate(zip(hists, colors)):
        counts = as_array(h["counts"])
        if counts.size == 0 or counts.sum() == 0:  # a diverged run: nothing to draw
            continue
        edges = np.linspace(float(h["lo"]), float(h["hi"]), counts.size + 1)
        ax.stairs(counts / (counts.sum() * np.diff(edges)), edges, color=color, label=f"layer {t + 1}")
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_ylabel("density")
    if legend:
        ax.legend(fontsize=6, frameon=False)
    return ax


def plot_layer_evolution(ax, steps, means, variances, title=None, legend=True):
    """Each layer's mean with bars of one standard deviation, at every measurement ``steps``.

    ``means`` and ``variances`` are ``[measurement][layer]``. Layers are offset slightly along x so that
    their bars do not hide each other.
    """
    steps, means, stds = as_array(steps), as_array(means), np.sqrt(as_array(variances))
    n_layers = means.shape[1]
    span = (steps.max() - steps.min()) if steps.size > 1 else 1.0
    offsets = (np.arange(n_layers) - (n_layers - 1) / 2) * 0.012 * span
    for t, color in enumerate(layer_colors(n_layers)):
        ax.errorbar(steps + offsets[t], means[:, t], yerr=stds[:, t], fmt="o", ms=2.5, lw=0.8, capsize=1.5,
                    color=color, label=f"layer {t + 1}")
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_xlabel("training batches")
    if legend:
        ax.legend(fontsize=6, frameon=False)
    return ax


def _first_seed_note(records_by_label):
    """`` (first of N seeds)`` when the panels show one of several seeds, else ``''``."""
    n = max(len(recs) for recs in records_by_label.values())
    return f" (first of {n} seeds)" if n > 1 else ""


def _panels(n_rows, n_cols, width=3.2, height=2.5):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols, height * n_rows), squeeze=False,
                             layout="constrained")
    return fig, axes


def _histograms_or_note(ax, rec, when, quantity, title, legend):
    hists = rec["hist"].get(when)
    if not hists:  # a run that diverged before the end has no final histograms
        return _diverged_panel(ax, rec, title)
    return plot_layer_histograms(ax, hists[quantity], title, legend)


def settings_histograms(records_by_label, quantity, when="before", title=None):
    """One histogram panel per setting: ``quantity`` per layer ``when`` (``'before'`` / ``'after'``) training."""
    _check_when(when)
    fig, axes = _panels(1, len(records_by_label))
    for ax, (label, recs) in zip(axes[0], records_by_label.items()):
        _histograms_or_note(ax, recs[0], when, quantity, label, legend=ax is axes[0][0])
    fig.suptitle((title or f"{QUANTITY_LABELS.get(quantity, quantity)} {WHEN_LABELS[when]}")
                 + _first_seed_note(records_by_label), fontsize=10)
    return fig


def settings_evolution(records_by_label, quantity, title=None):
    """One panel per setting: mean +- one std of ``quantity`` per layer at every measurement."""
    fig, axes = _panels(1, len(records_by_label))
    for ax, (label, recs) in zip(axes[0], records_by_label.items()):
        rec = recs[0]
        plot_layer_evolution(ax, rec["steps"], rec["stats"][quantity]["mean"], rec["stats"][quantity]["var"],
                             label, legend=ax is axes[0][0])
    fig.suptitle((title or f"{QUANTITY_LABELS.get(quantity, quantity)} {WHEN_LABELS['during']}")
                 + _first_seed_note(records_by_label), fontsize=10)
    return fig


def settings_family(records_by_label, quantity, title=None):
    """The paper's figure family for one quantity: rows before / during / after training, one column per setting."""
    fig, axes = _panels(3, len(records_by_label), height=2.3)
    for col, (label, recs) in enumerate(records_by_label.items()):
        rec = recs[0]
        _histograms_or_note(axes[0][col], rec, "before", quantity, f"{label}\nbefore", legend=col == 0)
        plot_layer_evolution(axes[1][col], rec["steps"], rec["stats"][quantity]["mean"],
                             rec["stats"][quantity]["var"], "during (mean $\\pm$ std)", legend=False)
        _histograms_or_note(axes[2][col], rec, "after", quantity, "after", legend=False)
    fig.suptitle((title or QUANTITY_LABELS.get(quantity, quantity)) + _first_seed_note(records_by_label),
                 fontsize=10)
    return fig


def _band(ax, x, runs, label, color):
    """Mean over runs (ignoring diverged ones) as a line, min-max over runs as a band."""
    runs = as_array(runs)
    runs = np.where(np.isfinite(runs), runs, np.nan)
    alive = ~np.isnan(runs).all(axis=0)  # measurements where at least one run is still finite
    mean, lo, hi = (np.full(runs.shape[1], np.nan) for _ in range(3))
    mean[alive] = np.nanmean(runs[:, alive], axis=0)
    lo[alive], hi[alive] = np.nanmin(runs[:, alive], axis=0), np.nanmax(runs[:, alive], axis=0)
    line, = ax.plot(x, mean, color=color, label=label, lw=1.3)
    if runs.shape[0] > 1:
        ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
    return line


def loss_accuracy(records_by_label, title=None):
    """The paper's Figure 3: training loss, test loss and test accuracy per setting, against training batches.

    Training loss: mean cross-entropy averaged over each measurement window; test loss: cross-entropy summed
    over the test set (Appendix B.1); both on a log scale. A diverged run's curves stop; a dotted line and a
    cross mark the batch where its loss became non-finite.
    """
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.1), layout="constrained")
    colors = plt.get_cmap("tab10").colors
    for i, (label, recs) in enumerate(records_by_label.items()):
        steps = as_array(recs[0]["steps"])
        _band(axes[0], steps[1:], [r["train_loss"] for r in recs], label, colors[i])
        _band(axes[1], steps, [r["test_loss"] for r in recs], label, colors[i])
        _band(axes[2], steps, [r["test_accuracy"] for r in recs], label, colors[i])
        for r in recs:
            if r.get("diverged_at") is not None:
                axes[0].axvline(r["diverged_at"], color=colors[i], ls=":", lw=1)
                axes[0].plot([r["diverged_at"]], [1.0], "x", color=colors[i], ms=8,
                             transform=axes[0].get_xaxis_transform(), clip_on=False)
    for ax, ylabel in zip(axes, ("training loss (mean CE)", "test loss (summed CE)", "test accuracy")):
        ax.set_xlabel("training batches")
        ax.set_ylabel(ylabel)
    axes[0].set_yscale("log")
    axes[1].set_yscale("log")
    axes[2].legend(fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def layer_variance_profile(records_by_label, quantity="activation", index=0, ax=None, title=None):
    """``Var(quantity)`` per layer (log scale) at measurement ``index`` (0: at init), one line per setting.

    The line is the mean over seeds, the band their min-max range.
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 3.2), layout="constrained")
    colors = plt.get_cmap("tab10").colors
    for i, (label, recs) in enumerate(records_by_label.items()):
        var = as_array([r["stats"][quantity]["var"][index] for r in recs])  # (seeds, layers)
        layers = np.arange(1, var.shape[1] + 1)
        ax.plot(layers, var.mean(axis=0), "o-", color=colors[i], label=label, ms=3)
        if var.shape[0] > 1:
            ax.fill_between(layers, var.min(axis=0), var.max(axis=0), color=colors[i], alpha=0.2, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("mainnet layer $t$")
    ax.set_ylabel(f"Var of {QUANTITY_LABELS.get(quantity, quantity)}")
    ax.legend(fontsize=7, frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    return ax
