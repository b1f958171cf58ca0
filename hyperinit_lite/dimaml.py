"""DIMAML: learning each weight tensor's initial distribution by back-propagating through training (Chapters 11-13).

Baranchuk & Babenko (2021). Every selected weight tensor ``W`` of a model gets a distribution ``p_psi`` that
can be sampled differentiably (the reparameterization trick), ``W = Q_psi(u)`` with ``u`` fixed noise:

* Normal:  ``W = mu + sigma * z``,  ``z ~ N(0, 1)``;
* PLIF:    ``W = Q(u)``,  ``u ~ U(0, 1)``, ``Q`` monotone piecewise linear with ``n`` equal pieces on ``[0, 1]``:
  ``Q(u) = b + sum_{k<i} softplus(v_k) + n softplus(v_i) (u - i/n)``, ``i = min(floor(u n), n - 1)``.

Each starts exactly from a classical init of standard deviation ``s0`` (Kaiming, Xavier, ...). Parameters are
measured in units of ``s0``: ``mu = s0 m``, ``sigma = s0 exp(s)``, knots ``= s0 * (...)``, so one meta-learning
rate suits tensors whose scales differ by orders of magnitude (the family of distributions is unchanged).

Meta-training (Chapter 11): sample ``theta_0 = Q_psi(u)``; run ``K`` differentiable inner steps
``theta_{t+1} = U(theta_t, grad L_train(theta_t))`` (SGD, momentum, Adam) through
``torch.func.functional_call``; the meta-loss is the mean validation loss at the steps ``S``,
``L_meta = (1/|S|) sum_{t in S} L_val(theta_t)``; back-propagate to ``psi``; update ``psi`` with Adam
(betas 0.9, 0.997), the meta-gradient clipped in norm; a diverged inner run or a non-finite meta-gradient
skips the update and is counted. Gradient checkpointing every ``C`` inner steps stores only the states at
chunk boundaries and recomputes the rest during the backward pass.
"""
import copy
import gc
from contextlib import contextmanager
import json
import math
import time
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .validate import check_choice, check_positive, check_positive_int
from .fans import GATES, fan_in_and_fan_out, parameter_fans

KINDS = ("normal", "plif")
BASES = ("kaiming", "xavier")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam")


# --------------------------------------------------------------------------- learnable distributions
def inverse_softplus(y):
    """``softplus^{-1}(y) = log(exp(y) - 1)``, computed stably for small and large ``y > 0``."""
    return y + torch.log(-torch.expm1(-y))


class NormalInit(nn.Module):
    """``W = mu + sigma z`` with ``mu = s0 m``, ``sigma = s0 exp(s)``; ``m = s = 0`` reproduces ``N(0, s0^2)``."""

    def __init__(self, std, mean=0.0, dtype=torch.float32):
        super().__init__()
        self.scale = check_positive("std", std)
        self.loc = nn.Parameter(torch.tensor(mean / self.scale, dtype=dtype))
        self.log_std = nn.Parameter(torch.tensor(0.0, dtype=dtype))

    def mean(self):
        return self.scale * self.loc

    def std(self):
        return self.scale * self.log_std.exp()

    def quantile(self, u):
        """``Q(u) = mu + sigma sqrt(2) erfinv(2u - 1)``."""
        return self.mean() + self.std() * math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)

    def forward(self, shape, generator=None):
        """A differentiable sample of ``shape``: ``mu + sigma z`` with ``z ~ N(0, 1)`` drawn from ``generator``."""
        z = torch.randn(shape, generator=generator, dtype=self.loc.dtype).to(self.loc.device)
        return self.mean() + self.std() * z


