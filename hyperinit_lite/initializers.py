"""In-place initializers for a :class:`~hyperinit_lite.hypernet.Hypernet`, in the ``torch.nn.init`` style.

* ``xavier_`` / ``kaiming_``: method M1 of Chapter 4, classical init applied to every hypernet layer,
  output heads included, as if they were ordinary layers.
* ``hyperfan_in_`` / ``hyperfan_out_`` / ``hyperfan_harmonic_``: Table 1 (Chapters 5 and 6). The body
  gets fan-in init, the heads the hyperfan variances, and the head biases ``beta``, ``gamma`` zeros.
"""
import torch

from .classical import init_variance, relu_factor, sample_
from .validate import check_choice, check_positive
from .hyperfan import METHODS, hyperfan_variances
from .hypernet import Hypernet, layer_nonlinearities


def _check(hypernet):
    if not isinstance(hypernet, Hypernet):
        raise TypeError(f"hypernet must be a hyperinit_lite.Hypernet, got {type(hypernet).__name__}")


@torch.no_grad()
def fan_in_body_(hypernet, distribution="uniform", generator=None):
    """Fan-in init of the body's hidden layers (gain 2 after a ReLU), zero biases: keeps ``E[h(e)^2] = Var(e)``."""
    _check(hypernet)
    gain = relu_factor(hypernet.body_activation)
    for layer in hypernet.body:
        sample_(layer.weight, gain / layer.in_features, distribution, generator)
        layer.bias.zero_()
    return hypernet


@torch.no_grad()
def classical_(hypernet, mode="fan_in", gain=1.0, distribution="uniform", generator=None):
    """M1: every hypernet layer gets ``init_variance(fan_in, fan_out, mode, gain)``; biases zero (Chapter 4)."""
    _check(hypernet)
    heads = list(hypernet.body) + list(hypernet.weight_heads) + list(hypernet.bias_heads or [])
    for layer in heads:
        sample_(layer.weight, init_variance(layer.in_features, layer.out_features, mode, gain), distribution,
                generator)
        layer.bias.zero_()
    return hypernet


def xavier_(hypernet, mode="fan_in", distribution="uniform", generator=None):
    """M1 with Xavier (gain 1). The default fan-in mode is the one of Eq. (1), which makes ``Var(W) = Var(e)``."""
    return classical_(hypernet, mode, 1.0, distribution, generator)


def kaiming_(hypernet, mode="fan_in", distribution="uniform", generator=None):
    """M1 with Kaiming (gain 2)."""
    return classical_(hypernet, mode, 2.0, distribution, generator)


@torch.no_grad()
def hyperfan_(hypernet, method="in", embedding_variance=None, distribution="uniform", generator=None):
    """Initialize ``hypernet`` with hyperfan-``method`` (``'in'``, ``'out'`` or ``'harmonic'``), Table 1.

    ``embedding_variance`` defaults to the hypernet's (1 for ``U(-sqrt 3, sqrt 3)`` embeddings). A shared
    head serves layers of one shape and one nonlinearity, so the variance computed for any of them is the
    variance for all.
    """
    _check(hypernet)
    check_choice("method", method, METHODS)
    var_e = check_positive("embedding_variance",
                           hypernet.embedding_variance if embedding_variance is None else embedding_variance)
    fan_in_body_(hypernet, distribution, generator)
    nonlinearities = layer_nonlinearities(len(hypernet.shapes), hypernet.activation)
    done = set()
    for t, ((d_out, d_in), nl) in enumerate(zip(hypernet.shapes, nonlinearities)):
        head = hypernet.head_of_layer[t]
        if head in done:
            continue
        done.add(head)
        var_h, var_g = hyperfan_variances(method, d_in, d_out, hypernet.head_dim, hypernet.head_dim, var_e, nl,
                                          hypernet.generates_bias)
        sample_(hypernet.weight_heads[head].weight, var_h, distribution, generator)
        hypernet.weight_heads[head].bias.zero_()
        if hypernet.generates_bias:
            sample_(hypernet.bias_heads[head].weight, var_g, distribution, generator)
            hypernet.bias_heads[head].bias.zero_()
    return hypernet


def hyperfan_in_(hypernet, embedding_variance=None, distribution="uniform", generator=None):
    """Hyperfan-in init (Chapter 5): generated weights have the fan-in variance ``c / d_j``."""
    return hyperfan_(hypernet, "in", embedding_variance, distribution, generator)


def hyperfan_out_(hypernet, embedding_variance=None, distribution="uniform", generator=None):
    """Hyperfan-out init (Chapter 6): generated weights have the fan-out variance ``c / d_i``."""
    return hyperfan_(hypernet, "out", embedding_variance, distribution, generator)


def hyperfan_harmonic_(hypernet, embedding_variance=None, distribution="uniform", generator=None):
    """Harmonic mean of hyperfan-in and hyperfan-out, component by component (Chapter 6)."""
    return hyperfan_(hypernet, "harmonic", embedding_variance, distribution, generator)

