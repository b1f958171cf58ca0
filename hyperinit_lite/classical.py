"""Classical initialization: Xavier and Kaiming variances and samplers (Chapters 2 and 3).

For a layer ``y^i = W^i_j x^j`` with ``d_j`` inputs and ``d_i`` outputs, variance analysis gives

    fan-in   Var(W) = c / d_j            (keeps Var(y) = Var(x) on the forward pass)
    fan-out  Var(W) = c / d_i            (keeps gradient variance on the backward pass)
    harmonic Var(W) = 2c / (d_i + d_j)   (Glorot & Bengio's compromise)

with ``c = 1`` (Xavier) or ``c = 2`` when a ReLU follows (Kaiming).
"""
import math

import torch

from .fans import fan_in_and_fan_out
from .validate import check_choice, check_positive

MODES = ("fan_in", "fan_out", "harmonic")
NONLINEARITIES = ("linear", "tanh", "relu")


def relu_factor(nonlinearity):
    """The factor ``c`` of Chapter 3: 2 for ReLU (half the pre-activations are zeroed), else 1."""
    check_choice("nonlinearity", nonlinearity, NONLINEARITIES)
    return 2.0 if nonlinearity == "relu" else 1.0


def harmonic_mean(a, b):
    """True harmonic mean ``2 / (1/a + 1/b) = 2ab / (a + b)``; it is 0 when either argument is 0."""
    if a < 0 or b < 0:
        raise ValueError(f"harmonic_mean needs non-negative arguments, got {a!r} and {b!r}")
    return 0.0 if a == 0 or b == 0 else 2.0 * a * b / (a + b)


def init_variance(fan_in, fan_out, mode="fan_in", gain=1.0):
    """``gain / fan_in``, ``gain / fan_out`` or their harmonic mean ``2 gain / (fan_in + fan_out)``."""
    check_choice("mode", mode, MODES)
    v_in, v_out = gain / check_positive("fan_in", fan_in), gain / check_positive("fan_out", fan_out)
    return {"fan_in": v_in, "fan_out": v_out, "harmonic": harmonic_mean(v_in, v_out)}[mode]


def xavier_variance(shape, mode="harmonic"):
    """Xavier (Glorot) variance of a weight of ``shape``: ``init_variance`` with gain 1 (Chapter 2)."""
    return init_variance(*fan_in_and_fan_out(shape), mode=mode, gain=1.0)


def kaiming_variance(shape, mode="fan_in", nonlinearity="relu"):
    """Kaiming (He) variance of a weight of ``shape``: gain 2 for ReLU (Chapter 3)."""
    return init_variance(*fan_in_and_fan_out(shape), mode=mode, gain=relu_factor(nonlinearity))


def _check_variance(variance, dtype):
    """``variance`` as float; ``ValueError`` unless it is >= 0 and ``3 variance`` fits into ``dtype``."""
    if not variance >= 0:
        raise ValueError(f"variance must be >= 0, got {variance!r}")
    if not math.sqrt(3.0 * variance) < torch.finfo(dtype).max:
        raise ValueError(f"variance {variance!r} is too large to sample into a {dtype} tensor (is "
                         f"embedding_variance tiny, or a fan 0?); use a larger embedding_variance or float64")
    return float(variance)


@torch.no_grad()
def uniform_(tensor, variance, generator=None):
    """Fill ``tensor`` in place from ``U(-sqrt(3 var), sqrt(3 var))``, whose variance is ``var``."""
    bound = math.sqrt(3.0 * _check_variance(variance, tensor.dtype))
    return tensor.uniform_(-bound, bound, generator=generator)


@torch.no_grad()
def normal_(tensor, variance, generator=None):
    """Fill ``tensor`` in place from ``N(0, var)``."""
    return tensor.normal_(0.0, math.sqrt(_check_variance(variance, tensor.dtype)), generator=generator)


DISTRIBUTIONS = {"uniform": uniform_, "normal": normal_}


def sample_(tensor, variance, distribution="uniform", generator=None):
    """Fill ``tensor`` with zero-mean samples of the given variance from ``distribution``."""
    check_choice("distribution", distribution, tuple(DISTRIBUTIONS))
    return DISTRIBUTIONS[distribution](tensor, variance, generator=generator)
