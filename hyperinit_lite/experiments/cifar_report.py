"""The summary and plots of the CIFAR-10 experiment's results (Chapter 10).

Everything here reads the results of :func:`hyperinit_lite.experiments.cifar.run` (also after
:func:`hyperinit_lite.results.to_jsonable`, NaN stored as text): per arm and seed the final values, the epoch
training starts, a text table and the paper's Figure 5.
"""
import math

import numpy as np

from ..results import as_array
from .cifar_training import INIT_LABELS


def start_epoch(history, threshold=0.2):
    """The first epoch whose test accuracy exceeds ``threshold`` (default: twice chance), or ``None``."""
    acc = as_array(history["test_accuracy"])
    hits = np.nonzero(acc > threshold)[0]
    return int(hits[0]) if len(hits) else None


def final_values(results, key, name="test_accuracy"):
    """Per seed the last value of ``name`` (NaN for a diverged seed), as a numpy array in seed order."""
    return np.array([as_array(h[name])[-1] for h in results["runs"][key].values()])


def summary(results, threshold=0.2):
    """One row per arm over its seeds: ``key``, ``init``, ``lr``, ``seeds``, ``diverged`` (count), training
    loss at init (``train_loss_init``: mean over seeds), final test accuracy of the seeds that did not diverge
    (``acc_mean``, ``acc_min``, ``acc_max``; NaN if all diverged) and per seed :func:`start_epoch`."""
    rows = []
    for arm in results["arms"]:
        runs = list(results["runs"][arm["key"]].values())
        acc = final_values(results, arm["key"])
        ok = acc[np.isfinite(acc)]
        stats = (ok.mean(), ok.min(), ok.max()) if ok.size else (math.nan,) * 3
        rows.append({"key": arm["key"], "init": arm["init"], "lr": arm["lr"], "seeds": len(runs),
                     "diverged": sum(h["diverged_epoch"] is not None for h in runs),
                     "train_loss_init": float(np.mean([as_array(h["train_loss"])[0] for h in runs])),
                     "acc_mean": stats[0], "acc_min": stats[1], "acc_max": stats[2],
                     "start_epoch": [start_epoch(h, threshold) for h in runs]})
    return rows


def format_summary(results, threshold=0.2):
    """:func:`summary` as a text table at most 90 characters wide (3 significant figures)."""
    lines = [f"{'arm':<24}{'loss@0':>9}{'diverged':>9}  {'final test acc [min, max]':<26}"
             f"acc>{threshold:.2g} from"]
    for r in summary(results, threshold):
        acc = "-" if math.isnan(r["acc_mean"]) else (f"{r['acc_mean']:.3f} [{r['acc_min']:.3f}, "
                                                     f"{r['acc_max']:.3f}]")
        starts = ",".join("-" if e is None else str(e) for e in r["start_epoch"])
        lines.append(f"{r['key']:<24}{r['train_loss_init']:>9.3g}{r['diverged']:>6}/{r['seeds']:<2}  "
                     f"{acc:<26}{starts}")
    return "\n".join(lines)


def _arm_label(arm):
    return INIT_LABELS[arm["init"]] + ("" if arm["key"] == arm["init"] else f" (lr {arm['lr']:g})")


def plot_curves(results, axes=None, title=None):
    """The paper's Figure 5 from our runs, over seeds: training loss and test accuracy.

    Thin lines: one seed; thick line: the mean over the seeds (while none has diverged). The training loss is
    drawn per block of ``log_every`` steps (x in epochs; epoch 0: the initial net) up to ``3 ln 10``; larger
    values are drawn as triangles at the top (a diverged arm, listed in the legend, shows only those); the
    test accuracy per epoch. Dotted lines: a uniform prediction (loss ``ln 10``, accuracy 0.1). The data label
    is in the title.
    """
    import matplotlib.pyplot as plt
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharex=True)
    top = 3 * math.log(10)
    for i, arm in enumerate(results["arms"]):
        runs = list(results["runs"][arm["key"]].values())
        diverged = sum(h["diverged_epoch"] is not None for h in runs)
        label = _arm_label(arm) + (f", {diverged}/{len(runs)} diverged" if diverged else "")
        accs = []
        for h in runs:
            per_epoch = h["steps_per_epoch"] or 1
            x = np.concatenate([[0.0], np.array(h["step"], dtype=float) / per_epoch])
            y = np.concatenate([[as_array(h["train_loss"])[0]], as_array(h["step_loss"])])
            axes[0].plot(x, np.where(y > top, np.nan, y), color=f"C{i}", lw=0.8, alpha=0.6)
            axes[0].plot(x[y > top], np.full((y > top).sum(), top), "^", color=f"C{i}", clip_on=False)
            acc = as_array(h["test_accuracy"])
            axes[1].plot(h["epoch"], acc, color=f"C{i}", lw=0.8, alpha=0.6)
            accs.append(acc)
        axes[1].plot(runs[0]["epoch"], np.mean(accs, axis=0), color=f"C{i}", lw=2.5, label=label)
    axes[0].axhline(math.log(10), color="0.5", ls=":", lw=1)
    axes[1].axhline(0.1, color="0.5", ls=":", lw=1)
    axes[0].set(ylim=(0, top), xlabel="epoch", ylabel="training loss (mean cross-entropy)")
    axes[1].set(xlabel="epoch", ylabel="test accuracy")
    head = f"{title}: " if title else ""
    axes[0].figure.suptitle(f"{head}{results['data']['label']}, {len(results['seeds'])} seeds "
                            "(thin: one seed, thick: mean)")
    axes[1].legend(fontsize="small")
    return axes
