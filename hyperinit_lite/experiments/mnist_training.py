"""Training one group of the MNIST sweep (Chapter 8) and what is measured on the way.

:func:`train_group` trains the runs ``settings x seeds`` of one architecture with a trainer of
:mod:`hyperinit_lite.experiments.mnist_trainers` and records, before, during and after training, the layer
statistics of :func:`layer_statistics`, the training loss and the test loss and accuracy (the measured
quantities are described in :mod:`hyperinit_lite.experiments.mnist`, which runs the groups of a sweep).
"""
import math

import torch
import torch.nn.functional as F

from ..hypernet import mainnet_forward
from .mnist_model import build_model, group_key, seed_generator
from .mnist_trainers import BatchedRuns, LoopRuns

QUANTITIES = ("activation", "input_grad", "weight", "weight_grad", "bias")
TRAINERS = ("batched", "loop")


def _histogram(t, bins):
    t = t.detach().flatten().float()
    if not bool(torch.isfinite(t).all()):
        return {"lo": math.nan, "hi": math.nan, "counts": []}
    lo, hi = t.min().item(), t.max().item()
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return {"lo": lo, "hi": hi, "counts": torch.histc(t, bins, lo, hi).long().tolist()}


def layer_statistics(weights, biases, x, targets, activation="tanh", bins=0):
    """Per-layer ``mean`` and ``var`` of the ``QUANTITIES`` of the mainnet ``(weights, biases)`` on ``x``.

    The loss is the mean cross-entropy against ``targets``; variances are the unbiased ones of
    :func:`~hyperinit_lite.stats.mainnet_statistics`. With ``bins > 0`` also per-layer histograms
    (``lo``, ``hi``, ``counts`` over ``bins`` equal bins spanning the layer's values).
    """
    weights = [w.detach().requires_grad_() for w in weights]
    biases = [b.detach() for b in biases]
    x = x.detach().requires_grad_()
    out, trace = mainnet_forward(x, weights, biases, activation, trace=True)
    loss = F.cross_entropy(out, targets)
    n = len(weights)
    grads = torch.autograd.grad(loss, trace["inputs"] + weights)
    tensors = {"activation": [y.detach() for y in trace["preactivations"]], "input_grad": list(grads[:n]),
               "weight": [w.detach() for w in weights], "weight_grad": list(grads[n:]), "bias": biases}
    moments = torch.stack([torch.stack([torch.stack([t.mean(), t.var()]) for t in ts])
                           for ts in tensors.values()])
    moments = moments.cpu().tolist()  # one transfer: (quantity, layer, mean/var)
    stats = {q: {"mean": [m[0] for m in moments[i]], "var": [m[1] for m in moments[i]]}
             for i, q in enumerate(tensors)}
    stats["loss"] = loss.item()
    if bins:
        stats["hist"] = {q: [_histogram(t, bins) for t in ts] for q, ts in tensors.items()}
    return stats


def _nan_stats(n_layers):
    nan = [math.nan] * n_layers
    return {**{q: {"mean": list(nan), "var": list(nan)} for q in QUANTITIES}, "loss": math.nan}


def _evaluate(runs, x, y, chunk=2000):
    """Summed cross-entropy and accuracy of every run on ``(x, y)``, computed in chunks of examples."""
    total = torch.zeros(runs.n, device=x.device, dtype=torch.float64)
    correct = torch.zeros(runs.n, device=x.device, dtype=torch.float64)
    for i in range(0, len(x), chunk):
        out = runs.logits(x[i:i + chunk])  # (R, n, classes)
        yy = y[i:i + chunk].expand(runs.n, -1)
        total += F.cross_entropy(out.transpose(1, 2), yy, reduction="none").sum(1).double()
        correct += (out.argmax(-1) == yy).sum(1).double()
    return total.cpu().tolist(), (correct / len(x)).cpu().tolist()


def _new_records(runs_spec):
    return [{"setting": s, "seed": seed, "diverged_at": None, "steps": [], "train_loss": [], "test_loss": [],
             "test_accuracy": [], "heldout_loss": [], "hist": {},
             "stats": {q: {"mean": [], "var": []} for q in QUANTITIES}} for s, seed in runs_spec]