class PLIFInit(nn.Module):
    """Piecewise-linear increasing quantile function with ``n`` equal pieces (REFERENCES.md section 4).

    Built from ``n + 1`` increasing knots ``q_i = Q(i/n)``: ``b = q_0 / s0``, ``softplus(v_i) = (q_{i+1} - q_i) / s0``.
    Monotone by construction for any ``(b, v)``. As in the public code, a learnable global scale
    ``softplus(c)`` (1 at the start) multiplies every knot, so one parameter can rescale the whole
    distribution.
    """

    def __init__(self, knots, scale, dtype=torch.float32):
        super().__init__()
        knots = torch.as_tensor(knots, dtype=torch.float64)
        if knots.ndim != 1 or len(knots) < 2 or not bool((knots.diff() > 0).all()):
            raise ValueError("knots must be a 1-D increasing sequence of at least 2 values")
        self.scale = check_positive("scale", scale)
        self.n_pieces = len(knots) - 1
        self.first = nn.Parameter((knots[0] / self.scale).to(dtype))
        self.raw = nn.Parameter(inverse_softplus(knots.diff() / self.scale).to(dtype))
        self.raw_scale = nn.Parameter(inverse_softplus(torch.tensor(1.0, dtype=torch.float64)).to(dtype))

    @classmethod
    def from_uniform(cls, std, n_pieces=100, dtype=torch.float32):
        """Exactly ``U(-sqrt(3) s0, sqrt(3) s0)``: its quantile function is linear, so PLIF represents it exactly."""
        bound = math.sqrt(3.0) * check_positive("std", std)
        knots = torch.linspace(-bound, bound, check_positive_int("n_pieces", n_pieces) + 1, dtype=torch.float64)
        return cls(knots, std, dtype)

    @classmethod
    def from_normal(cls, std, n_pieces=100, eps=1e-4, dtype=torch.float32):
        """``N(0, s0^2)`` quantiles at ``i/n`` (``eps`` and ``1 - eps`` at the ends), linearly interpolated."""
        u = torch.linspace(0.0, 1.0, check_positive_int("n_pieces", n_pieces) + 1, dtype=torch.float64)
        u = u.clamp(eps, 1.0 - eps)
        return cls(std * math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0), std, dtype)

    def global_scale(self):
        """``softplus(c)``, the learnable factor on every knot (1 at the start)."""
        return F.softplus(self.raw_scale)

    def increments(self):
        return self.global_scale() * self.scale * F.softplus(self.raw)

    def knots(self):
        """``q_i = Q(i/n)``, ``i = 0..n``."""
        first = self.global_scale() * self.first * self.scale
        return torch.cat([first.reshape(1), first + torch.cumsum(self.increments(), 0)])

    def quantile(self, u):
        n = self.n_pieces
        i = torch.clamp(torch.floor(u * n), 0, n - 1).long()
        return self.knots()[i] + n * self.increments()[i] * (u - i.to(u.dtype) / n)

    def forward(self, shape, generator=None):
        """A differentiable sample of ``shape``: ``Q(u)`` with ``u ~ U(0, 1)`` drawn from ``generator``."""
        u = torch.rand(shape, generator=generator, dtype=self.first.dtype).to(self.first.device)
        return self.quantile(u)

    def mean(self):
        q = self.knots()
        return ((q[1:] + q[:-1]) / 2).mean()

    def std(self):
        """Exact: ``Q`` is a mixture of ``n`` uniforms on ``[q_i, q_{i+1}]``, weight ``1/n`` each."""
        q = self.knots()
        second = ((q[1:] ** 2 + q[1:] * q[:-1] + q[:-1] ** 2) / 3).mean()
        return (second - self.mean() ** 2).clamp_min(0).sqrt()


class GateInit(nn.Module):
    """One learnable distribution per gate of a recurrent weight or bias: ``g`` row blocks sampled separately.

    PyTorch stacks an LSTM's four gates along dimension 0 (``(4 h, in)``); the public DIMAML code learns one
    distribution per gate. Mean and std are those of the mixture of the gates (each weighted ``1/g``).
    """

    def __init__(self, parts):
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.scale = parts[0].scale

    def forward(self, shape, generator=None):
        """A sample of ``shape``: each gate's block of rows from its own distribution."""
        rows = shape[0] // len(self.parts)
        return torch.cat([part((rows,) + tuple(shape[1:]), generator) for part in self.parts])

    def mean(self):
        return torch.stack([part.mean() for part in self.parts]).mean()

    def std(self):
        second = torch.stack([part.std() ** 2 + part.mean() ** 2 for part in self.parts]).mean()
        return (second - self.mean() ** 2).clamp_min(0).sqrt()


def base_std(shape, base="kaiming", transposed=False):
    """Standard deviation of a classical init: Kaiming ``sqrt(2 / fan_in)``, Xavier ``sqrt(1 / fan_in)``.

    ``transposed=True`` for ``ConvTranspose`` weights, stored ``(in, out, *kernel)``
    (:mod:`hyperinit_lite.fans`).
    """
    check_choice("base", base, BASES)
    fan_in, _ = fan_in_and_fan_out(shape, transposed)
    return math.sqrt((2.0 if base == "kaiming" else 1.0) / fan_in)


def classical_stds(model, linear=(), base="kaiming"):
    """``{name: sqrt(a / fan_in)}`` for every weight of ``model`` with its true fans (:func:`~hyperinit_lite.fans.parameter_fans`).

    ``a = 2`` (Kaiming, a ReLU follows) or 1 (``base='xavier'``), and ``a = 1`` for the names in ``linear``:
    layers with no ReLU after them (an output layer, a linear bottleneck) get no ReLU gain (Chapter 3).
    """
    check_choice("base", base, BASES)
    gain = 2.0 if base == "kaiming" else 1.0
    return {name: math.sqrt((1.0 if name in linear else gain) / fan_in)
            for name, (fan_in, _) in parameter_fans(model).items()}


