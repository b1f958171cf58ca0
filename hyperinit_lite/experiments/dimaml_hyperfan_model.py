"""Chapter 13's batched model: ``R`` replicas of the one-layer hypernet run as one module, the hyperfan and
Xavier targets of its heads, and the DIMAML-Normal initializer of those heads.

Used by the runner :mod:`~hyperinit_lite.experiments.dimaml_hyperfan` (meta-training, evaluation, scans).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..dimaml import LearnedInitializer
from ..hyperfan import hyperfan_variances
from ..hypernet import Hypernet, layer_nonlinearities
from . import seeded_generator


class ReplicaHypernets(nn.Module):
    """``R`` independent copies of Chapter 13's one-layer hypernet and its tanh mainnet, run as one model.

    Replica ``r`` has the embeddings of ``Hypernet(..., generator=seed_r)`` (fixed), its own heads
    ``heads.h{h}_r{r}`` (one parameter each, so DIMAML gives each its own sigma), head biases ``beta`` and
    mainnet biases (zero at the start); ``targets`` holds :func:`head_targets`. ``forward(x)`` maps ``x`` of
    shape ``(R, B, d_0)`` to logits ``(R, B, d_T)``: ``x[t+1] = tanh(x[t] W[t]^T + b[t])`` with
    ``W[t] = H[t] e[t] + beta[t]`` per replica (Chapter 4's mainnet, layers counted from 0 in code).
    """

    def __init__(self, config, replica_seeds):
        super().__init__()
        sizes = [784] + [config.width] * config.depth + [10]
        nets = [Hypernet(sizes, config.embedding_dim, share_heads=True, activation="tanh",
                         generator=seeded_generator(4, s)) for s in replica_seeds]
        self.n, self.targets = len(nets), head_targets(nets[0])
        self.shapes, self.head_of_layer = nets[0].shapes, nets[0].head_of_layer
        self.register_buffer("embeddings", torch.stack([net.weight_embeddings.detach() for net in nets]))
        head_rows = [head.weight.shape[0] for head in nets[0].weight_heads]
        self.heads = nn.ParameterDict({f"h{h}_r{r}": nn.Parameter(torch.zeros(rows, config.embedding_dim))
                                       for h, rows in enumerate(head_rows) for r in range(self.n)})
        self.betas = nn.ParameterList(nn.Parameter(torch.zeros(self.n, rows)) for rows in head_rows)
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(self.n, 1, o)) for o, _ in self.shapes)

    def head_names(self, replica):
        """Parameter names of replica ``replica``'s heads, in layer order."""
        return [f"heads.h{h}_r{replica}" for h in range(len(self.betas))]

    def weights(self):
        """The generated weights, one ``(R, d_out, d_in)`` tensor per mainnet layer."""
        heads = [torch.stack([self.heads[f"h{h}_r{r}"] for r in range(self.n)])
                 for h in range(len(self.betas))]
        out = []
        for t, (o, i) in enumerate(self.shapes):
            h = self.head_of_layer[t]
            w = torch.einsum("rqk,rk->rq", heads[h], self.embeddings[:, t]) + self.betas[h]
            out.append(w.view(self.n, o, i))
        return out

    def forward(self, x):
        """Logits of every replica's mainnet for its batch ``x`` of shape ``(replicas, batch, 784)``."""
        for t, w in enumerate(self.weights()):
            x = torch.baddbmm(self.biases[t], x, w.transpose(1, 2))
            x = torch.tanh(x) if t < len(self.shapes) - 1 else x
        return x


def replica_loss(logits, y):
    """``sum_r CE(logits[r], y[r])``: the replicas' mean cross-entropies, summed (gradients stay apart)."""
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / y.shape[1]


def head_targets(hypernet):
    """Per head: ``{"in", "out", "xavier", "d_j", "d_i"}`` standard deviations of Table 1 and Xavier.

    Hyperfan-in ``Var(H) = 1/(d_j d_k Var(e))``, hyperfan-out ``1/(d_i d_k Var(e))`` (tanh and linear
    layers: no ReLU gain); Xavier applied to the head as an ordinary layer ``Var(H) = 1/d_k`` (Chapter 13).
    """
    nls = layer_nonlinearities(len(hypernet.shapes), hypernet.activation)
    out = []
    for h in range(len(hypernet.weight_heads)):
        t = hypernet.head_of_layer.index(h)
        d_i, d_j = hypernet.shapes[t]
        std = {m: math.sqrt(hyperfan_variances(m, d_j, d_i, hypernet.head_dim, nonlinearity=nls[t])[0])
               for m in ("in", "out")}
        out.append({**std, "xavier": 1 / math.sqrt(hypernet.head_dim), "d_j": d_j, "d_i": d_i})
    return out


def start_stds(config, targets, start):
    """Starting sigma, the same for every head (so the start has no pattern across heads): ``'high'`` is
    ``start_factor`` times the largest hyperfan target of any head, ``'low'`` the smallest divided by it."""
    values = [t[m] for t in targets for m in ("in", "out") if t[m] > 0]
    common = max(values) * config.start_factor if start == "high" else min(values) / config.start_factor
    return [common] * len(targets)


def initializer(model, stds_per_replica):
    """A DIMAML-Normal :class:`~hyperinit_lite.dimaml.LearnedInitializer` of every head, ``N(0, sigma^2)``
    starting at ``stds_per_replica[r][h]``, its mean fixed at 0 (so ``sigma`` is the root mean square)."""
    base = {name: s for r, stds in enumerate(stds_per_replica)
            for name, s in zip(model.head_names(r), stds)}
    init = LearnedInitializer(model, "normal", base=base, select=list(base))
    for dist in init.dists.values():
        dist.loc.requires_grad_(False)
    return init


def learned_stds(init, model):
    """``[[sigma of head h] for each replica]`` of a Normal initializer with zero mean."""
    summary = init.summary()
    return [[summary[n]["std"] for n in model.head_names(r)] for r in range(model.n)]


def log_std_grads(init, model):
    """``[[d L_meta / d log sigma of head h] for each replica]`` after a meta-step (0 if it was skipped)."""
    def grad(name):
        g = init.dist(name).log_std.grad
        return 0.0 if g is None else float(g)
    return [[grad(n) for n in model.head_names(r)] for r in range(model.n)]
