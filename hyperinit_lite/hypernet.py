"""Hypernetworks that generate an MLP mainnet, and the functional mainnet they feed (Chapter 4).

For mainnet layer ``t`` with weight ``W[t]`` of shape ``(d_i, d_j)`` the hypernet computes

    W[t] = H[t] h(e[t]) + beta[t]          (weights)
    b[t] = G[t] h(e'[t]) + gamma[t]        (biases, if ``generates_bias``)

``h`` is the hypernet body: the identity for a one-layer (linear) hypernet, an MLP otherwise. ``(H, beta)``
and ``(G, gamma)`` are the output heads, one per mainnet layer, or one per distinct layer shape when
``share_heads=True`` (Appendix A.1: layers of the same size and nonlinearity are told apart only by their
embeddings).
"""
import math

import torch
from torch import nn

from .classical import NONLINEARITIES, init_variance, relu_factor, sample_
from .validate import check_choice, check_positive_int

ACTIVATIONS = {"linear": lambda x: x, "tanh": torch.tanh, "relu": torch.relu, "sigmoid": torch.sigmoid}


def check_layer_sizes(layer_sizes):
    """Validate a mainnet's layer sizes ``[d_0, d_1, ..., d_T]`` (at least one layer)."""
    layer_sizes = list(layer_sizes)
    if len(layer_sizes) < 2:
        raise ValueError(f"layer_sizes needs at least two entries (input and output), got {layer_sizes}")
    for i, size in enumerate(layer_sizes):
        check_positive_int(f"layer_sizes[{i}]", size)
    return layer_sizes


def layer_shapes(layer_sizes):
    """Weight shapes ``(d_out, d_in)`` of an MLP with the given layer sizes."""
    sizes = check_layer_sizes(layer_sizes)
    return [(d_out, d_in) for d_in, d_out in zip(sizes[:-1], sizes[1:])]


def layer_nonlinearities(n_layers, activation):
    """Nonlinearity applied to each layer's output: ``activation`` on hidden layers, none on the last."""
    check_choice("activation", activation, NONLINEARITIES)
    return [activation] * (n_layers - 1) + ["linear"]


def mainnet_forward(x, weights, biases, activation="tanh", trace=False):
    """Run the MLP ``x[t+1] = act(W[t] x[t] + b[t])`` with a linear last layer.

    ``x`` has shape ``(batch, d_0)``. With ``trace=True`` also return a dict with the lists ``inputs``
    (each layer's ``x[t]``) and ``preactivations`` (each ``y[t] = W[t] x[t] + b[t]``), the quantities whose
    variances Chapters 2-6 predict.
    """
    check_choice("activation", activation, tuple(ACTIVATIONS))
    if len(weights) != len(biases):
        raise ValueError(f"got {len(weights)} weights but {len(biases)} biases")
    if weights and x.dtype != weights[0].dtype:
        raise ValueError(f"x has dtype {x.dtype} but the weights have {weights[0].dtype}; cast the input, "
                         f"e.g. x.to({weights[0].dtype}), or the model, e.g. hypernet.to({x.dtype})")
    act, inputs, ys = ACTIVATIONS[activation], [], []
    for t, (w, b) in enumerate(zip(weights, biases)):
        if x.shape[-1] != w.shape[1]:
            raise ValueError(f"layer {t + 1}: input has {x.shape[-1]} features but weight has shape "
                             f"{tuple(w.shape)}")
        inputs.append(x)
        y = x @ w.T + b
        ys.append(y)
        x = act(y) if t < len(weights) - 1 else y
    return (x, {"inputs": inputs, "preactivations": ys}) if trace else x


def uniform_embeddings(n, dim, generator=None):
    """``n`` embeddings of size ``dim`` from ``U(-sqrt 3, sqrt 3)``: zero mean, variance 1."""
    return (torch.rand(n, dim, generator=generator) * 2.0 - 1.0) * math.sqrt(3.0)