def default_bias_stds(model):
    """``{name: 1 / sqrt(3 fan_in)}``: the std of PyTorch's default bias init ``U(-1, 1) / sqrt(fan_in)``.

    Covers the biases of linear, convolutional and recurrent layers (``fan_in`` = the hidden size for a
    recurrent layer, as PyTorch uses), with the true fans of transposed convolutions; normalization layers'
    shifts are not included.
    """
    fans = parameter_fans(model)
    out = {}
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            full = f"{prefix}.{name}" if prefix else name
            if p.ndim != 1 or not name.startswith("bias"):
                continue
            if type(module) in GATES:
                out[full] = 1.0 / math.sqrt(3 * module.hidden_size)
            elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                out[full] = 1.0 / math.sqrt(3 * fans[f"{prefix}.weight" if prefix else "weight"][0])
    return out


class LearnedInitializer(nn.Module):
    """One learnable distribution per selected weight tensor of ``model`` (Chapter 11).

    Args:
        model: the network; its trainable parameters with at least 2 dimensions are selected by default.
            The other trainable tensors (biases, batch-norm scales) keep the values the model holds.
        kind: ``'normal'`` or ``'plif'``.
        base: ``'kaiming'``, ``'xavier'``, or a dict ``{name: std}`` (names missing from it use Kaiming). Fans
            are read by layer type (:func:`~hyperinit_lite.fans.parameter_fans`: transposed convolutions,
            recurrent gates).
        n_pieces: PLIF pieces; ``plif_base``: ``'uniform'`` (exact) or ``'normal'`` (exact at the knots).
        select: optional list of parameter names to learn instead of the default selection.
        biases: also learn the biases of linear, convolutional and recurrent layers, starting from the std
            of PyTorch's default bias init (:func:`default_bias_stds`), as the public DIMAML code does.
        per_gate: one distribution per gate for the weights and biases of recurrent layers (the public code's
            LSTM initializers); a gate-stacked tensor ``(g h, ...)`` is sampled as ``g`` blocks.
    """

    def __init__(self, model=None, kind="normal", base="kaiming", n_pieces=100, plif_base="uniform", select=None,
                 dtype=torch.float32, biases=False, per_gate=True):
        super().__init__()
        self.kind = check_choice("kind", kind, KINDS)
        self.n_pieces, self.plif_base = n_pieces, check_choice("plif_base", plif_base, ("uniform", "normal"))
        self.shapes, self.dists = {}, nn.ModuleDict()
        if model is None:
            return
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        bias_stds = default_bias_stds(model)
        names = select if select is not None else [n for n, p in params.items() if p.ndim >= 2] + \
            ([n for n in bias_stds if n in params] if biases else [])
        stds = classical_stds(model, base=base if isinstance(base, str) else "kaiming")
        stds.update(bias_stds)
        if isinstance(base, dict):
            stds.update(base)
        gates = gate_counts(model) if per_gate else {}
        for name in names:
            if name not in params:
                raise ValueError(f"select: {name!r} is not a trainable parameter of the model")
            if name not in stds:
                raise ValueError(f"base: no starting std for {name!r}; give one as base={{{name!r}: std}}")
            self.add(name, tuple(params[name].shape), self.make(stds[name], dtype, gates.get(name, 1)))

    def make(self, std, dtype=torch.float32, gates=1):
        if gates > 1:
            return GateInit([self.make(std, dtype) for _ in range(gates)])
        if self.kind == "normal":
            return NormalInit(std, dtype=dtype)
        maker = PLIFInit.from_uniform if self.plif_base == "uniform" else PLIFInit.from_normal
        return maker(std, self.n_pieces, dtype=dtype)

    def add(self, name, shape, dist):
        self.shapes[name] = tuple(shape)
        self.dists[name.replace(".", "__")] = dist

    def dist(self, name):
        return self.dists[name.replace(".", "__")]

    @property
    def names(self):
        return list(self.shapes)

    def sample(self, model, generator=None):
        """All trainable tensors of ``model`` as a dict: learned ones sampled (differentiable), others copied."""
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters() if p.requires_grad}
        self._check(params)
        for name in self.names:
            params[name] = self.dist(name)(self.shapes[name], generator).to(params[name].dtype)
        return params

    def _check(self, params):
        for name, shape in self.shapes.items():
            if name not in params or tuple(params[name].shape) != shape:
                got = tuple(params[name].shape) if name in params else "missing"
                raise ValueError(f"model does not fit this initializer: {name} should be {shape}, got {got}")

    @torch.no_grad()
    def init_(self, model, generator=None):
        """Initialize ``model`` in place from the learned distributions (other tensors untouched); returns it."""
        params = dict(model.named_parameters())
        self._check(params)
        for name in self.names:
            params[name].copy_(self.dist(name)(self.shapes[name], generator))
        return model

    @torch.no_grad()
    def summary(self):
        """``{name: {"base_std", "mean", "std"}}``: where each distribution started and where it is now."""
        return {n: {"base_std": self.dist(n).scale, "mean": float(self.dist(n).mean()),
                    "std": float(self.dist(n).std())} for n in self.names}

    def to_dict(self):
        entries = {}
        for name in self.names:
            d = self.dist(name)
            entries[name] = {"shape": list(self.shapes[name]), "scale": d.scale,
                             "gates": len(d.parts) if isinstance(d, GateInit) else 1,
                             "params": {k: v.detach().cpu().double().reshape(-1).tolist()
                                        for k, v in d.named_parameters()}}
        return {"kind": self.kind, "n_pieces": self.n_pieces, "plif_base": self.plif_base, "entries": entries}

    @classmethod
    def from_dict(cls, data, dtype=torch.float32):
        init = cls(None, data["kind"], n_pieces=data["n_pieces"], plif_base=data.get("plif_base", "uniform"))
        for name, entry in data["entries"].items():
            dist = init.make(entry["scale"], dtype, entry.get("gates", 1))
            with torch.no_grad():
                for key, p in dist.named_parameters():
                    if key in entry["params"]:  # files written before PLIF's global scale lack it: scale 1
                        p.copy_(torch.tensor(entry["params"][key], dtype=dtype).reshape(p.shape))
            init.add(name, entry["shape"], dist)
        return init


