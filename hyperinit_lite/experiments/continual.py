"""Continual learning of three regression tasks with a task-conditioned hypernetwork (Chapter 9; paper §5.2).

A hypernet ``h`` maps a trainable task embedding ``e_T`` (size 2) to every weight and bias of a mainnet
``1-10-10-1``; the mainnet is fit to task ``T``'s data. The three tasks of
:mod:`hyperinit_lite.regression_data` are learned in sequence. While learning task ``T > 1`` the objective is

    L = MSE_T(theta, e_T) + beta_output / (T - 1) * sum_{j<T} sum_p (h_p(e_j; theta) - h_p(e_j; theta*))^2

where ``theta*`` are the hypernet parameters before task ``T`` (the targets are computed once, then fixed) and
the earlier embeddings ``e_j`` are frozen; ``theta`` and the current ``e_T`` are trained.

Two models: the paper's (Appendix B.2: ReLU mainnet and hypernet, ``U(-sqrt 3, sqrt 3)`` embeddings; presets
``quick`` and ``paper``) and the reference code's defaults (sigmoid mainnet and hypernet, Xavier-uniform with
zero biases, ``N(0, 1)`` embeddings, look-ahead penalty, batches reshuffled once per epoch; preset
``reference``). A config trains a main sweep (inits x learning rates x seeds with ``optimizer``) and, where
``adam_runs > 0``, Adam runs of ``adam_init`` at ``adam_lr`` on the same model, for each ``beta_output`` in
``betas`` (the first is the config's own).

This module holds the config, its presets, the learning-rate choice and the run; the hypernet and its
objective live in :mod:`~hyperinit_lite.experiments.continual_model`, the batched training of all runs at once
in :mod:`~hyperinit_lite.experiments.continual_training`, the tables and plots of the results in
:mod:`~hyperinit_lite.experiments.continual_report`.

Command line: ``python -m hyperinit_lite continual --preset quick|paper|reference [--set FIELD=VALUE]
[--resume]`` (the experiment skeleton's options; checkpoints after every task).
"""
import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from ..classical import MODES
from ..regression_data import TASK_NAMES
from ..results import as_array
from ..validate import check_choice, check_positive, check_positive_int
from . import resolve_device
from .continual_model import INITS
from .continual_report import report
from .continual_training import OPTIMIZERS, train_grid
from .skeleton import Experiment


NETWORK_ACTIVATIONS = ("relu", "tanh", "sigmoid")
EMBEDDING_DISTRIBUTIONS = ("uniform", "normal")
BATCHINGS = ("independent", "epoch")


