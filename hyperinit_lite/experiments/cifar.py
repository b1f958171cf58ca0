"""CIFAR-10 with a chunked hypernetwork generating an All Convolutional Net: §5.3, Appendices A.2, B.3
(Chapter 10). This module holds the config, its presets and the run; the pieces live beside it:

* :mod:`~hyperinit_lite.experiments.cifar_data`: the images (CIFAR-10 or the MNIST stand-in, standardized);
* :mod:`~hyperinit_lite.experiments.cifar_training`: the hypernet-generated All-CNN-C, its four inits, the
  seeds of an arm trained together, the SGD loop with its divergence check and checkpoints;
* :mod:`~hyperinit_lite.experiments.cifar_report`: the summary table and the curves of Figure 5.

Runs. An *arm* is an init at a learning rate: every init of ``inits`` at ``lr``, plus Kaiming fan-in at each
rate of ``kaiming_fan_in_lrs`` (the paper searched a grid for it). Each arm is trained for every seed of
``seeds`` (together, :class:`~hyperinit_lite.experiments.cifar_training.StackedSeeds`); with a
:class:`hyperinit_lite.results.Checkpoint`, the state is saved after every epoch of every arm, and a resumed
run gives the same numbers as an uninterrupted one.

Command line: ``python -m hyperinit_lite cifar --preset paper --device cuda --out DIR --resume``.
"""
import dataclasses
import time
from typing import Optional, Tuple

from ..all_conv_net import all_conv_net_shapes
from ..chunked import INPUT_LAYERS
from ..validate import check_choice, check_distinct, check_positive, check_positive_int, check_seed
from . import resolve_device, skeleton
from .cifar_data import DATA_SOURCES, IMAGE_SHAPE, config_images, resolve_source
from .cifar_report import format_summary
from .cifar_training import INITS, train_arm


@dataclasses.dataclass(frozen=True)
class CIFARConfig:
    """Everything that determines a run's results (stored beside them and in every checkpoint).

    ``width``: channels of All-CNN-C's first block (the second has ``2 * width``); ``chunk_size`` ``K``,
    ``hidden_size`` ``d`` and ``embedding_dim`` ``d_z`` of the chunked hypernet; ``n_train`` / ``n_test`` keep
    the first images only (``None``: all). ``seeds``: the seeds every arm is trained with;
    ``kaiming_fan_in_lrs``: extra learning rates at which Kaiming fan-in is trained (the paper's grid search;
    empty: none). ``log_every``: record the training loss averaged over blocks of this many SGD steps
    (besides the per-epoch numbers).
    """

    name: str = "paper"
    data: str = "cifar10"
    n_train: Optional[int] = None
    n_test: Optional[int] = None
    width: int = 96
    chunk_size: int = 96
    hidden_size: int = 50
    embedding_dim: int = 50
    input_layers: str = "per_chunk"
    inits: Tuple[str, ...] = INITS
    lr: float = 5e-4
    kaiming_fan_in_lrs: Tuple[float, ...] = ()
    batch_size: int = 100
    epochs: int = 500
    milestones: Tuple[int, ...] = (350, 450)
    gamma: float = 0.1
    log_every: int = 100
    seeds: Tuple[int, ...] = (0, 1, 2)
    mixed_precision: bool = False

    def __post_init__(self):
        check_choice("data", self.data, DATA_SOURCES)
        check_choice("input_layers", self.input_layers, INPUT_LAYERS)
        for name in ("n_train", "n_test"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("width", "chunk_size", "hidden_size", "embedding_dim", "batch_size", "epochs",
                     "log_every"):
            check_positive_int(name, getattr(self, name))
        check_positive("lr", self.lr)
        inits = check_distinct("inits", self.inits, lambda n, v: check_choice(n, v, INITS))
        lrs = tuple(self.kaiming_fan_in_lrs)
        lrs = check_distinct("kaiming_fan_in_lrs", lrs, check_positive) if lrs else ()
        seeds = check_distinct("seeds", self.seeds, check_seed)
        milestones = tuple(self.milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) for m in milestones) or list(
                milestones) != sorted(set(milestones)) or (
                milestones and not 1 <= milestones[0] <= milestones[-1] <= self.epochs):
            raise ValueError(f"milestones must be strictly increasing epochs in 1..epochs={self.epochs}, "
                             f"got {self.milestones!r}")
        if not (isinstance(self.gamma, (int, float)) and 0 < self.gamma <= 1):
            raise ValueError(f"gamma must be a factor in (0, 1], got {self.gamma!r}")
        if self.n_train is not None and self.batch_size > self.n_train:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed n_train ({self.n_train})")
        if not isinstance(self.mixed_precision, bool):
            raise ValueError(f"mixed_precision must be True or False, got {self.mixed_precision!r}")
        for name, value in (("inits", inits), ("kaiming_fan_in_lrs", lrs), ("seeds", seeds),
                            ("milestones", milestones)):
            object.__setattr__(self, name, value)

    @property
    def shapes(self):
        """Kernel shapes ``(N_out, N_in, f, f)`` of the mainnet (All-CNN-C, 3 input channels, 10 classes)."""
        return all_conv_net_shapes(self.width, IMAGE_SHAPE[0], 10)

    @property
    def arms(self):
        """``(key, init, lr)`` of every arm: each init at ``lr``, then Kaiming fan-in at each grid rate."""
        grid = [("kaiming_fan_in", lr) for lr in self.kaiming_fan_in_lrs if lr != self.lr]
        return [(init, init, self.lr) for init in self.inits] + [
            (f"{init} lr={lr:g}", init, lr) for init, lr in grid]

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