def gate_counts(model):
    """``{name: g}`` for the gate-stacked weights and biases of the recurrent layers of ``model``."""
    return {f"{prefix}.{name}" if prefix else name: GATES[type(module)]
            for prefix, module in model.named_modules() if GATES.get(type(module), 1) > 1
            for name, _ in module.named_parameters(recurse=False)}


def save_initializer(initializer, path):
    """Write a :class:`LearnedInitializer` to a JSON file (readable, no pickle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(initializer.to_dict()))
    return path


def load_initializer(path):
    """Read a saved initializer; ``load_initializer(path).init_(model)`` initializes a new model in one line."""
    return LearnedInitializer.from_dict(json.loads(Path(path).read_text()))


# --------------------------------------------------------------------------- differentiable inner optimizers
class InnerOptimizer:
    """Differentiable update ``(params, grads, state, t) -> (params, state)`` on dicts of tensors.

    Matches ``torch.optim.SGD`` (``momentum``, ``nesterov``) and ``torch.optim.Adam``; Adam adds ``1e-30``
    under its square root so the meta-gradient stays finite where a gradient entry is exactly zero.
    """

    def __init__(self, name="sgd", lr=0.01, momentum=0.9, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.name = check_choice("optimizer", name, OPTIMIZERS)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.lr, self.momentum, self.betas, self.eps = check_positive("lr", lr), momentum, tuple(betas), eps
        self.weight_decay = weight_decay

    def init(self, params):
        zeros = {n: torch.zeros_like(p) for n, p in params.items()}
        if self.name == "sgd":
            return {}
        if self.name == "adam":
            return {"m": zeros, "v": {n: torch.zeros_like(p) for n, p in params.items()}}
        return {"buf": zeros}

    def step(self, params, grads, state, t):
        new, out = {}, {k: {} for k in state}
        for n, p in params.items():
            g = grads[n] + self.weight_decay * p if self.weight_decay else grads[n]
            if self.name == "sgd":
                new[n] = p - self.lr * g
            elif self.name in ("momentum", "nesterov"):
                buf = g if t == 0 else self.momentum * state["buf"][n] + g
                out["buf"][n] = buf
                new[n] = p - self.lr * (g + self.momentum * buf if self.name == "nesterov" else buf)
            else:
                b1, b2 = self.betas
                m = b1 * state["m"][n] + (1 - b1) * g
                v = b2 * state["v"][n] + (1 - b2) * g * g
                out["m"][n], out["v"][n] = m, v
                m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
                new[n] = p - self.lr * m_hat / ((v_hat + 1e-30).sqrt() + self.eps)
        return new, out

    def torch_optimizer(self, parameters):
        """The equivalent ``torch.optim`` optimizer, for ordinary (non-meta) training."""
        if self.name == "adam":
            return torch.optim.Adam(parameters, lr=self.lr, betas=self.betas, eps=self.eps,
                                    weight_decay=self.weight_decay)
        return torch.optim.SGD(parameters, lr=self.lr, momentum=0.0 if self.name == "sgd" else self.momentum,
                               nesterov=self.name == "nesterov", weight_decay=self.weight_decay)


# --------------------------------------------------------------------------- the unrolled inner loop
class InnerLoopDiverged(RuntimeError):
    """The inner training loss became non-finite; the meta-step is skipped."""


def _inner_chunk(model, loss_fn, optimizer, batches, val_batches, val_steps, start, stop, state):
    """Inner steps ``start..stop-1`` from ``state = (params, opt_state, buffers)``; pure in its tensor inputs.

    With grad mode off (only in the first pass of a reentrant checkpoint) it trains without building the
    differentiable graph; the backward pass then recomputes the chunk with ``create_graph=True``. Batch-norm
    running statistics are part of the differentiable state (:func:`_running_statistics`).
    """
    params, opt_state, buffers = state
    graph = torch.is_grad_enabled()
    train_losses, val_losses = [], []
    for t in range(start, stop):
        if not graph:
            params = {n: p.detach().requires_grad_() for n, p in params.items()}
        model.train()
        x, y = batches[t]
        with torch.enable_grad():
            scratch = {k: v.detach().clone() for k, v in buffers.items()}  # batch_norm updates these in place
            inputs = {}
            with _batchnorm_inputs(model, inputs):
                loss = loss_fn(functional_call(model, (params, scratch), (x,)), y)
            buffers = _running_statistics(model, buffers, scratch, inputs)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=graph)
        params, opt_state = optimizer.step(params, dict(zip(params, grads)), opt_state, t)
        train_losses.append(loss if graph else loss.detach())
        if t + 1 in val_steps:
            model.eval()
            xv, yv = val_batches[val_steps.index(t + 1)]
            with _eval_batchnorm(model, buffers):
                detached = {k: v.detach() for k, v in buffers.items()}
                val_losses.append(loss_fn(functional_call(model, (params, detached), (xv,)), yv))
            model.train()
    empty = train_losses[0].new_zeros(0)
    return (params, opt_state, buffers), torch.stack(train_losses), (torch.stack(val_losses) if val_losses else empty)


@contextmanager
def _batchnorm_inputs(model, inputs):
    """Record ``{batch-norm module name: its input}`` during a forward pass of ``model``."""
    def hook(name):
        return lambda module, args: inputs.__setitem__(name, args[0])
    handles = [m.register_forward_pre_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    try:
        yield inputs
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _eval_batchnorm(model, buffers):
    """Eval-mode batch norm that differentiates through the running statistics in ``buffers``.

    PyTorch's kernel refuses running statistics that require grad, so each batch-norm output is replaced by
    ``(x - mean) / sqrt(var + eps) * weight + bias`` computed from ``buffers``.
    """
    def hook(name):
        prefix = f"{name}." if name else ""

        def normalize(module, args, output):
            x = args[0]
            shape = (1, -1) + (1,) * (x.ndim - 2)
            y = (x - buffers[prefix + "running_mean"].view(shape)) / \
                (buffers[prefix + "running_var"].view(shape) + module.eps).sqrt()
            return y * module.weight.view(shape) + module.bias.view(shape) if module.affine else y
        return normalize
    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _running_statistics(model, buffers, scratch, inputs):
    """New buffers after one training forward pass, batch-norm running statistics differentiable.

    ``F.batch_norm`` updates its running statistics in place and outside autograd. The meta-loss is evaluated
    in eval mode, with those statistics, so they must carry the gradient (the public code's context batch
    norm): with momentum ``m``, batch mean ``b`` and unbiased batch variance ``v`` of the layer's input ``x``
    (over every dimension but the channels, dimension 1),
    ``mean_{t+1} = (1 - m) mean_t + m b``, ``var_{t+1} = (1 - m) var_t + m v``. ``momentum=None`` (a
    cumulative average) uses ``m = 1 / num_batches_tracked``. Other buffers are taken from ``scratch``.
    """
    new = dict(scratch)
    for name, m in model.named_modules():
        if name not in inputs:
            continue
        x = inputs[name]
        dims = [d for d in range(x.ndim) if d != 1]
        key = f"{name}.running_mean" if name else "running_mean"
        prefix = key[:-len("running_mean")]
        rate = m.momentum if m.momentum is not None else 1.0 / float(scratch[prefix + "num_batches_tracked"])
        new[key] = (1 - rate) * buffers[key] + rate * x.mean(dims)
        new[prefix + "running_var"] = (1 - rate) * buffers[prefix + "running_var"] + rate * x.var(dims)
    return new


def _flat_chunk(keys, *args_and_tensors):
    """:func:`_inner_chunk` on a flat tuple of tensors (what a reentrant checkpoint can see and differentiate)."""
    state, tl, vl = _inner_chunk(*args_and_tensors[:8], _unflatten(keys, args_and_tensors[8:]))
    return (tl, vl, *_flatten(state)[1])


def _flatten(state):
    params, opt_state, buffers = state
    keys = [("p", n) for n in params] + [("o", k, n) for k in opt_state for n in opt_state[k]] + \
        [("b", n) for n in buffers]
    tensors = list(params.values()) + [t for k in opt_state for t in opt_state[k].values()] + list(buffers.values())
    return keys, tensors


def check_unroll(n_steps, val_steps, checkpoint_every):
    """Validate the inner-loop schedule: validation steps in ``1..K`` and ``1 <= C <= K``."""
    n_steps = check_positive_int("inner_steps", n_steps)
    val_steps = sorted(set(int(s) for s in val_steps))
    if not val_steps or val_steps[0] < 1 or val_steps[-1] > n_steps:
        raise ValueError(f"val_steps must be non-empty and within 1..{n_steps} (inner_steps), got {val_steps}")
    if checkpoint_every is not None:
        check_positive_int("checkpoint_every", checkpoint_every)
        if checkpoint_every > n_steps:
            raise ValueError(f"checkpoint_every ({checkpoint_every}) is larger than the inner loop "
                             f"(inner_steps={n_steps}); use a value in 1..{n_steps} or None")
    return n_steps, val_steps


def unroll(model, params, batches, val_batches, val_steps, loss_fn, optimizer, checkpoint_every=None,
           checkpoint_mode="reentrant"):
    """Train ``params`` for ``len(batches)`` differentiable steps; return ``(meta_loss, train_losses, params)``.

    ``meta_loss`` is the mean of the validation losses at ``val_steps`` (step ``t`` = after ``t`` updates),
    differentiable in whatever ``params`` depend on. Batch-norm statistics start from the model's buffers
    (reset them before calling). Raises :class:`InnerLoopDiverged` when a training loss is not finite.

    ``checkpoint_every=C`` wraps every ``C`` inner steps in ``torch.utils.checkpoint``; both modes give the
    meta-gradient of the unchecked loop (tests/test_dimaml.py). ``checkpoint_mode``:

    * ``'reentrant'`` (default): ``use_reentrant=True``. The forward pass trains without the differentiable
      graph (first-order gradients only) and keeps only the states at chunk boundaries; the backward pass
      recomputes each chunk once with ``create_graph=True`` and back-propagates through it (the published
      code's scheme). Cost: one extra forward of the inner loop; memory: ``K / C`` states plus one chunk's graph.
      Back-propagate the meta-loss with ``meta_loss.backward()``: PyTorch's reentrant checkpoint does not
      support ``torch.autograd.grad`` (or ``backward(inputs=...)``) through it.
    * ``'nonreentrant'``: ``use_reentrant=False``. Each inner ``autograd.grad`` inside a chunk unpacks tensors
      the checkpoint dropped, so the chunk is recomputed up to that step: the forward pass costs
      ``K (C + 3) / 2`` loss evaluations instead of ``K``, and with PyTorch 2.x the recomputed tensors of those
      inner calls stay alive with the chunk, so this mode uses *more* memory than no checkpointing
      (Chapter 11 measures both).

    The chunk boundaries are where the divergence check runs: a non-finite training or validation loss raises
    :class:`InnerLoopDiverged` naming the first bad step.
    """
    check_choice("checkpoint_mode", checkpoint_mode, ("nonreentrant", "reentrant"))
    n_steps, val_steps = check_unroll(len(batches), val_steps, checkpoint_every)
    if len(val_batches) != len(val_steps):
        raise ValueError(f"need one validation batch per validation step: {len(val_batches)} vs {len(val_steps)}")
    state = (params, optimizer.init(params), {n: b.detach().clone() for n, b in model.named_buffers()})
    chunk = checkpoint_every or n_steps
    train_losses, val_losses = [], []
    for start in range(0, n_steps, chunk):
        args = (model, loss_fn, optimizer, batches, val_batches, val_steps, start, min(start + chunk, n_steps))
        if not checkpoint_every:
            state, tl, vl = _inner_chunk(*args, state)
        elif checkpoint_mode == "nonreentrant":
            state, tl, vl = checkpoint(_inner_chunk, *args, state, use_reentrant=False)
        else:
            keys, tensors = _flatten(state)
            tl, vl, *tensors = checkpoint(_flat_chunk, keys, *args, *tensors, use_reentrant=True)
            state = _unflatten(keys, tensors)
        train_losses.append(tl)
        val_losses.append(vl)
        finite = torch.isfinite(tl)
        if not bool(finite.all()) or not bool(torch.isfinite(vl).all()):
            bad = start + int((~finite).nonzero()[0]) if not bool(finite.all()) else min(start + chunk, n_steps)
            raise InnerLoopDiverged(f"inner loss became non-finite at step {bad} of {n_steps}")
    return torch.cat(val_losses).mean(), torch.cat(train_losses).detach(), state[0]


def _unflatten(keys, tensors):
    params, opt_state, buffers = {}, {}, {}
    for key, tensor in zip(keys, tensors):
        if key[0] == "p":
            params[key[1]] = tensor
        elif key[0] == "o":
            opt_state.setdefault(key[1], {})[key[2]] = tensor
        else:
            buffers[key[1]] = tensor
    return params, opt_state, buffers


def reset_batchnorm_(model):
    """Reset every batch-norm layer's running statistics (done at the start of every inner run)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    return model


# --------------------------------------------------------------------------- meta-training
def meta_step(initializer, model, meta_optimizer, batches, val_batches, val_steps, loss_fn, optimizer,
              checkpoint_every=None, clip=10.0, generator=None, checkpoint_mode="reentrant"):
    """One DIMAML update. Returns a dict with ``meta_loss``, ``grad_norm`` and ``skipped`` (None or a reason)."""
    reset_batchnorm_(model)
    meta_optimizer.zero_grad(set_to_none=True)
    params = initializer.sample(model, generator)
    try:
        meta_loss, train_losses, _ = unroll(model, params, batches, val_batches, val_steps, loss_fn, optimizer,
                                            checkpoint_every, checkpoint_mode)
    except InnerLoopDiverged as err:
        return {"meta_loss": float("nan"), "grad_norm": float("nan"), "skipped": f"diverged: {err}"}
    meta_loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(initializer.parameters(), clip))
    if not math.isfinite(norm):
        meta_optimizer.zero_grad(set_to_none=True)
        return {"meta_loss": float(meta_loss.detach()), "grad_norm": norm, "skipped": "non-finite meta-gradient"}
    meta_optimizer.step()
    return {"meta_loss": float(meta_loss.detach()), "grad_norm": norm, "skipped": None,
            "final_train_loss": float(train_losses[-1])}