class Hypernet(nn.Module):
    """A static hypernet generating every weight (and optionally bias) of an MLP mainnet (Chapter 4).

    Args:
        layer_sizes: mainnet sizes ``[d_0, ..., d_T]``.
        embedding_dim: size of each layer embedding ``e[t]``, drawn from ``U(-sqrt 3, sqrt 3)`` (variance 1).
        hidden_sizes: widths of the hypernet body ``h``; empty for a one-layer (linear) hypernet.
        generates_bias: also generate mainnet biases (Case 2); otherwise biases are ordinary mainnet
            parameters starting at zero (Case 1).
        share_heads: one output head per distinct (layer shape, nonlinearity) instead of one per layer
            (Appendix A.1).
        learn_embeddings: train the embeddings instead of keeping them fixed.
        body_activation: nonlinearity of the body's hidden layers.
        activation: the mainnet's hidden nonlinearity (used by :meth:`mainnet` and the initializers).
    """

    def __init__(self, layer_sizes, embedding_dim, hidden_sizes=(), generates_bias=False, share_heads=False,
                 learn_embeddings=False, body_activation="relu", activation="tanh", generator=None):
        super().__init__()
        self.layer_sizes = check_layer_sizes(layer_sizes)
        self.shapes = layer_shapes(self.layer_sizes)
        self.embedding_dim = check_positive_int("embedding_dim", embedding_dim)
        self.hidden_sizes = [check_positive_int(f"hidden_sizes[{i}]", h) for i, h in enumerate(hidden_sizes)]
        self.generates_bias = bool(generates_bias)
        self.body_activation = check_choice("body_activation", body_activation, tuple(ACTIVATIONS))
        self.activation = check_choice("activation", activation, NONLINEARITIES)
        self.head_dim = self.hidden_sizes[-1] if self.hidden_sizes else self.embedding_dim

        n = len(self.shapes)
        emb = uniform_embeddings(2 * n if self.generates_bias else n, self.embedding_dim, generator)
        self.embedding_variance = 1.0
        self.weight_embeddings = nn.Parameter(emb[:n], requires_grad=learn_embeddings)
        self.bias_embeddings = nn.Parameter(emb[n:], requires_grad=learn_embeddings) if self.generates_bias else None

        sizes = [self.embedding_dim] + self.hidden_sizes
        self.body = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

        # A head is shared by layers that need the same init: same shape and same nonlinearity (gain).
        kinds = list(zip(self.shapes, layer_nonlinearities(n, self.activation)))
        distinct = list(dict.fromkeys(kinds)) if share_heads else kinds
        self.head_of_layer = [distinct.index(k) for k in kinds] if share_heads else list(range(n))
        self.weight_heads = nn.ModuleList(nn.Linear(self.head_dim, o * i) for (o, i), _ in distinct)
        if self.generates_bias:
            self.bias_heads = nn.ModuleList(nn.Linear(self.head_dim, o) for (o, _), _ in distinct)
            self.mainnet_biases = None
        else:
            self.bias_heads = None
            self.mainnet_biases = nn.ParameterList(nn.Parameter(torch.zeros(o)) for o, _ in self.shapes)

    def features(self, e):
        """The body ``h(e)``: hidden layers of the hypernet applied to embeddings ``e`` (rows)."""
        act = ACTIVATIONS[self.body_activation]
        for layer in self.body:
            e = act(layer(e))
        return e

    def forward(self, weight_embeddings=None, bias_embeddings=None):
        """Generate ``(weights, biases)``: two lists with one tensor per mainnet layer."""
        we = self.weight_embeddings if weight_embeddings is None else weight_embeddings
        hw = self.features(we)
        weights = [self.weight_heads[self.head_of_layer[t]](hw[t]).view(shape) for t, shape in enumerate(self.shapes)]
        if not self.generates_bias:
            return weights, list(self.mainnet_biases)
        be = self.bias_embeddings if bias_embeddings is None else bias_embeddings
        hb = self.features(be)
        biases = [self.bias_heads[self.head_of_layer[t]](hb[t]) for t in range(len(self.shapes))]
        return weights, biases

    def mainnet(self, x, trace=False):
        """Generate the mainnet and run it on ``x`` (see :func:`mainnet_forward`)."""
        weights, biases = self()
        return mainnet_forward(x, weights, biases, self.activation, trace)


def classical_mainnet(layer_sizes, init="xavier", mode="fan_in", activation="tanh", distribution="uniform",
                      generator=None):
    """Weights and zero biases of an ordinary MLP with Xavier or Kaiming init (Chapters 2-3).

    Layer ``t`` uses gain 2 under Kaiming when a ReLU follows it (Table 1's convention), else 1.
    """
    check_choice("init", init, ("xavier", "kaiming"))
    shapes = layer_shapes(layer_sizes)
    weights, biases = [], []
    for (d_out, d_in), nl in zip(shapes, layer_nonlinearities(len(shapes), activation)):
        gain = relu_factor(nl) if init == "kaiming" else 1.0
        w = torch.empty(d_out, d_in)
        sample_(w, init_variance(d_in, d_out, mode, gain), distribution, generator)
        weights.append(w.requires_grad_())
        biases.append(torch.zeros(d_out, requires_grad=True))
    return weights, biases
