"""Hyperfan init for the output head of *any* hypernetwork, in the ``torch.nn.init`` style (Chapter 14).

A hypernetwork of any architecture ends in a linear output layer, the *head*, that turns a feature vector
``h`` of size ``d_k`` into (part of) a mainnet tensor:

    W^i_j = H^i_{jk} h^k + beta^i_j        (a weight head)        b^i = G^i_l g^l + gamma^i   (a bias head)

Whatever produces ``h`` (fixed or learned embeddings, an MLP, a chunk embedding), hyperfan init needs only
what the head generates (the fans ``d_j``, ``d_i`` of the mainnet layer, the nonlinearity after it, whether
the hypernet also generates that layer's bias) and what feeds it (``d_k`` and the second moment
``Var(e) = E[h^2]`` of the head's input). The variances are Table 1's (:mod:`hyperinit_lite.hyperfan`,
Chapters 5 and 6); the head's own biases ``beta``, ``gamma`` start at zero.

    >>> head = torch.nn.Linear(64, 300 * 784)                    # generates a 300 x 784 weight
    >>> hyperfan_in_(head, layer_shape=(300, 784), nonlinearity="tanh")

``layer_shape`` is the shape of the generated layer's *weight* ``(out, in, *kernel)``, also for a bias head
(hyperfan-out's bias variance depends on both fans); give ``fans=(fan_in, fan_out)`` instead for anything
else. :func:`hmlp_init_` applies this to hypnettorch's ``HMLP`` (optional; not a dependency).
"""
import math

import torch
from torch import nn

from .classical import relu_factor, sample_
from .fans import fan_in_and_fan_out
from .hyperfan import METHODS, hyperfan_variances
from .validate import check_choice, check_positive, check_positive_int


def _fans(layer_shape, fans, transposed):
    """``(fan_in, fan_out)`` from exactly one of ``layer_shape`` and ``fans``."""
    if (layer_shape is None) == (fans is None):
        raise ValueError("give exactly one of layer_shape (the generated layer's weight shape) and fans")
    if fans is not None:
        if len(fans) != 2:
            raise ValueError(f"fans must be (fan_in, fan_out), got {fans!r}")
        return check_positive_int("fans[0]", fans[0]), check_positive_int("fans[1]", fans[1])
    return fan_in_and_fan_out(tuple(int(s) for s in layer_shape), transposed)


def head_variance(method, layer_shape=None, d_k=1, embedding_variance=1.0, nonlinearity="linear",
                  is_bias=False, generates_bias=False, fans=None, transposed=False):
    """The variance hyperfan-``method`` (``'in'``, ``'out'``, ``'harmonic'``) gives a head's weight (Table 1).

    Weight head: ``Var(H) = c / (2^hbias d_j d_k Var(e))`` (in) or ``c / (d_i d_k Var(e))`` (out); bias head
    (``is_bias=True``, ``d_k`` is then ``d_l``): ``Var(G) = c / (2 d_l Var(e))`` (in) or
    ``max(c (1 - d_j / d_i) / (d_l Var(e)), 0)`` (out); ``harmonic`` is their harmonic mean (Chapter 6).
    ``c = 2`` if ``nonlinearity`` is ``'relu'``; ``hbias = generates_bias`` (a bias head implies it).
    """
    check_choice("method", method, METHODS)
    fan_in, fan_out = _fans(layer_shape, fans, transposed)
    var_h, var_g = hyperfan_variances(method, fan_in, fan_out, d_k, d_k, embedding_variance, nonlinearity,
                                      generates_bias or is_bias)
    return var_g if is_bias else var_h


def _weight_and_bias(head):
    """``(weight, bias or None)`` of an ``nn.Linear``, a weight tensor, or a ``(weight, bias)`` pair."""
    if isinstance(head, nn.Linear):
        return head.weight, head.bias
    if isinstance(head, torch.Tensor):
        return head, None
    if isinstance(head, (tuple, list)) and len(head) == 2 and isinstance(head[0], torch.Tensor):
        return head[0], head[1]
    raise TypeError(f"head must be an nn.Linear, a weight tensor or a (weight, bias) pair, got "
                    f"{type(head).__name__}")


@torch.no_grad()
def hyperfan_(head, method, layer_shape=None, d_k=None, embedding_variance=1.0, nonlinearity="linear",
              is_bias=False, generates_bias=False, fans=None, transposed=False, distribution="uniform",
              generator=None):
    """Initialize a hypernet's output ``head`` in place with hyperfan-``method`` (see :func:`head_variance`).

    ``head``: an ``nn.Linear(d_k, n)`` or its weight ``(n, d_k)`` (``d_k`` read from the last dimension unless
    given), or a ``(weight, bias)`` pair; its weight is drawn with the head variance from ``distribution``
    and its bias set to zero. A head shared by several layers of one shape and nonlinearity gets the same
    variance. ``embedding_variance`` is ``E[h^2]`` of the head's input (1 for ``U(-sqrt 3, sqrt 3)``
    embeddings fed directly or through fan-in-initialized layers). Returns ``head``.
    """
    weight, bias = _weight_and_bias(head)
    d_k = weight.shape[-1] if d_k is None else d_k
    variance = head_variance(method, layer_shape, check_positive_int("d_k", d_k),
                             check_positive("embedding_variance", embedding_variance), nonlinearity, is_bias,
                             generates_bias, fans, transposed)
    sample_(weight, variance, distribution, generator)
    if bias is not None:
        bias.zero_()
    return head