def meta_optimizer_for(initializer, lr=1e-4, betas=(0.9, 0.997)):
    """Adam with the published betas ``(0.9, 0.997)``."""
    return torch.optim.Adam(initializer.parameters(), lr=check_positive("meta_lr", lr), betas=betas)


def meta_train(initializer, model, sample_batches, loss_fn, optimizer, meta_steps, val_steps, meta_lr=1e-4,
               checkpoint_every=None, clip=10.0, seed=0, progress=False, desc="DIMAML",
               checkpoint_mode="reentrant", resume=None, save=None, save_every=None):
    """Run ``meta_steps`` DIMAML updates; ``sample_batches(generator) -> (batches, val_batches)`` draws each task.

    Returns ``{"meta_loss", "grad_norm", "skipped", "skip_reasons", "std", "mean"}``: per-step lists, the number
    of skipped steps (their ``meta_loss`` is ``nan``) with reasons, and each learned tensor's standard deviation
    and mean after every step (``{name: [...]}``, entry 0 = the start).

    Resuming: with ``save`` and ``save_every=B``, ``save(state)`` is called after every ``B`` meta-steps with
    ``state`` = the step reached, the initializer's and the meta-optimizer's state, the generator's state and
    the history so far; ``resume=state`` continues from it and gives the same result as an uninterrupted run.
    """
    from tqdm.auto import tqdm

    meta_steps = check_positive_int("meta_steps", meta_steps)
    gen = torch.Generator().manual_seed(seed)
    meta_opt = meta_optimizer_for(initializer, meta_lr)
    history = {"meta_loss": [], "grad_norm": [], "skipped": 0, "skip_reasons": [],
               "std": {n: [v["std"]] for n, v in initializer.summary().items()},
               "mean": {n: [v["mean"]] for n, v in initializer.summary().items()}}
    start = 0
    if resume is not None:
        initializer.load_state_dict(resume["initializer"])
        meta_opt.load_state_dict(resume["meta_optimizer"])
        gen.set_state(resume["generator"])
        start, history = resume["step"], copy.deepcopy(resume["history"])
    steps = tqdm(range(start, meta_steps), desc=desc, disable=not progress, initial=start, total=meta_steps)
    for step in steps:
        batches, val_batches = sample_batches(gen)
        out = meta_step(initializer, model, meta_opt, batches, val_batches, val_steps, loss_fn, optimizer,
                        checkpoint_every, clip, gen, checkpoint_mode)
        history["meta_loss"].append(out["meta_loss"])
        history["grad_norm"].append(out["grad_norm"])
        if out["skipped"]:
            history["skipped"] += 1
            history["skip_reasons"].append(out["skipped"])
        for name, v in initializer.summary().items():
            history["std"][name].append(v["std"])
            history["mean"][name].append(v["mean"])
        if save is not None and save_every and (step + 1) % save_every == 0 and step + 1 < meta_steps:
            save(copy.deepcopy({"step": step + 1, "initializer": initializer.state_dict(),
                                "meta_optimizer": meta_opt.state_dict(), "generator": gen.get_state(),
                                "history": history}))
    return history


