"""DIMAML's learned initializers: one learnable distribution per weight tensor (Chapters 11-13).

Baranchuk & Babenko (2021). Every selected weight tensor ``W`` of a model gets a distribution ``p_psi`` that
can be sampled differentiably (the reparameterization trick), ``W = Q_psi(u)`` with ``u`` fixed noise:

* Normal:  ``W = mu + sigma * z``,  ``z ~ N(0, 1)``;
* PLIF:    ``W = Q(u)``,  ``u ~ U(0, 1)``, ``Q`` monotone piecewise linear, ``n`` equal pieces on ``[0, 1]``:
  ``Q(u) = b + sum_{k<i} softplus(v_k) + n softplus(v_i) (u - i/n)``, ``i = min(floor(u n), n - 1)``.

Each starts exactly from a classical init of standard deviation ``s0`` (Kaiming, Xavier, ...). Parameters
are measured in units of ``s0``: ``mu = s0 m``, ``sigma = s0 exp(s)``, knots ``= s0 * (...)``, so one
meta-learning rate suits tensors whose scales differ by orders of magnitude (the family of distributions is
unchanged).

:class:`LearnedInitializer` gathers them for a model; :func:`save_initializer` and :func:`load_initializer`
store it as JSON. Learning ``psi``: :mod:`~hyperinit_lite.meta_unroll` (the differentiable inner loop) and
:mod:`~hyperinit_lite.meta_train` (the meta-steps).
"""
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .validate import check_choice, check_positive, check_positive_int
from .fans import GATES, fan_in_and_fan_out, parameter_fans

KINDS = ("normal", "plif")
BASES = ("kaiming", "xavier")


# --------------------------------------------------------------------------- learnable distributions
def inverse_softplus(y):
    """``softplus^{-1}(y) = log(exp(y) - 1)``, computed stably for small and large ``y > 0``."""
    return y + torch.log(-torch.expm1(-y))


class NormalInit(nn.Module):
    """``W = mu + sigma z``, ``mu = s0 m``, ``sigma = s0 exp(s)``; ``m = s = 0`` reproduces ``N(0, s0^2)``."""

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
        """A differentiable sample of ``shape``: ``mu + sigma z``, ``z ~ N(0, 1)`` from ``generator``."""
        z = torch.randn(shape, generator=generator, dtype=self.loc.dtype).to(self.loc.device)
        return self.mean() + self.std() * z


class PLIFInit(nn.Module):
    """Piecewise-linear increasing quantile function with ``n`` equal pieces (REFERENCES.md section 4).

    Built from ``n + 1`` increasing knots ``q_i = Q(i/n)``: ``b = q_0 / s0``,
    ``softplus(v_i) = (q_{i+1} - q_i) / s0``.
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
        """Exactly ``U(-sqrt(3) s0, sqrt(3) s0)``: its quantile function is linear, so PLIF is exact."""
        bound = math.sqrt(3.0) * check_positive("std", std)
        knots = torch.linspace(-bound, bound, check_positive_int("n_pieces", n_pieces) + 1,
                               dtype=torch.float64)
        return cls(knots, std, dtype)

    @classmethod
    def from_normal(cls, std, n_pieces=100, eps=1e-4, dtype=torch.float32):
        """``N(0, s0^2)`` quantiles at ``i/n`` (``eps``, ``1 - eps`` at the ends), linearly interpolated."""
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
    """``{name: sqrt(a / fan_in)}`` for every weight of ``model`` with its true fans
    (:func:`~hyperinit_lite.fans.parameter_fans`).

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

    def __init__(self, model=None, kind="normal", base="kaiming", n_pieces=100, plif_base="uniform",
                 select=None, dtype=torch.float32, biases=False, per_gate=True):
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
        """All trainable tensors of ``model``: learned ones sampled (differentiable), others copied."""
        params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()
                  if p.requires_grad}
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
        """Initialize ``model`` in place from the learned distributions (others untouched); returns it."""
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
    """Read a saved initializer; ``load_initializer(path).init_(model)`` initializes a new model."""
    return LearnedInitializer.from_dict(json.loads(Path(path).read_text()))