def hyperfan_in_(head, layer_shape=None, d_k=None, embedding_variance=1.0, nonlinearity="linear",
                 is_bias=False, generates_bias=False, fans=None, transposed=False, distribution="uniform",
                 generator=None):
    """Hyperfan-in (Chapter 5): the generated layer gets the fan-in variance ``c / d_j``."""
    return hyperfan_(head, "in", layer_shape, d_k, embedding_variance, nonlinearity, is_bias, generates_bias,
                     fans, transposed, distribution, generator)


def hyperfan_out_(head, layer_shape=None, d_k=None, embedding_variance=1.0, nonlinearity="linear",
                  is_bias=False, generates_bias=False, fans=None, transposed=False, distribution="uniform",
                  generator=None):
    """Hyperfan-out (Chapter 6): the generated layer gets the fan-out variance ``c / d_i``."""
    return hyperfan_(head, "out", layer_shape, d_k, embedding_variance, nonlinearity, is_bias, generates_bias,
                     fans, transposed, distribution, generator)


def hyperfan_harmonic_(head, layer_shape=None, d_k=None, embedding_variance=1.0, nonlinearity="linear",
                       is_bias=False, generates_bias=False, fans=None, transposed=False,
                       distribution="uniform", generator=None):
    """The harmonic mean of hyperfan-in and hyperfan-out, component by component (Chapter 6)."""
    return hyperfan_(head, "harmonic", layer_shape, d_k, embedding_variance, nonlinearity, is_bias,
                     generates_bias, fans, transposed, distribution, generator)


# ---------------------------------------------------------------------------------- hypnettorch's HMLP
def hmlp_targets(target_shapes):
    """``(kind, layer_shape)`` per target of an MLP mainnet's ``target_shapes``: a tensor of 2 or more
    dimensions is a ``'weight'``; a 1-D tensor right after a weight with as many outputs is that layer's
    ``'bias'``. Other 1-D tensors (e.g. batch-norm scales) are refused."""
    out = []
    for i, shape in enumerate(target_shapes):
        shape = tuple(int(s) for s in shape)
        if len(shape) >= 2:
            out.append(("weight", shape))
        elif i > 0 and out[-1][0] == "weight" and out[-1][1][0] == shape[0]:
            out.append(("bias", out[-1][1]))
        else:
            raise ValueError(f"target_shapes[{i}] = {list(shape)} is neither a weight nor the bias of the "
                             "weight before it; initialize this head by hand with hyperfan_")
    return out


@torch.no_grad()
def hmlp_init_(hnet, method="in", nonlinearities="relu", embedding_variance=1.0, body_nonlinearity="relu",
               distribution="uniform", generator=None):
    """Hyperfan-``method`` for hypnettorch's ``HMLP`` (``hypnettorch.hnets.HMLP``; Chapter 14).

    An ``HMLP`` has one output layer for all targets: row block ``p`` of its weight generates target ``p``.
    Each block gets :func:`head_variance` of its target (:func:`hmlp_targets`), the output bias zeros.
    ``nonlinearities``: the nonlinearity after every mainnet layer (one string for all hidden layers, the last
    layer then linear, or a list with one entry per layer). The hidden layers get fan-in init with the gain
    of ``body_nonlinearity`` (the ``activation_fn`` of the ``HMLP``; ``None`` leaves them as they are) and
    zero biases, so that ``E[h^2]`` stays ``embedding_variance`` (1 for hypnettorch's ``N(0, 1)``
    embeddings). Returns ``hnet``.
    """
    targets = hmlp_targets(hnet.target_shapes)
    n_layers = sum(kind == "weight" for kind, _ in targets)
    if isinstance(nonlinearities, str):
        nonlinearities = [nonlinearities] * (n_layers - 1) + ["linear"]
    if len(nonlinearities) != n_layers:
        raise ValueError(f"nonlinearities must have one entry per mainnet layer ({n_layers}), got "
                         f"{len(nonlinearities)}")
    weights = hnet.layer_weight_tensors
    biases = hnet.layer_bias_vectors if hnet.has_bias else [None] * len(weights)
    if body_nonlinearity is not None:
        for w, b in zip(weights[:-1], biases[:-1]):
            sample_(w, relu_factor(body_nonlinearity) / w.shape[1], distribution, generator)
            if b is not None:
                b.zero_()
    layer, start = -1, 0
    for i, (kind, shape) in enumerate(targets):
        layer += kind == "weight"
        with_bias = kind == "bias" or (i + 1 < len(targets) and targets[i + 1][0] == "bias")
        n = math.prod(shape) if kind == "weight" else shape[0]
        variance = head_variance(method, shape, weights[-1].shape[1], embedding_variance,
                                 nonlinearities[layer], kind == "bias", with_bias)
        sample_(weights[-1][start:start + n], variance, distribution, generator)
        start += n
    if biases[-1] is not None:
        biases[-1].zero_()
    return hnet