# --------------------------------------------------------------------------- measuring the cost of a meta-step
class LiveTensorBytes(TorchDispatchMode):
    """Count the bytes of tensor storages created inside the context and still alive; ``peak`` is their maximum.

    Deterministic (Chapter 11): every ATen call, forward and backward, is seen; a storage counts from the call
    that creates it until it is freed (a weak reference), views add nothing. Tensors created before the
    context (the model, the data) are not counted. Use it with the garbage collector off, so that freeing
    happens by reference counting only, at the same points on every run.
    """

    def __init__(self):
        super().__init__()
        self.live, self.current, self.peak = {}, 0, 0

    def _free(self, key, nbytes):
        if self.live.pop(key, None) is not None:
            self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live:
                    n = storage.nbytes()
                    self.live[key] = weakref.ref(storage, lambda _, key=key, n=n: self._free(key, n))
                    self.current += n
                    self.peak = max(self.peak, self.current)
        return out


def meta_step_cost(initializer, model, batches, val_batches, val_steps, loss_fn, optimizer, checkpoint_every=None,
                   checkpoint_mode="reentrant", generator=None, track_memory=True):
    """Cost of one meta-gradient (sample, unroll, backward; no update), as measured in Chapter 11.

    Returns ``{"peak_bytes", "forward_evals", "backward_evals", "seconds", "meta_loss"}``: the peak of
    :class:`LiveTensorBytes` (``None`` when ``track_memory=False``), how often ``loss_fn`` ran during the
    unrolled forward pass and during the backward pass (recomputation), and the wall-clock time (the tracker
    slows the run down, so time with ``track_memory=False``).
    """
    calls = [0]

    def counted(*args):
        calls[0] += 1
        return loss_fn(*args)

    reset_batchnorm_(model)
    initializer.zero_grad(set_to_none=True)
    tracker = LiveTensorBytes() if track_memory else None
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        if tracker:
            tracker.__enter__()
        try:
            params = initializer.sample(model, generator)
            meta_loss, _, _ = unroll(model, params, batches, val_batches, val_steps, counted, optimizer,
                                     checkpoint_every, checkpoint_mode)
            forward = calls[0]
            meta_loss.backward()
            meta_loss = float(meta_loss.detach())
            del params
        finally:
            if tracker:
                tracker.__exit__(None, None, None)
        seconds = time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    initializer.zero_grad(set_to_none=True)
    return {"peak_bytes": tracker.peak if tracker else None, "forward_evals": forward,
            "backward_evals": calls[0] - forward, "seconds": seconds, "meta_loss": meta_loss}


