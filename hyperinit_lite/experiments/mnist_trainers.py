"""The two trainers of the MNIST sweep (Chapter 8): :class:`BatchedRuns` trains the runs of one architecture
together in one batched step, :class:`LoopRuns` one after another with ``torch.optim.SGD`` (the reference).

Both take the models of :func:`~hyperinit_lite.experiments.mnist_model.build_model` and offer ``step``,
``mainnet`` and ``logits``; :mod:`hyperinit_lite.experiments.mnist_training` measures and trains with them.
"""
import torch
import torch.nn.functional as F
from torch.func import grad_and_value, vmap

from ..hypernet import Hypernet, mainnet_forward
from .mnist_model import mainnet_of


def _mainnet_loss(weights, biases, x, y, activation):
    return F.cross_entropy(mainnet_forward(x, weights, biases, activation), y)


class BatchedRuns:
    """Runs of one architecture trained together: stacked mainnets, one batched SGD step for all of them.

    The mainnet part is ``torch.func.vmap`` of ``torch.func.grad_and_value``: every run's loss and its
    gradients ``g[t] = dL/dW[t]``, ``dL/db[t]`` with respect to its (generated) weights and biases, in one
    call. A classical run applies them directly. A hypernet run (one linear layer, fixed embeddings: the
    paper's) is followed on the tensors it generates: by
    :func:`~hyperinit_lite.experiments.mnist_model.sgd_step_kernel`, one SGD step on its heads ``(H, beta)``
    moves the generated weights by exactly

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
            mainnets = [mainnet_of(m) for m in models]
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
        return mainnet_of(self.models[r])

    @torch.no_grad()
    def logits(self, x):
        return torch.stack([self._forward(m, x) for m in self.models])
