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

Figures take ``{label: [record per seed]}`` (one entry per setting). The paper's figure families
(:func:`settings_family`: histograms before and after, evolution during training) show the first seed, as
their titles say; curves, variance profiles and the settling measure show the mean over seeds with a min-max
band, on shared axes.
Stored JSON writes non-finite numbers as strings; :func:`~hyperinit_lite.results.as_array` turns them back
into floats.
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


def layer_colors(n, cmap="viridis"):
    """``n`` colors from ``cmap``, first layer dark, last layer light."""
    return [plt.get_cmap(cmap)(v) for v in np.linspace(0.0, 0.9, n)]


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


def settings_family(records_by_label, quantity, title=None):
    """The paper's figure family of one quantity: rows before / during / after training, one column per
    setting (the first seed)."""
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


def _curve_panels(ax_loss, ax_acc, records_by_label, colors):
    """Training loss and test accuracy of every setting (mean over seeds, min-max band) on two axes."""
    for i, (label, recs) in enumerate(records_by_label.items()):
        steps = as_array(recs[0]["steps"])
        _band(ax_loss, steps[1:], [r["train_loss"] for r in recs], label, colors[i])
        _band(ax_acc, steps, [r["test_accuracy"] for r in recs], label, colors[i])
        for r in recs:
            if r.get("diverged_at") is not None:
                ax_loss.axvline(r["diverged_at"], color=colors[i], ls=":", lw=1)
                ax_loss.plot([r["diverged_at"]], [1.0], "x", color=colors[i], ms=8,
                             transform=ax_loss.get_xaxis_transform(), clip_on=False)


def group_curves(groups, title=None):
    """Figures 3 and 16 of the paper, one row per group: training loss (log) and test accuracy per setting.

    ``groups`` maps a row title to ``{setting label: [record per seed]}``. Lines are means over seeds, bands
    their min-max range; all panels share the x-axis, each column its y-axis. Training loss: mean
    cross-entropy averaged over each measurement window. A diverged run's curves stop; a dotted line and a
    cross mark the batch where its loss became non-finite.
    """
    n = len(groups)
    fig, axes = plt.subplots(n, 2, figsize=(8.5, 2.3 * n + 0.8), sharex=True, sharey="col", squeeze=False,
                             layout="constrained")
    colors = plt.get_cmap("tab10").colors
    for row, (name, records_by_label) in zip(axes, groups.items()):
        _curve_panels(row[0], row[1], records_by_label, colors)
        row[0].set_ylabel("training loss (mean CE)")
        row[1].set_ylabel("test accuracy")
        row[0].set_title(name, fontsize=10, loc="left")
    axes[0][0].set_yscale("log")
    for ax in axes[-1]:
        ax.set_xlabel("training batches")
    lines = axes[0][1].get_lines()  # the settings of the first row, in order (other rows use the same colors)
    fig.legend(lines, [line.get_label() for line in lines], loc="outside lower center", ncol=4, fontsize=9,
               frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def log_variance_change(records, quantity="weight", per=1000):
    """``(steps, change)``: how fast each run's per-layer variance of ``quantity`` still moves.

    ``change[r, m]`` is the median over layers of ``|log Var[m] - log Var[m-1]|`` per ``per``
    training batches, for run ``r`` between measurements ``m - 1`` and ``m``; ``steps`` are the batches at
    ``m``. A value of 0.1 means the variance changes by about 10 % every ``per`` batches; a generated weight
    that has settled gives values near 0. NaN after a run diverged.
    """
    steps = as_array(records[0]["steps"])
    var = as_array([r["stats"][quantity]["var"] for r in records])  # (runs, measurements, layers)
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.abs(np.diff(np.log(var), axis=1)) / np.diff(steps)[None, :, None] * per
    return steps[1:], np.median(change, axis=2)


def settling(panels, quantity="weight", per=1000, title=None):
    """Figure 2 of the paper, condensed: :func:`log_variance_change` of ``quantity`` against training batches.

    ``panels`` maps a panel title to ``{setting label: [record per seed]}``; one line per setting (mean over
    seeds, min-max band), log y-axis shared by the panels.
    """
    fig, axes = plt.subplots(1, len(panels), figsize=(4.25 * len(panels), 3.4), sharey=True, squeeze=False,
                             layout="constrained")
    colors = plt.get_cmap("tab10").colors
    for ax, (name, records_by_label) in zip(axes[0], panels.items()):
        for i, (label, recs) in enumerate(records_by_label.items()):
            steps, change = log_variance_change(recs, quantity, per)
            _band(ax, steps, change, label, colors[i])
        ax.set_yscale("log")
        ax.set_xlabel("training batches")
        ax.set_title(name, fontsize=10)
    axes[0][0].set_ylabel(f"|change of log Var| per {per} batches\n(median over layers)")
    axes[0][-1].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
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