@dataclass(frozen=True)
class ContinualConfig:
    """Everything that determines a continual-learning experiment (stored beside its results).

    Model: ``mainnet_activation`` / ``hypernet_activation`` (hidden layers), ``embedding_distribution``
    (``'uniform'``: ``U(-sqrt 3, sqrt 3)``; ``'normal'``: ``N(0, 1)``; both variance 1), ``lookahead``
    (penalty gradient after the pending optimizer step), ``batching`` (``'independent'``: each batch drawn
    afresh; ``'epoch'``: one permutation per epoch, consecutive batches). ``xavier_mode``: ``'harmonic'`` is
    ``2 / (fan_in + fan_out)``, as ``torch.nn.init.xavier_uniform_`` and the reference code.
    """
    name: str = "paper"
    inits: tuple = INITS
    learning_rates: tuple = (1e-2, 1e-3, 1e-4, 1e-5)
    runs: int = 15
    iterations: int = 6000
    batch_size: int = 32
    record_every: int = 100
    optimizer: str = "sgd"
    beta_output: float = 0.005
    xavier_mode: str = "harmonic"
    seed: int = 0
    data_seed: int = 42
    n_train: int = 100
    n_test: int = 50
    noise_std: float = 0.05
    mainnet_hidden: tuple = (10, 10)
    hypernet_hidden: tuple = (10, 10)
    embedding_dim: int = 2
    mainnet_activation: str = "relu"
    hypernet_activation: str = "relu"
    embedding_distribution: str = "uniform"
    lookahead: bool = False
    batching: str = "independent"
    adam_init: str = "hyperfan_in"
    adam_lr: float = 1e-2
    adam_iterations: int = 4001
    adam_runs: int = 15
    betas: tuple = ()

    def __post_init__(self):
        if not self.inits:
            raise ValueError(f"inits must name at least one of {', '.join(map(repr, INITS))}")
        for init in (*self.inits, self.adam_init):
            check_choice("inits" if init != self.adam_init else "adam_init", init, INITS)
        for name, allowed in (("optimizer", OPTIMIZERS), ("xavier_mode", MODES), ("batching", BATCHINGS),
                              ("mainnet_activation", NETWORK_ACTIVATIONS),
                              ("hypernet_activation", NETWORK_ACTIVATIONS),
                              ("embedding_distribution", EMBEDDING_DISTRIBUTIONS)):
            check_choice(name, getattr(self, name), allowed)
        if not self.learning_rates:
            raise ValueError("learning_rates must hold at least one learning rate")
        for i, lr in enumerate(self.learning_rates):
            check_positive(f"learning_rates[{i}]", lr)
        check_positive("adam_lr", self.adam_lr)
        for name in ("runs", "iterations", "batch_size", "record_every", "n_train", "n_test", "embedding_dim",
                     "adam_iterations"):
            check_positive_int(name, getattr(self, name))
        if self.adam_runs != 0:
            check_positive_int("adam_runs", self.adam_runs)
        if self.batch_size > self.n_train:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed n_train ({self.n_train})")
        for name, value in [("beta_output", self.beta_output), ("noise_std", self.noise_std)] + [
                (f"betas[{i}]", b) for i, b in enumerate(self.betas)]:
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        hyperfan = [i for i in (*self.inits, self.adam_init) if i.startswith("hyperfan")]
        if hyperfan and self.hypernet_activation == "sigmoid":
            raise ValueError(f"inits {hyperfan[0]!r} needs a relu or tanh hypernet body (its fan-in body "
                             "init assumes a zero-mean nonlinearity); with hypernet_activation='sigmoid' use "
                             "xavier or kaiming inits")

    @property
    def layer_sizes(self):
        """The mainnet's layer sizes ``[1, *mainnet_hidden, 1]``."""
        return [1, *self.mainnet_hidden, 1]


# The reference code's defaults (hypercl toy_example): sigmoid networks, Xavier-uniform (harmonic) with zero
# biases, N(0, 1) embeddings, look-ahead penalty, Adam lr 1e-2, 4001 iterations per task, epoch batches.
REFERENCE_MODEL = dict(mainnet_activation="sigmoid", hypernet_activation="sigmoid",
                       embedding_distribution="normal", lookahead=True, batching="epoch",
                       xavier_mode="harmonic", adam_init="xavier", adam_lr=1e-2, adam_iterations=4001)

PRESETS = {
    # about a minute on a 2-core CPU: every init and learning rate with 5 seeds and 1/6 of the paper's
    # iterations; Adam on the paper's ReLU model with hyperfan-in, 5 seeds, half the reference iterations
    "quick": ContinualConfig(name="quick", runs=5, iterations=1000, record_every=20, adam_runs=5,
                             adam_iterations=2000),
    # Appendix B.2: SGD, 6000 iterations per task, batch 32, lr from {1e-2, ..., 1e-5}, 15 runs
    "paper": ContinualConfig(),
    # the reference code's setting (Adam) beside SGD on the same model, and the beta_output trade-off
    "reference": ContinualConfig(name="reference", inits=("xavier",), learning_rates=(1e-1, 1e-2, 1e-3),
                                 iterations=4001, record_every=100, betas=(0.005, 0.0, 0.0005, 0.05, 0.5),
                                 **REFERENCE_MODEL),
}


def get_config(preset, **overrides):
    """The config of a preset (``'quick'``, ``'paper'``, ``'reference'``), with ``overrides``."""
    check_choice("preset", preset, tuple(PRESETS))
    return dataclasses.replace(PRESETS[preset], **overrides)


