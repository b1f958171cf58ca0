"""The analysis of continual-learning results (Chapter 9): test MSEs, forgetting, summaries, divergence,
markdown tables, training curves and plots, and the command line's report.

Every function takes results as :func:`hyperinit_lite.experiments.continual.run` returns them or as they are
stored (nested lists, read with :func:`hyperinit_lite.results.as_array`).
"""
import math
import warnings

import numpy as np

from ..regression_data import TASK_NAMES, make_tasks
from ..results import as_array
from .continual_model import INIT_LABELS


def _quiet(function, *args, **kwargs):
    """``function(*args, **kwargs)`` with numpy's all-NaN warnings silenced (every run diverged: NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return function(*args, **kwargs)


def _chosen(results, init):
    """Indices ``(i, l)`` of ``init`` and of its chosen learning rate in the sweep arrays."""
    return results["inits"].index(init), results["learning_rates"].index(results["chosen_lr"][init])


# ---------------------------------------------------------------------- test MSEs, forgetting and summaries
def sweep_test_mse(results, init, lr=None):
    """Test MSEs ``(runs, after task t, of task j)`` of ``init`` at ``lr`` (default: its chosen rate)."""
    i, l = _chosen(results, init)
    if lr is not None:
        l = results["learning_rates"].index(lr)
    return as_array(results["sweep"]["test_mse"])[i, l]


def adam_test_mse(results, beta=None):
    """Test MSEs ``(runs, after task t, of task j)`` of the Adam runs at ``beta`` (default: the config's)."""
    k = 0 if beta is None else [float(b) for b in results["adam_betas"]].index(float(beta))
    return as_array(results["adam"]["test_mse"])[k]


def after_learning(test_mse):
    """``(runs, tasks)``: each task's test MSE right after it was learned (the diagonal)."""
    return np.diagonal(as_array(test_mse), axis1=-2, axis2=-1)


def forgetting(test_mse):
    """``(runs, tasks)``: test MSE after the whole sequence divided by the test MSE right after learning the
    task (1 for the last task; above 1 means forgotten)."""
    test_mse = as_array(test_mse)
    return test_mse[:, -1] / after_learning(test_mse)


def summary(results):
    """One row per init at its chosen learning rate (means over the runs that did not diverge).

    ``loss_at_init`` / ``median_loss_at_init``: training MSE on task 1 at iteration 0, mean / median over
    runs;
    ``final_train_loss[t]``: training MSE of task ``t`` at the end of task ``t``; ``test_after_learning[t]``:
    test MSE of task ``t`` right after learning it; ``final_test_mse[t]``: test MSE of task ``t`` after the
    whole sequence; ``diverged_runs`` out of ``runs``.
    """
    sweep, rows = results["sweep"], []
    loss, tasks = as_array(sweep["train_loss"]), as_array(sweep["diverged_task"])
    for init in results["inits"]:
        i, l = _chosen(results, init)
        test = sweep_test_mse(results, init)
        rows.append({"init": init, "lr": results["chosen_lr"][init],
                     "loss_at_init": float(loss[i, l, :, 0, 0].mean()),
                     "median_loss_at_init": float(np.median(loss[i, l, :, 0, 0])),
                     "final_train_loss": _quiet(np.nanmean, loss[i, l, :, :, -1], axis=0).tolist(),
                     "test_after_learning": _quiet(np.nanmean, after_learning(test), axis=0).tolist(),
                     "final_test_mse": _quiet(np.nanmean, test[:, -1], axis=0).tolist(),
                     "diverged_runs": int((tasks[i, l] >= 0).sum()), "runs": loss.shape[2]})
    return rows


def divergence(results):
    """``{init: {lr: (diverged runs, runs, earliest (task, iteration) or None)}}`` over the whole sweep
    (tasks counted from 1)."""
    sweep, table = results["sweep"], {}
    tasks, iters = as_array(sweep["diverged_task"]), as_array(sweep["diverged_iteration"])
    for i, init in enumerate(results["inits"]):
        table[init] = {}
        for l, lr in enumerate(results["learning_rates"]):
            hit = tasks[i, l] >= 0
            first = None
            if hit.any():
                task, it = min(zip(tasks[i, l][hit].astype(int), iters[i, l][hit].astype(int)))
                first = (int(task) + 1, int(it))
            table[init][float(lr)] = (int(hit.sum()), int(hit.size), first)
    return table


def final_train_loss(results):
    """``{init: {lr: (mean final training loss of the surviving runs, surviving runs, runs)}}``: the
    training MSE at the end of each task, averaged over the three tasks and the runs that did not diverge."""
    loss = as_array(results["sweep"]["train_loss"])[..., -1]          # (inits, lrs, runs, tasks)
    table = {}
    for i, init in enumerate(results["inits"]):
        table[init] = {}
        for l, lr in enumerate(results["learning_rates"]):
            alive = np.isfinite(loss[i, l]).all(axis=-1)
            mean = float(loss[i, l][alive].mean()) if alive.any() else math.nan
            table[init][float(lr)] = (mean, int(alive.sum()), int(alive.size))
    return table


# ------------------------------------------------------------------------------------------ markdown tables
def _g(value):
    """A number with 2 significant figures for a table cell (``-`` for NaN)."""
    return "-" if not np.isfinite(value) else f"{value:.2g}"


def markdown_summary(results):
    """:func:`summary` as a markdown table (2 significant figures): the numbers behind Chapter 9's claims."""
    head = ("| init | lr | loss at init (median) | train loss, end of task 1/2/3 | test MSE after task 3, "
            "tasks 1/2/3 | diverged |\n| --- | --- | --- | --- | --- | --- |")
    rows = [f"| {INIT_LABELS[r['init']]} | {r['lr']:.0e} | {_g(r['median_loss_at_init'])} | "
            + " / ".join(map(_g, r["final_train_loss"])) + " | " + " / ".join(map(_g, r["final_test_mse"]))
            + f" | {r['diverged_runs']}/{r['runs']} |" for r in summary(results)]
    return "\n".join([head, *rows])


def markdown_final_loss(results):
    """Per init and learning rate: mean final training loss of the surviving runs (survivors / runs); the
    chosen rate in bold."""
    lrs = results["learning_rates"]
    lines = ["| init | " + " | ".join(f"lr {lr:.0e}" for lr in lrs) + " |", "| --- |" + " --- |" * len(lrs)]
    for init, per_lr in final_train_loss(results).items():
        cells = [f"{_g(m)} ({n}/{runs})" for m, n, runs in per_lr.values()]
        chosen = lrs.index(results["chosen_lr"][init])
        cells[chosen] = f"**{cells[chosen]}**"
        lines.append(f"| {INIT_LABELS[init]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_test_mse(columns):
    """A markdown table of test MSEs per task after the whole sequence: ``columns`` maps a label to test MSEs
    ``(runs, 3, 3)``; each cell is the median ``[min, max]`` over the runs that did not diverge."""
    labels = list(columns)
    lines = ["| task | " + " | ".join(labels) + " |", "| --- |" + " --- |" * len(labels)]
    finals = {k: as_array(v)[:, -1] for k, v in columns.items()}
    for t, name in enumerate(TASK_NAMES):
        cells = []
        for final in finals.values():
            col = final[np.isfinite(final[:, t]), t]
            cells.append(f"{np.median(col):.2g} [{col.min():.2g}, {col.max():.2g}]" if col.size else "-")
        lines.append(f"| {t + 1}: $y = {name}$ | " + " | ".join(cells) + " |")
    runs = [f"{np.isfinite(f).all(axis=1).sum()}/{len(f)}" for f in finals.values()]
    lines.append("| runs | " + " | ".join(runs) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- curves and plots
def curves(results, init, lr=None):
    """``(iterations, mean, sem)`` of the training loss of the sweep's ``init`` over the runs that did not
    diverge, at ``lr`` (default: its chosen rate), the three tasks laid end to end."""
    i, l = _chosen(results, init)
    if lr is not None:
        l = results["learning_rates"].index(lr)
    loss = as_array(results["sweep"]["train_loss"])[i, l]               # (runs, tasks, records)
    recs = np.array(results["sweep"]["record_iterations"])
    x = np.concatenate([t * recs[-1] + recs for t in range(loss.shape[1])])
    values = loss.transpose(1, 2, 0).reshape(-1, loss.shape[0])          # (tasks*records, runs)
    n = np.isfinite(values).sum(axis=1)
    mean = _quiet(np.nanmean, values, axis=1)
    sem = _quiet(lambda v: np.nanstd(v, axis=1, ddof=1) / np.sqrt(n), values)
    return x, mean, sem


def plot_curves(results, ax=None, inits=None, lr=None):
    """The paper's Figure 4: training loss per init, mean +/- standard error over the runs that did not
    diverge, at each init's chosen learning rate (or at the common rate ``lr``)."""
    import matplotlib.pyplot as plt
    ax = ax or plt.gca()
    for init in inits or results["inits"]:
        x, mean, sem = curves(results, init, lr)
        rate = results["chosen_lr"][init] if lr is None else lr
        line, = ax.plot(x, mean, label=f"{INIT_LABELS[init]} (lr {rate:.0e})")
        ax.fill_between(x, np.maximum(mean - sem, 1e-12), mean + sem, color=line.get_color(), alpha=0.25)
    n_iter = results["sweep"]["record_iterations"][-1]
    for t in range(1, len(results["task_names"])):
        ax.axvline(t * n_iter, color="0.6", lw=0.8, ls=":")
    ax.set(yscale="log", xlabel="iteration (three tasks in sequence)",
           ylabel="training MSE of the current task")
    ax.legend(fontsize="small")
    return ax


def plot_fits(predictions, config, axes, color="C3", label="mainnet after task 3"):
    """The mainnets generated from each task's embedding after the whole sequence (``predictions``
    ``(runs, 3, n_test)``), one line per run, over each task's data on ``axes`` (three)."""
    tasks = make_tasks(config.n_train, config.n_test, config.noise_std, config.data_seed)
    pred = as_array(predictions)
    for t, (ax, task) in enumerate(zip(axes, tasks)):
        ax.plot(task.x_train[:, 0], task.y_train[:, 0], ".", color="0.6", ms=3, label="training data")
        ax.plot(task.x_test[:, 0], task.y_test[:, 0], "k-", lw=1, label="f(x)")
        for r in range(pred.shape[0]):
            ax.plot(task.x_test[:, 0], pred[r, t], "-", color=color, alpha=0.6, lw=1,
                    label=label if r == 0 else None)
        ax.set(title=f"task {t + 1}: y = {task.name}", xlabel="x")
    return axes


def plot_beta_sweep(results, ax=None):
    """Median test MSE after the whole sequence (lines) and right after learning (dashed) of each task
    against ``beta_output``, over the Adam runs (``beta_output = 0`` drawn at the left edge)."""
    import matplotlib.pyplot as plt
    ax = ax or plt.gca()
    betas = np.array(results["adam_betas"], dtype=float)
    order = np.argsort(betas)
    test = as_array(results["adam"]["test_mse"])[order]               # (betas, runs, 3, 3)
    positive = betas[order][betas[order] > 0]
    x = np.concatenate([[positive.min() / 10], positive]) if betas.min() == 0 else positive
    for t in range(test.shape[-1]):
        final = _quiet(np.nanmedian, test[:, :, -1, t], axis=1)
        now = _quiet(np.nanmedian, test[:, :, t, t], axis=1)
        line, = ax.plot(x, final, "o-", label=f"task {t + 1}, after task 3")
        ax.plot(x, now, "x--", color=line.get_color(), alpha=0.7,
                label=f"task {t + 1}, right after learning it")
    ticks = [f"{b:g}" for b in betas[order]]
    ax.set(xscale="log", yscale="log", xticks=x, xlabel=r"$\beta_\mathrm{output}$", ylabel="median test MSE")
    ax.set_xticklabels(ticks)
    ax.legend(fontsize="small", ncol=2)
    return ax


# ------------------------------------------------------------------------------------------------------ CLI
def report(results):
    """The terminal summary of a run: the learning-rate table, the per-init summary and the Adam runs."""
    parts = [markdown_final_loss(results), markdown_summary(results)]
    if "adam" in results:
        tests = as_array(results["adam"]["test_mse"])
        parts.append("Adam runs, test MSE after task 3:\n" + markdown_test_mse(
            {f"beta {b:g}": t for b, t in zip(results["adam_betas"], tests)}))
    return "\n\n".join(parts)
