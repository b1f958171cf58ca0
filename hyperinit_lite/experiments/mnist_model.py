"""The models of the MNIST sweep (Chapter 8): its settings, one run's initialized model, the variances its
weights are predicted to have, and the kernel by which one SGD step on a hypernet moves its generated weights.

Every run's random numbers come from its own streams (:func:`seed_generator`), so a run is the same whichever
other runs train beside it. :mod:`hyperinit_lite.experiments.mnist` holds the config and the run.
"""
import torch

from ..classical import init_variance, relu_factor
from ..hyperfan import hyperfan_variances
from ..hypernet import Hypernet, classical_mainnet, layer_nonlinearities, layer_shapes
from ..init_methods import get_method, init_
from ..validate import check_choice

SETTINGS = ("classical", "hyper_classical", "hyperfan_in", "hyperfan_out")
CASES = ("weights", "weights_biases")
ACTIVATIONS = ("tanh", "relu")


def group_key(activation, case):
    """The name of an architecture group in the results, e.g. ``'tanh/weights'``."""
    return f"{activation}/{case}"


def seed_generator(seed, offset):
    """The CPU generator of stream ``offset`` of run seed ``seed``: ``0`` the hypernet's embeddings, ``1`` the
    classical net, ``2 + SETTINGS.index(setting)`` the hypernet's heads, ``100 + epoch`` an epoch's data
    order."""
    return torch.Generator().manual_seed(1000 * seed + offset)


def build_model(config, activation, case, setting, seed):
    """One run's initialized model: ``(weights, biases)`` for ``classical``, else a
    :class:`~hyperinit_lite.hypernet.Hypernet`. ``config``: a
    :class:`~hyperinit_lite.experiments.mnist.MNISTConfig`.

    Hypernets of one seed share their embeddings across settings (and across cases, for the weight
    embeddings), so settings differ only in how the heads are initialized.
    """
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("case", case, CASES)
    check_choice("setting", setting, SETTINGS)
    if setting == "classical":
        init = "xavier" if activation == "tanh" else "kaiming"
        return classical_mainnet(config.layer_sizes, init=init, mode="fan_in", activation=activation,
                                 generator=seed_generator(seed, 1))
    net = Hypernet(config.layer_sizes, config.embedding_dim, hidden_sizes=(),
                   generates_bias=(case == "weights_biases"), share_heads=True, activation=activation,
                   generator=seed_generator(seed, 0))
    generator = seed_generator(seed, 2 + SETTINGS.index(setting))
    return init_(net, init_method(setting, activation), generator=generator)


def init_method(setting, activation):
    """The registry name (:mod:`hyperinit_lite.init_methods`) of a hypernet ``setting``'s init: M1 is
    Xavier fan-in with tanh and Kaiming fan-in with ReLU (the classical net's init, applied to the hypernet),
    hyperfan-in and hyperfan-out are Table 1."""
    check_choice("setting", setting, SETTINGS[1:])
    if setting == "hyper_classical":
        return "xavier_fan_in" if activation == "tanh" else "kaiming_fan_in"
    return setting


def mainnet_of(model):
    """Current ``(weights, biases)`` (detached) of a model built by :func:`build_model`."""
    with torch.no_grad():
        if isinstance(model, Hypernet):
            weights, biases = model()
        else:
            weights, biases = model
        return [w.detach() for w in weights], [b.detach() for b in biases]


def predicted_weight_variance(config, activation, case, setting, embeddings=None):
    """Predicted ``Var(W[t])`` per mainnet layer at init (Chapters 2-6).

    classical: ``c / d_j``; hypernet: ``Var(W[t]) = |e[t]|^2 Var(H[t])`` given the embeddings (or
    ``d_k Var(e) Var(H)`` on average over them, ``embeddings=None``) with ``Var(H)`` from M1
    (``c / d_k``) or Table 1. ``config``: a :class:`~hyperinit_lite.experiments.mnist.MNISTConfig`.
    """
    shapes = layer_shapes(config.layer_sizes)
    nls = layer_nonlinearities(len(shapes), activation)
    out = []
    for t, ((d_out, d_in), nl) in enumerate(zip(shapes, nls)):
        c = relu_factor(nl) if activation == "relu" else 1.0
        if setting == "classical":
            out.append(init_variance(d_in, d_out, "fan_in", c))
            continue
        d_k = config.embedding_dim
        method = get_method(init_method(setting, activation))
        if method.family == "m1":
            var_h = init_variance(d_k, d_out * d_in, method.mode, method.gain)
        else:
            var_h = hyperfan_variances(method.mode, d_in, d_out, d_k, d_k, 1.0, nl, case == "weights_biases")[0]
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