# --------------------------------------------------------------------------- tasks and plain training
def tensor_task_sampler(x, y, batch_size, inner_steps, n_val, val_x=None, val_y=None, val_batch_size=None):
    """``sample_batches(generator) -> (batches, val_batches)`` drawing random minibatches of ``(x, y)``.

    ``inner_steps`` training batches of ``batch_size`` and ``n_val`` validation batches (one per validation
    step) of ``val_batch_size`` (default ``batch_size``) from ``(val_x, val_y)`` (default: the training
    tensors). The input to :func:`meta_train` (Chapter 11).
    """
    batch_size, inner_steps = check_positive_int("batch_size", batch_size), check_positive_int("inner_steps", inner_steps)
    n_val = check_positive_int("n_val", n_val)
    val_x, val_y = (x, y) if val_x is None else (val_x, val_y)
    val_batch_size = check_positive_int("val_batch_size", val_batch_size or batch_size)

    def draw(generator, xs, ys, size):
        idx = torch.randint(len(xs), (size,), generator=generator)
        return xs[idx], ys[idx]

    def sample_batches(generator):
        return ([draw(generator, x, y, batch_size) for _ in range(inner_steps)],
                [draw(generator, val_x, val_y, val_batch_size) for _ in range(n_val)])
    return sample_batches