def train_group(config, activation, case, settings, data, heldout, device, trainer, progress, resume=None,
                save=None):
    """Train the runs ``settings x config.seeds`` of one architecture: ``{setting: [record per seed]}``.

    ``trainer``: ``'batched'`` (:class:`~hyperinit_lite.experiments.mnist_trainers.BatchedRuns`) or ``'loop'``
    (:class:`~hyperinit_lite.experiments.mnist_trainers.LoopRuns`); ``heldout``: the ``(x, y)`` examples the
    layer statistics are measured on; ``progress``: show a progress bar.

    ``resume``: a state saved by ``save(state, epoch)``, which is called after every epoch (checkpoints; the
    data order of an epoch is drawn from its own generator, so the state needs no random-number state).
    """
    runs_spec = [(s, seed) for s in settings for seed in config.seeds]
    models = [build_model(config, activation, case, s, seed) for s, seed in runs_spec]
    lr = config.lr_classical if settings[0] == "classical" else config.lr_hypernet
    runs = (BatchedRuns if trainer == "batched" else LoopRuns)(models, activation, lr, device)
    del models
    n_runs, n_layers = len(runs_spec), config.depth + 1
    n_train, bsz = len(data.x_train), config.batch_size
    per_epoch = n_train // bsz
    if per_epoch == 0:
        raise ValueError(f"batch_size {bsz} is larger than the {n_train} training examples")
    total = per_epoch * config.epochs
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    x_held, y_held = heldout[0].to(device), heldout[1].to(device)
    first_bad = torch.full((n_runs,), -1, dtype=torch.long, device=device)
    window = torch.zeros(n_runs, dtype=torch.float64, device=device)
    window_n, start_epoch, records = 0, 0, _new_records(runs_spec)
    if resume is not None:
        runs.load_state_(resume["runs"])
        records, start_epoch, window_n = resume["records"], resume["epoch"], resume["window_n"]
        first_bad, window = resume["first_bad"].to(device), resume["window"].to(device)

    def measure(step, final=False):
        nonlocal window, window_n
        bad = first_bad.cpu().tolist()
        test_loss, test_acc = _evaluate(runs, x_test, y_test)
        train_loss = (window / max(window_n, 1)).cpu().tolist()
        for r, rec in enumerate(records):
            if bad[r] >= 0 and rec["diverged_at"] is None:
                rec["diverged_at"] = bad[r]
            dead = rec["diverged_at"] is not None
            rec["steps"].append(step)
            if step > 0:
                rec["train_loss"].append(math.nan if dead else train_loss[r])
            rec["test_loss"].append(math.nan if dead else test_loss[r])
            rec["test_accuracy"].append(math.nan if dead else test_acc[r])
            want_hist = step == 0 or final
            if dead:
                stats = _nan_stats(n_layers)
            else:
                weights, biases = runs.mainnet(r)
                stats = layer_statistics(weights, biases, x_held, y_held, activation,
                                         config.bins if want_hist else 0)
            rec["heldout_loss"].append(stats["loss"])
            for q in QUANTITIES:
                for k in ("mean", "var"):
                    rec["stats"][q][k].append(stats[q][k])
            if want_hist:
                rec["hist"]["before" if step == 0 else "after"] = stats.get("hist")
        window = torch.zeros_like(window)
        window_n = 0

    name = job_name(activation, case, settings)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, initial=start_epoch * per_epoch, desc=f"{name} ({n_runs} runs)", unit="batch",
                   mininterval=1.0)
    if resume is None:
        measure(0)
    seeds = torch.tensor([seed for _, seed in runs_spec])
    step = start_epoch * per_epoch
    for epoch in range(start_epoch, config.epochs):
        # one data order per seed (runs of the same seed see the same batches), drawn on the CPU
        perms = {seed: torch.randperm(n_train, generator=seed_generator(seed, 100 + epoch))
                 for seed in config.seeds}
        order = torch.stack([perms[int(s)] for s in seeds]).to(device)  # (R, n_train)
        for b in range(per_epoch):
            idx = order[:, b * bsz:(b + 1) * bsz]
            losses = runs.step(x_train[idx], y_train[idx])
            step += 1
            newly_bad = ~torch.isfinite(losses) & (first_bad < 0)
            first_bad = torch.where(newly_bad, torch.full_like(first_bad, step), first_bad)
            window += losses.double()
            window_n += 1
            if step % config.measure_every == 0 or step == total:
                measure(step, final=step == total)
            if bar is not None:
                bar.update(1)
        if save is not None:
            save({"runs": runs.state(), "records": records, "epoch": epoch + 1, "window_n": window_n,
                  "first_bad": first_bad.cpu(), "window": window.cpu()}, epoch + 1)
    if bar is not None:
        bar.close()
    return {s: [rec for rec in records if rec["setting"] == s] for s in settings}


def job_name(activation, case, settings):
    """E.g. ``'tanh/weights hypernets'``: one unit of the sweep (progress bars, checkpoint labels)."""
    return f"{group_key(activation, case)} {'classical' if settings[0] == 'classical' else 'hypernets'}"