# -------------------------------------------------------------------------------------------------- the run
def select_learning_rate(train_loss, learning_rates):
    """Index of the best learning rate for one init, and the criterion per rate.

    ``train_loss`` has shape ``(n_lr, runs, tasks, n_records)``. The criterion, per rate: first the number of
    diverged runs (fewer is better), then the mean over surviving runs and the three tasks of the training
    loss at the end of each task (smaller is better).
    """
    loss = as_array(train_loss)
    final = loss[..., -1]                                   # (n_lr, runs, tasks)
    diverged = (~np.isfinite(final)).any(axis=-1).sum(axis=-1)
    mean_final = np.array([np.nanmean(f) if np.isfinite(f).any() else np.inf for f in final])
    best = min(range(len(learning_rates)), key=lambda i: (diverged[i], mean_final[i]))
    return best, {"diverged_runs": diverged.tolist(), "mean_final_train_loss": mean_final.tolist()}


def adam_betas(config):
    """The ``beta_output`` values of the Adam runs: the config's own first, then the others of ``betas``."""
    return (config.beta_output, *[b for b in config.betas if b != config.beta_output])


def run(config, device="auto", progress=True, checkpoint=None):
    """The whole experiment of ``config``: the main sweep, the learning-rate choice per init, and the Adam
    runs (arrays with leading dims ``(len(adam_betas(config)), adam_runs)``).

    With a :class:`~hyperinit_lite.results.Checkpoint`, the state is saved after every task of every part
    (``"sweep, task 2"``) and a run continues from the last one saved; the results equal an uninterrupted
    run's.
    """
    if isinstance(config, str):
        config = get_config(config)
    device = resolve_device(device)
    start = time.perf_counter()
    state = (checkpoint.load() if checkpoint is not None else None) or {"done": {}, "partial": None}
    sweep = _part(state, checkpoint, "sweep", lambda resume, save: train_grid(
        config, [(init, lr, config.beta_output, r) for init in config.inits for lr in config.learning_rates
                 for r in range(config.runs)],
        config.optimizer, config.iterations, (len(config.inits), len(config.learning_rates), config.runs),
        device, progress, f"{config.name}: {config.optimizer} sweep", resume, save))
    chosen, criterion = {}, {}
    for i, init in enumerate(config.inits):
        best, criterion[init] = select_learning_rate(sweep["train_loss"][i], config.learning_rates)
        chosen[init] = config.learning_rates[best]
    results = {"inits": list(config.inits), "learning_rates": list(config.learning_rates),
               "task_names": list(TASK_NAMES), "sweep": sweep, "chosen_lr": chosen, "criterion": criterion}
    if config.adam_runs:
        betas = adam_betas(config)
        grid = [(config.adam_init, config.adam_lr, b, r) for b in betas for r in range(config.adam_runs)]
        results["adam"] = _part(state, checkpoint, "adam", lambda resume, save: train_grid(
            config, grid, "adam", config.adam_iterations, (len(betas), config.adam_runs), device, progress,
            f"{config.name}: Adam", resume, save))
        results["adam_betas"] = list(betas)
    results["seconds"] = time.perf_counter() - start
    results["device"] = str(device)
    return results


def _part(state, checkpoint, name, train):
    """Part ``name`` of a run (``train(resume, on_task)``), taken from ``state`` when done, continued from its
    last saved task when interrupted; with a checkpoint, saved after each task."""
    if name in state["done"]:
        return state["done"][name]
    partial = state["partial"]
    resume = partial["state"] if partial is not None and partial["part"] == name else None

    def save(task_state, task):
        if checkpoint is not None:
            state["partial"] = {"part": name, "state": task_state}
            checkpoint.save(state, f"{name}, task {task + 1}")

    out = train(resume, save)
    state["done"][name], state["partial"] = out, None
    return out


EXPERIMENT = Experiment("continual", ContinualConfig, PRESETS, run, report)