PRESETS = {
    # Appendix B.3: full CIFAR-10, All-CNN-C with 96/192 channels, K = 96, d = d_z = 50, SGD lr 5e-4, batch
    # 100, 500 epochs, lr x0.1 at epochs 350 and 450; three seeds (the paper states none).
    "paper": CIFARConfig(),
    # A 2-core CPU budget: the offline stand-in, a 16/32-channel net with K = 16 and d_z = 8, so that d_z / K
    # stays near the paper's 50 / 96 (the ratio that sets Kaiming fan-out's scale, Chapter 10); 1,000 training
    # and 500 test images, batch 25, 12 epochs (480 SGD steps) at the paper's learning rate, no decay, three
    # seeds. Batch 25 instead of 100 makes a step four times cheaper at the same expected gradient.
    "quick": CIFARConfig(name="quick", data="mnist_standin", n_train=1000, n_test=500, width=16,
                         chunk_size=16, embedding_dim=8, batch_size=25, epochs=12, milestones=(),
                         log_every=10),
}


def get_config(preset, **overrides):
    """The config of preset ``'quick'`` or ``'paper'``, with fields replaced by ``overrides``."""
    check_choice("preset", preset, tuple(PRESETS))
    return PRESETS[preset].replace(**overrides) if overrides else PRESETS[preset]


def run(config, device="auto", progress=True, checkpoint=None, images=None, vectorize=None, data_root=None):
    """Train every arm of ``config`` over its seeds and return the results (JSON-ready after
    :func:`hyperinit_lite.results.to_jsonable`): ``data`` (source, label, description), ``arms`` (``key``,
    ``init``, ``lr``), ``runs`` (``{key: {seed: history}}``, history as in
    :func:`~hyperinit_lite.experiments.cifar_training.new_history` plus ``epochs_done``), ``seeds``,
    ``device``, ``seconds``.

    ``vectorize``: ``torch.func.vmap`` over the seeds (default: on CUDA only). With a ``checkpoint``
    (:class:`hyperinit_lite.results.Checkpoint`), the state is saved after every epoch of every arm and a
    saved state is resumed. ``images``: the :class:`~hyperinit_lite.experiments.cifar_data.ImageSet` to use
    (default: :func:`~hyperinit_lite.experiments.cifar_data.config_images`).
    """
    if isinstance(config, str):
        config = get_config(config)
    device = resolve_device(device)
    vectorize = device.type == "cuda" if vectorize is None else bool(vectorize)
    images = config_images(config, root=data_root) if images is None else images
    images = dataclasses.replace(images, **{k: getattr(images, k).to(device)
                                            for k in ("x_train", "y_train", "x_test", "y_test")})
    state = (checkpoint.load() if checkpoint is not None else None) or {"done": {}, "current": None}
    clock = time.perf_counter()
    for arm_spec in config.arms:
        if arm_spec[0] not in state["done"]:
            state["done"][arm_spec[0]] = train_arm(config, arm_spec, images, device, vectorize, progress,
                                                    checkpoint, state)
            state["current"] = None
    return {"data": {"source": images.source, "label": images.label, "description": images.describe()},
            "arms": [{"key": k, "init": i, "lr": lr} for k, i, lr in config.arms],
            "runs": {k: {str(s): h for s, h in state["done"][k].items()} for k, _, _ in config.arms},
            "seeds": list(config.seeds), "device": str(device), "seconds": time.perf_counter() - clock}


# ------------------------------------------------------------------------------------------------------- CLI
def data_used(config, data_root=None):
    """The data a run of ``config`` would use now: ``{"source": ...}`` (``"auto"`` resolved)."""
    return {"source": resolve_source(config.data, data_root)}


OPTIONS = (("--data-root", {"default": None, "help": "where CIFAR-10 is stored (default: $HYPERINIT_DATA or "
                                                     "~/.cache/hyperinit_lite)"}),)
EXPERIMENT = skeleton.Experiment("cifar", CIFARConfig, PRESETS, run, format_summary, data_used=data_used,
                                 options=OPTIONS)