def train_curve(model, optimizer, batches, loss_fn, val_batch):
    """Train ``model`` in place with ``optimizer.torch_optimizer`` on ``batches``; return the validation losses.

    Entry ``t`` is the loss on ``val_batch`` (eval mode) after ``t`` updates, ``t = 0..len(batches)``: the curve
    whose average DIMAML minimises (Chapter 11). A non-finite loss ends the run; the rest of the curve is ``nan``.
    """
    opt = optimizer.torch_optimizer(model.parameters())

    def evaluate():
        model.eval()
        with torch.no_grad():
            value = float(loss_fn(model(val_batch[0]), val_batch[1]))
        model.train()
        return value

    curve = [evaluate()]
    for x, y in batches:
        loss = loss_fn(model(x), y)
        if not torch.isfinite(loss):
            return curve + [float("nan")] * (len(batches) + 1 - len(curve))
        opt.zero_grad()
        loss.backward()
        opt.step()
        curve.append(evaluate())
    return curve


def linear_regression_meta_gradient(w0, w_star, a, lr, val_steps):
    """Closed-form DIMAML meta-loss and meta-gradient for full-batch SGD on ``L(W) = tr(E A E^T) / 2``.

    ``E = W - W*`` and ``A = X X^T / N`` (the loss ``|W x - y|^2 / 2`` averaged over data with ``y = W* x``).
    SGD gives ``E_t = E_0 P^t`` with ``P = I - lr A``, so (Chapter 11, Eq. eq-dimaml-method-linear)::

        M       = (1/|S|) sum_{s in S} tr(E_0 P^s A P^s E_0^T) / 2,
        dM/dW_0 = (1/|S|) sum_{s in S} E_0 P^s A P^s.

    Returns ``(M, dM/dW_0)`` as float64 tensors.
    """
    w0, w_star, a = (torch.as_tensor(v, dtype=torch.float64) for v in (w0, w_star, a))
    e0 = w0 - w_star
    p = torch.eye(a.shape[0], dtype=torch.float64) - check_positive("lr", lr) * a
    meta, grad = 0.0, torch.zeros_like(e0)
    for s in val_steps:
        ps = torch.linalg.matrix_power(p, int(s))
        g = e0 @ ps @ a @ ps
        meta = meta + 0.5 * (g * e0).sum()
        grad = grad + g
    return meta / len(val_steps), grad / len(val_steps)
